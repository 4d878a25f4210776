"""The vision encoder as its own artifact in both formats: `vision.onnx` and `vision.pte`, one graph for any image size.

What is exported is `VisionTower.encode` for one image (t = 1): pixel patches
and the grid's host-side tables in, merged image embeddings out. The tables
(`runtime.image_prompt.grid_tables`: four bilinear taps per patch into the learned
position table, rotary cos/sin) are the only grid-dependent part of the tower,
so with them as inputs the graph has one dynamic dimension, the patch count
N = 4 M (M image tokens, 1 <= M <= `max_image_tokens`). Fixed image-size
buckets would store the tower's weights once per bucket in ONNX and pin images
to a few aspect ratios; this takes any patch-aligned image within the bound.

I/O (both formats; the names are the ONNX ones, the `.pte` method
`vision_encoder` takes them in this order):

    pixel_patches float32 [N, C·Tp·P·P]   runtime.image.preprocess(...).pixel_values
    pos_index     int64   [N, 4]          grid_tables(...).pos_index
    pos_weight    float32 [N, 4]          grid_tables(...).pos_weight
    rotary_cos    float32 [N, Dh]         grid_tables(...).cos
    rotary_sin    float32 [N, Dh]         grid_tables(...).sin
    image_embeds  float32 [M, E]          (output) the decoder's embeddings for the image's M tokens

Quantization: the tower's linears follow the decoder's scheme (int8 per channel
for 8w, int4 per group for 4w / 8da4w) with the same libraries as the decoder;
the patch embedding, the position table and the LayerNorms stay fp32 (a
sixth of a percent of the tower's weights, and the first layer sees raw pixels).

Not here: preprocessing (`runtime.image`), splicing the embeddings into a
prompt (`runtime.image_prompt`, `exporter.vision.prompt`), the decoder's lowerings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from exporter.artifact import Artifact, ExportOptions
from exporter.quantize import SCHEMES
from exporter.vision.tower import VisionTower
from runtime.config import VisionConfig
from runtime.contract import (
    VISION_INPUTS,
    VISION_METHOD,
    VISION_ONNX,
    VISION_OUTPUTS,
    VISION_PTE,
    VISION_WEIGHTS_TAG,
)
from runtime.errors import QwenEdgeError

DEFAULT_MAX_IMAGE_TOKENS = 1024  # a 1024 x 1024 px image: 4096 patches


class VisionExportError(QwenEdgeError):
    """Options or a tower that the vision export cannot take."""


class VisionEncoder(nn.Module):
    """`VisionTower.encode` of one image: (patches, pos_index, pos_weight, cos, sin) -> embeddings [M, E]."""

    def __init__(self, tower: VisionTower):
        super().__init__()
        self.tower = tower

    def forward(self, patches: Tensor, pos_index: Tensor, pos_weight: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return self.tower.encode(patches, pos_index, pos_weight, cos, sin)


def example_inputs(tower: VisionTower, grid=(1, 4, 4), seed: int = 0) -> tuple[Tensor, ...]:
    """Random patches of `grid` and its tables: encode's inputs."""
    t, h, w = grid
    patches = torch.randn(t * h * w, tower.patch_features, generator=torch.Generator().manual_seed(seed))
    return (patches, *tower.tables(grid))


def io_spec(tower: VisionTower, max_tokens: int) -> dict[str, Any]:
    """The manifest's description of the encoder's inputs and output."""
    v = tower.config
    m2 = v.spatial_merge_size**2
    factor = v.patch_size * v.spatial_merge_size
    return {
        "inputs": [
            {"name": "pixel_patches", "dtype": "float32", "shape": ["N", tower.patch_features]},
            {"name": "pos_index", "dtype": "int64", "shape": ["N", 4]},
            {"name": "pos_weight", "dtype": "float32", "shape": ["N", 4]},
            {"name": "rotary_cos", "dtype": "float32", "shape": ["N", v.head_dim]},
            {"name": "rotary_sin", "dtype": "float32", "shape": ["N", v.head_dim]},
        ],
        "outputs": [{"name": "image_embeds", "dtype": "float32", "shape": ["M", v.out_hidden_size]}],
        "dims": {"N": f"patches, {m2} M", "M": f"image tokens, 1..{max_tokens}"},
        "max_image_tokens": max_tokens,
        "max_pixels": max_tokens * factor * factor,
        "patch_order": "frame-major, then merge blocks row-major, then row-major inside a block",
        "tables": "exporter.vision.grid_tables (runtime.image computes them for an image)",
    }


