"""Latency of the exported vision encoder for one image, per format and quantization, at the Qwen3.5-0.8B tower shape.

Random weights at the real shape (speed does not depend on their values). For each variant the
encoder is exported (timed), loaded, and run on one image's patches; the reference is the eager
PyTorch tower measured in the same run, and every figure is printed as a ratio to it. Variants:

    onnx fp32 / 8w / 4w     vision.onnx on ONNX Runtime (CPU EP), linears as MatMulNBits when quantized
    pte  fp32 / 8da4w       vision.pte on ExecuTorch's runtime (XNNPACK)

A measuring tool, not a test; run it alone on the machine.

    .venv/bin/python -m bench.bench_vision                 # 448 x 448 image, 2 threads
    .venv/bin/python -m bench.bench_vision --size 448 672  # another image size
    .venv/bin/python -m bench.bench_vision --quick         # the tiny oracle-sized tower: a smoke run
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import argument_parser, median_ms
from bench.onnx_run import onnx_session
from exporter.artifact import ExportOptions
from exporter.checkpoint import random_vision
from exporter.config import VISION_0_8B, preset
from exporter.vision.export import (
    example_inputs,
    export_vision_executorch,
    export_vision_onnx,
)
from runtime.config import VisionConfig
from runtime.contract import VISION_INPUTS, VISION_METHOD

VARIANTS = [("onnx", "fp32"), ("onnx", "8w"), ("onnx", "4w"), ("pte", "fp32"), ("pte", "8da4w")]
QUICK_VISION = VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                            num_position_embeddings=64)


def median_s(fn, warmup: int, repeats: int) -> float:
    return median_ms(fn, warmup, repeats) / 1e3


def runner(fmt: str, out: Path, files: list[str], threads: int):
    if fmt == "onnx":
        session = onnx_session(out / files[0], threads)
        return lambda inputs: session.run(None, dict(zip(VISION_INPUTS, inputs)))[0]
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(out / files[0]), data_path=str(out / files[1]))
    method = program.load_method(VISION_METHOD)
    return lambda inputs: method.execute([torch.from_numpy(x) for x in inputs])[0]


def main() -> None:
    parser = argument_parser(__spec__.name, __doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(448, 448), metavar=("H", "W"), help="image pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny tower: a smoke run, not a measurement")
    parser.add_argument("--json", metavar="PATH")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    vision = QUICK_VISION if options.quick else VISION_0_8B
    config = dataclasses.replace(preset("0.8b"), vision=vision)
    tower = random_vision(config, seed=0)
    factor = vision.patch_size * vision.spatial_merge_size
    height, width = options.size
    if height % factor or width % factor:
        parser.error(f"--size: each side must be a multiple of {factor} px (what preprocessing resizes to)")
    grid = (1, height // vision.patch_size, width // vision.patch_size)
    inputs = example_inputs(tower, grid)
    max_tokens = max(grid[1] * grid[2] // 4, 2)
    repeats, warmup = (2, 1) if options.quick else (options.repeats, 1)

    with torch.no_grad():
        reference = median_s(lambda: tower(inputs[0], grid), warmup, repeats)
        expected = tower(inputs[0], grid).numpy()
    params = sum(p.numel() for p in tower.parameters())
    print(f"vision tower depth {vision.depth}, hidden {vision.hidden_size} ({params / 1e6:.1f} M params), "
          f"image {height}x{width} = {grid[1] * grid[2]} patches, {grid[1] * grid[2] // 4} tokens, "
          f"{options.threads} threads, median of {repeats}")
    rows = [dict(format="eager", quant="fp32", latency_s=reference, size_mb=params * 4 / 1e6, export_s=None,
                 max_abs_error=0.0)]
    arrays = [x.numpy() for x in inputs]
    for fmt, quant in VARIANTS:
        subject = copy.deepcopy(tower) if fmt == "pte" and quant != "fp32" else tower  # pte quantizes in place
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            export = export_vision_onnx if fmt == "onnx" else export_vision_executorch
            start = time.perf_counter()
            artifact = export(subject, out, ExportOptions(quant=quant), max_tokens=max_tokens)
            export_s = time.perf_counter() - start
            size = sum((out / name).stat().st_size for name in artifact.files) / 1e6
            run = runner(fmt, out, artifact.files, options.threads)
            latency = median_s(lambda: run(arrays), warmup, repeats)
            error = float(np.abs(np.asarray(run(arrays)) - expected).max())
        rows.append(dict(format=fmt, quant=quant, latency_s=latency, size_mb=size, export_s=export_s,
                         max_abs_error=error))

    print(f"{'format':8}{'quant':8}{'latency ms':>12}{'vs eager':>10}{'size MB':>10}{'export s':>10}{'max |err|':>12}")
    for row in rows:
        export_s = f"{row['export_s']:.1f}" if row["export_s"] is not None else "-"
        print(f"{row['format']:8}{row['quant']:8}{row['latency_s'] * 1e3:12.1f}{reference / row['latency_s']:9.2f}x"
              f"{row['size_mb']:10.1f}{export_s:>10}{row['max_abs_error']:12.2e}")
    print("vs eager: the eager PyTorch tower's latency / the variant's (higher is faster); max |err| against the "
          "fp32 tower (quantized variants differ by design)")
    if options.json:
        Path(options.json).write_text(json.dumps(dict(size=options.size, threads=options.threads, rows=rows), indent=2))


if __name__ == "__main__":
    main()
