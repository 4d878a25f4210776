"""The ONNX lowering: the reference decoder as one stateful ONNX model for ONNX Runtime or any ONNX runtime.

`export_onnx` traces `exporter.model.Qwen35Model` with `torch.export` (dynamic batch, new tokens
and cached tokens), lowers the `qwen35::` ops per profile (`exporter.onnx_ops`), converts with
torch.onnx's dynamo exporter and writes `model.onnx` atomically, with the `genai_config.json`
that lets onnxruntime-genai drive it. The I/O contract is the one `exporter.artifact` documents:
token ids and [3, B, T] M-RoPE positions in, the last position's logits and every layer's next
state out, under stable names.

Profiles (`ExportOptions.onnx_profile`):
- `ort`: ONNX Runtime's contrib ops where they exist and are faster (LinearAttention, MoE,
  GroupQueryAttention). Each KV cache is a buffer of the caller's capacity that the model writes
  (`CapacityKV`), with an `attention_mask` input saying how many tokens it holds: onnxruntime-genai
  runs it with every state bound in place (`past_present_share_buffer`);
- `portable`: standard ONNX ops only, opset 18, for runtimes without those contrib ops. Its KV
  caches grow by concatenation: present = past + the call's T entries.

Two deliberate differences from ONNX Runtime GenAI's model builder: the LM head runs on the last
position only (the only logits a generator reads), and rotary cos/sin are computed from
`position_ids` in the graph, so no table for the whole context is stored.

Quantized schemes (`ExportOptions.quant`) trace the fp32 model and then rewrite its matmuls and
embedding into ONNX Runtime's MatMulNBits / GatherBlockQuantized (`exporter.quantize_onnx`), so
they need the `ort` profile.

Multimodal checkpoints: the decoder takes an optional `image_embeds` [N, D] input
(`OnnxImageDecoder`); the vision tower is its own model (`exporter.vision_export`).

Not here: the vision tower, the scheme policy (`exporter.quantize`), running
the model (`runtime/`), the manifest (`exporter.bundle`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import Tensor, nn

from exporter import onnx_fusions, onnx_ops
from exporter.artifact import ATTENTION_MASK, IMAGE_EMBEDS, Artifact, ExportOptions, state_names
from exporter.config import FULL, ModelConfig
from exporter.errors import QwenEdgeError
from exporter.model import FusedKV, Qwen35Model, splice_image_embeds
from exporter.onnx_state import state_in_place
from exporter.quantize import check_format, check_shapes
from exporter.quantize_onnx import quantize_onnx

logger = logging.getLogger(__name__)

OPSET = 18  # the oldest opset with every op used here: the widest set of runtimes
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"  # what onnxruntime-genai reads to drive the model (see `genai_config`)
# Weights above this go to model.onnx.data: ONNX Runtime memory-maps an external data file, where
# weights inside the protobuf are parsed into a copy first (0.8B 8da4w, prefill and decode: 1.26 GB
# peak RSS in one file, 1.14 GB with the data beside it). One protobuf file holds at most 2 GiB anyway.
EXTERNAL_DATA_THRESHOLD = 2**26
DATA_ALIGNMENT = 4096  # page-aligned tensor offsets in the data file, so that any runtime can map them


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


def capacity_kv(profile: str) -> bool:
    """Whether a profile's KV caches are buffers of the caller's capacity (ort) rather than growing (portable)."""
    return profile == "ort"


def io_names(config: ModelConfig, profile: str) -> tuple[list[str], list[str]]:
    """Input and output names in graph order, as `exporter.artifact` documents them."""
    parts = state_names(config.text)
    images = [IMAGE_EMBEDS] if config.vision is not None else []
    mask = [ATTENTION_MASK] if capacity_kv(profile) else []
    inputs = ["input_ids", "position_ids", *images, *mask] + [f"past_key_values.{i}.{part}" for i, part in parts]
    outputs = ["logits"] + [f"present.{i}.{part}" for i, part in parts]
    return inputs, outputs


def export_onnx(model: Qwen35Model, config: ModelConfig, out_dir: Path, options: ExportOptions) -> Artifact:
    """Export the decoder to `out_dir/model.onnx` (+ `model.onnx.data` above 64 MiB of weights) and describe it."""
    _check(model, config, options)
    start = time.perf_counter()
    logger.info("ONNX export, %s profile: tracing %d layers", options.onnx_profile, config.text.num_hidden_layers)
    program = _trace(model, config, options)
    decompositions = onnx_ops.decompositions(options.onnx_profile, options.prefill_chunk)
    if decompositions:  # a re-trace of the whole program: skipped when there is nothing to replace
        program = program.run_decompositions(decompositions)
    input_names, output_names = io_names(config, options.onnx_profile)
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=OPSET,
        custom_translation_table=onnx_ops.translations(options.onnx_profile),
        input_names=input_names,
        output_names=output_names,
        optimize=True,
        verbose=False,
    )
    onnx_model = onnx_program.model
    _fold_weight_layouts(onnx_model)
    _name_dynamic_dims(onnx_model, capacity_kv(options.onnx_profile))
    recipe = options.recipe
    quantized = quantize_onnx(onnx_model, model, recipe) if recipe.weight_bits else None
    fusions = onnx_fusions.fuse_norms(onnx_model) if options.onnx_profile == "ort" else {}
    _default_to_no_images(onnx_model)
    external = _weight_bytes(onnx_model) > EXTERNAL_DATA_THRESHOLD
    save_atomically(onnx_model, Path(out_dir), MODEL_FILE, DATA_FILE if external else None)
    write_atomically(Path(out_dir) / GENAI_CONFIG, json.dumps(genai_config(config, options), indent=1) + "\n")
    logger.info("ONNX export: wrote %s in %.0f s", Path(out_dir) / MODEL_FILE, time.perf_counter() - start)
    details = _describe(onnx_model, config, options, external)
    details["state_in_place"] = state_in_place(Path(out_dir) / MODEL_FILE, config)
    details["quantization"] = {**recipe.manifest("onnx"), **(quantized or {})}
    details["fusions"] = fusions
    details["export_seconds"] = round(time.perf_counter() - start, 1)
    files = [MODEL_FILE, DATA_FILE] if external else [MODEL_FILE]
    return Artifact(format="onnx", files=[*files, GENAI_CONFIG], quant=options.quant, details=details)


def genai_config(config: ModelConfig, options: ExportOptions) -> dict[str, Any]:
    """onnxruntime-genai's description of the model: an app can run the artifact with its `Model` and `Generator`.

    It names our inputs and outputs (`exporter.artifact`'s contract, which onnxruntime-genai's
    `qwen3_5_text` type reads when told the names). With capacity KV caches (the ort profile) it
    turns on past/present buffer sharing: onnxruntime-genai then allocates each KV cache once, at
    `max_length`, and binds every state (KV, conv, recurrent) as its own output. A growing cache
    (portable) cannot share its buffer, and onnxruntime-genai then double-buffers the other states
    too. Threads are left to the app (`session_options`).
    """
    t = config.text
    specials = {"bos_token_id": t.bos_token_id, "eos_token_id": list(t.eos_token_ids), "pad_token_id": t.pad_token_id}
    state = {"key": "past_key_names", "value": "past_value_names", "conv": "past_conv_names",
             "recurrent": "past_recurrent_names"}
    shared = capacity_kv(options.onnx_profile)
    mask = {ATTENTION_MASK: ATTENTION_MASK} if shared else {}
    return {
        "model": {
            "type": "qwen3_5_text",
            **{key: value for key, value in specials.items() if value not in (None, [])},  # it rejects nulls
            "vocab_size": t.vocab_size,
            "context_length": options.max_seq_len,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": {"log_id": "qwen-edge", "provider_options": []},
                "head_size": t.head_dim,
                "hidden_size": t.hidden_size,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "num_hidden_layers": t.num_hidden_layers,
                "inputs": {"input_ids": "input_ids", "position_ids": "position_ids", **mask,
                           **{name: f"past_key_values.%d.{part}" for part, name in state.items()}},
                "outputs": {"logits": "logits",
                            **{name.replace("past_", "present_"): f"present.%d.{part}" for part, name in state.items()}},
            },
        },
        "search": {"do_sample": False, "max_length": options.max_seq_len, "num_beams": 1,
                   "past_present_share_buffer": shared},
    }


def write_atomically(path: Path, text: str) -> None:
    """Write `path` through a temporary file beside it, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if the write or the rename failed


