"""Where an ONNX model's resident memory goes once ONNX Runtime has loaded it, and what decode costs.

For each `--accuracy-levels` value, in its own process: a copy of the model with every
`MatMulNBits` set to that `accuracy_level` (4: int8 activations, the kernels our 4-bit schemes and
the builder's `-p int4` use; 1: fp32 activations) sharing the original weights file, loaded in a
CPU session; the process's resident memory then split by mapping (heap and anonymous memory, where
ONNX Runtime keeps the weights it prepacked; the memory-mapped weights file; libraries), its peak
RSS after a 128-token prefill and --decode greedy steps (`bench.onnx_run.GraphRunner`), and the
decode rate.

This is a measuring tool: run it alone on the machine.

    .venv/bin/python -m bench.onnx_memory path/to/onnx_dir [--accuracy-levels 4,1]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import (
    DRIVER_ONLY,
    answer_step,
    argument_parser,
    hidden_options,
    mappings,
    run_step,
)


def resident_by_mapping() -> dict[str, float]:
    """MB resident per mapping kind: heap and anonymous memory, the weights file, everything else."""
    kinds = Counter()
    for mapping in mappings():
        path = mapping["path"]
        kind = ("heap + anonymous" if path in ("", "[heap]") else
                "weights file (mapped)" if path.endswith(".onnx.data") else "libraries and other")
        kinds[kind] += mapping["resident_mb"]
    return dict(kinds)


def step_load(args) -> dict:
    import numpy as np

    from bench.onnx_run import GraphRunner, onnx_session, random_prompt

    session = onnx_session(Path(args.model), args.threads)
    loaded = resident_by_mapping()
    runner = GraphRunner(session, Path(args.model))
    ids = random_prompt(Path(args.model).parent, 128)
    token = int(runner.forward(ids, 0).argmax())
    start = time.perf_counter()
    for step in range(args.decode):
        token = int(runner.forward(np.array([token]), len(ids) + step).argmax())
    return {"resident_after_load_mb": loaded, "decode_tok_s": args.decode / (time.perf_counter() - start)}


def with_accuracy_level(source: Path, level: int, work: Path) -> Path:
    """A copy of source/model.onnx with every MatMulNBits at `level`, its weights file hard-linked (same bytes)."""
    import onnx

    model = onnx.load(source / "model.onnx", load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = level
    out = work / f"accuracy-{level}"
    out.mkdir()
    onnx.save(model, out / "model.onnx")
    for data in source.glob("*.onnx.data"):
        try:
            os.link(data, out / data.name)
        except OSError:  # another file system: copy
            shutil.copy(data, out / data.name)
    if (source / "genai_config.json").exists():  # the builder's head size (`bench.onnx_run`)
        shutil.copy(source / "genai_config.json", out)
    return out / "model.onnx"


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", help="a directory with model.onnx (+ model.onnx.data)")
    parser.add_argument("--accuracy-levels", default="4,1")
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    hidden_options(parser, "model")
    args = parser.parse_args(argv)
    if answer_step(args, {"load": step_load}):
        return
    if not args.directory:
        parser.error("give the directory of an ONNX model")
    with tempfile.TemporaryDirectory(prefix="onnx-memory-") as work:
        for level in (int(v) for v in args.accuracy_levels.split(",")):
            model = with_accuracy_level(Path(args.directory), level, Path(work))
            result = run_step(__spec__.name, "load", args, driver_only=DRIVER_ONLY + ("accuracy_levels", "directory"),
                              model=model)
            parts = ", ".join(f"{k} {v:.0f}" for k, v in result["resident_after_load_mb"].items())
            print(f"accuracy_level {level}: resident after load (MB): {parts}; "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB; decode {result['decode_tok_s']:.2f} tok/s")


if __name__ == "__main__":
    main()
