"""Attention over a KV cache of fixed capacity that it also writes: ``qwen35::kv_attention``.

The ONNX decoder's full-attention layers (ort profile) keep each KV cache in one buffer of the
caller's capacity, which the caller binds as both the past input and the present output. This op
writes the call's T new keys and values into that buffer and attends over the cached prefix, as
ONNX Runtime's ``com.microsoft::GroupQueryAttention`` does in place: no copy of the cache per call
(a growing cache concatenated past and new, every layer, every token) and no per-layer mask or
score nodes. onnxruntime-genai drives such a model with its KV and recurrent buffers shared
(``past_present_share_buffer``), which it does not do for a growing cache.

It is the attention core only: projections, q/k norms, rotary and the output gate stay in the
model (`exporter.model.Attention`), which calls this op through `FusedKV`. The module ends with the
op's ONNX translation and its lowering table (`LOWERING`).

Shapes: B batch, T new tokens, H query heads, Hkv KV heads (H a multiple), Dh head dim, C the
cache capacity, S = P + T the tokens cached after the call (P before it).
q ``[B, T, H, Dh]``, k and v ``[B, T, Hkv, Dh]`` token-major, as the projections give them (rotary
applied); past_key and past_value ``[B, Hkv, C, Dh]``; attention_mask int64 ``[B, S]``, ones
(onnxruntime-genai's input: sequence b holds ``sum(attention_mask[b])`` tokens after the call).

Math
----
For sequence b with S_b = sum(attention_mask[b]) and P_b = S_b - T: the new entries go to
cache slots P_b .. S_b - 1; query head h reads KV head h // (H / Hkv); new token i (slot P_b + i)
sees slots 0 .. P_b + i::

    out[b, i, h] = softmax_j(q[b, i, h] . key[b, h', j] / sqrt(Dh)) . value[b, h', j]

with the softmax in fp32. Slots S_b .. C - 1 are neither read nor changed.

ONNX Runtime's CPU kernel takes several new tokens after a cache only for batch 1 ("batch_size
must be 1 when sequence_length > 1 and past context is given"); first chunks (P = 0) and single
tokens take any batch. The eager kernel has no such limit.
"""

import torch

from ops.lowering import TRANSLATION, OnnxLowering, OpLowering, fixed
from ops.onnx_contrib import contrib_op


def _check_inputs(q, k, v, past_key, past_value, attention_mask) -> None:
    """Raise ValueError naming the mismatched shape; the kernels assume these hold."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"kv_attention: expected q [B, T, H, Dh] and k, v [B, T, Hkv, Dh]; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    B, T, H, Dh = q.shape
    Hkv = k.shape[2]
    if H % Hkv:
        raise ValueError(f"kv_attention: {H} query heads are not a multiple of {Hkv} KV heads.")
    if past_key.shape != past_value.shape or past_key.dim() != 4 or past_key.shape[:2] != (B, Hkv) or past_key.shape[3] != Dh:
        raise ValueError(
            f"kv_attention: expected past_key and past_value [B, Hkv, C, Dh] = [{B}, {Hkv}, C, {Dh}]; "
            f"got {tuple(past_key.shape)} and {tuple(past_value.shape)}."
        )
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B:
        raise ValueError(f"kv_attention: expected attention_mask [B, S] with B = {B}; got {tuple(attention_mask.shape)}.")


# ---------------------------------------------------------------------------------------------------
# Schema and eager kernel
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("qwen35::kv_attention", mutates_args=())
def kv_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    attention_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write k, v into the caches and attend; returns (out [B, T, H*Dh], present_key, present_value).

    The presents are new tensors here (a custom op may not mutate its inputs); ONNX Runtime's
    kernel writes them in place when the caller binds present and past to one buffer.
    """
    _check_inputs(q, k, v, past_key, past_value, attention_mask)
    B, T, H, Dh = q.shape
    rep, capacity = H // k.shape[2], past_key.shape[2]
    present_key, present_value = past_key.clone(), past_value.clone()
    out = q.new_empty(B, T, H * Dh)
    for b, total in enumerate(attention_mask.sum(dim=1).tolist()):
        if not T <= total <= capacity:
            raise ValueError(
                f"kv_attention: sequence {b} would hold {total} tokens after {T} new ones, outside {T}..{capacity} "
                "(the cache capacity): give attention_mask one column per cached token, and a larger cache."
            )
        past = total - T
        present_key[b, :, past:total] = k[b].transpose(0, 1)  # [Hkv, T, Dh]
        present_value[b, :, past:total] = v[b].transpose(0, 1)
        keys = present_key[b, :, :total].repeat_interleave(rep, dim=0)  # [H, S, Dh]
        values = present_value[b, :, :total].repeat_interleave(rep, dim=0)  # [H, S, Dh]
        scores = q[b].transpose(0, 1).float() @ keys.float().transpose(1, 2) * Dh**-0.5  # [H, T, S]
        visible = torch.arange(total)[None, :] <= (past + torch.arange(T))[:, None]  # [T, S]
        weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).to(values.dtype)
        out[b] = (weights @ values).transpose(0, 1).reshape(T, H * Dh)  # [T, H*Dh]
    return out, present_key, present_value


# ---------------------------------------------------------------------------------------------------
# Fake kernel
# ---------------------------------------------------------------------------------------------------


@kv_attention.register_fake
def _(q, k, v, past_key, past_value, attention_mask):
    _check_inputs(q, k, v, past_key, past_value, attention_mask)
    B, T, H, Dh = q.shape
    return q.new_empty(B, T, H * Dh), torch.empty_like(past_key), torch.empty_like(past_value)


# ---------------------------------------------------------------------------------------------------
# ONNX translation
# ---------------------------------------------------------------------------------------------------
# ort profile: com.microsoft::GroupQueryAttention on q, k, v packed to [B, T, heads*Dh], with
# seqlens_k = sum(attention_mask) - 1 and total_sequence_length = attention_mask's width (int32),
# do_rotary 0 (the model rotates, partially and M-RoPE). The portable profile does not use the op:
# its decoder keeps the growing cache of standard ops.


def kv_attention_to_gqa(q, k, v, past_key, past_value, attention_mask):
    """`qwen35::kv_attention` as `com.microsoft::GroupQueryAttention` on a cache of the caller's capacity.

    GQA takes q, k, v with the heads packed into the last dim, seqlens_k = tokens cached after
    the call - 1 per sequence and total_sequence_length = the attention mask's width, both int32
    (the same few nodes in every layer, which ONNX Runtime's common-subexpression pass merges).
    It writes the new entries at their slots of the present, which is the past's own buffer when
    the caller binds them so (`exporter.onnx.state.ALIAS_SAFE`). Rotary is applied before it.
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
# ExecuTorch lowering
# ---------------------------------------------------------------------------------------------------
# None: the `.pte` keeps its KV caches in mutable buffers written by index_put_ (exporter.executorch)
# and runs the written-out attention, which XNNPACK delegates; it never calls this op.

LOWERING = OpLowering(
    "kv_attention",
    onnx={
        "ort": OnnxLowering(TRANSLATION, fixed(kv_attention_to_gqa),
                            "com.microsoft::GroupQueryAttention, the KV cache a buffer of the caller's capacity"),
    },
)
