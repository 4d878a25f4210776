"""Benchmark our ExecuTorch export against ExecuTorch's own Qwen3.5 path (`export_llm`) on the same weights.

Writes a random-weight checkpoint of a preset (default: the 0.8B shape; `bench.common.write_checkpoint`),
then, each step in its own process so that its peak RSS is its own:

    export-ours   exporter.checkpoint.load_model + exporter.executorch.export_executorch (fp32, XNNPACK),
                  the decoder alone
    export-peer   upstream convert_weights + export_llm (`bench.upstream_executorch`)
    run           executorch.runtime, either program: ours takes the prompt in one call (our prefill
                  chunk), upstream's token by token (its forward is a static [1, 1]); then --decode
                  greedy steps

and prints export time and peak RSS, program size (every file the program needs), prefill and
decode tok/s, peak RSS while running (as an app: `bench.common.run_as_an_app`) and the model's
share of it, and the ratios ours/peer. Both run on ExecuTorch's Python runtime with --threads
threads, run processes taken in turns for --rounds rounds. The last prompt position's logits of
the two programs are compared as a check that both read the same weights.

This is a measuring tool, not a test; run it alone on the machine. `--quick` is a smoke check on
the tiny preset.

    .venv/bin/python -m bench.bench_executorch                      # 0.8B, prompt 128, decode 64, 3 rounds
    .venv/bin/python -m bench.bench_executorch --quick
    .venv/bin/python -m bench.bench_executorch --skip-peer          # ours only
    .venv/bin/python -m bench.bench_executorch --pte-kernels llm    # ours with ExecuTorch's LLM custom ops
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import (
    answer_step,
    argument_parser,
    describe,
    executorch_runtime,
    export_ours,
    files_bytes,
    hidden_options,
    in_turns,
    ours_against_peer,
    pte_files,
    rss_mb,
    run_as_an_app,
    run_step,
    with_layer_types,
    work_dir,
    write_checkpoint,
)

PTE_FILES = (".pte", ".ptd")


def step_export_ours(args) -> dict:
    from exporter.artifact import ExportOptions

    start = time.perf_counter()
    options = ExportOptions(max_seq_len=args.max_seq_len, prefill_chunk=args.prompt, pte_kernels=args.pte_kernels)
    artifact, _ = export_ours(Path(args.checkpoint), Path(args.out), "pte", options)
    report = artifact.details["export_report"]
    return {"export_s": time.perf_counter() - start, "stages_s": artifact.details["export_seconds"],
            "delegate_calls": report["delegate_calls"], "portable_ops": report["portable_ops"]}


def step_export_peer(args) -> dict:
    from bench.upstream_executorch import export_upstream

    start = time.perf_counter()
    export_upstream(Path(args.checkpoint), Path(args.out), max_seq_len=args.max_seq_len)
    return {"export_s": time.perf_counter() - start}


def step_run(args) -> dict:
    """Prefill --prompt random ids (one call for ours), then --decode greedy steps; each the best of --repeats runs."""
    import torch

    run_as_an_app()
    runtime = executorch_runtime(args.threads)
    out = Path(args.out)
    program, data = pte_files(out)
    runtime_rss_mb = rss_mb()
    start = time.perf_counter()
    method = runtime.load_program(program, data_path=data).load_method("forward")
    load_s = time.perf_counter() - start
    chunk = args.prompt if not args.peer else 1  # upstream's forward is static [1, 1]

    def call(ids: np.ndarray, pos: int) -> np.ndarray:
        tokens = torch.from_numpy(ids).view(1, -1)
        logits = method.execute([tokens, torch.tensor([pos], dtype=torch.long)])[0]
        return logits.float().numpy().reshape(-1, logits.shape[-1])[-1]

    ids = np.random.default_rng(0).integers(0, args.vocab, size=args.prompt, dtype=np.int64)
    prefill, decode = [], []
    for run in range(args.repeats):  # input_pos 0 starts a new sequence in both programs
        start = time.perf_counter()
        for pos in range(0, args.prompt, chunk):
            logits = call(ids[pos : pos + chunk], pos)
        prefill.append(time.perf_counter() - start)
        if run == 0:  # the comparison reads the first run's, made on a freshly loaded program
            np.save(out / "prefill_logits.npy", logits)
        token, start = int(logits.argmax()), time.perf_counter()
        for step in range(args.decode):
            token = int(call(np.array([token], dtype=np.int64), args.prompt + step).argmax())
        decode.append(time.perf_counter() - start)
    return {"load_s": load_s, "prefill_tok_s": args.prompt / min(prefill), "prefill_s_all": prefill,
            "decode_tok_s": args.decode / min(decode), "decode_s_all": decode, "runtime_rss_mb": runtime_rss_mb}


STEPS = {"export-ours": step_export_ours, "export-peer": step_export_peer, "run": step_run}
DRIVER_ONLY = ("step", "json", "quick", "work", "skip_peer", "rounds", "layers")


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="0.8b")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens; ours prefills them in one call")
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="prefill + decode runs per process; the best of each counts")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run processes per program, ours and peer in turns; medians")
    parser.add_argument("--max-seq-len", type=int, default=256, help="KV capacity of both programs")
    parser.add_argument("--layers", type=int,
                        help="keep only the first N decoder layers (a quicker look; not the issue's figure)")
    parser.add_argument("--work", help="working directory (default: a temporary one, removed after)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short prompt: a smoke check")
    parser.add_argument("--skip-peer", action="store_true", help="measure ours only")
    parser.add_argument("--pte-kernels", choices=("stock", "llm"), default="stock", help="our program's kernel set")
    parser.add_argument("--json", action="store_true")
    hidden_options(parser, "checkpoint", "out")
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if answer_step(args, STEPS):
        return
    if args.quick:
        args.preset, args.prompt, args.decode, args.repeats, args.max_seq_len = "tiny", 16, 8, 1, 64
    from exporter.config import preset

    config = preset(args.preset)
    if args.layers:
        config = with_layer_types(config, config.text.layer_types[: args.layers])
    args.vocab = config.text.vocab_size
    with work_dir(args.work, "bench-pte-") as work:
        report = measure(args, config, work)
    print(json.dumps(report, indent=1) if args.json else format_report(report, args))


def measure(args, config, work: Path) -> dict:
    checkpoint, ours, peer = work / "checkpoint", work / "ours", work / "peer"
    write_checkpoint(config, checkpoint)
    report = {"ours": step(args, "export-ours", checkpoint=checkpoint, out=ours)}
    runs = {"ours": lambda: step(args, "run", out=ours)}
    if not args.skip_peer:
        report["peer"] = step(args, "export-peer", checkpoint=checkpoint, out=peer)
        runs["peer"] = lambda: step(args, "run", out=peer, peer=True)
    # Run processes in turns (ours, peer, ours, peer, ...): a slow spell of this shared machine then
    # falls on both, and each round gives a ratio of its own.
    rounds = in_turns(runs, args.rounds)
    for who in runs:
        report[who].update(size_mb=files_bytes(work / who, PTE_FILES) / 2**20, **_median_runs(rounds[who]))
    if args.skip_peer:
        return report
    report["round_ratios"] = {key: [m[key] / p[key] for m, p in zip(rounds["ours"], rounds["peer"])]
                              for key in ("prefill_tok_s", "decode_tok_s")}
    difference = np.load(ours / "prefill_logits.npy") - np.load(peer / "prefill_logits.npy")
    report["prefill_logits_max_abs_diff"] = float(np.abs(difference).max())
    return report


def step(args, name: str, **flags) -> dict:
    return run_step(__spec__.name, name, args, driver_only=DRIVER_ONLY, **flags)


def _median_runs(runs: list[dict]) -> dict:
    """Run-step results of several processes: medians of the figures, every run's times kept."""
    merged = {f"run_{k}": statistics.median(r[k] for r in runs)
              for k in ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb")}
    merged["run_model_rss_mb"] = statistics.median(r["peak_rss_mb"] - r["runtime_rss_mb"] for r in runs)
    for k in ("prefill_s_all", "decode_s_all"):
        merged[f"run_{k}"] = [t for r in runs for t in r[k]]
    return merged


def format_report(report: dict, args) -> str:
    rows = [
        ("export time, s (load included)", "export_s"),
        ("export peak RSS, MB", "peak_rss_mb"),
        ("program size (.pte + .ptd), MB", "size_mb"),
        ("program load, s", "run_load_s"),
        (f"prefill, tok/s ({args.prompt} tokens)", "run_prefill_tok_s"),
        (f"decode, tok/s ({args.decode} tokens)", "run_decode_tok_s"),
        ("peak RSS while running, MB", "run_peak_rss_mb"),
        ("  of it the model's (peak - before load), MB", "run_model_rss_mb"),
    ]
    ours, peer = report["ours"], report.get("peer")
    shape = f"{args.preset} (first {args.layers} layers)" if args.layers else args.preset
    lines = [f"{shape} fp32, XNNPACK, {args.threads} threads, KV capacity {args.max_seq_len}, "
             f"our kernels {args.pte_kernels}", "", *ours_against_peer(rows, ours, peer), ""]
    lines.append(f"our export stages, s: {ours['stages_s']}")
    lines.append(f"our delegate calls {ours['delegate_calls']}, portable ops {ours['portable_ops']}")
    for who, runs in (("ours", ours), ("peer", peer)):
        if runs:
            lines.append(f"prefill runs, s: {who} {describe(runs['run_prefill_s_all'])}")
            lines.append(f"decode runs, s: {who} {describe(runs['run_decode_s_all'])}")
    if peer:
        for key, values in report["round_ratios"].items():
            lines.append(f"ours/peer {key} by round: {', '.join(f'{v:.2f}' for v in values)} "
                         f"(median {statistics.median(values):.2f})")
        lines.append(f"last prompt position logits, max |ours - peer|: {report['prefill_logits_max_abs_diff']:.2e}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
