"""The depthwise causal conv1d (+ SiLU) with carried state of Qwen3.5's DeltaNet layers: ``qwen35::causal_conv1d``.

This module holds the math, two pure-PyTorch references (a token-by-token oracle and the conv form),
the custom-op schema with its eager and fake kernels, its ONNX translation and ExecuTorch lowering,
and the table both exporters read (`LOWERING`). It is not the DeltaNet layer: the in-projection before the conv and the q/k/v
split after it live in the model. Qwen3.5's conv has no bias and always uses SiLU, so neither is an
argument.

Shapes: B batch, T time, C channels (the model's conv_dim = 2 * Hk * Dk + Hv * Dv), K taps (4).
x, y ``[B, T, C]`` channels-last as the model produces them; weight ``[C, K]`` (checkpoints store
conv1d.weight as ``[C, 1, K]``; the model squeezes it); state ``[B, C, K - 1]``.

Math
----
The state holds the last K - 1 inputs. With z = concat(state, x) along time (length K - 1 + T)::

    y[t, c]     = silu(sum_j weight[c, j] * z[t + j, c])      for t = 0 .. T - 1
    final_state = z[T : T + K - 1]                            (the last K - 1 steps, also when T < K - 1)

Starting from a zero state this is transformers' causal_conv1d_fn (left zero padding); one step
from a given state is causal_conv1d_update. Math runs in x's dtype (as the model runs the conv in
its own dtype); the state has x's dtype too.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ops.lowering import TRANSLATION, ExecuTorchLowering, OnnxLowering, OpLowering, fixed


def _check_inputs(x, weight, initial_state) -> None:
    """Raise ValueError naming the mismatched shape; the kernels assume these hold."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(
            f"causal_conv1d: expected x [B, T, C] and weight [C, K] (squeeze conv1d.weight [C, 1, K]); "
            f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}."
        )
    expected = (x.shape[0], x.shape[2], weight.shape[1] - 1)
    if initial_state is not None and initial_state.shape != expected:
        raise ValueError(
            f"causal_conv1d: expected initial_state [B, C, K - 1] = {expected} or None; "
            f"got {tuple(initial_state.shape)}."
        )


def _start_state(x: torch.Tensor, weight: torch.Tensor, initial_state: Optional[torch.Tensor]) -> torch.Tensor:
    """The state to start from, in x's dtype: [B, C, K - 1]."""
    if initial_state is None:
        return x.new_zeros(x.shape[0], x.shape[2], weight.shape[1] - 1)  # [B, C, K-1]
    return initial_state.to(x.dtype)  # [B, C, K-1]


# ---------------------------------------------------------------------------------------------------
# Pure-PyTorch references
# ---------------------------------------------------------------------------------------------------


def recurrent_causal_conv1d(x, weight, *, initial_state: Optional[torch.Tensor]):
    """Token-by-token oracle: a shift register of the last K - 1 inputs per channel. Returns (y, state)."""
    weight = weight.to(x.dtype)  # [C, K]
    state = _start_state(x, weight, initial_state)  # [B, C, K-1]
    ys = []
    for t in range(x.shape[1]):
        window = torch.cat([state, x[:, t, :, None]], dim=-1)  # [B, C, K]
        ys.append(F.silu((window * weight).sum(dim=-1)))  # [B, C]
        state = window[:, :, 1:]  # [B, C, K-1]
    return torch.stack(ys, dim=1), state  # [B, T, C], [B, C, K-1]


def conv_causal_conv1d(x, weight, *, initial_state: Optional[torch.Tensor]):
    """Conv form: one depthwise conv1d over concat(state, x). Returns (y [B, T, C], state [B, C, K-1])."""
    steps, channels = x.shape[1], x.shape[2]
    history = torch.cat([_start_state(x, weight, initial_state), x.transpose(1, 2)], dim=-1)  # [B, C, K-1+T]
    y = F.conv1d(history, weight.to(x.dtype).unsqueeze(1), groups=channels)  # [B, C, T]
    return F.silu(y).transpose(1, 2), history[:, :, steps:]  # [B, T, C], [B, C, K-1]


