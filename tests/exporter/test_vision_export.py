"""The exported vision encoder (vision.onnx, vision.pte) against the reference tower, on images of several sizes.

One export per format serves every image size: the grids below are non-square both ways, smaller
and larger than the position table, and the smallest (one image token). Tolerances: embeddings are
O(1); fp32 exports differ from the reference only in summation order (measured 4.8e-7 through ONNX
Runtime, 3.2e-6 through XNNPACK), so 2e-5 catches any real mistake (the smallest tried, the
tanh GELU in the merger, moves them by 1.5e-4). Quantized exports are held to a cosine bound.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from exporter.artifact import ExportOptions
from exporter.checkpoint import load_vision
from exporter.vision.export import (
    VisionExportError,
    example_inputs,
    export_vision_executorch,
    export_vision_onnx,
)
from runtime.contract import VISION_INPUTS as INPUT_NAMES
from runtime.contract import VISION_METHOD
from runtime.image_prompt import grid_tables
from tests.exporter.oracle import build, save

FP32_TOL = 2e-5
GRIDS = [(1, 4, 6), (1, 8, 8), (1, 2, 2), (1, 12, 4)]
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    hf = build("conditional")
    with torch.no_grad():
        for block in hf.model.visual.blocks:  # sharper attention, as in test_vision
            block.attn.qkv.weight.mul_(8)
    return load_vision(save(hf, tmp_path_factory.mktemp("vision-export") / "ckpt"))


def _onnx_runner(path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, dict(zip(INPUT_NAMES, [x.numpy() for x in inputs])))[0]


def _pte_runner(artifact, out):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(out / artifact.files[0]), data_path=str(out / artifact.files[1]))
    method = program.load_method(VISION_METHOD)
    return lambda inputs: method.execute(list(inputs))[0].numpy()


def _export(fmt, tower, out, quant="fp32"):
    export = export_vision_onnx if fmt == "onnx" else export_vision_executorch
    artifact = export(tower, out, ExportOptions(quant=quant), max_tokens=MAX_TOKENS)
    run = _onnx_runner(out / artifact.files[0]) if fmt == "onnx" else _pte_runner(artifact, out)
    return artifact, run


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
@torch.no_grad()
def test_exported_encoder_matches_the_tower_at_every_image_size(tower, tmp_path, fmt):
    artifact, run = _export(fmt, tower, tmp_path)
    for grid in GRIDS:
        inputs = example_inputs(tower, grid, seed=sum(grid))
        expected = tower(inputs[0], grid).numpy()
        got = run(inputs)
        assert got.shape == expected.shape
        err = np.abs(got - expected).max()
        assert err <= FP32_TOL, f"{fmt}, grid {grid}: max abs error {err:.3g} > {FP32_TOL}"
    spec = artifact.details
    assert spec["max_image_tokens"] == MAX_TOKENS and spec["max_pixels"] == MAX_TOKENS * 32 * 32
    assert [i["name"] for i in spec["inputs"]] == list(INPUT_NAMES)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@torch.no_grad()
def test_int8_onnx_encoder_stays_close_to_fp32(tower, tmp_path):
    """8w (int8 per channel, MatMulNBits) is near lossless: cosine >= 0.999 even on random weights."""
    grid = (1, 8, 8)
    inputs = example_inputs(tower, grid, seed=5)
    expected = tower(inputs[0], grid).numpy()
    artifact, run = _export("onnx", tower, tmp_path, "8w")
    got = run(inputs)
    assert artifact.details["quantization"]["matrices"] == 4 * len(tower.blocks) + 2  # qkv, proj, fc1, fc2; merger 2
    assert _cosine(got, expected) >= 0.999
    assert not np.allclose(got, expected, atol=1e-6), "the weights were not quantized"


@torch.no_grad()
def test_8da4w_pte_encoder_runs_the_quantized_tower(tmp_path, tower):
    """The lowering is checked against the same tower quantized in eager PyTorch (torchao), not against fp32:
    what int4 costs on random weights says nothing about a trained tower."""
    grid = (1, 8, 8)
    inputs = example_inputs(tower, grid, seed=5)
    fp32 = tower(inputs[0], grid).numpy()
    subject = copy.deepcopy(tower)  # the pte export quantizes its tower in place
    artifact, run = _export("pte", subject, tmp_path, "8da4w")
    quantized = subject(inputs[0], grid).numpy()
    got = run(inputs)
    assert artifact.details["quantization"]["matrices"] == 4 * len(tower.blocks) + 2
    assert not np.allclose(quantized, fp32, atol=1e-4), "the tower was not quantized"
    cosine = _cosine(got, quantized)
    assert cosine >= 0.9999, f"pte 8da4w vs the eager quantized tower: cosine {cosine:.6f}"
    assert _cosine(got, fp32) >= 0.95  # still the same tower (measured 0.989 with sharpened attention)


def test_grid_tables_sum_to_one_and_stay_in_the_table(tower):
    side = int(tower.config.num_position_embeddings**0.5)
    for grid in GRIDS:
        tables = grid_tables(tower.config, grid)
        np.testing.assert_allclose(tables.pos_weight.sum(axis=1), 1.0, atol=1e-6)
        assert tables.pos_index.min() >= 0 and tables.pos_index.max() < side * side
        assert tables.cos.shape == (grid[1] * grid[2], tower.config.head_dim)


def test_encoder_export_refuses_fp16_and_tiny_bounds(tower, tmp_path):
    with pytest.raises(VisionExportError, match="fp32 or with an integer scheme"):
        export_vision_onnx(tower, tmp_path, ExportOptions(quant="fp16"), max_tokens=MAX_TOKENS)
    with pytest.raises(VisionExportError, match="at least 2"):
        export_vision_onnx(tower, tmp_path, ExportOptions(), max_tokens=1)
    assert not list(tmp_path.iterdir()), "a refused export left files behind"
