"""Benchmark the two export-friendly forms of `qwen35::moe` against transformers' block.

Times `moe_gather` (gather each token's K experts), `moe_dense` (all E experts on
every token) and transformers' `Qwen3_5MoeSparseMoeBlock` (a Python loop over the
experts that received tokens; data-dependent, so not exportable, but the eager
peer) on one MoE layer at the Qwen3.5-35B-A3B shape, fp32, CPU. Prints median
milliseconds and each form's ratio to the fastest; `--json` prints the same as
JSON. This is a measuring tool, not a test: `--quick` runs a tiny config as a
smoke check.

Memory: the real shape's experts are ~3.2 GB at fp32, and the gather form
materialises N·K expert matrices (~13 GB at T=128), so a cell whose gathered
weights exceed `--max-gather-gb` is skipped with its reason.

    .venv/bin/python -m bench.bench_moe                 # T=1 and T=128, real shape
    .venv/bin/python -m bench.bench_moe --tokens 1 --repeats 3
    .venv/bin/python -m bench.bench_moe --quick --json
"""

import argparse
import json
import statistics
from dataclasses import asdict, dataclass

import torch

from bench.common import argument_parser, timings
from ops.moe import moe_dense, moe_gather


@dataclass(frozen=True)
class MoeShape:
    hidden: int  # D
    num_experts: int  # E
    top_k: int  # K
    ffn: int  # I
    shared_ffn: int  # Is


QWEN35_35B_A3B = MoeShape(hidden=2048, num_experts=256, top_k=8, ffn=512, shared_ffn=512)
TINY = MoeShape(hidden=64, num_experts=16, top_k=4, ffn=32, shared_ffn=48)


def make_weights(shape: MoeShape, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random fp32 weights in `moe`'s argument order, scaled like a trained layer (std ~0.02)."""
    g = torch.Generator().manual_seed(seed)
    d, e, i, s = shape.hidden, shape.num_experts, shape.ffn, shape.shared_ffn

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g).mul_(0.02)

    return (
        randn(e, d),  # router_weight [E, D]
        randn(e, 2 * i, d),  # gate_up_proj [E, 2I, D]
        randn(e, d, i),  # down_proj [E, D, I]
        randn(s, d),  # shared_gate_proj [Is, D]
        randn(s, d),  # shared_up_proj [Is, D]
        randn(d, s),  # shared_down_proj [D, Is]
        randn(1, d),  # shared_expert_gate [1, D]
    )


def transformers_block(shape: MoeShape, weights: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """transformers' block sharing `weights` (built on meta, so no second copy of the experts)."""
    from transformers import Qwen3_5MoeTextConfig
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import (
        Qwen3_5MoeSparseMoeBlock,
    )

    config = Qwen3_5MoeTextConfig(
        hidden_size=shape.hidden,
        num_experts=shape.num_experts,
        num_experts_per_tok=shape.top_k,
        moe_intermediate_size=shape.ffn,
        shared_expert_intermediate_size=shape.shared_ffn,
        experts_implementation="eager",
    )
    with torch.device("meta"):
        block = Qwen3_5MoeSparseMoeBlock(config)
    router, gate_up, down, s_gate, s_up, s_down, s_expert_gate = weights
    params = {
        "gate.weight": router,
        "experts.gate_up_proj": gate_up,
        "experts.down_proj": down,
        "shared_expert.gate_proj.weight": s_gate,
        "shared_expert.up_proj.weight": s_up,
        "shared_expert.down_proj.weight": s_down,
        "shared_expert_gate.weight": s_expert_gate,
    }
    block.load_state_dict(params, assign=True)
    return block.eval()


def gathered_gb(shape: MoeShape, tokens: int) -> float:
    """Bytes of expert weights moe_gather materialises for `tokens` tokens at fp32, in GB."""
    per_expert = 3 * shape.ffn * shape.hidden * 4  # gate, up and down rows, fp32
    return tokens * shape.top_k * per_expert / 1e9


def bench_tokens(shape, weights, block, tokens: int, args) -> list[dict]:
    """One row per form for a [1, tokens, D] input, with its max-abs difference from the first form run."""
    x = torch.randn(1, tokens, shape.hidden, generator=torch.Generator().manual_seed(tokens))  # [1, T, D]
    forms = {
        "gather": lambda: moe_gather(x, *weights, top_k=shape.top_k),
        "dense": lambda: moe_dense(x, *weights, top_k=shape.top_k),
    }
    if block is not None:
        forms["transformers"] = lambda: block(x)
    rows, first = [], None
    for name, fn in forms.items():
        row = {"tokens": tokens, "form": name}
        if name == "gather" and gathered_gb(shape, tokens) > args.max_gather_gb:
            row["skipped"] = (
                f"would gather {gathered_gb(shape, tokens):.1f} GB of expert weights "
                f"(> --max-gather-gb {args.max_gather_gb})"
            )
        else:
            out = fn()  # the first warm-up call, whose output the forms are compared by
            runs = [seconds * 1e3 for seconds in timings(fn, max(args.warmup - 1, 0), args.repeats)]
            first = out if first is None else first
            diff = (out - first).abs().max().item()  # the forms must agree, or the timing means nothing
            row.update(median_ms=statistics.median(runs), runs_ms=runs, max_abs_diff=diff)
        rows.append(row)
    best = min((r["median_ms"] for r in rows if "median_ms" in r), default=None)
    for r in rows:
        if "median_ms" in r:
            r["vs_best"] = r["median_ms"] / best
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'T':>5}  {'form':<13}{'median ms':>11}{'vs best':>9}{'max |diff|':>12}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['tokens']:>5}  {r['form']:<13}  skipped: {r['skipped']}")
        else:
            print(
                f"{r['tokens']:>5}  {r['form']:<13}{r['median_ms']:>11.2f}{r['vs_best']:>8.2f}x"
                f"{r['max_abs_diff']:>12.1e}"
            )


def parse_args(argv=None) -> argparse.Namespace:
    p = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"tiny config {TINY} instead of Qwen3.5-35B-A3B")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 128], help="token counts T (default 1 128)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per cell (at least 1)")
    p.add_argument("--max-gather-gb", type=float, default=2.0, help="skip gather cells above this")
    p.add_argument("--no-transformers", action="store_true", help="leave out transformers' block")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = TINY if args.quick else QWEN35_35B_A3B
    weights = make_weights(shape)
    block = None if args.no_transformers else transformers_block(shape, weights)
    with torch.inference_mode():
        rows = [r for t in args.tokens for r in bench_tokens(shape, weights, block, t, args)]
    if args.json:
        meta = {"shape": asdict(shape), "dtype": "float32", "threads": args.threads, "torch": torch.__version__}
        print(json.dumps({**meta, "results": rows}, indent=2))
    else:
        print(f"MoE layer {asdict(shape)}, fp32, {args.threads} threads, median of {args.repeats}")
        print_table(rows)


if __name__ == "__main__":
    main()
