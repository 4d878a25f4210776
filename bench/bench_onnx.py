"""Benchmark our ONNX export against ONNX Runtime GenAI's model builder on the same weights.

Writes a random-weight checkpoint of a preset (default: the 0.8B shape; `bench.common.write_checkpoint`,
the layout the builder accepts), then, each step in its own process so that its peak RSS is its own:

    export-ours   exporter.onnx.export_onnx on the checkpoint's decoder, ort profile
    export-peer   python -m onnxruntime_genai.models.builder -m CKPT -o OUT -p fp32 -e cpu
                  (`bench.common.export_builder`)
    run           plain onnxruntime, either model (`bench.onnx_run.GraphRunner`): one prefill call
                  of --prompt tokens (best of --repeats), then --decode greedy steps

and prints export time and peak RSS, model size, prefill and decode tok/s, peak RSS while
running, and the ratios ours/peer. Both models run on plain onnxruntime, CPU, fp32, with
--threads intra-op threads (the builder writes no thread count into its genai_config.json).
The last prompt position's logits of the two models are compared as a sanity check.

This is a measuring tool, not a test. `--quick` runs the tiny preset as a smoke check.

    .venv/bin/python -m bench.bench_onnx                      # 0.8B, prompt 128, decode 64
    .venv/bin/python -m bench.bench_onnx --quick
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.common import (
    answer_step,
    argument_parser,
    describe,
    export_builder,
    export_ours,
    files_bytes,
    hidden_options,
    ours_against_peer,
    run_step,
    work_dir,
    write_checkpoint,
)

ONNX_FILES = (".onnx", ".data")


def step_export_ours(args) -> dict:
    from exporter.artifact import ExportOptions

    options = ExportOptions(max_seq_len=args.max_seq_len, prefill_chunk=args.prompt, onnx_profile=args.profile)
    artifact, _ = export_ours(Path(args.checkpoint), Path(args.out), "onnx", options)
    return {"op_counts": artifact.details["op_counts"]}


def step_run(args) -> dict:
    """Prefill --prompt tokens in one call (best of --repeats), then decode --decode tokens greedily."""
    from bench.onnx_run import GraphRunner, onnx_session

    model = Path(args.out) / "model.onnx"
    start = time.perf_counter()
    session = onnx_session(model, args.threads)
    load_s = time.perf_counter() - start
    runner = GraphRunner(session, model)
    ids = np.random.default_rng(0).integers(0, session.get_outputs()[0].shape[-1], size=args.prompt)
    prefill = []
    for _ in range(args.repeats):
        runner.reset()
        start = time.perf_counter()
        logits = runner.forward(ids, 0)
        prefill.append(time.perf_counter() - start)
    np.save(Path(args.out) / "prefill_logits.npy", logits)
    start = time.perf_counter()
    for step in range(args.decode):
        logits = runner.forward(np.array([logits.argmax()]), args.prompt + step)
    decode_s = time.perf_counter() - start
    return {"load_s": load_s, "prefill_tok_s": args.prompt / min(prefill), "prefill_s_all": prefill,
            "decode_tok_s": args.decode / decode_s}


STEPS = {"export-ours": step_export_ours, "run": step_run}


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="0.8b")
    parser.add_argument("--prompt", type=int, default=128, help="prefill tokens in one call (a power of two)")
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="prefill runs; the best is reported")
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--profile", default="ort", choices=("ort", "portable"))
    parser.add_argument("--work", help="working directory (default: a temporary one, removed after)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short prompt: a smoke check")
    parser.add_argument("--json", action="store_true")
    hidden_options(parser, "checkpoint", "out")
    args = parser.parse_args(argv)
    if answer_step(args, STEPS):
        return
    if args.quick:
        args.preset, args.prompt, args.decode, args.repeats = "tiny", 16, 8, 1
    with work_dir(args.work, "bench-onnx-") as work:
        report = measure(args, work)
    print(json.dumps(report, indent=1) if args.json else format_report(report, args))


def measure(args, work: Path) -> dict:
    from exporter.config import preset

    checkpoint, report = write_checkpoint(preset(args.preset), work / "checkpoint"), {}
    exports = {"ours": lambda out: run_step(__spec__.name, "export-ours", args, checkpoint=checkpoint, out=out),
               "peer": lambda out: export_builder(checkpoint, out, "fp32")}
    for who, export in exports.items():
        out = work / who
        exported = export(out)
        run = run_step(__spec__.name, "run", args, out=out)
        report[who] = {**exported, "size_mb": files_bytes(out, ONNX_FILES) / 2**20,
                       **{f"run_{k}": v for k, v in run.items()}}
    difference = np.load(work / "ours" / "prefill_logits.npy") - np.load(work / "peer" / "prefill_logits.npy")
    report["prefill_logits_max_abs_diff"] = float(np.abs(difference).max())
    return report


def format_report(report: dict, args) -> str:
    rows = [
        ("export time, s (the whole process)", "wall_s"),
        ("export peak RSS, MB", "peak_rss_mb"),
        ("model size, MB", "size_mb"),
        ("session load, s", "run_load_s"),
        (f"prefill, tok/s ({args.prompt} tokens, one call)", "run_prefill_tok_s"),
        (f"decode, tok/s ({args.decode} tokens)", "run_decode_tok_s"),
        ("peak RSS while running, MB", "run_peak_rss_mb"),
    ]
    ours, peer = report["ours"], report["peer"]
    lines = [f"{args.preset} fp32, CPU, {args.threads} intra-op threads, profile {args.profile}", "",
             *ours_against_peer(rows, ours, peer), ""]
    lines.append(f"prefill runs, s: ours {describe(ours['run_prefill_s_all'])}, "
                 f"peer {describe(peer['run_prefill_s_all'])}")
    lines.append(f"last prompt position logits, max |ours - peer|: {report['prefill_logits_max_abs_diff']:.2e}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
