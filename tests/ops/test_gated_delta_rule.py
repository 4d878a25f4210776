"""qwen35::gated_delta_rule: oracle == chunked == op, state seams, numerics, transformers parity, export."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

from ops.gated_delta_rule import (
    DEFAULT_CHUNK_SIZE,
    chunked_gated_delta_rule,
    delegable_gated_delta_rule,
    gated_delta_rule,
    invert_unit_lower,
    recurrent_gated_delta_rule,
    single_chunk_gated_delta_rule,
)

# fp32 max-abs: inputs and outputs are O(1) and q, k unit-norm, so reassociating the fp32 sums
# (chunked matmuls vs token loop) moves results by ~1e-7 .. 1e-6; 1e-5 keeps a 10x margin.
FP32_ATOL = 1e-5
SMALL_CHUNK = 16


def make_inputs(
    steps, k_heads=2, v_heads=4, k_dim=16, v_dim=8, batch=2, seed=0, g_low=-2.0, g_high=0.0, with_state=True
):
    """Model-like inputs: unit-norm q, k; g in [g_low, g_high] (log-decay); beta in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(batch, steps, k_heads, k_dim, generator=gen), dim=-1)  # [B, T, Hk, Dk]
    k = F.normalize(torch.randn(batch, steps, k_heads, k_dim, generator=gen), dim=-1)  # [B, T, Hk, Dk]
    v = torch.randn(batch, steps, v_heads, v_dim, generator=gen)  # [B, T, Hv, Dv]
    g = g_low + (g_high - g_low) * torch.rand(batch, steps, v_heads, generator=gen)  # [B, T, Hv]
    beta = torch.sigmoid(torch.randn(batch, steps, v_heads, generator=gen))  # [B, T, Hv]
    state = torch.randn(batch, v_heads, k_dim, v_dim, generator=gen) if with_state else None  # [B, Hv, Dk, Dv]
    return (q, k, v, g, beta), dict(scale=k_dim**-0.5, initial_state=state)


def assert_pair_close(actual, expected, atol=FP32_ATOL):
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        torch.testing.assert_close(a, e, atol=atol, rtol=0)


@pytest.mark.parametrize("steps", [1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 2 * SMALL_CHUNK + 3])
@pytest.mark.parametrize("k_heads, v_heads", [(4, 4), (2, 4)])
@pytest.mark.parametrize("with_state", [True, False])
def test_oracle_chunked_and_op_agree(steps, k_heads, v_heads, with_state):
    args, kwargs = make_inputs(steps, k_heads=k_heads, v_heads=v_heads, with_state=with_state)
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    assert_pair_close(chunked_gated_delta_rule(*args, **kwargs, chunk_size=SMALL_CHUNK), expected)
    assert_pair_close(gated_delta_rule(*args, **kwargs), expected)


@pytest.mark.parametrize("steps", [DEFAULT_CHUNK_SIZE + d for d in (-1, 0, 1, DEFAULT_CHUNK_SIZE + 3)])
def test_default_chunk_size_matches_oracle(steps):
    args, kwargs = make_inputs(steps, batch=1)
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    assert_pair_close(chunked_gated_delta_rule(*args, **kwargs), expected)
    assert_pair_close(gated_delta_rule(*args, **kwargs), expected)


def test_split_sequence_equals_whole_sequence():
    args, kwargs = make_inputs(40)
    whole_out, whole_state = gated_delta_rule(*args, **kwargs)
    state, outs = kwargs["initial_state"], []
    for start, stop in [(0, 23), (23, 39), (39, 40)]:  # prefill, prefill, one decode step
        out, state = gated_delta_rule(*(x[:, start:stop] for x in args), scale=kwargs["scale"], initial_state=state)
        outs.append(out)
    assert_pair_close((torch.cat(outs, dim=1), state), (whole_out, whole_state))


@pytest.mark.parametrize("steps", [1, 20])
def test_input_state_is_not_mutated(steps):
    args, kwargs = make_inputs(steps)
    before = kwargs["initial_state"].clone()
    _, final_state = gated_delta_rule(*args, **kwargs)
    assert torch.equal(kwargs["initial_state"], before)
    assert final_state.data_ptr() != kwargs["initial_state"].data_ptr()


@pytest.mark.parametrize(
    "g_low, g_high",
    [(0.0, 0.0), (-1e-6, 0.0), (-50.0, -1.0), (-1e3, -50.0), (-1e3, 0.0)],
    ids=["no-decay", "tiny-decay", "large-decay", "huge-decay", "mixed"],
)
def test_extreme_decays_stay_finite_and_match_oracle(g_low, g_high):
    args, kwargs = make_inputs(2 * SMALL_CHUNK + 3, g_low=g_low, g_high=g_high)
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    chunked = chunked_gated_delta_rule(*args, **kwargs, chunk_size=SMALL_CHUNK)
    for actual in (chunked, gated_delta_rule(*args, **kwargs)):
        assert all(torch.isfinite(x).all() for x in actual)
        assert_pair_close(actual, expected)


