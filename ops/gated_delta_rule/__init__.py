"""The gated delta rule of Qwen3.5's linear-attention (Gated DeltaNet) layers: ``qwen35::gated_delta_rule``.

This package is the op: its schema, eager and fake kernels and the table both exporters read
(`LOWERING`) are here; beside them sit the math with its pure-PyTorch forms (`reference`: the
token-by-token oracle, the chunked form, the single-chunk form), the ExecuTorch lowerings
(`executorch`) and the ONNX lowerings (`onnx`). It is not the DeltaNet layer: projections, the
causal conv, the L2 normalisation of q and k, the decay/beta parametrisation and the gated output
norm live in the model.

Shapes: B batch, T time, Hk query/key heads, Hv value heads (a multiple of Hk), Dk key dim, Dv value dim.
q, k ``[B, T, Hk, Dk]``; v ``[B, T, Hv, Dv]``; g, beta ``[B, T, Hv]``; state ``[B, Hv, Dk, Dv]``.
"""

import functools
from typing import Optional

import torch

from ops.gated_delta_rule.executorch import (
    delegable_gated_delta_rule,
    executorch_decomposition,
    executorch_llm_decomposition,
)
from ops.gated_delta_rule.onnx import (
    gated_delta_rule_portable,
    gated_delta_rule_to_linear_attention,
)
from ops.gated_delta_rule.reference import (
    DEFAULT_CHUNK_SIZE,
    chunked_gated_delta_rule,
    invert_unit_lower,
    recurrent_gated_delta_rule,
    segment_sums,
    single_chunk_gated_delta_rule,
    solve_unit_lower_padded,
)
from ops.lowering import DECOMPOSITION, TRANSLATION, ExecuTorchLowering, OnnxLowering, OpLowering, fixed

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LOWERING",
    "chunked_gated_delta_rule",
    "delegable_gated_delta_rule",
    "executorch_decomposition",
    "executorch_llm_decomposition",
    "gated_delta_rule",
    "invert_unit_lower",
    "recurrent_gated_delta_rule",
    "segment_sums",
    "single_chunk_gated_delta_rule",
    "solve_unit_lower_padded",
]


def _check_inputs(q, k, v, g, beta, initial_state) -> None:
    """Raise ValueError naming the mismatched shape; the kernels assume these hold."""
    batch, steps, k_heads, k_dim = k.shape
    v_heads, v_dim = v.shape[-2:]
    if q.shape != k.shape or v.shape[:2] != (batch, steps):
        raise ValueError(
            f"gated_delta_rule: expected q, k [B, T, Hk, Dk] and v [B, T, Hv, Dv] with equal B, T; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    if v_heads % k_heads != 0:
        raise ValueError(
            f"gated_delta_rule: value heads ({v_heads}) must be a multiple of key heads ({k_heads}); "
            f"check linear_num_value_heads / linear_num_key_heads in the config."
        )
    if g.shape != (batch, steps, v_heads) or beta.shape != g.shape:
        raise ValueError(
            f"gated_delta_rule: expected g and beta of shape [B, T, Hv] = {(batch, steps, v_heads)}; "
            f"got g {tuple(g.shape)}, beta {tuple(beta.shape)}."
        )
    if initial_state is not None and initial_state.shape != (batch, v_heads, k_dim, v_dim):
        raise ValueError(
            f"gated_delta_rule: expected initial_state [B, Hv, Dk, Dv] = {(batch, v_heads, k_dim, v_dim)} "
            f"or None; got {tuple(initial_state.shape)}."
        )


# ---------------------------------------------------------------------------------------------------
# Schema and eager kernel
# ---------------------------------------------------------------------------------------------------
# torch.library.custom_op refuses keyword-only Tensor arguments, so scale and initial_state are
# positional in the schema; they keep the (q, k, v, g, beta, scale, initial_state) order and names,
# and callers pass them by keyword: gated_delta_rule(q, k, v, g, beta, scale=s, initial_state=S).


@torch.library.custom_op("qwen35::gated_delta_rule", mutates_args=())
def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated delta rule over a sequence with a carried state; returns (out [B, T, Hv, Dv], state [B, Hv, Dk, Dv]).

    q, k [B, T, Hk, Dk] already L2-normalised; v [B, T, Hv, Dv]; g (log-decay, <= 0) and beta [B, T, Hv];
    initial_state fp32 [B, Hv, Dk, Dv] or None for zeros (never mutated). out has v's dtype, the state is fp32.

    Eager kernel: the chunked form for prefill (T > 1), one recurrent step for decode (T == 1).
    """
    _check_inputs(q, k, v, g, beta, initial_state)
    form = recurrent_gated_delta_rule if q.shape[1] == 1 else chunked_gated_delta_rule
    out, state = form(q, k, v, g, beta, scale=scale, initial_state=initial_state)
    return out.contiguous(), state  # the references return out as a transposed view


# ---------------------------------------------------------------------------------------------------
# Fake kernel
# ---------------------------------------------------------------------------------------------------


@gated_delta_rule.register_fake
def _(q, k, v, g, beta, scale, initial_state):
    _check_inputs(q, k, v, g, beta, initial_state)
    batch, _, v_heads, v_dim = v.shape
    out = torch.empty_like(v, memory_format=torch.contiguous_format)  # [B, T, Hv, Dv]
    state = v.new_empty(batch, v_heads, k.shape[-1], v_dim, dtype=torch.float32)  # [B, Hv, Dk, Dv]
    return out, state


# ---------------------------------------------------------------------------------------------------
# Lowerings
# ---------------------------------------------------------------------------------------------------
# ONNX (`onnx`): a contrib-op translation for ONNX Runtime, an If of two standard-op forms for
# portable runtimes. ExecuTorch (`executorch`): the delegable one-chunk form sized by the prefill
# chunk for the stock kernels, ExecuTorch's own recurrent kernel for the "llm" kernel set.


def _delegable(prefill_chunk: int):
    return functools.partial(executorch_decomposition, max_len=prefill_chunk)


LOWERING = OpLowering(
    "gated_delta_rule",
    onnx={
        "ort": OnnxLowering(TRANSLATION, fixed(gated_delta_rule_to_linear_attention),
                            "com.microsoft::LinearAttention (update_rule gated_delta)"),
        "portable": OnnxLowering(DECOMPOSITION, gated_delta_rule_portable,
                                 "standard ops: If(T == 1) one recurrent step, else single-chunk matmuls "
                                 "(max_len {prefill_chunk})"),
    },
    executorch={
        "stock": ExecuTorchLowering(_delegable, "delegable matmuls: the call as one chunk of dynamic T "
                                                "(doubling rounds for max_len {prefill_chunk})"),
        "llm": ExecuTorchLowering(fixed(executorch_llm_decomposition),
                                  "llama::gated_delta_rule (ExecuTorch's LLM custom-ops kernel)", needs_llm_ops=True),
    },
)
