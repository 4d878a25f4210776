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
- `--onnx` models (ours or the builder's) run on plain `onnxruntime` as `runtime.backends` opens
  ours, a greedy token at a time; random prompt ids (speed does not depend on them).

Both runtimes use a thread per core by default (ExecuTorch's threadpool, ONNX Runtime's intra-op
pool): on this 2-core machine, 2 threads, like the other benches.

Each measurement is its own process, run as an app (`bench.memory.run_as_an_app`), and reports the
RSS once the runtime is imported, the peak RSS, prefill and decode tokens per second (the runner's
own clock for `.pte`). Artifacts are measured in turns for `--rounds` rounds (this shared machine's
speed drifts by 10-15 % over minutes); the table gives medians and, against `--baseline`, the median
of the per-round ratios. This is a measuring tool: run it alone on the machine.

    .venv/bin/python bench/bench_runners.py --tokenizer path/to/tokenizer.json \\
        --pte ours=bundle_dir --pte export_llm=dir_with_pte --genai builder=builder_dir

`--tokenizer` is a Qwen3.5 `tokenizer.json` (the runner tokenizes the prompt); a `.pte` directory
holds `model.pte` and, if the weights are external, `model.ptd` (the first `*.pte` otherwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import steps  # noqa: E402
from bench.memory import rss_bytes, run_as_an_app  # noqa: E402

# A word the Qwen3.5 tokenizer encodes as one token, repeated to make a prompt of --prompt tokens.
PROMPT_WORD = " hello"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Kernel libraries an LLM app links beside the runtime: quantized ops (an int8 embedding's lookup)
# and ExecuTorch's LLM custom ops (export_llm's programs need them; ours do not). Loaded for every
# program alike, as the app would have them.
KERNEL_LIBRARIES = ("lib/libexecutorch_kernels_quantized.so", "extension/llm/custom_ops/libcustom_ops_aot_lib.so")


def _llm_runner_module():
    """ExecuTorch's `_llm_runner` extension and its kernel libraries, loaded by path so that torch is not imported."""
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    root = Path(spec.submodule_search_locations[0])
    for library in KERNEL_LIBRARIES:
        ctypes.CDLL(str(root / library), mode=ctypes.RTLD_GLOBAL)
    folder = root / "extension" / "llm" / "runner"
    library = next(folder.glob("_llm_runner*.so"))
    module_spec = importlib.util.spec_from_file_location("_llm_runner", library)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if "torch" in sys.modules:
        raise RuntimeError("torch was imported with the LLM runner: the RSS would include it")
    return module


def step_pte(args) -> dict:
    runner_lib = _llm_runner_module()
    folder = Path(args.model)
    program = folder / "model.pte" if (folder / "model.pte").exists() else next(folder.glob("*.pte"))
    data = folder / "model.ptd"
    runtime_rss = rss_bytes()
    runner = runner_lib.TextLLMRunner(str(program), args.tokenizer, str(data) if data.exists() else None)
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
    return {**best, "runtime_rss_mb": runtime_rss / 2**20, "peak_rss_mb": _peak_mb()}


def genai_model(folder, threads: int = 2):
    """An onnxruntime-genai model on the CPU with `threads` intra-op threads.

    2, like the other runs here: neither config sets a count (the builder's nor ours), and
    onnxruntime-genai's own default decoded the 0.8B at 41-44 tok/s on this 2-core machine.
    """
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def step_genai(args) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    runtime_rss = rss_bytes()
    model = genai_model(args.model)
    best = {"prefill_tok_s": 0.0, "decode_tok_s": 0.0}
    ids = np.random.default_rng(0).integers(0, 248_000, size=args.prompt, dtype=np.int32)
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
    return {**best, "prompt_tokens": args.prompt, "generated_tokens": args.decode,
            "runtime_rss_mb": runtime_rss / 2**20, "peak_rss_mb": _peak_mb()}


def step_onnx(args) -> dict:
    """An ONNX model (ours, or the builder's) on plain onnxruntime, as `runtime.backends` opens ours: greedy, 2 threads."""
    import numpy as np
    import onnxruntime as ort

    from bench.bench_onnx import Runner

    runtime_rss = rss_bytes()
    folder = Path(args.model)
    genai = folder / "genai_config.json"  # the builder leaves the KV head size symbolic; its config names it
    head_dim = json.loads(genai.read_text())["model"]["decoder"]["head_size"] if genai.exists() else 0
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    runner = Runner(ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]),
                    head_dim=head_dim, model=folder / "model.onnx")
    ids = np.random.default_rng(0).integers(0, 248_000, size=(1, args.prompt))
    best = {"prefill_tok_s": 0.0, "decode_tok_s": 0.0}
    for _ in range(args.repeats):
        state = runner.empty_state()
        start = time.perf_counter()
        logits, state = runner.call(ids, state)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.decode - 1):
            logits, state = runner.call(np.argmax(logits, axis=-1).reshape(1, 1).astype(np.int64), state)
        decode_s = time.perf_counter() - start
        best["prefill_tok_s"] = max(best["prefill_tok_s"], args.prompt / prefill_s)
        best["decode_tok_s"] = max(best["decode_tok_s"], (args.decode - 1) / decode_s)
    return {**best, "prompt_tokens": args.prompt, "generated_tokens": args.decode,
            "runtime_rss_mb": runtime_rss / 2**20, "peak_rss_mb": _peak_mb()}