def test_correlated_keys_match_oracle():
    # Keys sharing one direction (cosine ~0.9) with beta near 1: the case where a Neumann-series
    # inverse of the chunk system loses all accuracy in fp32 (see test_neumann_product_...).
    args, kwargs = make_inputs(2 * DEFAULT_CHUNK_SIZE + 3, batch=1)
    q, k, v, g, beta = args
    gen = torch.Generator().manual_seed(1)
    k = F.normalize(torch.randn(k.shape[-1], generator=gen) + 0.3 * torch.randn(k.shape, generator=gen), dim=-1)
    args = (q, k, v, g * 0.01, torch.sigmoid(torch.logit(beta) + 3.0))
    assert_pair_close(gated_delta_rule(*args, **kwargs), recurrent_gated_delta_rule(*args, **kwargs))


def test_bf16_inputs_match_fp32_oracle_on_the_same_values():
    args, kwargs = make_inputs(2 * SMALL_CHUNK + 3)
    args = tuple(x.bfloat16() for x in args)
    out, state = gated_delta_rule(*args, **kwargs)
    expected_out, expected_state = recurrent_gated_delta_rule(*(x.float() for x in args), **kwargs)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    # The op upcasts the same bf16 values and runs the oracle's math in fp32; the state stays fp32,
    # so it is held to the fp32 bound. out is rounded once to bf16: half an ulp, <= 2^-8 relative;
    # one ulp (2^-7) leaves room for fp32 noise flipping a rounding at a boundary.
    torch.testing.assert_close(state, expected_state, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(out.float(), expected_out, atol=FP32_ATOL, rtol=2**-7)


@pytest.mark.parametrize("steps", [1, 2 * DEFAULT_CHUNK_SIZE + 3])
@pytest.mark.parametrize("k_heads, v_heads", [(4, 4), (2, 4)])
def test_matches_transformers(steps, k_heads, v_heads):
    args, kwargs = make_inputs(steps, k_heads=k_heads, v_heads=v_heads, batch=1)
    q, k, v, g, beta = args
    # transformers scales q by Dk**-0.5 itself, which is the scale make_inputs passes to the op.
    reference_kwargs = dict(
        initial_state=kwargs["initial_state"], output_final_state=True, use_qk_l2norm_in_kernel=False
    )
    actual = gated_delta_rule(*args, **kwargs)
    assert_pair_close(actual, torch_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, **reference_kwargs))
    assert_pair_close(actual, torch_chunk_gated_delta_rule(q, k, v, g=g, beta=beta, **reference_kwargs))