# ---------------------------------------------------------------------------------------------------
# Schema and eager kernel
# ---------------------------------------------------------------------------------------------------
# torch.library.custom_op refuses keyword-only Tensor arguments, so initial_state is positional in
# the schema; callers pass it by keyword: causal_conv1d(x, weight, initial_state=state).


@torch.library.custom_op("qwen35::causal_conv1d", mutates_args=())
def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    initial_state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv1d + SiLU with a carried state; returns (y [B, T, C], state [B, C, K - 1]).

    x [B, T, C]; weight [C, K]; initial_state [B, C, K - 1] or None for zeros (never mutated).
    y and the state have x's dtype. Eager kernel: the conv form, for prefill and decode alike.
    """
    _check_inputs(x, weight, initial_state)
    y, state = conv_causal_conv1d(x, weight, initial_state=initial_state)
    return y.contiguous(), state.contiguous()  # the conv form returns views of channels-first tensors


# ---------------------------------------------------------------------------------------------------
# Fake kernel
# ---------------------------------------------------------------------------------------------------


@causal_conv1d.register_fake
def _(x, weight, initial_state):
    _check_inputs(x, weight, initial_state)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)  # [B, T, C]
    state = x.new_empty(x.shape[0], x.shape[2], weight.shape[1] - 1)  # [B, C, K-1]
    return y, state


# ---------------------------------------------------------------------------------------------------
# ONNX translation
# ---------------------------------------------------------------------------------------------------
# Both profiles: causal_conv1d_shifted, K shifted multiply-adds on [B, T, C] in standard ops. The
# contrib op below was measured against it at the 0.8B shape (C = 6144, ORT 1.32 CPU, 2 threads):
# equal at T = 1 (0.10 vs 0.09 ms) but 2.4x slower at T = 128 (15 ms, 25 ms with channels_last = 1,
# vs 6.3 ms), so the ort profile does not use it. The original plan, still valid if that changes:
# Map the node to ONNX Runtime's contrib op com.microsoft::CausalConvWithState (opset 1),
# activation="silu": input (B, C, L) channels-first = x transposed, weight (C, 1, K) = our weight
# unsqueezed, past_state (B, C, K - 1) = our state; outputs y (B, C, L), transposed back, and
# present_state. With channels_last=1 it takes x [B, T, C] as is, but its state is then
# (B, K - 1, C). Both layouts were checked by hand against this op on ORT 1.32 CPU (max abs 7e-7);
# the default-domain CausalConvWithState (opset 27) has no CPU kernel there.


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
# ExecuTorch lowering
# ---------------------------------------------------------------------------------------------------
# Both kernel sets replace the node by `executorch_decomposition`: cat + depthwise conv1d + SiLU +
# a slice for the new state, aten ops that export with a dynamic T and need no loop. With a dynamic
# T XNNPACK leaves the conv to the portable kernels (K = 4 taps per channel: cheap).


def executorch_decomposition(x, weight, initial_state):
    """The op's schema signature over `conv_causal_conv1d`."""
    return conv_causal_conv1d(x, weight, initial_state=initial_state)


_SHIFTED = "standard ops: shifted multiply-adds"
_CONV = ExecuTorchLowering(fixed(executorch_decomposition), "cat + depthwise conv1d + SiLU (portable kernels)")
LOWERING = OpLowering(
    "causal_conv1d",
    onnx={
        "ort": OnnxLowering(TRANSLATION, fixed(causal_conv1d_shifted),
                            f"{_SHIFTED} (CausalConvWithState measured 2.4x slower at T=128)"),
        "portable": OnnxLowering(TRANSLATION, fixed(causal_conv1d_shifted), _SHIFTED),
    },
    executorch={"stock": _CONV, "llm": _CONV},
)
