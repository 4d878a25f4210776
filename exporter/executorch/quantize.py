"""Quantizing the reference model for ExecuTorch/XNNPACK, in place, before `export_executorch` traces it.

- linears: the weight torchao's `Int8DynamicActivationIntxWeightConfig` makes (int4 per group for
  8da4w, int8 per channel for 8w), the pattern ExecuTorch's XNNPACK partitioner lowers to its qd8
  kernels, built on `exporter.quantize.qparams`' integers (`_dynamic_int8_weight`);
- the LM head: the same at the embedding's precision (int8 per row, or int4 grouped);
- a head over `HEAD_BLOCK_BYTES` as row blocks (`BlockedLinear`), each its own XNNPACK delegate,
  and the lookup on the same blocks: see `HEAD_BLOCK_BYTES`;
- the embedding lookup: `QuantizedEmbedding`, on the head's integers and scales. Its table is
  byte for byte the head's weight as XNNPACK serialises it, so the external data file, which
  de-duplicates identical buffers, stores the matrix once: at int8 the rows themselves, read by
  ExecuTorch's quantized-kernels op `quantized_decomposed::embedding_byte`; at int4 XNNPACK's
  packing (code + 8, the even column in the low nibble), which `embedding_4bit` does not read
  (it wants the even column in the high nibble), so the rows are unpacked by portable ops;
- fp16: every weight but the ones `exporter.quantize.HIGH_PRECISION` keeps in fp32.

With an int8 embedding the program then needs ExecuTorch's quantized kernels library beside the
portable kernels and XNNPACK (ExecuTorch's LLM runners link it; `runtime.backends` loads it into
the Python runtime); with an int4 one, nothing beyond those two.

Not here: the scheme policy (`exporter.quantize`), the lowering (`exporter.executorch.lower`), the
shape-only kernels torchao's quantize ops get while lowering (`exporter.executorch.private_api`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from exporter.quantize import (
    QuantRecipe,
    check_format,
    check_group_size,
    check_shapes,
    qparams,
    quantized_linears,
)

# fp16: parameters kept in fp32 (the model computes with them in fp32; see exporter.quantize.HIGH_PRECISION).
FP32_UNDER_FP16 = ("A_log", "dt_bias", "norm.weight", "layernorm.weight", "q_norm.weight", "k_norm.weight")

# The most bytes of the quantized LM head one XNNPACK delegate packs. A delegate keeps the mapped
# bytes of all its weights until it has packed them all, beside the packed copies, so a head in one
# piece adds its whole size to the load's peak RSS; in row blocks, each its own delegate, the peak
# holds one block (0.8B with an int8 embedding, in ExecuTorch's LLM runner: 998 -> 850 MB,
# `bench/pte_memory.py`). The blocks' logits are the same numbers: each output row is its own dot
# product with the same quantized activations.
HEAD_BLOCK_BYTES = 64 * 2**20


def head_block_rows(rows: int, columns: int, bits: int) -> int:
    """Rows per block of a quantized [rows, columns] head, so that a block's integers fit HEAD_BLOCK_BYTES."""
    blocks = max(1, math.ceil(rows * columns * bits / 8 / HEAD_BLOCK_BYTES))
    return math.ceil(rows / blocks)


class BlockedLinear(nn.Module):
    """A bias-free linear whose weight's rows are split into blocks, each its own linear: outputs concatenated.

    `exporter.executorch.private_api`'s partitioner gives each block its own XNNPACK delegate (see HEAD_BLOCK_BYTES).
    """

    def __init__(self, weights: list[Tensor]):
        super().__init__()
        self.blocks = nn.ModuleList()
        for weight in weights:
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
            linear.weight = nn.Parameter(weight, requires_grad=False)
            self.blocks.append(linear)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([block(x) for block in self.blocks], dim=-1)


