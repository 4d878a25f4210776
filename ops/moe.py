"""`qwen35::moe`: the sparse mixture-of-experts block of Qwen3.5-MoE, as one op.

It is a softmax top-k router over E SwiGLU experts plus a shared SwiGLU expert
scaled by a sigmoid gate, matching transformers' `Qwen3_5MoeSparseMoeBlock`
(router, experts, shared expert and their dtype handling). It holds the op's
schema, its eager and fake kernels, the pure-PyTorch forms the kernels and the
lowerings use, a per-token loop oracle, its ONNX translations and the table both
exporters read (`LOWERING`). It is not the MoE layer module (that is
`exporter.model.SparseMoe`, which owns the parameters).

Shape legend:
    N  tokens (all leading dims of x flattened; B·T for [B, T, D])
    D  hidden size
    E  routed experts
    K  experts per token (top-k)
    I  routed expert FFN size (moe_intermediate_size)
    Is shared expert FFN size (shared_expert_intermediate_size)

Math, per token x [D]:
    p        = softmax(x @ router_weightᵀ)              in float32, [E]
    w, idx   = topk(p, K);  w /= Σ w  (norm_topk_prob)  cast to x.dtype, [K]
    gate, up = (gate_up_proj[e] @ x).chunk(2)           first I rows gate, [I] each
    y_e      = down_proj[e] @ (silu(gate) · up)         [D]
    shared   = sigmoid(shared_expert_gate @ x) · SwiGLU_shared(x)
    y        = Σ_k w_k · y_{idx_k} + shared
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ops.lowering import DECOMPOSITION, TRANSLATION, ExecuTorchLowering, OnnxLowering, OpLowering, fixed
from ops.onnx_contrib import contrib_op

# ---------------------------------------------------------------------------------------------------
# Pure-PyTorch forms
# ---------------------------------------------------------------------------------------------------
# All three compute the same function. moe_gather and moe_dense have no data-dependent Python
# control flow, so they torch.export with a dynamic token dimension; moe_reference loops per token
# and is the oracle for tests.


def route(
    x: Tensor, router_weight: Tensor, *, top_k: int, norm_topk_prob: bool = True
) -> tuple[Tensor, Tensor]:
    """Top-k routing weights [N, K] (x.dtype) and expert ids [N, K] (int64) for x [N, D]."""
    logits = F.linear(x, router_weight)  # [N, E]
    # softmax in float32, as transformers does: in bf16 the probabilities would be rounded to
    # 8 significant bits before top-k and the renormalisation
    probs = logits.softmax(dim=-1, dtype=torch.float32)  # [N, E]
    weights, experts = probs.topk(top_k, dim=-1)  # [N, K], [N, K]
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)  # [N, K]
    return weights.to(x.dtype), experts


def shared_expert(
    x: Tensor, gate_proj: Tensor, up_proj: Tensor, down_proj: Tensor, expert_gate: Tensor
) -> Tensor:
    """sigmoid(x @ expert_gateᵀ) · SwiGLU(x) for x [N, D]; weights [Is, D], [Is, D], [D, Is], [1, D]."""
    h = F.silu(F.linear(x, gate_proj)) * F.linear(x, up_proj)  # [N, Is]
    return torch.sigmoid(F.linear(x, expert_gate)) * F.linear(h, down_proj)  # [N, D]


def _experts_gather(x, weights, experts, gate_up_proj, down_proj) -> Tensor:
    """Σ_k w_k · expert_{idx_k}(x) by gathering each token's K expert matrices."""
    # einsum contracts each token's [K·2I, D] block with its x: one bmm, no copy beyond the gather
    gu = torch.einsum("nkod,nd->nko", gate_up_proj[experts], x)  # [N, K, 2I]
    gate, up = gu.chunk(2, dim=-1)  # [N, K, I] each
    h = F.silu(gate) * up  # [N, K, I]
    y = torch.einsum("nkdi,nki->nkd", down_proj[experts], h)  # [N, K, D]
    return (y * weights.unsqueeze(-1)).sum(dim=1)  # [N, D]