# ---------------------------------------------------------------------------------------------------
# Checks and tracing
# ---------------------------------------------------------------------------------------------------


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
    """Zero past state in graph order: key/value [B, Hkv, P, Dh] (or [B, Hkv, capacity, Dh] for a
    capacity-KV decoder, holding P tokens), conv [B, C, K-1], recurrent [B, Hv, Dk, Dv]."""
    t = config.text
    state = []
    for kind in t.layer_types:
        if kind == FULL:
            slots = past if capacity is None else capacity
            state += [torch.zeros(batch, t.num_key_value_heads, slots, t.head_dim) for _ in range(2)]
        else:
            state.append(torch.zeros(batch, t.conv_dim, t.linear_conv_kernel_dim - 1))
            state.append(torch.zeros(batch, t.linear_num_value_heads, t.linear_key_head_dim, t.linear_value_head_dim))
    return state


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


# ---------------------------------------------------------------------------------------------------
# Graph clean-up
# ---------------------------------------------------------------------------------------------------


_LAYOUT_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Gather", "Slice")


def _fold_weight_layouts(model) -> None:
    """Fold layout ops on weights into initializers (MoE's gate/up interleave, the conv taps).

    The exporter's optimizer folds only small tensors (and Transposes of single-use weights), so
    a Reshape or Gather of a large weight would otherwise run on every call. A weight is folded
    only when every use of it is such a layout op, so that the original dies and no weight is
    ever stored twice.
    """
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript.optimizer import fold_constants

    def is_layout(node) -> bool:
        return not node.domain and node.op_type in _LAYOUT_OPS

    def should_fold(node) -> bool | None:
        data = node.inputs[0] if node.inputs else None
        if not is_layout(node) or data is None:
            return None  # the optimizer's own rules (it folds only nodes whose inputs are all constant)
        return all(is_layout(user) for user, _ in data.uses()) or None

    fold_constants(model, should_fold=should_fold)
    RemoveUnusedNodesPass()(model)


