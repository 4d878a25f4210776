"""Benchmark our ExecuTorch export against ExecuTorch's own Qwen3.5 path (`export_llm`) on the same weights.

Writes a random-weight checkpoint of a preset (default: the 0.8B shape) in the text-only HF layout,
then, each step in its own subprocess so that its peak RSS is its own:

    export-ours   exporter.checkpoint.load_model + exporter.executorch.export_executorch (fp32, XNNPACK)
    export-peer   upstream convert_weights + export_llm (bench/upstream_executorch.py)
    run-ours      executorch.runtime: the prompt in one call (our prefill chunk), then --decode greedy steps
    run-peer      the same for upstream's program (its forward takes what its metadata says, token by token)

and prints export time and peak RSS, program size (every file the program needs), prefill and
decode tok/s, peak RSS while running (as an app: bench/memory.py) and the model's share of it,
and the ratios ours/peer. Both run on ExecuTorch's Python runtime with --threads threads. The
last prompt position's logits of the two programs are compared as a check that both read the
same weights.

This is a measuring tool, not a test; run it alone on the machine. `--quick` is a smoke check on
the tiny preset.

    .venv/bin/python bench/bench_executorch.py                      # 0.8B, prompt 128, decode 64, 3 rounds
    .venv/bin/python bench/bench_executorch.py --quick
    .venv/bin/python bench/bench_executorch.py --skip-peer          # ours only
    .venv/bin/python bench/bench_executorch.py --pte-kernels llm    # ours with ExecuTorch's LLM custom ops
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import steps  # noqa: E402


def peak_rss_mb() -> float:
    """The step's peak RSS: its own, or its largest finished child's (upstream's export_llm runs as a child)."""
    peaks = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(peaks) / 1024  # Linux reports KiB


def program_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in (".pte", ".ptd")) / 2**20


# ---------------------------------------------------------------------------------------------------
# Steps (each runs in a subprocess and prints one JSON line)
# ---------------------------------------------------------------------------------------------------


def step_checkpoint(args) -> dict:
    from exporter.checkpoint import random_model, save_checkpoint

    config = bench_config(args)
    save_checkpoint(config, random_model(config), Path(args.out))
    return {"peak_rss_mb": peak_rss_mb()}


def bench_config(args):
    """The preset, or with --layers N its first N decoder layers (the layer pattern kept): a quicker look."""
    import dataclasses

    from exporter.config import preset

    config = preset(args.preset)
    if not args.layers:
        return config
    text = dataclasses.replace(config.text, layer_types=config.text.layer_types[: args.layers])
    return dataclasses.replace(config, text=text)


def step_export_ours(args) -> dict:
    from exporter.artifact import ExportOptions
    from exporter.checkpoint import load_model
    from exporter.executorch import export_executorch

    start = time.perf_counter()
    config, model, _ = load_model(args.checkpoint)
    options = ExportOptions(max_seq_len=args.max_seq_len, prefill_chunk=args.prompt, pte_kernels=args.pte_kernels)
    artifact = export_executorch(model, config, Path(args.out), options)
    report = artifact.details["export_report"]
    return {
        "export_s": time.perf_counter() - start,
        "stages_s": artifact.details["export_seconds"],
        "peak_rss_mb": peak_rss_mb(),
        "size_mb": program_mb(Path(args.out)),
        "delegate_calls": report["delegate_calls"],
        "portable_ops": report["portable_ops"],
    }