def _experts_dense(x, weights, experts, gate_up_proj, down_proj) -> Tensor:
    """Σ_k w_k · expert_{idx_k}(x) by running every expert on every token."""
    num_experts, two_i, hidden = gate_up_proj.shape
    # all experts' gate/up rows as one [E·2I, D] matrix (a view): one GEMM, no weight copy
    gu = F.linear(x, gate_up_proj.reshape(num_experts * two_i, hidden))  # [N, E·2I]
    gate, up = gu.unflatten(-1, (num_experts, two_i)).chunk(2, dim=-1)  # [N, E, I] each
    dense_w = x.new_zeros(x.shape[0], num_experts).scatter(1, experts, weights)  # [N, E], 0 off top-k
    # Weighting before the down projection leaves one E-way sum. An unselected expert still adds
    # 0 · its output, so an inf in an expert the token was not routed to would turn it NaN.
    h = F.silu(gate) * up * dense_w.unsqueeze(-1)  # [N, E, I]
    y = torch.bmm(h.transpose(0, 1), down_proj.transpose(1, 2))  # [E, N, D]
    return y.sum(dim=0)  # [N, D]


def _experts_sparse(x, weights, experts, gate_up_proj, down_proj) -> Tensor:
    """Σ_k w_k · expert_{idx_k}(x) by running each expert that was picked on the tokens that picked it.

    Eager only (a loop over the experts hit, data-dependent): it reads each picked expert's weights
    once and copies none, so it beats both export forms at every N (bench/bench_moe.py: at the
    Qwen3.5-35B-A3B layer shape, 2 threads, 7 ms vs 54 ms gather at N = 1; 384 ms vs 1.9 s dense at
    N = 128). The kernel hides the loop from torch.export, which sees one qwen35::moe node.
    """
    out = torch.zeros_like(x)  # [N, D]
    for expert in experts.unique().tolist():
        token, slot = (experts == expert).nonzero(as_tuple=True)  # tokens that picked it, and where
        gate, up = F.linear(x[token], gate_up_proj[expert]).chunk(2, dim=-1)  # [n, I] each
        y = F.linear(F.silu(gate) * up, down_proj[expert])  # [n, D]
        out.index_add_(0, token, y * weights[token, slot].unsqueeze(-1))
    return out


def _moe(experts_fn, x, router_weight, gate_up_proj, down_proj, shared, top_k, norm_topk_prob) -> Tensor:
    """Flatten x [..., D] to [N, D], route, run experts_fn and the shared expert, restore x's shape."""
    tokens = x.reshape(-1, x.shape[-1])  # [N, D]
    weights, experts = route(tokens, router_weight, top_k=top_k, norm_topk_prob=norm_topk_prob)
    routed = experts_fn(tokens, weights, experts, gate_up_proj, down_proj)  # [N, D]
    return (routed + shared_expert(tokens, *shared)).reshape(x.shape)  # [..., D]


def moe_gather(
    x: Tensor,
    router_weight: Tensor,
    gate_up_proj: Tensor,
    down_proj: Tensor,
    shared_gate_proj: Tensor,
    shared_up_proj: Tensor,
    shared_down_proj: Tensor,
    shared_expert_gate: Tensor,
    *,
    top_k: int,
    norm_topk_prob: bool = True,
) -> Tensor:
    """MoE by gathering the selected experts: gate_up_proj[idx] is [N, K, 2I, D].

    Work and memory grow with N·K expert matrices, which suits decode (N small)
    and is the export-friendly decomposition for bounded prefill chunks.
    Same arguments and shapes as `moe`.
    """
    shared = (shared_gate_proj, shared_up_proj, shared_down_proj, shared_expert_gate)
    routed = (router_weight, gate_up_proj, down_proj)
    return _moe(_experts_gather, x, *routed, shared, top_k, norm_topk_prob)


def moe_dense(
    x: Tensor,
    router_weight: Tensor,
    gate_up_proj: Tensor,
    down_proj: Tensor,
    shared_gate_proj: Tensor,
    shared_up_proj: Tensor,
    shared_down_proj: Tensor,
    shared_expert_gate: Tensor,
    *,
    top_k: int,
    norm_topk_prob: bool = True,
) -> Tensor:
    """MoE by running all E experts on every token and combining with a dense [N, E] weight matrix.

    Reads every expert once in two large GEMMs and spends E/K times the needed
    FLOPs, which pays off once N·K is comparable to E. Same arguments and
    shapes as `moe`.
    """
    shared = (shared_gate_proj, shared_up_proj, shared_down_proj, shared_expert_gate)
    routed = (router_weight, gate_up_proj, down_proj)
    return _moe(_experts_dense, x, *routed, shared, top_k, norm_topk_prob)


