"""The ONNX export driver: the reference decoder traced, lowered and converted into one stateful ONNX model.

`export_onnx` traces `exporter.model.Qwen35Model` with `torch.export` (dynamic batch, new tokens
and cached tokens), lowers the `qwen35::` ops as each op's table says for the profile
(`exporter.onnx.lowering`), converts with torch.onnx's dynamo exporter, cleans, quantizes and fuses
the graph, and writes `model.onnx` atomically with the `genai_config.json` that lets
onnxruntime-genai drive it. The I/O contract is `runtime.contract`'s: token ids and [3, B, T]
M-RoPE positions in, the last position's logits and every layer's next state out, under stable names.

Two deliberate differences from ONNX Runtime GenAI's model builder: the LM head runs on the last
position only (the only logits a generator reads), and rotary cos/sin are computed from
`position_ids` in the graph, so no table for the whole context is stored.

Multimodal checkpoints: the decoder takes an optional `image_embeds` [N, D] input
(`OnnxImageDecoder`); the vision tower is its own model (`exporter.vision.export`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from exporter.artifact import Artifact, ExportOptions
from exporter.model import FusedKV, Qwen35Model, splice_image_embeds
from exporter.onnx import fusions, graph
from exporter.onnx.details import describe
from exporter.onnx.genai import write_genai_config
from exporter.onnx.lowering import decompositions, translations
from exporter.onnx.quantize import quantize_onnx
from exporter.onnx.state import state_in_place
from exporter.onnx.write import EXTERNAL_DATA_THRESHOLD, save_atomically, weight_bytes
from exporter.quantize import check_format, check_shapes
from runtime.config import FULL, ModelConfig
from runtime.contract import (
    GENAI_CONFIG,
    ONNX_DATA,
    ONNX_MODEL,
    capacity_kv,
    io_names,
    state_names,
    state_shape,
)
from runtime.errors import QwenEdgeError

logger = logging.getLogger(__name__)

OPSET = 18  # the oldest opset with every op used here: the widest set of runtimes


class OnnxExportError(QwenEdgeError):
    """Options or a model that the ONNX lowering cannot export."""


class CapacityKV(FusedKV):
    """A full-attention layer's KV buffers of the caller's capacity, written and read by `qwen35::kv_attention`."""

    def __init__(self, past_key: Tensor, past_value: Tensor, attention_mask: Tensor):
        self.past_key, self.past_value, self.attention_mask = past_key, past_value, attention_mask

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, key, value = torch.ops.qwen35.kv_attention(q, k, v, self.past_key, self.past_value, self.attention_mask)
        return out, (key, value)


class OnnxDecoder(nn.Module):
    """The ONNX signature around the reference model: flat state in and out, the last position's logits.

    It runs the model's own modules in the model's order. The final norm and LM head see the last
    position only, as `Qwen35Model.forward(last_only=True)` does (T - 1 fewer rows of the largest
    matmul per prefill call), but as a 2-D [B, D] input rather than [B, 1, D]: torch.onnx lowers a
    2-D linear to Gemm(transB=1) on the weight as stored, and a 3-D one to MatMul on a transposed
    copy, which for tied embeddings is a second copy of the embedding (+1 GB at the 0.8B shape).
    """

    def __init__(self, model: Qwen35Model, capacity_kv: bool):
        super().__init__()
        self.model, self.capacity_kv = model, capacity_kv

    def forward(self, input_ids: Tensor, position_ids: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        """inputs: attention_mask [B, P+T] (capacity_kv only), then the past state."""
        return self.decode(self.model.embed_tokens(input_ids), position_ids, inputs)

    def decode(self, x: Tensor, position_ids: Tensor, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        m = self.model
        mask, past = (inputs[0], inputs[1:]) if self.capacity_kv else (None, inputs)
        rope = m.rotary(position_ids, x.dtype)  # cos, sin [B, T, rotary_dim]
        present = []
        for i, layer in enumerate(m.layers):
            state = (past[2 * i], past[2 * i + 1])
            if mask is not None and layer.kind == FULL:
                state = CapacityKV(*state, mask)
            x, state = layer(x, rope, state)  # [B, T, D]
            present += state
        logits = m.lm_head(m.norm(x[:, -1]))  # [B, V]
        return (logits[:, None], *present)  # [B, 1, V]: rank 3, the logits layout onnxruntime-genai reads


class OnnxImageDecoder(OnnxDecoder):
    """The decoder of a multimodal checkpoint: `image_embeds` [N, D] fill the prompt's `<|image_pad|>` tokens.

    The k-th image token of `input_ids` (row-major over B, T) takes row k (`splice_image_embeds`).
    The graph gives `image_embeds` a default of zero rows, so text-only callers leave it out.
    """

    def __init__(self, model: Qwen35Model, capacity_kv: bool, image_token_id: int):
        super().__init__(model, capacity_kv)
        self.image_token_id = image_token_id

    def forward(self, input_ids: Tensor, position_ids: Tensor, image_embeds: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        x = splice_image_embeds(self.model.embed_tokens(input_ids), input_ids, image_embeds, self.image_token_id)
        return self.decode(x, position_ids, inputs)


def export_onnx(model: Qwen35Model, config: ModelConfig, out_dir: Path, options: ExportOptions) -> Artifact:
    """Export the decoder to `out_dir/model.onnx` (+ `model.onnx.data` above 64 MiB of weights) and describe it."""
    _check(model, config, options)
    start = time.perf_counter()
    logger.info("ONNX export, %s profile: tracing %d layers", options.onnx_profile, config.text.num_hidden_layers)
    program = _trace(model, config, options)
    replaced = decompositions(options.onnx_profile, options.prefill_chunk)
    if replaced:  # a re-trace of the whole program: skipped when there is nothing to replace
        program = program.run_decompositions(replaced)
    input_names, output_names = io_names(config, options.onnx_profile)
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=OPSET,
        custom_translation_table=translations(options.onnx_profile, options.prefill_chunk),
        input_names=input_names,
        output_names=output_names,
        optimize=True,
        verbose=False,
    )
    onnx_model = onnx_program.model
    graph.fold_weight_layouts(onnx_model)
    graph.name_dynamic_dims(onnx_model, capacity_kv(options.onnx_profile))
    recipe = options.recipe
    quantized = quantize_onnx(onnx_model, model, recipe) if recipe.weight_bits else None
    fused = fusions.fuse_norms(onnx_model) if options.onnx_profile == "ort" else {}
    graph.default_to_no_images(onnx_model)
    external = weight_bytes(onnx_model) > EXTERNAL_DATA_THRESHOLD
    save_atomically(onnx_model, Path(out_dir), ONNX_MODEL, ONNX_DATA if external else None)
    write_genai_config(config, options, out_dir)
    logger.info("ONNX export: wrote %s in %.0f s", Path(out_dir) / ONNX_MODEL, time.perf_counter() - start)
    details = describe(onnx_model, config, options, external)
    details["state_in_place"] = state_in_place(Path(out_dir) / ONNX_MODEL, config)
    details["quantization"] = {**recipe.manifest("onnx"), **(quantized or {})}
    details["fusions"] = fused
    details["export_seconds"] = round(time.perf_counter() - start, 1)
    files = [ONNX_MODEL, ONNX_DATA] if external else [ONNX_MODEL]
    return Artifact(format="onnx", files=[*files, GENAI_CONFIG], quant=options.quant, details=details)


def _check(model: Qwen35Model, config: ModelConfig, options: ExportOptions) -> None:
    """Raise OnnxExportError for what this lowering cannot do; ExportOptions checks the rest."""
    check_format(options.recipe, "onnx")
    if options.recipe.weight_bits and options.onnx_profile != "ort":
        raise OnnxExportError(
            f"--quant {options.quant} --onnx-profile {options.onnx_profile}: quantized weights use ONNX Runtime's "
            "MatMulNBits and GatherBlockQuantized contrib ops; export with --onnx-profile ort"
        )
    check_shapes(model, options.recipe)
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    if dtypes != ["torch.float32"]:
        raise OnnxExportError(
            f"model weights are {', '.join(dtypes)}: the ONNX lowering needs float32 weights "
            "(ONNX Runtime's CPU kernels have no bf16 MatMul); load the checkpoint with dtype=torch.float32"
        )
    if model.config != config.text:
        raise OnnxExportError("model and config disagree: build the model from this config (or pass its config)")
    if options.prefill_chunk < 2:
        raise OnnxExportError(
            f"--prefill-chunk {options.prefill_chunk}: a 1-token chunk makes every prompt token a call; use 2 or more"
        )
    if options.max_seq_len > config.text.max_position_embeddings:
        raise OnnxExportError(
            f"--max-seq-len {options.max_seq_len}: exceeds the model's max_position_embeddings "
            f"({config.text.max_position_embeddings}); choose at most that"
        )


def example_state(config: ModelConfig, batch: int, past: int, capacity: int | None = None) -> list[Tensor]:
    """Zero past state in graph order, shaped as `runtime.contract.state_shape` says: key/value hold P
    tokens (or `capacity` slots for a capacity-KV decoder, holding P tokens)."""
    slots = past if capacity is None else capacity
    return [torch.zeros(state_shape(config.text, part, batch=batch, kv_slots=slots))
            for _, part in state_names(config.text)]


def _trace(model: Qwen35Model, config: ModelConfig, options: ExportOptions) -> torch.export.ExportedProgram:
    """torch.export with dynamic B, T (<= prefill_chunk) and P (<= max_seq_len), or the KV capacity."""
    # Example sizes of at least 2, and distinct: torch.export specialises dimensions that are 0 or 1 in
    # the example, and a capacity equal to another size could be taken for it.
    batch, steps, past, capacity = 2, 2, 3, 8
    batch_dim = torch.export.Dim("batch", min=1)
    steps_dim = torch.export.Dim("sequence", min=1, max=options.prefill_chunk)
    kv_buffers = capacity_kv(options.onnx_profile)
    if kv_buffers:  # the cache dim is the caller's buffer; the mask's width counts the tokens it holds
        kv_dim = torch.export.Dim("kv_capacity", min=2, max=options.max_seq_len)
        total_dim = torch.export.Dim("total_sequence", min=1, max=options.max_seq_len)
    else:
        kv_dim = torch.export.Dim("past_sequence", min=0, max=options.max_seq_len)
    state_shapes = []
    for kind in config.text.layer_types:
        state_shapes += [{0: batch_dim, 2: kv_dim}] * 2 if kind == FULL else [{0: batch_dim}] * 2
    input_ids = torch.zeros(batch, steps, dtype=torch.long)
    positions = (past + torch.arange(steps)).expand(3, batch, steps)  # [3, B, T]
    inputs, dynamic_shapes = [input_ids, positions], [{0: batch_dim, 1: steps_dim}, {1: batch_dim, 2: steps_dim}]
    decoder = OnnxDecoder(model, kv_buffers)
    if config.vision is not None:
        decoder = OnnxImageDecoder(model, kv_buffers, config.image_token_id)
        inputs.append(torch.zeros(2, config.text.hidden_size))
        dynamic_shapes.append({0: torch.export.Dim("image_tokens", min=0, max=options.prefill_chunk)})
    rest = example_state(config, batch, past, capacity if kv_buffers else None)  # forward's *inputs
    if kv_buffers:
        rest.insert(0, torch.ones(batch, past + steps, dtype=torch.long))
        state_shapes.insert(0, {0: batch_dim, 1: total_dim})
    with torch.no_grad():
        return torch.export.export(
            decoder.eval(), (*inputs, *rest), dynamic_shapes=(*dynamic_shapes, tuple(state_shapes)), strict=False
        )