STEPS = {"pte": step_pte, "genai": step_genai, "onnx": step_onnx}
RUNTIMES = {"pte": "ExecuTorch TextLLMRunner", "genai": "onnxruntime-genai", "onnx": "onnxruntime"}


def measure(kind: str, label: str, model: str, args) -> dict:
    result = steps.run_step(__file__, kind, args, driver_only=steps.DRIVER_ONLY + tuple(STEPS), model=model)
    return {"who": label, "runtime": RUNTIMES[kind], **result}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        run_as_an_app()
        print(json.dumps(STEPS[args.step](args)))
        return
    if args.pte and not args.tokenizer:
        parser.error("--pte needs --tokenizer: ExecuTorch's LLM runner tokenizes the prompt")
    runs = [(kind, *spec.split("=", 1)) for kind in STEPS for spec in getattr(args, kind)]
    baseline = args.baseline or (args.genai[0].split("=", 1)[0] if args.genai else None)
    if baseline is not None and baseline not in [label for _, label, _ in runs]:
        parser.error(f"--baseline {baseline}: not one of the labels given")
    # Rounds in turns, so that a slow spell of this shared machine falls on every artifact alike.
    rounds = [[measure(kind, label, model, args) for kind, label, model in runs] for _ in range(args.rounds)]
    results = [summarize(i, rounds, baseline) for i in range(len(runs))]
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
        Path(args.json).write_text(json.dumps({"results": results, "rounds": rounds}, indent=1) + "\n")


def summarize(index: int, rounds: list[list[dict]], baseline: str | None) -> dict:
    """One artifact over the rounds: median rates, the highest peak RSS, and the median of its per-round ratios."""
    mine = [r[index] for r in rounds]
    out = {**mine[0], "decode_by_round": [m["decode_tok_s"] for m in mine]}
    for key in ("prefill_tok_s", "decode_tok_s", "runtime_rss_mb"):
        out[key] = statistics.median(m[key] for m in mine)
    out["peak_rss_mb"] = max(m["peak_rss_mb"] for m in mine)
    if baseline is not None:
        peers = [next(x for x in r if x["who"] == baseline) for r in rounds]
        for key in ("prefill", "decode"):
            out[f"{key}_ratio"] = statistics.median(m[f"{key}_tok_s"] / p[f"{key}_tok_s"] for m, p in zip(mine, peers))
    return out


if __name__ == "__main__":
    main()
