"""qwen35::moe: oracle == gather == dense == op, transformers parity, bf16, opcheck, export, ORT convention."""


import pytest
import torch
from transformers import Qwen3_5MoeTextConfig
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import (
    Qwen3_5MoeSparseMoeBlock,
)

from ops.moe import choose_form, moe, moe_dense, moe_gather, moe_reference, route

# fp32 max-abs. Activations and outputs are O(0.1..1) and every reduction is <= 32 terms, so
# reassociating fp32 sums (one GEMM vs per-token matvecs vs einsum) moves results by ~1e-7;
# 1e-5 keeps a 10x+ margin and is still far below what one mis-routed expert changes (~1e-2).
FP32_ATOL = 1e-5
# bf16 vs fp32, relative to max |y|: bf16 keeps 8 significant bits (2^-9 relative per rounding)
# and about ten roundings chain through the block (projections, silu, products, weighting, sums);
# measured 5e-3..8e-3 over five seeds, so 2e-2 leaves a 2.5x margin.
BF16_RTOL_OF_MAX = 2e-2

TINY = dict(hidden=32, num_experts=8, top_k=2, ffn=16, shared_ffn=24)  # D, E, K, I, Is
# `ops.moe` the attribute is the op (ops/__init__.py re-exports it); the module holds the threshold


