"""Quantizing the reference model for ExecuTorch/XNNPACK, in place, before `export_executorch` traces it.

- linears: the weight torchao's `Int8DynamicActivationIntxWeightConfig` makes (int4 per group for
  8da4w, int8 per channel for 8w), the pattern ExecuTorch's XNNPACK partitioner lowers to its qd8
  kernels, built on `exporter.quantize.qparams`' integers (`_dynamic_int8_weight`);
- the LM head: the same at the embedding's precision (int8 per row, or int4 grouped);
- the embedding lookup: `QuantizedEmbedding`, ExecuTorch's quantized-kernels ops
  (`quantized_decomposed::embedding_byte` / `embedding_4bit`), on the head's integers and scales.
  At int8 the lookup's rows are byte for byte the head's weight, so the external data file, which
  de-duplicates identical buffers, stores the matrix once. At int4 the two packings differ
  (XNNPACK puts the even column in the low nibble, `embedding_4bit` in the high one): two int4
  copies, as many bytes as one int8 copy; `tied_embedding_report` says which;
- fp16: every weight but the ones `exporter.quantize.HIGH_PRECISION` keeps in fp32.

The program then needs ExecuTorch's quantized kernels library beside the portable kernels and
XNNPACK (ExecuTorch's LLM runners link it; `runtime.backends` loads it into the Python runtime).

Not here: the scheme policy (`exporter.quantize`), the lowering (`exporter.executorch`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from exporter.quantize import (
    QuantRecipe, check_format, check_group_size, check_shapes, quantized_linears, qparams,
)

# fp16: parameters kept in fp32 (the model computes with them in fp32; see exporter.quantize.HIGH_PRECISION).
FP32_UNDER_FP16 = ("A_log", "dt_bias", "norm.weight", "layernorm.weight", "q_norm.weight", "k_norm.weight")


class QuantizedEmbedding(nn.Module):
    """Row lookup in a symmetric int8 (or packed int4) table with per-row or per-group scales.

    `weight` is not the table: it is an empty tensor in the output dtype, because callers read
    `embed_tokens.weight.dtype` / `.device` for the dtype of the model's state.
    """

    def __init__(self, qdata: Tensor, scales: Tensor, bits: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.bits = bits
        if bits == 4:  # embedding_4bit: even column in the high nibble, offset 8
            codes = (qdata.to(torch.int16) + 8).to(torch.uint8)
            qdata = codes[:, 0::2] << 4 | codes[:, 1::2]  # [V, D/2]
        self.register_buffer("qdata", qdata.contiguous())  # int8 [V, D] or uint8 [V, D/2]
        self.register_buffer("scales", scales.reshape(scales.shape[0], -1).squeeze(-1).contiguous())  # [V] or [V, G]
        self.register_buffer("weight", torch.empty(0, dtype=dtype), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        ops = torch.ops.quantized_decomposed
        if self.bits == 8:
            return ops.embedding_byte.dtype(self.qdata, self.scales, None, -128, 127, ids, dtype=self.weight.dtype)
        return ops.embedding_4bit.dtype(self.qdata, self.scales, None, -8, 7, ids, dtype=self.weight.dtype)


def _dynamic_int8_weight(weight: Tensor, bits: int, group: int | None) -> Tensor:
    """A linear's weight for XNNPACK's dynamically quantized linear, on `qparams`' integers.

    The same tensor as torchao's `quantize_` makes with `Int8DynamicActivationIntxWeightConfig` and
    `scale_choice`'s algorithm (zero points 0, int8 activations per token; checked equal by
    `test_dynamic_int8_weight_is_what_quantize_makes`), solved by `qparams`: in blocks of rows (the LM
    head is 254 M weights at 0.8B) and with HQQ in place (2.3x faster, the same integers).
    """
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor, IntxUnpackedToInt8TensorActivationQuantization,
    )

    qdata, scales = qparams(weight, bits, group)
    return IntxUnpackedToInt8Tensor(
        qdata, scales, torch.zeros_like(scales, dtype=torch.int8), getattr(torch, f"int{bits}"),
        (1, group or weight.shape[1]), weight.dtype, IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN,
    )


def _quantize_head_and_embedding(model: nn.Module, recipe: QuantRecipe) -> dict[str, Any]:
    """The LM head as a dynamically quantized linear, the lookup on the same integers (tied) or its own."""
    # Defines quantized_decomposed::embedding_byte / embedding_4bit (schemas and eager kernels) for tracing.
    import executorch.exir.passes.quant_fusion_pass  # noqa: F401

    bits, group = recipe.embedding_bits, recipe.embedding_group
    tied = model.lm_head.weight is model.embed_tokens.weight
    head = _dynamic_int8_weight(model.lm_head.weight.detach(), bits, group)  # qdata int8 [V, D], scale [V, G]
    model.lm_head.weight = nn.Parameter(head, requires_grad=False)
    if tied:
        qdata, scales = head.qdata, head.scale.float()
    else:
        qdata, scales = qparams(model.embed_tokens.weight, bits, group)
    model.embed_tokens = QuantizedEmbedding(qdata, scales, bits)
    table = model.embed_tokens.qdata.numel() * model.embed_tokens.qdata.element_size()
    copies = 1 if tied and bits == 8 else 2
    return {"tied": tied, "stored_once": tied and bits == 8, "copies": copies,
            "bytes": copies * table + 2 * scales.numel() * 4,
            "fp32_bytes": head.shape[0] * head.shape[1] * 4 * (1 if tied else 2),
            "note": None if copies == 1 else
            "int4: XNNPACK packs the head's nibbles in the opposite order to embedding_4bit, so the lookup "
            "keeps its own packed copy (two int4 copies = the bytes of one int8 copy)"}


def _to_fp16(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if not name.endswith(FP32_UNDER_FP16):
            param.data = param.data.half()


def quantize_linears_executorch(module: nn.Module, recipe: QuantRecipe) -> dict[str, Any]:
    """Quantize the linears of a module without an embedding (the vision tower) in place, as the decoder's."""
    check_format(recipe, "pte")
    check_group_size(module, recipe)
    count = _quantize_linears(module, recipe)
    return {"matrices": count, "weight_bits": recipe.weight_bits, "group_size": recipe.group_size}


def _quantize_linears(module: nn.Module, recipe: QuantRecipe) -> int:
    """Every linear `quantized_linears` names -> `_dynamic_int8_weight`, in place; how many."""
    linears = quantized_linears(module)
    for _, linear in linears:
        weight = _dynamic_int8_weight(linear.weight.detach(), recipe.weight_bits, recipe.group_size)
        linear.weight = nn.Parameter(weight, requires_grad=False)
    return len(linears)


def quantize_for_executorch(model: nn.Module, recipe: QuantRecipe) -> dict[str, Any]:
    """Quantize `model` in place for `recipe`; returns what the manifest records. fp32: nothing to do."""
    check_format(recipe, "pte")
    report: dict[str, Any] = recipe.manifest("pte")
    if recipe.scheme == "fp16":
        _to_fp16(model)
        report["fp32_parameters"] = list(FP32_UNDER_FP16)
    if not recipe.weight_bits:
        return report
    check_shapes(model, recipe)
    report["matrices"] = _quantize_linears(model, recipe) + 1
    report["embedding"] = _quantize_head_and_embedding(model, recipe)
    return report