def moe_reference(
    x: Tensor,
    router_weight: Tensor,
    gate_up_proj: Tensor,
    down_proj: Tensor,
    shared_gate_proj: Tensor,
    shared_up_proj: Tensor,
    shared_down_proj: Tensor,
    shared_expert_gate: Tensor,
    *,
    top_k: int,
    norm_topk_prob: bool = True,
) -> Tensor:
    """Token-by-token, expert-by-expert oracle of `moe`, as the math above. Slow; for tests."""
    tokens = x.reshape(-1, x.shape[-1])  # [N, D]
    out = torch.empty_like(tokens)  # [N, D]
    for n, t in enumerate(tokens):  # t [D]
        probs = (router_weight @ t).softmax(dim=-1, dtype=torch.float32)  # [E]
        weights, experts = probs.topk(top_k)  # [K], [K]
        if norm_topk_prob:
            weights = weights / weights.sum()
        y = torch.zeros_like(t)  # [D]
        for w, e in zip(weights.to(x.dtype), experts.tolist()):
            gate, up = (gate_up_proj[e] @ t).chunk(2)  # [I] each
            y = y + w * (down_proj[e] @ (F.silu(gate) * up))  # [D]
        shared = shared_down_proj @ (F.silu(shared_gate_proj @ t) * (shared_up_proj @ t))  # [D]
        out[n] = y + torch.sigmoid(shared_expert_gate @ t) * shared  # [D]
    return out.reshape(x.shape)


# ---------------------------------------------------------------------------------------------------
# Schema and eager kernel
# ---------------------------------------------------------------------------------------------------
# The eager kernel gathers (moe_gather) while the gathered expert matrices are at most
# GATHER_MAX_LOAD of all experts, N·K ≤ E/8, and runs every expert (moe_dense) beyond. Gather copies
# N·K expert matrices and reads them back as matrix-vector products; dense streams all E experts
# once through two GEMMs and does E/K times the needed FLOPs. Measured on a shared 2-core AMD EPYC
# (fp32, one thread, CPU time, min of 5) at D=1024, I=256 with (E, K) = (64, 8), (128, 8), (32, 4),
# the crossover fell between N·K/E = 1/8 (gather faster) and 1/4 (dense faster) for all three;
# e.g. E=128, K=8: N=1 gather 6 ms vs dense 29 ms, N=2 46 vs 52, N=4 109 vs 90. A ratio rather than
# a token count because the crossover moves with E/K. At the Qwen3.5-35B-A3B shape (E=256, K=8) it
# means gather for N ≤ 4. The one real-shape point taken (N=1, 2 threads, wall clock, contended):
# gather 112 ms, dense 236 ms, i.e. ~2x for decode; extrapolating it with dense's per-token FLOPs
# puts the 2-thread crossover nearer N = 2..3, so the boundary is approximate (both forms cost
# within ~30% of each other there). Re-measure with `bench/bench_moe.py --tokens 1 2 4 8`.
GATHER_MAX_LOAD = 1 / 8


def choose_form(num_tokens: int, num_experts: int, top_k: int):
    """The faster form for N tokens: moe_gather while N·K ≤ E·GATHER_MAX_LOAD, else moe_dense."""
    return moe_gather if num_tokens * top_k <= num_experts * GATHER_MAX_LOAD else moe_dense