class QuantizedEmbedding(nn.Module):
    """Row lookup in a symmetric int8 (or packed int4) table with per-row or per-group scales.

    With `block_rows`, the table is held as the head's row blocks (`BlockedLinear`), byte for byte,
    so the data file still stores it once: each block looks up the ids clamped into its rows, and
    an id takes its row from the block that holds it.

    `weight` is not the table: it is an empty tensor in the output dtype, because callers read
    `embed_tokens.weight.dtype` / `.device` for the dtype of the model's state.
    """

    def __init__(self, qdata: Tensor, scales: Tensor, bits: int, dtype: torch.dtype = torch.float32,
                 block_rows: int | None = None):
        super().__init__()
        self.bits = bits
        if bits == 4:  # XNNPACK's qb4w packing (exir's `convert_to_qc4w`): code + 8, even column in the low nibble
            codes = (qdata.to(torch.int16) + 8).to(torch.uint8)
            qdata = codes[:, 1::2] << 4 | codes[:, 0::2]  # [V, D/2]
        scales = scales.reshape(scales.shape[0], -1).squeeze(-1)  # [V] or [V, G]
        self.starts = list(range(0, qdata.shape[0], block_rows or qdata.shape[0]))
        for i, start in enumerate(self.starts):
            end = start + (block_rows or qdata.shape[0])
            self.register_buffer(f"qdata_{i}", qdata[start:end].contiguous())  # int8 [rows, D] or uint8 [rows, D/2]
            self.register_buffer(f"scales_{i}", scales[start:end].contiguous())
        self.register_buffer("weight", torch.empty(0, dtype=dtype), persistent=False)

    def tables(self) -> list[tuple[int, Tensor, Tensor]]:
        """(first row, integers, scales) of each block."""
        return [(start, getattr(self, f"qdata_{i}"), getattr(self, f"scales_{i}")) for i, start in enumerate(self.starts)]

    @property
    def qdata(self) -> Tensor:
        """The whole table's integers (a copy when in blocks)."""
        tables = [qdata for _, qdata, _ in self.tables()]
        return tables[0] if len(tables) == 1 else torch.cat(tables)

    def forward(self, ids: Tensor) -> Tensor:
        tables = self.tables()
        if len(tables) == 1:
            return self._rows(tables[0][1], tables[0][2], ids)
        rows = None
        for start, qdata, scales in tables:  # ascending: an id's own block is the last with start <= id
            found = self._rows(qdata, scales, (ids - start).clamp(0, qdata.shape[0] - 1))
            rows = found if rows is None else torch.where((ids >= start).unsqueeze(-1), found, rows)
        return rows

    def _rows(self, qdata: Tensor, scales: Tensor, ids: Tensor) -> Tensor:
        if self.bits == 8:
            ops = torch.ops.quantized_decomposed
            return ops.embedding_byte.dtype(qdata, scales, None, -128, 127, ids, dtype=self.weight.dtype)
        # The looked-up rows only: float math on bytes 0..255 is exact, and the product (code - 8) * scale
        # is the one `embedding_4bit` computes.
        packed = nn.functional.embedding(ids, qdata).float()  # [.., D/2]
        high = torch.floor(packed * (1.0 / 16.0))  # odd columns
        codes = torch.stack([packed - 16.0 * high, high], dim=-1).flatten(-2) - 8.0  # [.., D]
        scales = nn.functional.embedding(ids, scales)  # [.., G]
        rows = codes.unflatten(-1, (scales.shape[-1], -1)) * scales.unsqueeze(-1)  # [.., G, D / G]
        return rows.flatten(-2).to(self.weight.dtype)


def _dynamic_int8_weight(weight: Tensor, bits: int, group: int | None) -> Tensor:
    """A linear's weight for XNNPACK's dynamically quantized linear, on `qparams`' integers.

    The same tensor as torchao's `quantize_` makes with `Int8DynamicActivationIntxWeightConfig` and
    `scale_choice`'s algorithm (zero points 0, int8 activations per token; checked equal by
    `test_dynamic_int8_weight_is_what_quantize_makes`), solved by `qparams`: in blocks of rows (the LM
    head is 254 M weights at 0.8B) and with HQQ in place (2.3x faster, the same integers).
    """
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
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
    weight = model.lm_head.weight.detach()
    rows = head_block_rows(weight.shape[0], weight.shape[1], bits)
    blocks = [_dynamic_int8_weight(block, bits, group) for block in weight.split(rows)]  # qdata int8 [rows, D]
    if len(blocks) == 1:
        model.lm_head.weight = nn.Parameter(blocks[0], requires_grad=False)
    else:
        model.lm_head = BlockedLinear(blocks)
    if tied:
        qdata, scales = torch.cat([b.qdata for b in blocks]), torch.cat([b.scale for b in blocks]).float()
    else:
        qdata, scales = qparams(model.embed_tokens.weight, bits, group)
    model.embed_tokens = QuantizedEmbedding(qdata, scales, bits, block_rows=rows if len(blocks) > 1 else None)
    table = qdata.numel() * bits // 8  # int8 rows, or two int4 codes a byte
    copies = 1 if tied else 2
    head_scales = scales.numel() * (2 if group else 4)  # XNNPACK stores grouped scales as bf16, per-row ones as fp32
    lookup_scales = 0 if tied and not group else scales.numel() * 4  # fp32; tied per-row ones are the head's bytes
    return {"bits": bits, "tied": tied, "stored_once": tied, "copies": copies, "head_blocks": len(blocks),
            "bytes": copies * table + head_scales + lookup_scales,
            "lookup_only_bytes": lookup_scales + (0 if tied else table),  # read a row at a time, never whole
            "fp32_bytes": weight.shape[0] * weight.shape[1] * 4 * (1 if tied else 2)}


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
