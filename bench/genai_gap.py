"""What onnxruntime-genai adds to a 4-bit model's decode, taken apart, in one process and in turns.

The builder's model decodes faster in onnxruntime-genai than fed naively on plain onnxruntime.
Its `genai_config.json` turns on `past_present_share_buffer`: the KV caches are buffers of the
whole context that GroupQueryAttention writes in place, and the generator binds the conv and
recurrent states as their own outputs too. This bench runs the builder's model three ways,
greedy, from the same prompt:

- `copied`: plain onnxruntime, every present in a fresh buffer, the KV caches grown by a token;
- `in place`: plain onnxruntime, every state bound as its own output, KV caches of 2048 slots
  (`bench_onnx.Runner`, as `runtime.backends` runs ours);
- `genai`: onnxruntime-genai's generator.

With `--ours DIR` it then runs our model in onnxruntime-genai and on plain onnxruntime, copied
and in place (as `runtime.backends` does), against the builder's in onnxruntime-genai, in turns.
Every run: 2 intra-op threads, a `--prompt`-token prompt, `--decode` greedy tokens timed; medians
over `--rounds`, and the median of the per-round ratios. Run it alone on the machine.

    .venv/bin/python bench/genai_gap.py --builder builder_dir [--ours our_onnx_dir]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_onnx import Runner  # noqa: E402
from bench.bench_runners import genai_model  # noqa: E402

THREADS = 2


def _session(folder: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    return ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])


def _head_size(folder: Path) -> int:
    return json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["head_size"]


def run_plain(session, model: Path, head_size: int, prompt: np.ndarray, decode: int,
              in_place: bool = True) -> tuple[float, list[int]]:
    """(decode tok/s, the greedy tokens)."""
    runner = Runner(session, head_dim=head_size, model=model, in_place=in_place)
    logits, state = runner.call(prompt, runner.empty_state())
    tokens, start = [int(logits[0].argmax())], time.perf_counter()
    for _ in range(decode):
        logits, state = runner.call(np.array([[tokens[-1]]]), state)
        tokens.append(int(logits[0].argmax()))
    return decode / (time.perf_counter() - start), tokens


def genai(model, prompt: np.ndarray, decode: int) -> float:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt.shape[1] + decode + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt[0].astype(np.int32))
    start = time.perf_counter()
    for _ in range(decode):
        generator.generate_next_token()
    return decode / (time.perf_counter() - start)


def _same_tokens(greedy: dict[str, list[int]]) -> None:
    if len({tuple(tokens) for tokens in greedy.values()}) != 1:
        sys.exit(f"the ways disagree on the greedy tokens: {greedy}")


def in_turns(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Each run once a round, the order reversed every other round (a later run in a round is favoured)."""
    rates = {name: [] for name in runs}
    for index in range(rounds):
        for name in (list(runs) if index % 2 == 0 else list(runs)[::-1]):
            rates[name].append(runs[name]())
    return rates


def report(title: str, rates: dict[str, list[float]], baseline: str) -> dict:
    print(f"\n{title}\n\n| run | decode tok/s, median | by round | / {baseline}, median of rounds |\n|---|---|---|---|")
    summary = {}
    for name, values in rates.items():
        ratio = statistics.median(a / b for a, b in zip(values, rates[baseline]))
        summary[name] = {"median": statistics.median(values), "rounds": values, "ratio": ratio}
        print(f"| {name} | {summary[name]['median']:.2f} | {', '.join(f'{v:.1f}' for v in values)} | {ratio:.3f} |")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builder", required=True, help="the builder's model directory (with genai_config.json)")
    parser.add_argument("--ours", help="our ONNX model directory (with the genai_config.json the export writes)")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    builder = Path(args.builder)
    prompt = np.random.default_rng(0).integers(0, 248_000, size=(1, args.prompt))
    head_size = _head_size(builder)
    sessions = [_session(builder) for _ in range(2)]  # one per plain-onnxruntime way: no state carried between them
    builder_genai = genai_model(builder, THREADS)
    builder_plain = [functools.partial(run_plain, session, builder / "model.onnx", head_size, prompt, args.decode)
                     for session in sessions]
    plain = {"copied": lambda: builder_plain[0](in_place=False), "in place": builder_plain[1]}
    _same_tokens({name: run()[1] for name, run in plain.items()})  # the ways differ in buffers only
    ways = {name: (lambda run=run: run()[0]) for name, run in plain.items()}
    ways["genai"] = lambda: genai(builder_genai, prompt, args.decode)
    print(f"prompt {args.prompt} tokens, decode {args.decode}, {THREADS} threads, {args.rounds} rounds in turns")
    results = {"builder": report("The builder's model, three ways", in_turns(ways, args.rounds), "copied")}
    if args.ours:
        del sessions, builder_plain  # the builder's plain sessions: freed before ours loads
        ours = Path(args.ours)
        ours_plain = functools.partial(run_plain, _session(ours), ours / "model.onnx", head_size, prompt, args.decode)
        _same_tokens({"in place": ours_plain()[1], "copied": ours_plain(in_place=False)[1]})
        ours_genai = genai_model(ours, THREADS)
        both = {"ours in genai": lambda: genai(ours_genai, prompt, args.decode),
                "ours on onnxruntime, copied": lambda: ours_plain(in_place=False)[0],
                "ours on onnxruntime, in place": lambda: ours_plain()[0],
                "builder in genai": lambda: genai(builder_genai, prompt, args.decode)}
        results["genai"] = report("Our model and the builder's", in_turns(both, args.rounds), "builder in genai")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
