"""Time of the ExecuTorch lowering alone, on the 0.8B's first N layer kinds at the tiny preset's widths.

Lowering time grows with graph nodes, not with weight bytes, so this isolates the per-node cost
of each stage (export, lowering the custom ops, `to_edge` + XNNPACK, `to_executorch`) in a
couple of minutes instead of the half hour of a 0.8B lowering. One lowering per process (run it
alone, and again to see the noise); the stage times are `export_executorch`'s own.

    .venv/bin/python -m bench.bench_lowering --layers 4 --quant 8da4w
    .venv/bin/python -m bench.bench_lowering --layers 4 --quant fp32 --keep out/   # keep the program (to cmp)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import argument_parser, with_layer_types


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__spec__.name, __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="the 0.8B's first N layer kinds")
    parser.add_argument("--quant", default="fp32", help="a scheme of exporter.quantize.SCHEMES")
    parser.add_argument("--keep", help="write the program here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)

    from exporter.artifact import ExportOptions
    from exporter.checkpoint import random_model
    from exporter.config import preset
    from exporter.executorch import export_executorch

    config = with_layer_types(preset("tiny"), preset("0.8b").text.layer_types[: args.layers])
    model = random_model(config).eval()
    options = ExportOptions(max_seq_len=256, prefill_chunk=128, quant=args.quant)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        artifact = export_executorch(model, config, Path(args.keep or scratch), options)
        wall = time.perf_counter() - start
    report = artifact.details["export_report"]
    print(f"{args.layers} layers, {args.quant}: lowering {wall:.1f} s; delegate calls {report['delegate_calls']}, "
          f"portable ops {report['portable_ops']}")
    for stage, seconds in artifact.details["export_seconds"].items():
        print(f"  {stage:<20} {seconds:8.1f} s")


if __name__ == "__main__":
    main()
