"""qwen35::causal_conv1d: oracle == op, state seams, transformers parity, opcheck, export."""

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    causal_conv1d_fn,
    causal_conv1d_update,
)

from ops.causal_conv1d import causal_conv1d, conv_causal_conv1d, recurrent_causal_conv1d

# fp32 max-abs: each output sums K = 4 products of O(1) values (|sum| up to ~10), so a different
# summation order moves it by ~1e-6 (observed <= 1e-6); 1e-5 keeps a 10x margin.
FP32_ATOL = 1e-5
TAPS = 4


def make_inputs(steps, channels=12, batch=2, seed=0, with_state=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, channels, generator=gen)  # [B, T, C]
    weight = torch.randn(channels, TAPS, generator=gen)  # [C, K]
    state = torch.randn(batch, channels, TAPS - 1, generator=gen) if with_state else None  # [B, C, K-1]
    return (x, weight), dict(initial_state=state)


def assert_pair_close(actual, expected, atol=FP32_ATOL):
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        torch.testing.assert_close(a, e, atol=atol, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, TAPS - 1, TAPS, 17])
@pytest.mark.parametrize("with_state", [True, False])
def test_oracle_and_op_agree(steps, with_state):
    args, kwargs = make_inputs(steps, with_state=with_state)
    expected = recurrent_causal_conv1d(*args, **kwargs)
    assert_pair_close(conv_causal_conv1d(*args, **kwargs), expected)
    assert_pair_close(causal_conv1d(*args, **kwargs), expected)


def test_short_input_keeps_older_state():
    # T < K - 1: the new state is the tail of the old one followed by the new inputs, exactly.
    (x, weight), kwargs = make_inputs(1)
    _, state = causal_conv1d(x, weight, **kwargs)
    expected = torch.cat([kwargs["initial_state"][:, :, 1:], x.transpose(1, 2)], dim=-1)  # [B, C, K-1]
    assert torch.equal(state, expected)


def test_split_sequence_equals_whole_sequence():
    (x, weight), kwargs = make_inputs(17)
    whole = causal_conv1d(x, weight, **kwargs)
    state, ys = kwargs["initial_state"], []
    for start, stop in [(0, 2), (2, 11), (11, 16), (16, 17)]:  # short prefill, prefill, prefill, decode
        y, state = causal_conv1d(x[:, start:stop], weight, initial_state=state)
        ys.append(y)
    assert_pair_close((torch.cat(ys, dim=1), state), whole)


@pytest.mark.parametrize("steps", [1, 9])
def test_input_state_is_not_mutated(steps):
    args, kwargs = make_inputs(steps)
    before = kwargs["initial_state"].clone()
    _, state = causal_conv1d(*args, **kwargs)
    assert torch.equal(kwargs["initial_state"], before)
    assert state.data_ptr() != kwargs["initial_state"].data_ptr()


@pytest.mark.parametrize("steps", [1, TAPS - 1, 17])
def test_matches_transformers(steps):
    (x, weight), kwargs = make_inputs(steps)
    channels_first = x.transpose(1, 2)  # [B, C, T]: transformers' layout
    # Prefill from a zero state: causal_conv1d_fn pads with K - 1 zeros on the left.
    expected = causal_conv1d_fn(channels_first, weight, activation="silu").transpose(1, 2)
    torch.testing.assert_close(causal_conv1d(x, weight, initial_state=None)[0], expected, atol=FP32_ATOL, rtol=0)
    # From a given state: causal_conv1d_update updates its (cloned) state argument in place.
    reference_state = kwargs["initial_state"].clone()
    expected = causal_conv1d_update(channels_first, reference_state, weight, activation="silu").transpose(1, 2)
    assert_pair_close(causal_conv1d(x, weight, **kwargs), (expected, reference_state))


def test_bf16_keeps_dtype_and_matches_fp32_oracle_on_the_same_values():
    (x, weight), kwargs = make_inputs(9)
    x, weight, state = x.bfloat16(), weight.bfloat16(), kwargs["initial_state"].bfloat16()
    y, new_state = causal_conv1d(x, weight, initial_state=state)
    expected_y, expected_state = recurrent_causal_conv1d(x.float(), weight.float(), initial_state=state.float())
    assert y.dtype == new_state.dtype == torch.bfloat16
    assert torch.equal(new_state.float(), expected_state)  # the state is a copy of inputs: exact
    # bf16 rounds twice, the conv output then the SiLU output, half an ulp (2^-8 relative) each:
    # rtol 2^-7 covers both relative to |y|; the first rounding, passed through SiLU (slope <= 1.1),
    # is relative to the pre-activation, not to |y| (small near zero): atol 2^-8 of the largest output.
    atol = 2**-8 * expected_y.abs().max().item()
    torch.testing.assert_close(y.float(), expected_y, atol=atol, rtol=2**-7)


def test_decomposition_exports_with_dynamic_time():
    class Decomposed(torch.nn.Module):
        def forward(self, x, weight, state):
            return conv_causal_conv1d(x, weight, initial_state=state)

    (x, weight), kwargs = make_inputs(8, batch=1)
    dynamic_shapes = ({1: torch.export.Dim("T", max=4096)}, None, None)
    program = torch.export.export(Decomposed(), (x, weight, kwargs["initial_state"]), dynamic_shapes=dynamic_shapes)
    for steps in (1, TAPS - 1, 30):
        (step_x, _), _ = make_inputs(steps, batch=1, seed=steps)
        expected = recurrent_causal_conv1d(step_x, weight, initial_state=kwargs["initial_state"])
        assert_pair_close(program.module()(step_x, weight, kwargs["initial_state"]), expected)


@pytest.mark.parametrize("steps, with_state", [(1, True), (6, True), (6, False)])
def test_opcheck(steps, with_state):
    args, kwargs = make_inputs(steps, with_state=with_state)
    torch.library.opcheck(causal_conv1d, args, kwargs)


def test_export_with_dynamic_time_keeps_one_node():
    class Conv(torch.nn.Module):
        def forward(self, x, weight, state):
            return causal_conv1d(x, weight, initial_state=state)

    (x, weight), kwargs = make_inputs(8, batch=1)
    dynamic_shapes = ({1: torch.export.Dim("T", max=4096)}, None, None)
    program = torch.export.export(Conv(), (x, weight, kwargs["initial_state"]), dynamic_shapes=dynamic_shapes)
    target = torch.ops.qwen35.causal_conv1d.default
    nodes = [n for n in program.graph.nodes if n.op == "call_function" and n.target is target]
    assert len(nodes) == 1
    longer = (make_inputs(30, batch=1, seed=3)[0][0], weight, kwargs["initial_state"])  # a T the trace never saw
    assert_pair_close(program.module()(*longer), Conv()(*longer))
