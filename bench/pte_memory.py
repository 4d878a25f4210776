"""Where a `.pte` program's resident memory goes over its life in ExecuTorch's LLM runner, and when it peaks.

For each program, in its own process run as an app (`bench.common.run_as_an_app`): the runner
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

    .venv/bin/python -m bench.pte_memory --tokenizer path/to/tokenizer.json LABEL=DIR [LABEL=DIR ...]
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from bench.common import (
    DRIVER_ONLY,
    PROMPT_WORD,
    answer_step,
    argument_parser,
    hidden_options,
    llm_runner_module,
    mappings,
    run_as_an_app,
    run_step,
)


def resident_split() -> tuple[float, float]:
    """(anonymous MB, file-backed MB) resident now, from /proc/self/smaps_rollup (cheap enough to poll)."""
    fields = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts[0] in ("Rss:", "Anonymous:"):
                fields[parts[0]] = int(parts[1]) / 1024
    return fields["Anonymous:"], fields["Rss:"] - fields["Anonymous:"]


def step_run(args) -> dict:
    run_as_an_app()
    runner_lib = llm_runner_module()
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
    data_file = [m for m in mappings() if m["path"].endswith("/model.ptd") and m["size_mb"] >= 1]
    return {"highest_sample": highest, "data_file_at_end": data_file, "samples": len(samples)}


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("programs", nargs="*", help="LABEL=DIR, DIR holding model.pte and model.ptd")
    parser.add_argument("--tokenizer", help="a Qwen3.5 tokenizer.json (the runner tokenizes the prompt)")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    hidden_options(parser, "model")
    args = parser.parse_args(argv)
    if answer_step(args, {"run": step_run}):
        return
    if not args.programs or not args.tokenizer:
        parser.error("give --tokenizer and at least one LABEL=DIR")
    results = {}
    for item in args.programs:
        label, _, folder = item.rpartition("=")
        label = label or folder
        result = run_step(__spec__.name, "run", args, driver_only=DRIVER_ONLY + ("programs",), model=folder)
        results[label] = result
        phases = "; ".join(f"{phase} {v['rss_mb']:.0f} (anonymous {v['anonymous_mb']:.0f}, "
                           f"file {v['file_backed_mb']:.0f})" for phase, v in result["highest_sample"].items())
        data = ", ".join(f"{m['resident_mb']:.0f}/{m['size_mb']:.0f}" for m in result["data_file_at_end"])
        print(f"{label}: peak RSS {result['peak_rss_mb']:.0f} MB; after construction, then the highest sample per "
              f"phase, MB: {phases}; model.ptd resident at the end, MB per mapping (resident/size): {data}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
