"""Where a `.pte` program's resident memory goes over its life in ExecuTorch's LLM runner, and when it peaks.

For each program, in its own process run as an app (`bench.memory.run_as_an_app`): the runner
bench_runners uses (`TextLLMRunner`, no torch in the process), constructed, then `--generations`
greedy generations of a `--prompt`-token prompt and `--decode` tokens. A thread samples the
process's resident memory every 10 ms, split into anonymous memory (heap, packed weights,
activations) and file-backed pages (the mapped program and data files, libraries). Each sample is
put in the phase the runner's own clock says it was in: loading the program (the first
generation's `model_load` span: XNNPACK packs the weights there) or generating. The runner's
constructor (which reads the tokenizer) holds the interpreter's lock, so it is read once, after.
The report gives that reading, each phase's highest sample with its split, the process's peak
RSS, and what the data file (`model.ptd`) has resident at the end, per mapping.

This is a measuring tool: run it alone on the machine.

    .venv/bin/python bench/pte_memory.py --tokenizer path/to/tokenizer.json LABEL=DIR [LABEL=DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import steps  # noqa: E402
from bench.bench_runners import PROMPT_WORD, _llm_runner_module, _peak_mb  # noqa: E402
from bench.memory import run_as_an_app  # noqa: E402


def resident_split() -> tuple[float, float]:
    """(anonymous MB, file-backed MB) resident now, from /proc/self/smaps_rollup."""
    fields = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if parts[0] in ("Rss:", "Anonymous:"):
            fields[parts[0]] = int(parts[1]) / 1024
    return fields["Anonymous:"], fields["Rss:"] - fields["Anonymous:"]


def data_file_mappings(name: str) -> list[dict]:
    """Each mapping of a file called `name`: its offset, size and resident MB."""
    found, current = [], None
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if parts and "-" in parts[0] and ":" not in parts[0]:  # a mapping's header line
            current = None
            if len(parts) > 5 and parts[5].endswith("/" + name):
                start, end = (int(v, 16) for v in parts[0].split("-"))
                current = {"offset_mb": int(parts[2], 16) / 2**20, "size_mb": (end - start) / 2**20}
                found.append(current)
        elif current is not None and parts[0] == "Rss:":
            current["resident_mb"] = int(parts[1]) / 1024
    return [m for m in found if m["size_mb"] >= 1]


def step_run(args) -> dict:
    run_as_an_app()
    runner_lib = _llm_runner_module()
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.time() * 1e3, *resident_split()))
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    folder = Path(args.model)
    runner = runner_lib.TextLLMRunner(str(folder / "model.pte"), args.tokenizer, str(folder / "model.ptd"))
    anon, file = resident_split()
    highest = {"constructed": {"rss_mb": anon + file, "anonymous_mb": anon, "file_backed_mb": file}}
    stats = []
    for _ in range(args.generations):
        config = runner_lib.GenerationConfig(max_new_tokens=args.decode, temperature=0.0, echo=False)
        runner.generate(PROMPT_WORD * args.prompt, config, stats_callback=stats.append)
        runner.reset()
    done.set()
    thread.join()
    first = stats[0]
    phases = {"load": (first.model_load_start_ms, first.model_load_end_ms),
              "generate": (first.model_load_end_ms, float("inf"))}
    for phase, (start, end) in phases.items():
        inside = [s for s in samples if start <= s[0] < end]
        if inside:
            _, anon, file = max(inside, key=lambda s: s[1] + s[2])
            highest[phase] = {"rss_mb": anon + file, "anonymous_mb": anon, "file_backed_mb": file}
    return {"highest_sample": highest, "peak_rss_mb": _peak_mb(),
            "data_file_at_end": data_file_mappings("model.ptd"), "samples": len(samples)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("programs", nargs="*", help="LABEL=DIR, DIR holding model.pte and model.ptd")
    parser.add_argument("--tokenizer", help="a Qwen3.5 tokenizer.json (the runner tokenizes the prompt)")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(step_run(args)))
        return
    if not args.programs or not args.tokenizer:
        parser.error("give --tokenizer and at least one LABEL=DIR")
    results = {}
    for item in args.programs:
        label, _, folder = item.rpartition("=")
        label = label or folder
        result = steps.run_step(__file__, "run", args, steps.DRIVER_ONLY + ("programs",), model=folder)
        results[label] = result
        phases = "; ".join(f"{phase} {v['rss_mb']:.0f} (anonymous {v['anonymous_mb']:.0f}, file {v['file_backed_mb']:.0f})"
                           for phase, v in result["highest_sample"].items())
        data = ", ".join(f"{m['resident_mb']:.0f}/{m['size_mb']:.0f}" for m in result["data_file_at_end"])
        print(f"{label}: peak RSS {result['peak_rss_mb']:.0f} MB; after construction, then the highest sample per phase, MB: {phases}; "
              f"model.ptd resident at the end, MB per mapping (resident/size): {data}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