def _check_inputs(x, router_weight, gate_up_proj, down_proj, shared, top_k: int) -> None:
    """Raise ValueError naming the mismatched shape; the kernels assume these hold."""
    hidden, (num_experts, two_i, _) = x.shape[-1], gate_up_proj.shape
    routed = (router_weight.shape, gate_up_proj.shape, down_proj.shape)
    expected = ((num_experts, hidden), (num_experts, two_i, hidden), (num_experts, hidden, two_i // 2))
    if two_i % 2 or routed != expected:
        raise ValueError(
            f"moe: expected x [..., D], router_weight [E, D], gate_up_proj [E, 2I, D], "
            f"down_proj [E, D, I]; got x {tuple(x.shape)}, {', '.join(str(tuple(t)) for t in routed)}."
        )
    gate, up, down, expert_gate = (t.shape for t in shared)
    if gate != up or gate[1:] != (hidden,) or down != (hidden, gate[0]) or expert_gate != (1, hidden):
        raise ValueError(
            f"moe: expected shared_gate_proj, shared_up_proj [Is, D], shared_down_proj [D, Is], "
            f"shared_expert_gate [1, D] with D = {hidden}; got {tuple(gate)}, {tuple(up)}, {tuple(down)}, "
            f"{tuple(expert_gate)}."
        )
    if not 1 <= top_k <= num_experts:
        raise ValueError(
            f"moe: top_k must be in [1, E = {num_experts}]; got {top_k} (config num_experts_per_tok)."
        )


@torch.library.custom_op("qwen35::moe", mutates_args=())
def moe(
    x: Tensor,
    router_weight: Tensor,
    gate_up_proj: Tensor,
    down_proj: Tensor,
    shared_gate_proj: Tensor,
    shared_up_proj: Tensor,
    shared_down_proj: Tensor,
    shared_expert_gate: Tensor,
    *,
    top_k: int,
    norm_topk_prob: bool = True,
) -> Tensor:
    """Qwen3.5-MoE sparse MoE block: top-k routed SwiGLU experts plus a gated shared expert.

    x [..., D] (e.g. [N, D] or [B, T, D]; leading dims are flattened to N tokens inside),
    router_weight [E, D], gate_up_proj [E, 2I, D] (first I rows gate, next I rows up),
    down_proj [E, D, I], shared_gate_proj [Is, D], shared_up_proj [Is, D], shared_down_proj [D, Is],
    shared_expert_gate [1, D], all of x's dtype. Routing is softmax in float32 over E, top_k
    experts, weights renormalised to sum to 1 when norm_topk_prob, then cast to x.dtype.
    Returns y with x's shape and dtype.

    Eager kernel: the experts hit, one by one (_experts_sparse); lowerings use the export forms.
    """
    shared = (shared_gate_proj, shared_up_proj, shared_down_proj, shared_expert_gate)
    _check_inputs(x, router_weight, gate_up_proj, down_proj, shared, top_k)
    return _moe(_experts_sparse, x, router_weight, gate_up_proj, down_proj, shared, top_k, norm_topk_prob)


# ---------------------------------------------------------------------------------------------------
# Fake kernel
# ---------------------------------------------------------------------------------------------------


@moe.register_fake
def _(
    x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj,
    shared_expert_gate, *, top_k, norm_topk_prob=True,
):
    shared = (shared_gate_proj, shared_up_proj, shared_down_proj, shared_expert_gate)
    _check_inputs(x, router_weight, gate_up_proj, down_proj, shared, top_k)
    return torch.empty_like(x, memory_format=torch.contiguous_format)  # [..., D]


# ---------------------------------------------------------------------------------------------------
# ONNX translation
# ---------------------------------------------------------------------------------------------------
# Profile "ort": moe_to_contrib, the mapping below (the interleave is folded into the initializer at
# export). Profile "portable": moe_portable, an If on choose_form's threshold between moe_gather and
# moe_dense, so the graph picks the form the eager kernel picks.
# The routed part maps onto ONNX Runtime's contrib op com.microsoft::MoE (QMoE, its sibling with
# int4/int8 expert weights and scales, takes the same routing and activation attributes; check its
# CPU kernel's dtypes before relying on it); the shared expert stays outside as plain
# MatMul/Sigmoid/Mul, added after, because neither has a shared-expert input. Conventions, from get_all_operator_schema() and a run of a tiny
# graph on onnxruntime 1.32's CPU provider (agreeing with the routed part to 3e-8 in fp32; pinned by
# tests/ops/test_moe.py::test_onnxruntime_moe_convention):
#   - input x [N, D] or [B, T, D]; router_probs [N, E] takes the router LOGITS (x @ router_weightᵀ):
#     the kernel applies softmax, top-k (attribute k = top_k) and, with normalize_routing_weights=1,
#     the renormalisation, i.e. norm_topk_prob;
#   - activation_type="swiglu" with the defaults activation_alpha=1, activation_beta=0 and no
#     swiglu_limit is silu(gate) · up, as here;
#   - fc1_experts_weights [E, 2I, D] and fc2_experts_weights [E, D, I] are gate_up_proj and
#     down_proj, but the CPU kernel accepts only swiglu_fusion=1, gate and up rows interleaved
#     (g0, u0, g1, u1, ...), and rejects 2 ([gate | up], our layout), so the lowering re-lays the
#     constant: gate_up_proj.unflatten(1, (2, I)).transpose(1, 2).reshape(E, 2I, D). No fc3 on CPU.


def moe_to_contrib(
    x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj,
    shared_expert_gate, top_k: int, norm_topk_prob: bool = True,
):
    """`qwen35::moe` as `com.microsoft::MoE` for the routed experts plus the shared expert in plain ops (ort).

    MoE takes the router logits (it applies softmax, top-k and, with normalize_routing_weights,
    the renormalisation) and, on CPU, only swiglu_fusion=1: gate and up rows interleaved. The
    re-layout of gate_up_proj is written as Reshape/Transpose/Reshape on the weight, which
    `exporter.onnx` folds into the initializer. MoE has no shared-expert input, so the shared
    expert is Gemm/Sigmoid/Mul after it. Gemm with transB reads the [out, in] weights as stored.
    """
    from onnxscript import opset18 as op

    num_experts, two_i, hidden = gate_up_proj.shape
    tokens = op.Reshape(x, op.Constant(value_ints=[-1, hidden]))  # [N, D]
    logits = op.Gemm(tokens, router_weight, transB=1)  # [N, E]
    by_part = op.Reshape(gate_up_proj, op.Constant(value_ints=[num_experts, 2, two_i // 2, hidden]))  # [E, 2, I, D]
    interleaved = op.Reshape(
        op.Transpose(by_part, perm=[0, 2, 1, 3]), op.Constant(value_ints=[num_experts, two_i, hidden])
    )  # [E, 2I, D]: rows g0, u0, g1, u1, ...
    routed = contrib_op("MoE")(
        tokens, logits, interleaved, None, down_proj,
        k=top_k, normalize_routing_weights=int(norm_topk_prob), activation_type="swiglu", swiglu_fusion=1,
    )  # [N, D]
    gate = op.Gemm(tokens, shared_gate_proj, transB=1)  # [N, Is]
    hidden_act = op.Mul(op.Mul(gate, op.Sigmoid(gate)), op.Gemm(tokens, shared_up_proj, transB=1))  # [N, Is]
    shared = op.Mul(
        op.Sigmoid(op.Gemm(tokens, shared_expert_gate, transB=1)), op.Gemm(hidden_act, shared_down_proj, transB=1)
    )  # [N, D]
    return op.Reshape(op.Add(routed, shared), op.Shape(x))  # [..., D]


def moe_portable(
    x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj,
    shared_expert_gate, *, top_k: int, norm_topk_prob: bool = True,
):
    """The portable decomposition, the eager kernel's choice as an If: gather for few tokens, all experts for many.

    Same threshold as `choose_form` (N·K <= E·GATHER_MAX_LOAD), so the graph does what the eager
    op does; N·K and E are integers, so the float bound is floored.
    """
    weights = (
        router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj, shared_expert_gate
    )
    gather = functools.partial(_moe_form, moe_gather, top_k=top_k, norm_topk_prob=norm_topk_prob)
    dense = functools.partial(_moe_form, moe_dense, top_k=top_k, norm_topk_prob=norm_topk_prob)
    most_gathered = int(gate_up_proj.shape[0] * GATHER_MAX_LOAD)  # N·K bound
    if most_gathered < top_k:  # even one token is past the bound: the eager op always runs dense
        return dense(x, *weights)
    few = x.numel() // x.shape[-1] * top_k <= most_gathered
    return torch.cond(few, gather, dense, tuple(w.contiguous() for w in (x, *weights)))


def _moe_form(form, x, *weights, top_k: int, norm_topk_prob: bool):
    return form(x, *weights, top_k=top_k, norm_topk_prob=norm_topk_prob).contiguous()  # [..., D]


# ---------------------------------------------------------------------------------------------------
# ExecuTorch lowering
# ---------------------------------------------------------------------------------------------------
# XNNPACK has no MoE kernel, so both kernel sets replace the node by `moe_gather` before to_edge
# (ep.run_decompositions({torch.ops.qwen35.moe.default: moe_gather})): the linears and batched
# matmuls go to XNNPACK, index/topk/scatter stay on the portable kernels. A graph cannot choose a
# form by N at run time (short of torch.cond), so it is the gather form: right for decode, and its
# N·K gathered expert matrices stay bounded because prefill chunks are. moe_dense has the same
# signature for a program that only sees large N. If prefill through the gather form proves too
# slow, the next step is an ExecuTorch kernel for `qwen35::moe.out` that loops over the experts hit
# (as extension/llm/custom_ops does for sdpa); until then the export report names the node as
# decomposed, not delegated.

_GATHER = ExecuTorchLowering(
    fixed(moe_gather), "gathered top-k experts (linears and bmm delegated; index, topk and scatter on the portable kernels)"
)
LOWERING = OpLowering(
    "moe",
    onnx={
        "ort": OnnxLowering(
            TRANSLATION, fixed(moe_to_contrib), "com.microsoft::MoE (swiglu_fusion 1) + shared expert as Gemm"
        ),
        "portable": OnnxLowering(
            DECOMPOSITION,
            fixed(moe_portable),
            f"standard ops: If(N*K <= E*{GATHER_MAX_LOAD}) gathered top-k experts, else all experts",
        ),
    },
    executorch={"stock": _GATHER, "llm": _GATHER},
)