def _name_dynamic_dims(model, kv_buffers: bool) -> None:
    """Rename the tracer's symbols (s0, s12, ...) to batch / sequence / past_sequence (or kv_capacity and
    total_sequence) / image_tokens everywhere."""
    from onnx_ir.traversal import RecursiveGraphIterator

    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    first_key = next((v for v in graph.inputs if v.name.endswith(".key")), None)
    named = [(inputs["input_ids"].shape[0], "batch"), (inputs["input_ids"].shape[1], "sequence")]
    if first_key is not None:
        named.append((first_key.shape[2], "kv_capacity" if kv_buffers else "past_sequence"))
    if ATTENTION_MASK in inputs:
        named.append((inputs[ATTENTION_MASK].shape[1], "total_sequence"))
    if IMAGE_EMBEDS in inputs:
        named.append((inputs[IMAGE_EMBEDS].shape[0], "image_tokens"))
    renames = {str(sym.value): name for sym, name in named if sym.value}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")

    def rename(value) -> None:
        if value is None or value.shape is None:
            return
        dims = [
            ir.SymbolicDim(pattern.sub(lambda m: renames[m.group(1)], d.value))
            if isinstance(d, ir.SymbolicDim) and isinstance(d.value, str)
            else d
            for d in value.shape
        ]
        value.shape = ir.Shape(dims)

    for value in [*graph.inputs, *graph.outputs]:
        rename(value)
    for node in RecursiveGraphIterator(graph):
        for value in node.outputs:
            rename(value)