def image_processor(checkpoint: Path | None, v: VisionConfig, max_pixels: int) -> dict[str, Any]:
    """`runtime.image.ImageSpec` fields for this tower: the checkpoint's preprocessor_config.json, else Qwen3.5's.

    The pixel budget is capped at what the exported encoder takes (`max_pixels`).
    """
    import json

    from runtime.image import ImageSpec

    spec = ImageSpec()
    path = Path(checkpoint) / "preprocessor_config.json" if checkpoint is not None else None
    raw = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    size = raw.get("size") or {}
    low = int(raw.get("min_pixels") or size.get("shortest_edge") or spec.min_pixels)
    high = min(int(raw.get("max_pixels") or size.get("longest_edge") or spec.max_pixels), max_pixels)
    return {
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "merge_size": v.spatial_merge_size,
        "min_pixels": min(low, high),
        "max_pixels": high,
        "mean": list(raw.get("image_mean") or spec.mean),
        "std": list(raw.get("image_std") or spec.std),
    }


def export_program(tower: VisionTower, max_tokens: int) -> torch.export.ExportedProgram:
    """torch.export of the encoder with N = m² M dynamic, 1 <= M <= max_tokens."""
    if max_tokens < 2:
        raise VisionExportError(f"--vision-max-tokens {max_tokens}: must be at least 2")
    m2 = tower.config.spatial_merge_size**2
    tokens = torch.export.Dim("image_tokens", min=1, max=max_tokens)
    patches = m2 * tokens
    dynamic = ({0: patches}, {0: patches}, {0: patches}, {0: patches}, {0: patches})
    with torch.no_grad():
        return torch.export.export(
            VisionEncoder(tower).eval(), example_inputs(tower), dynamic_shapes=dynamic, strict=False
        )


def _check_scheme(options: ExportOptions) -> None:
    if SCHEMES[options.quant].weight_bits is None and options.quant != "fp32":
        raise VisionExportError(
            f"--quant {options.quant}: the vision encoder is exported fp32 or with an integer scheme (8w, 4w, 8da4w)"
        )


# ---------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------


def export_vision_onnx(tower: VisionTower, out_dir: Path, options: ExportOptions,
                       max_tokens: int = DEFAULT_MAX_IMAGE_TOKENS) -> Artifact:
    """Write out_dir/vision.onnx (weights inside: the tower is far below 2 GB) and describe it."""
    from exporter.onnx import save_atomically
    from exporter.onnx.quantize import quantize_linears_onnx

    _check_scheme(options)
    start = time.perf_counter()
    program = export_program(tower, max_tokens)
    onnx_program = torch.onnx.export(
        program, dynamo=True, opset_version=18, input_names=list(VISION_INPUTS), output_names=list(VISION_OUTPUTS),
        optimize=True, verbose=False,
    )
    onnx_model = onnx_program.model
    quantization = {"scheme": options.quant}
    if SCHEMES[options.quant].weight_bits:
        quantization.update(quantize_linears_onnx(onnx_model, tower, options.recipe))
    save_atomically(onnx_model, Path(out_dir), VISION_ONNX)
    details = {**io_spec(tower, max_tokens), "quantization": quantization,
               "export_seconds": round(time.perf_counter() - start, 1)}
    return Artifact(format="onnx", files=[VISION_ONNX], quant=options.quant, details=details)


# ---------------------------------------------------------------------------------------------------
# ExecuTorch
# ---------------------------------------------------------------------------------------------------


def export_vision_executorch(tower: VisionTower, out_dir: Path, options: ExportOptions,
                             max_tokens: int = DEFAULT_MAX_IMAGE_TOKENS) -> Artifact:
    """Write out_dir/vision.pte + vision.ptd (method `vision_encoder`, XNNPACK) and describe it.

    A quantized scheme quantizes the tower in place (torchao), as the decoder's ExecuTorch export does.
    """
    from exporter.executorch import lower, quantize_linears_executorch, write_program
    from exporter.executorch.passes import dynamic_views_as_minus_one
    from exporter.executorch.private_api import shape_only_quant_ops

    _check_scheme(options)
    start = time.perf_counter()
    quantization = {"scheme": options.quant}
    if SCHEMES[options.quant].weight_bits:
        quantization.update(quantize_linears_executorch(tower, options.recipe))
    with shape_only_quant_ops():  # the export propagates fake tensors through quantized weights too
        program = export_program(tower, max_tokens)
        program = dynamic_views_as_minus_one(program.run_decompositions({}))  # no custom ops to lower
        lowered = lower({VISION_METHOD: program}, weights_tag=VISION_WEIGHTS_TAG)
    files = write_program(lowered.program, Path(out_dir), VISION_PTE)
    details = {
        **io_spec(tower, max_tokens),
        "methods": {VISION_METHOD: {"inputs": list(VISION_INPUTS), "outputs": list(VISION_OUTPUTS)}},
        "backend": "XNNPACK",
        "data_files": files[1:],
        "export_report": lowered.report,
        "quantization": quantization,
        "export_seconds": round(time.perf_counter() - start, 1),
    }
    return Artifact(format="pte", files=files, quant=options.quant, details=details)
