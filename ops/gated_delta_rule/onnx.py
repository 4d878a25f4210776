"""The ONNX lowerings of ``qwen35::gated_delta_rule``, one per profile.

- "ort": `gated_delta_rule_to_linear_attention`, a translation onto ONNX Runtime's contrib op
  com.microsoft::LinearAttention (opset 1), update_rule="gated_delta", q_num_heads=Hk,
  kv_num_heads=Hv, scale=scale: q, k, v flattened to packed [B, T, H*D]; decay = g and beta as
  [B, T, Hv]; past_state/present_state (B, H_kv, d_k, d_v) are our [B, Hv, Dk, Dv]; output
  (B, T, Hv*Dv) unflattened to [B, T, Hv, Dv]. H_kv > H_q is its "inverse GQA", with the same
  consecutive grouping (h // (Hv / Hk)): checked by hand against this op on ORT 1.32 CPU, max abs
  5e-8, and pinned by tests/exporter/test_onnx.py. The default-domain LinearAttention (opset 27)
  rejects H_q < H_kv, so it does not fit.
- "portable" (standard ONNX only): `gated_delta_rule_portable`, a decomposition into an If on
  T == 1: one recurrent step, else `single_chunk_gated_delta_rule(max_len=prefill_chunk)`; the
  single-chunk form alone pays its padded max_len inverse for every decoded token (at 0.8B,
  15.8 ms per layer against 1.2 ms for the step).

Not here: the math (`ops.gated_delta_rule.reference`), the exporter (`exporter.onnx`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ops.gated_delta_rule.reference import single_chunk_gated_delta_rule
from ops.onnx_contrib import contrib_op


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