def _default_to_no_images(model) -> None:
    """Give the `image_embeds` input a default of zero rows, so text-only callers may leave it out.

    ONNX lets a graph input share its name with an initializer: the initializer is the value
    used when the caller feeds nothing (ONNX Runtime lists it in `get_overridable_initializers`).
    """
    value = next((v for v in model.graph.inputs if v.name == IMAGE_EMBEDS), None)
    if value is not None:
        value.const_value = ir.tensor(np.zeros((0, value.shape[1]), dtype=np.float32), name=IMAGE_EMBEDS)
        model.graph.register_initializer(value)


def _weight_bytes(model) -> int:
    return sum(value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value is not None)


# ---------------------------------------------------------------------------------------------------
# Writing and describing
# ---------------------------------------------------------------------------------------------------


def save_atomically(model, out_dir: Path, name: str = MODEL_FILE, data: str | None = None) -> None:
    """Write `name` (and its external `data` file, if given) through a temporary directory beside the target.

    Readers never see half a model: the data file is moved first, so an `name` that exists always
    has its weights beside it; a stale data file from an earlier external export is removed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / (data or f"{name}.data")
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out_dir))
    try:
        ir.save(model, tmp / name, external_data=data, alignment=DATA_ALIGNMENT if data else None)
        if data:
            os.replace(tmp / data, out_dir / data)
        os.replace(tmp / name, out_dir / name)
        if not data and stale.exists():
            stale.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _io(values) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "dtype": str(v.dtype.numpy()), "shape": [d if isinstance(d, int) else str(d) for d in v.shape]}
        for v in values
    ]


def _describe(model, config: ModelConfig, options: ExportOptions, external: bool) -> dict[str, Any]:
    """Artifact.details: profile, opsets, I/O with symbolic shapes, op counts by domain, lowering report."""
    from onnx_ir.traversal import RecursiveGraphIterator

    counts: dict[str, Counter] = {}
    for node in RecursiveGraphIterator(model.graph):
        counts.setdefault(node.domain or "ai.onnx", Counter())[node.op_type] += 1
    return {
        "profile": options.onnx_profile,
        "opset_imports": {domain or "ai.onnx": version for domain, version in sorted(model.opset_imports.items())},
        "inputs": _io(model.graph.inputs),
        "outputs": _io(model.graph.outputs),
        "logits": "last position only",
        "prefill_chunk": options.prefill_chunk,
        "max_seq_len": options.max_seq_len,
        "kv_cache": _kv_cache(options),
        "dims": {"batch": "B", "sequence": f"T, 1..{options.prefill_chunk} per call",
                 **({"kv_capacity": "C, the KV buffers' slots (the caller's choice, e.g. max_seq_len)",
                     "total_sequence": "P + T, the tokens cached after the call"}
                    if capacity_kv(options.onnx_profile) else {"past_sequence": "P, cached tokens"}),
                 **({"image_tokens": "N, image tokens in this call"} if config.vision is not None else {})},
        "op_counts": {domain: dict(sorted(c.items())) for domain, c in sorted(counts.items())},
        "ops": onnx_ops.lowering_report(options.onnx_profile, options.prefill_chunk),
        "external_data": external,
        "weight_bytes": _weight_bytes(model),
        "image_embeds": (f"optional input {IMAGE_EMBEDS} [N, D] (default: no rows): row k replaces the k-th "
                         f"image token (id {config.image_token_id}) of input_ids" if config.vision is not None else None),
        "toolchain": _toolchain(),
    }


def _kv_cache(options: ExportOptions) -> dict[str, str]:
    if capacity_kv(options.onnx_profile):
        return {"layout": "capacity",
                "how": "past_key_values.{i}.key/value [B, Hkv, C, Dh] are buffers the caller allocates once (C >= the "
                       "tokens a sequence will hold) and binds as present.{i}.key/value too; the call writes its T "
                       "entries at slots P..P+T-1, where attention_mask [B, P+T] (ones) says P. Several tokens after "
                       "a cache need B = 1 (ONNX Runtime's GroupQueryAttention)"}
    return {"layout": "grows", "how": "present.{i}.key/value = past_key_values.{i}.key/value + the call's T entries"}


def _toolchain() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    # onnxruntime: the contrib-op schemas of the ort profile come from this version
    modules = (torch, onnx, onnxscript, onnxruntime)
    return {module.__name__: module.__version__ for module in modules}
