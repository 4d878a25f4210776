"""The quality table of every quantization scheme x format on the trained fixture, in one command.

For each scheme (and embedding precision for the 4-bit schemes) it exports a bundle of the
trained fixture with every format that offers the scheme, validates each artifact against
the fp32 reference on held-out tokens (`runtime.validate`: perplexity, top-1 agreement, KL of
next-token distributions, greedy agreement over 32 tokens on 8 prompts) and prints one row per
artifact: size, perplexity and its change, top-1, KL, greedy agreement, and whether it met its
bounds (`runtime.tolerances`).

    .venv/bin/python -m bench.quality_table                       # every scheme, both formats
    .venv/bin/python -m bench.quality_table --formats onnx --schemes 8w,8da4w
    .venv/bin/python -m bench.quality_table --json table.json --work /tmp/quality   # keep the bundles

The trained fixture is found through `QWEN_EDGE_FIXTURES` (default: `../shared/fixtures` from the
repository root), the directory the tests read too. A measuring tool: it exits 1 if any artifact
misses its bounds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.common import REPO, argument_parser, markdown_table, work_dir

# (scheme, embedding bits) rows, in table order; None: the scheme's own embedding precision.
CONFIGS = [("fp32", None), ("fp16", None), ("8w", None), ("4w", 8), ("4w", 4), ("8da4w", 8), ("8da4w", 4)]
COLUMNS = ("scheme", "format", "size MB", "ppl", "ref ppl", "d ppl", "top-1", "KL", "greedy", "bounds")


def fixture(relative: str) -> Path:
    """A shared fixture's path; exits naming the path and the variable if it is missing."""
    root = Path(os.environ.get("QWEN_EDGE_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()
    path = root / relative
    if not path.exists():
        sys.exit(f"fixture not found: {path}; set QWEN_EDGE_FIXTURES to the directory holding {relative}")
    return path


def export_and_validate(quant: str, bits: int | None, formats: list[str], work: Path, args) -> list[dict]:
    from exporter.artifact import ExportOptions
    from exporter.bundle import export_bundle
    from exporter.quantize import SCHEMES
    from runtime.validate import validate_bundle

    offered = [f for f in formats if f in SCHEMES[quant].runs]
    if not offered:
        return []
    options = ExportOptions(max_seq_len=args.max_seq_len, prefill_chunk=args.prefill_chunk, quant=quant,
                            group_size=args.group_size if SCHEMES[quant].grouped else None, embedding_bits=bits)
    out, checkpoint = work / f"{quant}-emb{bits or '-'}", fixture("qwen35-tiny-code")
    start = time.perf_counter()
    export_bundle(str(checkpoint), out, formats=offered, options=options, validate=False, force=True)
    exported = time.perf_counter() - start
    report = validate_bundle(out, offered, model=checkpoint, eval_tokens=fixture("heldout-stdlib-tokens.npy"),
                             eval_max_tokens=args.eval_tokens)
    for entry in report["artifacts"]:
        entry["export_s"] = round(exported, 1)
        entry["failed_checks"] = [c["name"] for c in entry["checks"] if c["passed"] is False]
        entry.pop("checks")
    return report["artifacts"]


def row(entry: dict) -> list[str]:
    ppl, ref = entry["perplexity"], entry["reference_perplexity"]
    return [entry["tolerance_key"], entry["format"], f"{entry['size_bytes'] / 1e6:.1f}", f"{ppl:.3f}", f"{ref:.3f}",
            f"{100 * (ppl / ref - 1):+.2f} %", f"{entry['top1_agreement']:.3f}", f"{entry['kl_divergence']:.4f}",
            f"{entry['greedy_agreement']:.3f}", "met" if entry["passed"] else "MISS: " + "; ".join(entry["failed_checks"])]


def main(argv=None) -> int:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="onnx,pte", help="comma-separated (default onnx,pte)")
    parser.add_argument("--schemes", default=None, help="comma-separated scheme names (default: all)")
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size (the fixture's hidden 96 takes 32)")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens to evaluate")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--prefill-chunk", type=int, default=32)
    parser.add_argument("--work", help="keep the bundles here (default: a temporary directory, removed after)")
    parser.add_argument("--json", help="write the entries here")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    chosen = set(args.schemes.split(",")) if args.schemes else None
    for needed in ("qwen35-tiny-code", "heldout-stdlib-tokens.npy"):
        fixture(needed)  # a missing fixture is reported before any export, not after the first
    entries = []
    with work_dir(args.work, "quality-") as work:
        for quant, bits in CONFIGS:
            if chosen is None or quant in chosen:
                done = export_and_validate(quant, bits, formats, work, args)
                entries += done
                for entry in done:  # progress: a long run (ExecuTorch lowerings take minutes each)
                    print(" | ".join(row(entry)), file=sys.stderr, flush=True)
    print(f"trained fixture qwen35-tiny-code, {args.eval_tokens} held-out tokens, group size {args.group_size}\n")
    print(markdown_table(list(COLUMNS), [row(e) for e in entries]))
    if args.json:
        Path(args.json).write_text(json.dumps(entries, indent=1) + "\n")
    return 0 if all(e["passed"] for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
