"""What onnxruntime-genai adds to a 4-bit model's decode, taken apart, in one process and in turns.

The builder's model decodes faster in onnxruntime-genai than fed naively on plain onnxruntime.
Its `genai_config.json` turns on `past_present_share_buffer`: the KV caches are buffers of the
whole context that GroupQueryAttention writes in place, and the generator binds the conv and
recurrent states as their own outputs too. This bench runs the builder's model three ways,
greedy, from the same prompt:

- `copied`: plain onnxruntime, every present in a fresh buffer, the KV caches grown by a token;
- `in place`: plain onnxruntime, every state bound as its own output, KV caches of 2048 slots
  (`bench.onnx_run.GraphRunner`, binding as `runtime.backends` binds ours);
- `genai`: onnxruntime-genai's generator.

With `--ours DIR` it then runs our model in onnxruntime-genai and on plain onnxruntime, copied
and in place (as `runtime.backends` does), against the builder's in onnxruntime-genai, in turns.
Every run: 2 intra-op threads, a `--prompt`-token prompt, `--decode` greedy tokens timed; medians
over `--rounds`, and the median of the per-round ratios. Run it alone on the machine.

    .venv/bin/python -m bench.genai_gap --builder builder_dir [--ours our_onnx_dir]
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import argument_parser, in_turns, median_ratio
from bench.onnx_run import GraphRunner, genai_model, onnx_session, random_prompt

THREADS = 2


def run_plain(session, model: Path, prompt: np.ndarray, decode: int, in_place: bool = True) -> tuple[float, list[int]]:
    """(decode tok/s, the greedy tokens)."""
    runner = GraphRunner(session, model, in_place=in_place)
    logits = runner.forward(prompt, 0)
    tokens, start = [int(logits.argmax())], time.perf_counter()
    for step in range(decode):
        tokens.append(int(runner.forward(np.array(tokens[-1:]), len(prompt) + step).argmax()))
    return decode / (time.perf_counter() - start), tokens


def genai(model, prompt: np.ndarray, decode: int) -> float:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + decode + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt.astype(np.int32))
    start = time.perf_counter()
    for _ in range(decode):
        generator.generate_next_token()
    return decode / (time.perf_counter() - start)


def _same_tokens(greedy: dict[str, list[int]]) -> None:
    if len({tuple(tokens) for tokens in greedy.values()}) != 1:
        sys.exit(f"the ways disagree on the greedy tokens: {greedy}")


def report(title: str, rates: dict[str, list[float]], baseline: str) -> dict:
    print(f"\n{title}\n\n| run | decode tok/s, median | by round | / {baseline}, median of rounds |\n|---|---|---|---|")
    summary = {}
    for name, values in rates.items():
        ratio = median_ratio(values, rates[baseline])
        summary[name] = {"median": statistics.median(values), "rounds": values, "ratio": ratio}
        print(f"| {name} | {summary[name]['median']:.2f} | {', '.join(f'{v:.1f}' for v in values)} | {ratio:.3f} |")
    return summary


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--builder", required=True, help="the builder's model directory (with genai_config.json)")
    parser.add_argument("--ours", help="our ONNX model directory (with the genai_config.json the export writes)")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    builder = Path(args.builder)
    prompt = random_prompt(builder, args.prompt)
    # one session per plain-onnxruntime way: no state carried between them
    builder_plain = [functools.partial(run_plain, onnx_session(builder / "model.onnx", THREADS), builder / "model.onnx",
                                       prompt, args.decode) for _ in range(2)]
    builder_genai = genai_model(builder, THREADS)
    plain = {"copied": lambda: builder_plain[0](in_place=False), "in place": builder_plain[1]}
    _same_tokens({name: run()[1] for name, run in plain.items()})  # the ways differ in buffers only
    ways = {name: (lambda run=run: run()[0]) for name, run in plain.items()}
    ways["genai"] = lambda: genai(builder_genai, prompt, args.decode)
    print(f"prompt {args.prompt} tokens, decode {args.decode}, {THREADS} threads, {args.rounds} rounds in turns")
    rates = in_turns(ways, args.rounds, alternate=True)
    results = {"builder": report("The builder's model, three ways", rates, "copied")}
    if args.ours:
        del builder_plain, plain, ways  # the builder's plain sessions: freed before ours loads
        ours = Path(args.ours)
        ours_plain = functools.partial(run_plain, onnx_session(ours / "model.onnx", THREADS), ours / "model.onnx",
                                       prompt, args.decode)
        _same_tokens({"in place": ours_plain()[1], "copied": ours_plain(in_place=False)[1]})
        ours_genai = genai_model(ours, THREADS)
        both = {"ours in genai": lambda: genai(ours_genai, prompt, args.decode),
                "ours on onnxruntime, copied": lambda: ours_plain(in_place=False)[0],
                "ours on onnxruntime, in place": lambda: ours_plain()[0],
                "builder in genai": lambda: genai(builder_genai, prompt, args.decode)}
        rates = in_turns(both, args.rounds, alternate=True)
        results["genai"] = report("Our model and the builder's", rates, "builder in genai")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
