"""Timing a bundle's backends: prefill and decode throughput, and peak memory while running.

Prefill is one normal (chunked) prefill of `prompt_len` seeded random ids;
decode is `gen_len` single-token steps fed with the argmax (EOS ignored, so
every run does the same work). One warm-up run, then `runs` timed runs; the
median is reported. Peak RSS is the process high-water mark, reset before the
backend loads where Linux allows it (`/proc/self/clear_refs`), so it covers
loading and running this backend plus whatever the process already held
(reported apart as `baseline_rss_bytes`).

Not here: how fast the peers are (`bench/`, measured in turns beside ours).
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import physical_cores
from runtime.bundle import Bundle
from runtime.errors import QwenEdgeError
from runtime.session import load


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart the high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _one_run(session, prompt: np.ndarray, gen_len: int) -> tuple[float, float]:
    session.reset()
    start = time.perf_counter()
    logits = session.prefill(prompt)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(gen_len):
        logits = session.decode(int(np.argmax(logits)))
    return prefill_s, time.perf_counter() - start


def bench_backend(bundle: Bundle, backend: str, *, prompt_len: int = 128, gen_len: int = 64, runs: int = 3,
                  threads: int | None = None, model=None, progress=None) -> dict[str, Any]:
    """Median prefill and decode throughput of one backend, with its peak RSS."""
    if prompt_len < 1 or gen_len < 1 or runs < 1:
        raise QwenEdgeError("--prompt-len, --gen-len and --runs must be at least 1")
    threads = threads or physical_cores()
    gc.collect()
    baseline = _status_bytes("VmRSS") or 0
    peak_reset = reset_peak_rss()
    session = load(bundle, backend, model=model, threads=threads)
    if prompt_len + gen_len > session.backend.capacity:
        raise QwenEdgeError(f"--prompt-len + --gen-len = {prompt_len + gen_len} exceeds the bundle's max_seq_len "
                            f"{session.backend.capacity}")
    prompt = np.random.default_rng(0).integers(0, bundle.config.text.vocab_size, size=prompt_len)
    timings = []
    for i in range(runs + 1):  # the first is a warm-up
        timings.append(_one_run(session, prompt, gen_len))
        if progress is not None:
            progress.update(1)
    prefill = statistics.median(t[0] for t in timings[1:])
    decode = statistics.median(t[1] for t in timings[1:])
    entry = bundle.artifact(backend) if backend != "reference" else None
    return {
        "backend": backend,
        "quant": entry["quant"] if entry else "fp32",
        "size_bytes": bundle.size_bytes(backend) if entry else None,
        "threads": threads,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "runs": runs,
        "prefill_tokens_per_s": prompt_len / prefill,
        "decode_tokens_per_s": gen_len / decode,
        "prefill_chunk": session.backend.max_chunk,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_scope": "this backend" if peak_reset else "whole process (high-water mark could not be reset)",
        "baseline_rss_bytes": baseline,
    }


def bench_bundle(bundle: Bundle, backends: list[str], **kwargs) -> dict[str, Any]:
    from tqdm import tqdm

    runs = kwargs.get("runs", 3)
    with tqdm(total=len(backends) * (runs + 1), desc="bench", unit="run", disable=None, leave=False) as progress:
        results = [bench_backend(bundle, name, progress=progress, **kwargs) for name in backends]
    return {"bundle": str(bundle.root), "results": results}


def format_bench(report: dict[str, Any]) -> str:
    lines = [f"{'backend':<10} {'quant':<7} {'size MB':>8} {'threads':>7} {'prefill tok/s':>14} "
             f"{'decode tok/s':>13} {'peak RSS MB':>12}"]
    for r in report["results"]:
        size = f"{r['size_bytes'] / 1e6:.1f}" if r["size_bytes"] else "-"
        lines.append(f"{r['backend']:<10} {r['quant']:<7} {size:>8} {r['threads']:>7} "
                     f"{r['prefill_tokens_per_s']:>14.1f} {r['decode_tokens_per_s']:>13.1f} "
                     f"{r['peak_rss_bytes'] / 1e6:>12.0f}")
    first = report["results"][0] if report["results"] else None
    if first:
        lines.append(f"prompt {first['prompt_len']} tokens, {first['gen_len']} decode steps, median of "
                     f"{first['runs']} runs after a warm-up; peak RSS: {first['peak_rss_scope']}, "
                     f"process baseline {first['baseline_rss_bytes'] / 1e6:.0f} MB")
    return "\n".join(lines)