def chunk_system(size, seed, correlated):
    """A = strictly-lower beta_i D_ij k_i.k_j of one chunk, 4 heads; correlated keys share a direction."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(4, size, 128, generator=gen)  # [H, C, Dk]
    if correlated:
        k = torch.randn(4, 1, 128, generator=gen) + 0.3 * k
    k = F.normalize(k, dim=-1)
    beta = torch.sigmoid(torch.randn(4, size, 1, generator=gen) + (3.0 if correlated else 0.0))  # [H, C, 1]
    g = -0.1 * torch.rand(4, size, generator=gen)  # [H, C]
    decay = (g.cumsum(-1)[:, :, None] - g.cumsum(-1)[:, None, :]).tril(-1).exp()  # [H, C, C]
    return ((beta * k) @ k.transpose(-1, -2) * decay).tril(-1)  # [H, C, C]


@pytest.mark.parametrize("size", [16, 64, 128])
@pytest.mark.parametrize("correlated", [False, True])
def test_unit_lower_inverse_matches_solve_triangular(size, correlated):
    a = chunk_system(size, seed=size, correlated=correlated)
    eye = torch.eye(size)
    expected = torch.linalg.solve_triangular(eye + a, eye.expand_as(a), upper=False, unitriangular=True)
    # Entries of the inverse are <= 1 here and both methods are backward stable: ~1e-7 observed.
    torch.testing.assert_close(invert_unit_lower(a), expected, atol=FP32_ATOL, rtol=0)


def test_neumann_product_loses_accuracy_on_correlated_keys():
    """Why invert_unit_lower is not (I - A)(I + A^2)(I + A^4)...: pins the numbers in the module docstring."""
    size = 64  # the docstring's worst case; the default chunk size may be smaller
    a = chunk_system(size, seed=0, correlated=True)
    eye = torch.eye(size)
    eye_a = (eye + a).double()  # [H, C, C]
    exact = torch.linalg.solve_triangular(eye_a, eye.double().expand_as(a), upper=False, unitriangular=True)
    power, neumann = -a, eye - a
    for _ in range(5):  # factors (I + A^2) .. (I + A^32): 6 in all for C = 64
        power = power @ power
        neumann = neumann + neumann @ power
    assert (neumann.double() - exact).abs().max() > 1.0
    assert (invert_unit_lower(a).double() - exact).abs().max() < FP32_ATOL


@pytest.mark.parametrize("steps, with_state", [(1, True), (5, True), (5, False)])
def test_opcheck(steps, with_state):
    args, kwargs = make_inputs(steps, with_state=with_state)
    torch.library.opcheck(gated_delta_rule, args, kwargs)


def test_export_with_dynamic_time_keeps_one_node():
    class Layer(torch.nn.Module):
        def forward(self, q, k, v, g, beta, state):
            return gated_delta_rule(q, k, v, g, beta, scale=0.25, initial_state=state)

    args, kwargs = make_inputs(8, batch=1)
    steps = torch.export.Dim("T", max=4096)
    dynamic_shapes = ({1: steps},) * 5 + (None,)
    program = torch.export.export(Layer(), (*args, kwargs["initial_state"]), dynamic_shapes=dynamic_shapes)
    target = torch.ops.qwen35.gated_delta_rule.default
    nodes = [n for n in program.graph.nodes if n.op == "call_function" and n.target is target]
    assert len(nodes) == 1
    longer = (*make_inputs(70, batch=1, seed=3)[0], kwargs["initial_state"])  # a T the trace never saw
    assert_pair_close(program.module()(*longer), Layer()(*longer))


# --- the single-chunk export form (one graph for decode and prefill) ---


@pytest.mark.parametrize("steps", [1, 2, 7, 31, 32])
@pytest.mark.parametrize("g_low", [-2.0, -1e3])
def test_single_chunk_matches_oracle(steps, g_low):
    args, kwargs = make_inputs(steps, seed=steps, g_low=g_low)
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    assert_pair_close(single_chunk_gated_delta_rule(*args, **kwargs, max_len=32), expected)


@pytest.mark.parametrize("form", [single_chunk_gated_delta_rule, delegable_gated_delta_rule], ids=["single", "delegable"])
def test_one_chunk_forms_export_with_dynamic_length(form):
    class Rule(torch.nn.Module):
        def forward(self, q, k, v, g, beta, state):
            return form(q, k, v, g, beta, scale=0.25, initial_state=state, max_len=32)

    steps = torch.export.Dim("T", min=1, max=32)
    args, kwargs = make_inputs(9, k_dim=16)
    dims = ({1: steps},) * 5 + (None,)
    program = torch.export.export(Rule(), (*args, kwargs["initial_state"]), dynamic_shapes=dims, strict=False)
    for length in (1, 17, 32):
        args, kwargs = make_inputs(length, k_dim=16, seed=length)
        expected = recurrent_gated_delta_rule(*args, **kwargs)
        assert_pair_close(program.module()(*args, kwargs["initial_state"]), expected)


# --- the delegable form (the ExecuTorch lowering: unpadded T x T, masks from clamps) ---


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 16, 31, 32])
@pytest.mark.parametrize("g_low", [-2.0, -50.0, -1e3])
@pytest.mark.parametrize("k_heads", [2, 4])
def test_delegable_form_matches_oracle(steps, g_low, k_heads):
    args, kwargs = make_inputs(steps, k_heads=k_heads, seed=steps, g_low=g_low)
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    assert_pair_close(delegable_gated_delta_rule(*args, **kwargs, max_len=32), expected)


def test_delegable_form_is_exact_on_correlated_keys():
    # The masked block doubling must keep the accuracy of the block form where a Neumann series fails.
    args, kwargs = make_inputs(64, batch=1)
    q, k, v, g, beta = args
    gen = torch.Generator().manual_seed(1)
    k = F.normalize(torch.randn(k.shape[-1], generator=gen) + 0.3 * torch.randn(k.shape, generator=gen), dim=-1)
    args = (q, k, v, g * 0.01, torch.sigmoid(torch.logit(beta) + 3.0))
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    assert_pair_close(delegable_gated_delta_rule(*args, **kwargs, max_len=64), expected)


def test_delegable_form_needs_enough_rounds():
    # max_len fixes the doubling rounds: a T beyond it leaves blocks uninverted, so the bound is real.
    args, kwargs = make_inputs(20, seed=5)
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    out, _ = delegable_gated_delta_rule(*args, **kwargs, max_len=8)
    assert (out - expected[0]).abs().max() > 1e-3


# --- ExecuTorch's own kernel (kernels "llm": llama::gated_delta_rule from its LLM custom-ops library) ---


@pytest.mark.parametrize("steps", [1, 2, 17])
@pytest.mark.parametrize("k_heads", [2, 4])
@pytest.mark.parametrize("with_state", [True, False])
def test_executorch_llm_kernel_matches_oracle(steps, k_heads, with_state):
    """The op's arguments mapped onto ExecuTorch's kernel: heads repeated, q scaled, decay = exp(g), S in and out."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  defines llama::gated_delta_rule

    from ops.gated_delta_rule import executorch_llm_decomposition

    args, kwargs = make_inputs(steps, k_heads=k_heads, seed=steps, with_state=with_state)
    expected = recurrent_gated_delta_rule(*args, **kwargs)
    assert_pair_close(executorch_llm_decomposition(*args, kwargs["scale"], kwargs["initial_state"]), expected)