def make_weights(hidden, num_experts, ffn, shared_ffn, seed=0, **_):
    """Random weights in `moe`'s argument order, std 0.1 (router 0.3: routing not near-uniform)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*size, std=0.1):
        return torch.randn(*size, generator=gen) * std

    return (
        randn(num_experts, hidden, std=0.3),  # router_weight [E, D]
        randn(num_experts, 2 * ffn, hidden),  # gate_up_proj [E, 2I, D]
        randn(num_experts, hidden, ffn),  # down_proj [E, D, I]
        randn(shared_ffn, hidden),  # shared_gate_proj [Is, D]
        randn(shared_ffn, hidden),  # shared_up_proj [Is, D]
        randn(hidden, shared_ffn),  # shared_down_proj [D, Is]
        randn(1, hidden),  # shared_expert_gate [1, D]
    )


def make_x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def transformers_block(weights, hidden, num_experts, top_k, ffn, shared_ffn):
    config = Qwen3_5MoeTextConfig(
        hidden_size=hidden,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=ffn,
        shared_expert_intermediate_size=shared_ffn,
        experts_implementation="eager",
    )
    block = Qwen3_5MoeSparseMoeBlock(config).eval()
    names = [
        "gate.weight",
        "experts.gate_up_proj",
        "experts.down_proj",
        "shared_expert.gate_proj.weight",
        "shared_expert.up_proj.weight",
        "shared_expert.down_proj.weight",
        "shared_expert_gate.weight",
    ]
    block.load_state_dict(dict(zip(names, weights)))  # strict: every parameter is filled
    return block


@pytest.fixture(params=["gather", "dense", "op"])
def form(request):
    """An export form, or the op itself (its eager kernel runs the experts hit, one by one)."""
    return {"gather": moe_gather, "dense": moe_dense, "op": moe}[request.param]


@pytest.mark.parametrize("shape", [(1, 32), (5, 32), (64, 32), (2, 3, 32)])
@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_forms_match_oracle(form, shape, norm_topk_prob):
    weights = make_weights(**TINY)
    x = make_x(*shape)  # [..., D]
    kwargs = dict(top_k=TINY["top_k"], norm_topk_prob=norm_topk_prob)
    y = form(x, *weights, **kwargs)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, moe_reference(x, *weights, **kwargs), atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("tokens", [1, 5, 64])
def test_matches_transformers(form, tokens):
    weights = make_weights(**TINY)
    block = transformers_block(weights, **TINY)
    x = make_x(1, tokens, TINY["hidden"])  # [1, T, D]
    with torch.no_grad():
        expected = block(x)
    y = form(x, *weights, top_k=TINY["top_k"])
    torch.testing.assert_close(y, expected, atol=FP32_ATOL, rtol=0)


def test_routing_weights_sum_to_one_only_when_normalised():
    weights = make_weights(**TINY)
    x = make_x(64, TINY["hidden"])  # [N, D]
    normed, experts = route(x, weights[0], top_k=2, norm_topk_prob=True)  # [N, K]
    raw, same_experts = route(x, weights[0], top_k=2, norm_topk_prob=False)  # [N, K]
    assert torch.equal(experts, same_experts)
    torch.testing.assert_close(normed.sum(-1), torch.ones(64))
    assert (raw.sum(-1) < 1 - 1e-3).all()  # top-2 of 8 never holds all the mass here


def test_bf16_close_to_fp32(form):
    weights = tuple(w.bfloat16() for w in make_weights(**TINY))
    x = make_x(64, TINY["hidden"]).bfloat16()  # [N, D]
    y = form(x, *weights, top_k=2)
    assert y.dtype == torch.bfloat16
    expected = moe_reference(x.float(), *(w.float() for w in weights), top_k=2)  # same inputs, fp32 math
    # bf16 logits can reorder experts whose probabilities are within rounding; those tokens take a
    # different expert and are compared by nothing but finiteness. They must stay rare.
    same = (
        route(x, weights[0], top_k=2)[1].sort(-1).values
        == route(x.float(), weights[0].float(), top_k=2)[1].sort(-1).values
    ).all(-1)  # [N]
    assert same.float().mean() >= 0.9 and torch.isfinite(y).all()
    err = (y.float() - expected)[same].abs().max()
    assert err <= BF16_RTOL_OF_MAX * expected.abs().max()


def test_choose_form_at_real_shape():
    """Qwen3.5-35B-A3B (E=256, K=8): gather for decode-sized N (N·K ≤ E/8), dense for prefill."""
    assert [choose_form(n, 256, 8) for n in (1, 4, 5, 128)] == [moe_gather] * 2 + [moe_dense] * 2


def test_rejects_mismatched_shapes():
    weights = list(make_weights(**TINY))
    with pytest.raises(ValueError, match="down_proj"):
        moe(make_x(3, 32), weights[0], weights[1], weights[2].transpose(1, 2), *weights[3:], top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        moe(make_x(3, 32), *weights, top_k=9)


@pytest.mark.parametrize("shape", [(5, 32), (2, 3, 32)])
def test_opcheck(shape):
    args = (make_x(*shape), *make_weights(**TINY))
    torch.library.opcheck(moe, args, dict(top_k=2, norm_topk_prob=True))


class Block(torch.nn.Module):
    def __init__(self, fn, weights):
        super().__init__()
        self.fn = fn
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", w)

    def forward(self, x):
        return self.fn(x, *self.buffers(), top_k=TINY["top_k"])


def export_dynamic_tokens(fn):
    """Export fn on x [1, T, D] with T dynamic; check it at other T against the oracle."""
    weights = make_weights(**TINY)
    x = make_x(1, 5, TINY["hidden"])  # [1, T, D]
    dims = {"x": {1: torch.export.Dim("tokens", min=1, max=4096)}}
    ep = torch.export.export(Block(fn, weights), (x,), dynamic_shapes=dims)
    for tokens in (1, 3, 17):
        x = make_x(1, tokens, TINY["hidden"], seed=tokens)
        expected = moe_reference(x, *weights, top_k=TINY["top_k"])
        torch.testing.assert_close(ep.module()(x), expected, atol=FP32_ATOL, rtol=0)
    return ep


def op_nodes(ep):
    return [n for n in ep.graph.nodes if n.target is torch.ops.qwen35.moe.default]


def test_export_keeps_one_op_node():
    ep = export_dynamic_tokens(moe)
    assert len(op_nodes(ep)) == 1


@pytest.mark.parametrize("fn", [moe_gather, moe_dense], ids=["gather", "dense"])
def test_forms_export_with_dynamic_tokens(fn):
    ep = export_dynamic_tokens(fn)
    assert not op_nodes(ep)


def test_decomposition_replaces_op_node():
    ep = export_dynamic_tokens(moe).run_decompositions({torch.ops.qwen35.moe.default: moe_gather})
    assert not op_nodes(ep)
    x = make_x(1, 7, TINY["hidden"])
    expected = moe_reference(x, *make_weights(**TINY), top_k=TINY["top_k"])
    torch.testing.assert_close(ep.module()(x), expected, atol=FP32_ATOL, rtol=0)


def test_onnxruntime_moe_convention():
    """The plan in ops/moe.py's ONNX section: com.microsoft::MoE fed logits and interleaved gate/up."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    router, gate_up, down, *shared = make_weights(**TINY)
    num_experts, ffn = TINY["num_experts"], TINY["ffn"]
    interleaved = gate_up.unflatten(1, (2, ffn)).transpose(1, 2).reshape(num_experts, 2 * ffn, -1)
    node = helper.make_node(
        "MoE", ["x", "logits", "fc1", "", "fc2"], ["y"], domain="com.microsoft", k=TINY["top_k"],
        activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=1,
    )
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "logits", "fc1", "fc2")]
    graph = helper.make_graph([node], "moe", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=opsets).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = make_x(5, TINY["hidden"])  # [N, D]
    feeds = {"x": x, "logits": x @ router.T, "fc1": interleaved, "fc2": down}
    (routed,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})  # [N, D]
    zero_shared = [torch.zeros_like(w) for w in shared]  # isolate the routed part
    expected = moe_reference(x, router, gate_up, down, *zero_shared, top_k=TINY["top_k"])
    torch.testing.assert_close(torch.from_numpy(routed), expected, atol=FP32_ATOL, rtol=0)