def step_export_peer(args) -> dict:
    from bench.upstream_executorch import export_upstream

    start = time.perf_counter()
    export_upstream(Path(args.checkpoint), Path(args.out), max_seq_len=args.max_seq_len)
    return {"export_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "size_mb": program_mb(Path(args.out))}


def step_run(args) -> dict:
    """Prefill --prompt random ids (one call for ours), then --decode greedy steps; each the best of --repeats runs."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from bench.memory import rss_bytes, run_as_an_app

    run_as_an_app()
    if args.peer or args.pte_kernels == "llm":
        import bench.upstream_executorch  # noqa: F401  registers ExecuTorch's LLM custom ops (and quantized ones)
    portable_lib._unsafe_reset_threadpool(args.threads)
    out = Path(args.out)
    pte = next(out.glob("*.pte"))
    data = next(out.glob("*.ptd"), None)
    runtime_rss_mb = rss_bytes() / 2**20
    start = time.perf_counter()
    method = Runtime.get().load_program(pte, data_path=data).load_method("forward")
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
    return {
        "load_s": load_s,
        "prefill_tok_s": args.prompt / min(prefill),
        "prefill_s_all": prefill,
        "decode_tok_s": args.decode / min(decode),
        "decode_s_all": decode,
        "peak_rss_mb": peak_rss_mb(),
        "model_rss_mb": peak_rss_mb() - runtime_rss_mb,
    }


STEPS = {"checkpoint": step_checkpoint, "export-ours": step_export_ours, "export-peer": step_export_peer, "run": step_run}


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


def run_step(name: str, args, **extra) -> dict:
    return steps.run_step(__file__, name, args, steps.DRIVER_ONLY + ("skip_peer", "rounds"), **extra)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="0.8b")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens; ours prefills them in one call")
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="prefill + decode runs per process; the best of each counts")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run processes per program, ours and peer in turns; medians")
    parser.add_argument("--max-seq-len", type=int, default=256, help="KV capacity of both programs")
    parser.add_argument("--layers", type=int, help="keep only the first N decoder layers (a quicker look; not the issue's figure)")
    parser.add_argument("--work", help="working directory (default: a temporary one, removed after)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short prompt: a smoke check")
    parser.add_argument("--skip-peer", action="store_true", help="measure ours only")
    parser.add_argument("--pte-kernels", choices=("stock", "llm"), default="stock", help="our program's kernel set")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
        return
    if args.quick:
        args.preset, args.prompt, args.decode, args.repeats, args.max_seq_len = "tiny", 16, 8, 1, 64
    from exporter.config import preset

    args.vocab = preset(args.preset).text.vocab_size
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-pte-"))
    try:
        report = measure(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1) if args.json else format_report(report, args))


def measure(args, work: Path) -> dict:
    checkpoint, ours, peer = work / "checkpoint", work / "ours", work / "peer"
    if not checkpoint.exists():
        run_step("checkpoint", args, out=checkpoint)
    report = {"ours": run_step("export-ours", args, checkpoint=checkpoint, out=ours)}
    if args.skip_peer:
        report["ours"].update(_median_runs([run_step("run", args, out=ours) for _ in range(args.rounds)]))
        return report
    report["peer"] = run_step("export-peer", args, checkpoint=checkpoint, out=peer)
    # Run processes in turns (ours, peer, ours, peer, ...): a slow spell of this shared machine then
    # falls on both, and each round gives a ratio of its own.
    rounds = [(run_step("run", args, out=ours), run_step("run", args, out=peer, peer=True)) for _ in range(args.rounds)]
    report["ours"].update(_median_runs([mine for mine, _ in rounds]))
    report["peer"].update(_median_runs([theirs for _, theirs in rounds]))
    report["round_ratios"] = {key: [mine[key] / theirs[key] for mine, theirs in rounds]
                              for key in ("prefill_tok_s", "decode_tok_s")}
    difference = np.load(ours / "prefill_logits.npy") - np.load(peer / "prefill_logits.npy")
    report["prefill_logits_max_abs_diff"] = float(np.abs(difference).max())
    return report


def _median_runs(runs: list[dict]) -> dict:
    """Run-step results of several processes: medians of the figures, every run's times kept."""
    keys = ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "model_rss_mb")
    merged = {f"run_{k}": statistics.median(r[k] for r in runs) for k in keys}
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
             f"our kernels {args.pte_kernels}", ""]
    lines.append(f"{'':44s} {'ours':>10s} {'peer':>10s} {'ours/peer':>10s}")
    for label, key in rows:
        theirs = f"{peer[key]:10.2f} {ours[key] / peer[key]:10.2f}" if peer else f"{'-':>10s} {'-':>10s}"
        lines.append(f"{label:44s} {ours[key]:10.2f} {theirs}")
    lines.append("")
    lines.append(f"our export stages, s: {ours['stages_s']}")
    lines.append(f"our delegate calls {ours['delegate_calls']}, portable ops {ours['portable_ops']}")
    for who, runs in (("ours", ours), ("peer", peer)):
        if runs:
            lines.append(f"prefill runs, s: {who} {fmt(runs['run_prefill_s_all'])}")
            lines.append(f"decode runs, s: {who} {fmt(runs['run_decode_s_all'])}")
    if peer:
        for key, values in report["round_ratios"].items():
            lines.append(f"ours/peer {key} by round: {', '.join(f'{v:.2f}' for v in values)} "
                         f"(median {statistics.median(values):.2f})")
        lines.append(f"last prompt position logits, max |ours - peer|: {report['prefill_logits_max_abs_diff']:.2e}")
    return "\n".join(lines)


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} of {', '.join(f'{v:.3f}' for v in values)}"


if __name__ == "__main__":
    main()
