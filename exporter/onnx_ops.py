"""How the `qwen35::` custom ops reach ONNX, per profile: contrib-op translations and torch decompositions.

Two mechanisms, both consumed by `exporter.onnx`:

- `translations(profile)`: functions that torch.onnx's dynamo exporter traces in place of an op
  node (its `custom_translation_table`), written with onnxscript ops. The `ort` profile maps
  `gated_delta_rule` to `com.microsoft::LinearAttention`, `moe` to `com.microsoft::MoE` and
  `kv_attention` (its decoder's attention core) to `com.microsoft::GroupQueryAttention`;
  both profiles write `causal_conv1d` as shifted multiply-adds in standard ops, because
  `com.microsoft::CausalConvWithState` measured slower (see `causal_conv1d_shifted`).
- `decompositions(profile, prefill_chunk)`: pure-PyTorch replacements applied to the exported
  program (`ExportedProgram.run_decompositions`) before conversion, so the op becomes standard
  ONNX: the `portable` profile's `gated_delta_rule` and `moe`, each an If over two forms.

The contrib ops are built from ONNX Runtime's own schema (`contrib_op`), so a node that does
not match the installed runtime's signature fails at export, not at load time on a phone.

Not here: the op math (`ops/`), the decoder's ONNX signature and the file writing (`exporter.onnx`).
Shapes as in `ops/`: B batch, T time, Hk/Hv key/value heads, Dk/Dv head dims, C channels, K taps,
N tokens, D hidden, E experts, I expert FFN size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ops.gated_delta_rule import single_chunk_gated_delta_rule
from ops.moe import GATHER_MAX_LOAD, moe_dense, moe_gather

CONTRIB_DOMAIN = "com.microsoft"


@functools.cache
def ort_schema(name: str, domain: str = CONTRIB_DOMAIN, outputs: int | None = None):
    """`onnx.defs.OpSchema` for the op `domain::name` as the installed ONNX Runtime registers it.

    `outputs` keeps only the first outputs (a translation's node then declares no optional output it
    does not use). Raises RuntimeError naming the fix when the runtime lacks the op.
    """
    import onnx
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_capi

    found = [s for s in ort_capi.get_all_operator_schema() if s.domain == domain and s.name == name]
    if not found:
        raise RuntimeError(
            f"onnxruntime {ort_capi.get_version_string()} has no {domain or 'ai.onnx'}::{name}; "
            "install onnxruntime >= 1.32 for the ort profile, or export with the portable profile"
        )
    src = max(found, key=lambda s: s.since_version)
    schema_cls = onnx.defs.OpSchema

    def param(p):
        option = schema_cls.FormalParameterOption[p.option.name]
        return schema_cls.FormalParameter(p.name, p.typeStr, param_option=option, is_homogeneous=p.isHomogeneous)

    return schema_cls(
        name,
        domain,
        src.since_version,
        inputs=[param(p) for p in src.inputs],
        outputs=[param(p) for p in src.outputs[:outputs]],
        type_constraints=[(tc.type_param_str, list(tc.allowed_type_strs), "") for tc in src.type_constraints],
        attributes=[
            schema_cls.Attribute(n, schema_cls.AttrType[a.type.name], required=a.required) for n, a in src.attributes.items()
        ],
    )


@functools.cache
def contrib_op(name: str, outputs: int | None = None):
    """An onnxscript op for `com.microsoft::<name>` whose schema is the one the installed ONNX Runtime registers.

    onnx itself does not know the contrib ops, and registering them in onnx's global schema registry
    breaks `onnx.reference` (names clash with the default-domain LinearAttention), so the schema is
    attached to this one op object instead. `outputs`: as in `ort_schema`.
    """
    import onnxscript

    schema = ort_schema(name, outputs=outputs)
    return onnxscript.values.Op(onnxscript.values.Opset(CONTRIB_DOMAIN, schema.since_version), name, schema)


# ---------------------------------------------------------------------------------------------------
# gated_delta_rule
# ---------------------------------------------------------------------------------------------------


def gated_delta_rule_to_linear_attention(q, k, v, g, beta, scale: float, initial_state):
    """`qwen35::gated_delta_rule` as `com.microsoft::LinearAttention` (update_rule gated_delta).

    LinearAttention takes heads packed into the last dim, decay = our log-decay g and beta as
    [B, T, Hv], and the state as our [B, Hv, Dk, Dv]. q_num_heads = Hk < kv_num_heads = Hv is its
    "inverse GQA", grouping value head h with q/k head h // (Hv / Hk) as the op does. All inputs
    are fp32 here (the exporter only writes fp32 models), so no casts are needed.
    """
    from onnxscript import opset18 as op

    packed = op.Constant(value_ints=[0, 0, -1])  # [B, T, H, D] -> [B, T, H*D]
    out, state = contrib_op("LinearAttention")(
        op.Reshape(q, packed),  # [B, T, Hk*Dk]
        op.Reshape(k, packed),  # [B, T, Hk*Dk]
        op.Reshape(v, packed),  # [B, T, Hv*Dv]
        initial_state,  # [B, Hv, Dk, Dv]
        g,  # [B, T, Hv]
        beta,  # [B, T, Hv]
        q_num_heads=q.shape[2],
        kv_num_heads=v.shape[2],
        scale=scale,
        update_rule="gated_delta",
    )
    heads = op.Constant(value_ints=[0, 0, v.shape[2], v.shape[3]])  # constant: no Shape of v kept alive
    return op.Reshape(out, heads), state  # [B, T, Hv, Dv], [B, Hv, Dk, Dv]


def _delta_rule_step(q, k, v, g, beta, state, *, scale: float):
    """The recurrence for step 0 only, as `[B, T, ...]` outputs: the If branch taken when T == 1.

    Written from the token-by-token oracle's loop body for t = 0; the output row is expanded to
    T rows so both branches of the `If` have one shape (T is 1 whenever this branch runs).
    """
    groups = v.shape[2] // q.shape[2]
    q, k = (x[:, 0].float().repeat_interleave(groups, dim=1) for x in (q, k))  # [B, Hv, Dk]
    v_t, g_t, beta_t = v[:, 0].float(), g[:, 0].float(), beta[:, 0].float()  # [B, Hv, Dv], [B, Hv], [B, Hv]
    state = state.float() * g_t.exp()[..., None, None]  # [B, Hv, Dk, Dv]
    delta = beta_t[..., None] * (v_t - (k.unsqueeze(-2) @ state).squeeze(-2))  # [B, Hv, Dv]
    state = state + k.unsqueeze(-1) * delta.unsqueeze(-2)  # [B, Hv, Dk, Dv]: S + k delta^T
    out = ((q * scale).unsqueeze(-2) @ state).squeeze(-2)  # [B, Hv, Dv]
    return out.unsqueeze(1).expand(v.shape).to(v.dtype).contiguous(), state  # [B, T, Hv, Dv], [B, Hv, Dk, Dv]


def _delta_rule_chunk(q, k, v, g, beta, state, *, scale: float, max_len: int):
    out, state = single_chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=state, max_len=max_len)
    return out.contiguous(), state  # [B, T, Hv, Dv], [B, Hv, Dk, Dv]


@functools.cache
def _delta_rule_branches(scale: float, max_len: int) -> tuple[Callable, Callable]:
    """The two If branches, one object per (scale, max_len), so that dynamo compiles them once, not once per layer."""
    return (
        functools.partial(_delta_rule_step, scale=scale),
        functools.partial(_delta_rule_chunk, scale=scale, max_len=max_len),
    )


def gated_delta_rule_portable(max_len: int) -> Callable:
    """The portable decomposition: If(T == 1) one recurrent step, else the single-chunk matmul form.

    The single-chunk form alone serves any T <= max_len, but pays a max_len x max_len triangular
    inverse whatever T is: at the 0.8B shape (16 heads of 128, max_len 128) 15.8 ms per layer for
    one token, against 1.2 ms for the step (ORT CPU, 2 threads), i.e. ~0.26 s per decoded token
    over 18 layers. So decode gets its own branch.
    """

    def decomposition(q, k, v, g, beta, scale, initial_state):
        if initial_state is None:
            initial_state = v.new_zeros(v.shape[0], v.shape[2], k.shape[3], v.shape[3], dtype=torch.float32)
        step, chunk = _delta_rule_branches(scale, max_len)
        # Contiguous operands: cond re-traces its branches with fresh fake tensors, and strided views
        # of the model's activations make it lose the batch symbol's range (torch 2.13).
        operands = tuple(x.contiguous() for x in (q, k, v, g, beta, initial_state))
        return torch.cond(q.shape[1] == 1, step, chunk, operands)

    return decomposition


# ---------------------------------------------------------------------------------------------------
# causal_conv1d
# ---------------------------------------------------------------------------------------------------


def causal_conv1d_shifted(x, weight, initial_state):
    """`qwen35::causal_conv1d` as K shifted multiply-adds over [B, T, C], in standard ops (both profiles).

    Channels-last like the model, so the activations are never transposed. Measured at the 0.8B
    shape (C = 6144, K = 4, ORT CPU, 2 threads): T = 1 0.09 ms, T = 128 6.3 ms, against 0.10 ms and
    15 ms for com.microsoft::CausalConvWithState (25 ms with channels_last = 1) and 2.0 ms and
    5.8 ms for a depthwise Conv; the contrib op would add ~0.15 s to a 128-token prefill at 0.8B.
    The exporter always passes the state, so initial_state is never None here.
    """
    from onnxscript import opset18 as op

    taps = weight.shape[1]
    history = op.Concat(op.Transpose(initial_state, perm=[0, 2, 1]), x, axis=1)  # [B, K-1+T, C]
    taps_first = op.Transpose(weight, perm=[1, 0])  # [K, C]; this and the Gathers fold into K initializers
    y = None
    for j in range(taps):
        # history[:, j : j + T] ends K-1-j steps before history's end: constant bounds, so no shape
        # arithmetic runs per layer and call (a Shape and K Adds a layer, 90 nodes a decode step at 0.8B).
        end = -(taps - 1 - j) if j < taps - 1 else 2**62
        window = op.Slice(history, op.Constant(value_ints=[j]), op.Constant(value_ints=[end]),
                          op.Constant(value_ints=[1]))  # [B, T, C]
        term = op.Mul(window, op.Gather(taps_first, op.Constant(value_int=j), axis=0))  # [B, T, C]
        y = term if y is None else op.Add(y, term)
    last = op.Slice(history, op.Constant(value_ints=[1 - taps]), op.Constant(value_ints=[2**62]), op.Constant(value_ints=[1]))
    state = op.Transpose(last, perm=[0, 2, 1])  # the last K-1 steps: [B, C, K-1]
    return op.Mul(y, op.Sigmoid(y)), state  # silu: [B, T, C], [B, C, K-1]


# ---------------------------------------------------------------------------------------------------
# kv_attention
# ---------------------------------------------------------------------------------------------------


def kv_attention_to_gqa(q, k, v, past_key, past_value, attention_mask):
    """`qwen35::kv_attention` as `com.microsoft::GroupQueryAttention` on a cache of the caller's capacity.

    GQA takes q, k, v with the heads packed into the last dim, seqlens_k = tokens cached after
    the call - 1 per sequence and total_sequence_length = the attention mask's width, both int32
    (the same few nodes in every layer, which ONNX Runtime's common-subexpression pass merges).
    It writes the new entries at their slots of the present, which is the past's own buffer when
    the caller binds them so (`exporter.onnx_state.ALIAS_SAFE`). Rotary is applied before it.
    """
    from onnxscript import opset18 as op

    int32 = 6  # onnx.TensorProto.INT32
    packed = op.Constant(value_ints=[0, 0, -1])  # [B, T, heads, Dh] -> [B, T, heads*Dh]
    cached = op.ReduceSum(attention_mask, op.Constant(value_ints=[1]), keepdims=0)  # [B]
    seqlens_k = op.Cast(op.Sub(cached, op.Constant(value_int=1)), to=int32)  # [B]
    total = op.Cast(op.Gather(op.Shape(attention_mask), op.Constant(value_int=1), axis=0), to=int32)  # scalar
    return contrib_op("GroupQueryAttention", outputs=3)(  # not output_qk: GQA refuses it without qk_output
        op.Reshape(q, packed), op.Reshape(k, packed), op.Reshape(v, packed), past_key, past_value, seqlens_k, total,
        num_heads=q.shape[2], kv_num_heads=k.shape[2], scale=float(q.shape[3]) ** -0.5,
    )  # out [B, T, H*Dh], present_key, present_value [B, Hkv, C, Dh]


# ---------------------------------------------------------------------------------------------------
# moe
# ---------------------------------------------------------------------------------------------------


def moe_to_contrib(
    x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj,
    shared_expert_gate, top_k: int, norm_topk_prob: bool = True,
):
    """`qwen35::moe` as `com.microsoft::MoE` for the routed experts plus the shared expert in plain ops.

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
    """The eager kernel's choice as an If: gather the top-k experts for few tokens, run all experts for many.

    Same threshold as `ops.moe.choose_form` (N·K <= E·GATHER_MAX_LOAD), so the graph does what
    the eager op does; N·K and E are integers, so the float bound is floored.
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
# Per profile
# ---------------------------------------------------------------------------------------------------


def translations(profile: str) -> dict[torch._ops.OpOverload, Callable]:
    """The `custom_translation_table` of a profile: op -> onnxscript function."""
    table = {torch.ops.qwen35.causal_conv1d.default: causal_conv1d_shifted}
    if profile == "ort":
        table[torch.ops.qwen35.gated_delta_rule.default] = gated_delta_rule_to_linear_attention
        table[torch.ops.qwen35.moe.default] = moe_to_contrib
        table[torch.ops.qwen35.kv_attention.default] = kv_attention_to_gqa
    return table


def decompositions(profile: str, prefill_chunk: int) -> dict[torch._ops.OpOverload, Callable]:
    """The torch decompositions of a profile, applied before conversion: op -> PyTorch function."""
    if profile == "ort":
        return {}
    return {
        torch.ops.qwen35.gated_delta_rule.default: gated_delta_rule_portable(prefill_chunk),
        torch.ops.qwen35.moe.default: moe_portable,
    }


def lowering_report(profile: str, prefill_chunk: int) -> dict[str, str]:
    """What each op became, for the artifact's details (a lowering reports, it does not assert)."""
    if profile == "portable":
        return {
            "gated_delta_rule": (
                f"standard ops: If(T == 1) one recurrent step, else single-chunk matmuls (max_len {prefill_chunk})"
            ),
            "causal_conv1d": "standard ops: shifted multiply-adds",
            "moe": f"standard ops: If(N*K <= E*{GATHER_MAX_LOAD}) gathered top-k experts, else all experts",
        }
    return {
        "gated_delta_rule": "com.microsoft::LinearAttention (update_rule gated_delta)",
        "causal_conv1d": "standard ops: shifted multiply-adds (CausalConvWithState measured 2.4x slower at T=128)",
        "kv_attention": "com.microsoft::GroupQueryAttention, the KV cache a buffer of the caller's capacity",
        "moe": "com.microsoft::MoE (swiglu_fusion 1) + shared expert as Gemm",
    }
