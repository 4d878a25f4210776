"""Decode speed and memory as an app runs the artifacts: each in the runtime its maker ships.

- `.pte` programs (ours, or ExecuTorch's own `export_llm` ones) run in ExecuTorch's stock C++ LLM
  runner, `TextLLMRunner`: what its Android and iOS SDKs use, with the quantized and LLM custom-op
  kernel libraries its apps link. Its Python extension is loaded by file, so the process has no
  torch in it (the package's `__init__` imports torch; the extension does not need it). The
  extension still maps libtorch's C++ libraries, so "model's MB" (peak minus the RSS once the
  runtime is loaded) is the figure an app would add.
- `--genai` models (the builder's, or ours: the export writes the `genai_config.json` it reads)
  run in `onnxruntime_genai`'s generator with 2 intra-op threads, the KV buffer sized to the
  bench's context (`max_length`), not the model's 262 144 tokens.
- `--onnx` models run on plain `onnxruntime`, a greedy token at a time, random prompt ids (speed
  does not depend on them): a bundle of ours through `runtime.backends` itself, the builder's model
  or a bare export through `bench.onnx_run.GraphRunner`, which binds it the same way.

Both runtimes use a thread per core by default (ExecuTorch's threadpool, ONNX Runtime's intra-op
pool): on this 2-core machine, 2 threads, like the other benches.

Each measurement is its own process, run as an app (`bench.common.run_as_an_app`), and reports the
RSS once the runtime is imported, the peak RSS, prefill and decode tokens per second (the runner's
own clock for `.pte`). Artifacts are measured in turns for `--rounds` rounds (this shared machine's
speed drifts by 10-15 % over minutes); the table gives medians and, against `--baseline`, the median
of the per-round ratios. This is a measuring tool: run it alone on the machine.

    .venv/bin/python -m bench.bench_runners --tokenizer path/to/tokenizer.json \\
        --pte ours=bundle_dir --pte export_llm=dir_with_pte --genai builder=builder_dir

`--tokenizer` is a Qwen3.5 `tokenizer.json` (the runner tokenizes the prompt); a `.pte` directory
holds `model.pte` and, if the weights are external, `model.ptd` (the first `*.pte` otherwise).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from bench.common import (
    DRIVER_ONLY,
    PROMPT_WORD,
    answer_step,
    argument_parser,
    hidden_options,
    in_turns,
    llm_runner_module,
    median_ratio,
    pte_files,
    rss_mb,
    run_as_an_app,
    run_step,
)


def step_pte(args) -> dict:
    runner_lib = llm_runner_module()
    program, data = pte_files(Path(args.model))
    runtime_rss_mb = rss_mb()
    runner = runner_lib.TextLLMRunner(str(program), args.tokenizer, str(data) if data else None)
    best = {"prefill_tok_s": 0.0, "decode_tok_s": 0.0}
    for _ in range(args.repeats):
        stats = []
        config = runner_lib.GenerationConfig(max_new_tokens=args.decode, temperature=0.0, echo=False)
        runner.generate(PROMPT_WORD * args.prompt, config, stats_callback=stats.append)
        runner.reset()
        s = stats[-1]
        prefill_s = (s.prompt_eval_end_ms - s.inference_start_ms) / 1e3
        decode_s = (s.inference_end_ms - s.prompt_eval_end_ms) / 1e3
        best["prefill_tok_s"] = max(best["prefill_tok_s"], s.num_prompt_tokens / prefill_s)
        best["decode_tok_s"] = max(best["decode_tok_s"], (s.num_generated_tokens - 1) / decode_s)
        best.update(prompt_tokens=s.num_prompt_tokens, generated_tokens=s.num_generated_tokens)
    return {**best, "runtime_rss_mb": runtime_rss_mb}


def step_genai(args) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    from bench.onnx_run import genai_model, random_prompt

    runtime_rss_mb = rss_mb()
    model = genai_model(args.model)
    ids = random_prompt(Path(args.model), args.prompt).astype(np.int32)
    best = {"prefill_tok_s": 0.0, "decode_tok_s": 0.0}
    for _ in range(args.repeats):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=args.prompt + args.decode + 1, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.decode - 1):
            generator.generate_next_token()
        decode_s = time.perf_counter() - start
        best["prefill_tok_s"] = max(best["prefill_tok_s"], args.prompt / prefill_s)
        best["decode_tok_s"] = max(best["decode_tok_s"], (args.decode - 1) / decode_s)
        del generator
    return {**best, "prompt_tokens": args.prompt, "generated_tokens": args.decode, "runtime_rss_mb": runtime_rss_mb}


def step_onnx(args) -> dict:
    """An ONNX model on plain onnxruntime (`bench.onnx_run.open_onnx`): greedy, 2 threads."""
    import numpy as np
    import onnxruntime  # noqa: F401  (before the RSS is read: the runtime's bindings are not the model's memory)

    from bench.onnx_run import open_onnx, random_prompt

    runtime_rss_mb = rss_mb()
    model = open_onnx(Path(args.model), threads=2)
    ids = random_prompt(Path(args.model), args.prompt)
    best = {"prefill_tok_s": 0.0, "decode_tok_s": 0.0}
    for _ in range(args.repeats):
        model.reset()
        start = time.perf_counter()
        logits = model.forward(ids, 0)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for step in range(args.decode - 1):
            logits = model.forward(np.array([logits.argmax()]), args.prompt + step)
        decode_s = time.perf_counter() - start
        best["prefill_tok_s"] = max(best["prefill_tok_s"], args.prompt / prefill_s)
        best["decode_tok_s"] = max(best["decode_tok_s"], (args.decode - 1) / decode_s)
    return {**best, "prompt_tokens": args.prompt, "generated_tokens": args.decode, "runtime_rss_mb": runtime_rss_mb}


STEPS = {"pte": step_pte, "genai": step_genai, "onnx": step_onnx}
RUNTIMES = {"pte": "ExecuTorch TextLLMRunner", "genai": "onnxruntime-genai", "onnx": "onnxruntime"}


def measure(kind: str, label: str, model: str, args) -> dict:
    result = run_step(__spec__.name, kind, args, driver_only=DRIVER_ONLY + ("rounds", "baseline", *STEPS), model=model)
    return {"who": label, "runtime": RUNTIMES[kind], **result}


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--pte", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--genai", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--onnx", action="append", default=[], metavar="LABEL=DIR",
                        help="an ONNX model (ours or the builder's) on plain onnxruntime, 2 threads")
    parser.add_argument("--tokenizer", help="a Qwen3.5 tokenizer.json (the LLM runner tokenizes the prompt)")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="generations per process; the best is its figure")
    parser.add_argument("--rounds", type=int, default=3,
                        help="processes per artifact, taken in turns (A B C A B C ...); medians are reported")
    parser.add_argument("--baseline",
                        help="the label the others are divided by, round by round (default: the first --genai)")
    parser.add_argument("--json", help="also write the results here")
    hidden_options(parser, "model")
    args = parser.parse_args(argv)
    if args.step:
        run_as_an_app()  # every measurement, ours and the peers', as an app
    if answer_step(args, STEPS):
        return
    if args.pte and not args.tokenizer:
        parser.error("--pte needs --tokenizer: ExecuTorch's LLM runner tokenizes the prompt")
    runs = {label: (kind, model)
            for kind in STEPS for label, _, model in (spec.partition("=") for spec in getattr(args, kind))}
    baseline = args.baseline or (args.genai[0].split("=", 1)[0] if args.genai else None)
    if baseline is not None and baseline not in runs:
        parser.error(f"--baseline {baseline}: not one of the labels given")
    # Rounds in turns, so that a slow spell of this shared machine falls on every artifact alike.
    rounds = in_turns({label: (lambda kind=kind, label=label, model=model: measure(kind, label, model, args))
                       for label, (kind, model) in runs.items()}, args.rounds)
    results = [summarize(rounds[label], rounds.get(baseline)) for label in runs]
    print(f"prompt {args.prompt} tokens, decode {args.decode}; each process the best of {args.repeats} generations, "
          f"{args.rounds} processes per artifact in turns, medians; RSS as an app\n")
    ratio = f" / {baseline}" if baseline else ""
    print(f"| who | runtime | prefill tok/s | decode tok/s | prefill{ratio} | decode{ratio} | RSS after import MB "
          "| peak RSS MB | model's MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['who']} | {r['runtime']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | "
              f"{r.get('prefill_ratio', float('nan')):.2f} | {r.get('decode_ratio', float('nan')):.2f} | "
              f"{r['runtime_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['runtime_rss_mb']:.0f} |")
    print("\ndecode tok/s by round: " + "; ".join(
        f"{r['who']} {', '.join(f'{v:.2f}' for v in r['decode_by_round'])}" for r in results))
    if args.json:
        by_round = [[rounds[label][i] for label in runs] for i in range(args.rounds)]
        Path(args.json).write_text(json.dumps({"results": results, "rounds": by_round}, indent=1) + "\n")


def summarize(mine: list[dict], baseline: list[dict] | None) -> dict:
    """One artifact over the rounds: median rates, the highest peak RSS, and the median of its per-round ratios."""
    out = {**mine[0], "decode_by_round": [m["decode_tok_s"] for m in mine]}
    for key in ("prefill_tok_s", "decode_tok_s", "runtime_rss_mb"):
        out[key] = statistics.median(m[key] for m in mine)
    out["peak_rss_mb"] = max(m["peak_rss_mb"] for m in mine)
    if baseline is not None:
        for key in ("prefill", "decode"):
            out[f"{key}_ratio"] = median_ratio([m[f"{key}_tok_s"] for m in mine], [b[f"{key}_tok_s"] for b in baseline])
    return out


if __name__ == "__main__":
    main()
