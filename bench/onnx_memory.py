"""Where an ONNX model's resident memory goes once ONNX Runtime has loaded it, and what decode costs.

For each `--accuracy-levels` value, in its own process: a copy of the model with every
`MatMulNBits` set to that `accuracy_level` (4: int8 activations, the kernels our 4-bit schemes and
the builder's `-p int4` use; 1: fp32 activations) sharing the original weights file, loaded in a
CPU session; the process's resident memory then split by mapping (heap and anonymous memory, where
ONNX Runtime keeps the weights it prepacked; the memory-mapped weights file; libraries), its peak
RSS after a 128-token prefill and --decode greedy steps, and the decode rate.

This is a measuring tool: run it alone on the machine.

    .venv/bin/python bench/onnx_memory.py path/to/onnx_dir [--accuracy-levels 4,1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import steps  # noqa: E402


def resident_by_mapping() -> dict[str, float]:
    """MB resident per mapping kind, from /proc/self/smaps: heap+anon, the weights file, everything else."""
    kinds, current = Counter(), "other"
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
            name = fields[5] if len(fields) > 5 else ""
            current = ("heap + anonymous" if name in ("", "[heap]") else
                       "weights file (mapped)" if name.endswith(".onnx.data") else "libraries and other")
        elif fields and fields[0] == "Rss:":
            kinds[current] += int(fields[1]) / 1024
    return dict(kinds)


def step_load(args) -> dict:
    import numpy as np
    import onnxruntime as ort

    from bench.bench_onnx import Runner
    from exporter.config import preset

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    loaded = resident_by_mapping()
    runner = Runner(session, head_dim=preset(args.preset).text.head_dim, model=Path(args.model))
    ids = np.random.default_rng(0).integers(0, 248_000, size=128)
    logits, state = runner.call(ids[None], runner.empty_state())
    token, start = int(np.argmax(logits[0])), time.perf_counter()
    for _ in range(args.decode):
        logits, state = runner.call(np.array([[token]]), state)
        token = int(np.argmax(logits[0]))
    decode_tok_s = args.decode / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"resident_after_load_mb": loaded, "peak_rss_mb": peak, "decode_tok_s": decode_tok_s}


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
    return out / "model.onnx"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", help="a directory with model.onnx (+ model.onnx.data)")
    parser.add_argument("--accuracy-levels", default="4,1")
    parser.add_argument("--preset", default="0.8b", help="the model's shape (for its state inputs)")
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(step_load(args)))
        return
    if not args.directory:
        parser.error("give the directory of an ONNX model")
    with tempfile.TemporaryDirectory(prefix="onnx-memory-") as work:
        for level in (int(v) for v in args.accuracy_levels.split(",")):
            model = with_accuracy_level(Path(args.directory), level, Path(work))
            result = steps.run_step(__file__, "load", args, steps.DRIVER_ONLY + ("accuracy_levels", "directory"),
                                    model=model)
            parts = ", ".join(f"{k} {v:.0f}" for k, v in result["resident_after_load_mb"].items())
            print(f"accuracy_level {level}: resident after load (MB): {parts}; "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB; decode {result['decode_tok_s']:.2f} tok/s")


if __name__ == "__main__":
    main()
