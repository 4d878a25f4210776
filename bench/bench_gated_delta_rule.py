"""CPU benchmark of the gated delta rule's two pure-PyTorch forms at the Qwen3.5-0.8B DeltaNet layer shape.

Measures the token-by-token recurrent form against the chunked (WY / UT-transform) form for
prefill at several lengths and for one decode step (T = 1 from a carried state), and the chunked
form at several chunk sizes. It times one layer's op, not the model, and checks nothing: the tests
in tests/ops/ hold correctness.

Threads beyond the idle cores make the chunked form's parallel regions wait on the scheduler
(100x outliers on a shared 2-core machine): keep --threads at or below the idle cores.

    .venv/bin/python -m bench.bench_gated_delta_rule                  # T = 128, 512, 2048 and decode, real shape
    .venv/bin/python -m bench.bench_gated_delta_rule --json results.json
    .venv/bin/python -m bench.bench_gated_delta_rule --quick          # tiny shapes: a smoke run
"""

import json
import platform
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bench.common import argument_parser, median_ms
from ops.gated_delta_rule import (
    DEFAULT_CHUNK_SIZE,
    chunked_gated_delta_rule,
    recurrent_gated_delta_rule,
)


@dataclass(frozen=True)
class LayerShape:
    """One DeltaNet layer: B batch, Hk query/key heads, Hv value heads, Dk key dim, Dv value dim."""

    batch: int = 1
    k_heads: int = 16
    v_heads: int = 16
    k_dim: int = 128
    v_dim: int = 128


@dataclass(frozen=True)
class Settings:
    shape: LayerShape
    prefill_lengths: tuple[int, ...]
    chunk_sizes: tuple[int, ...]
    warmup: int
    repeats: int


FULL = Settings(LayerShape(), (128, 512, 2048), (32, 64, 128), warmup=2, repeats=7)
QUICK = Settings(LayerShape(1, 2, 4, 16, 16), (16, 40), (8, 16), warmup=1, repeats=3)


@dataclass(frozen=True)
class Timing:
    phase: str  # "prefill" or "decode"
    steps: int  # T
    form: str  # "recurrent" or "chunked"
    chunk_size: int | None
    median_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.steps / (self.median_ms / 1e3)


def make_inputs(shape: LayerShape, steps: int, seed: int = 0):
    """Model-like fp32 inputs: unit-norm q, k; g <= 0; beta in (0, 1); a random carried state."""
    gen = torch.Generator().manual_seed(seed)
    qk_shape = (shape.batch, steps, shape.k_heads, shape.k_dim)
    q = F.normalize(torch.randn(qk_shape, generator=gen), dim=-1)  # [B, T, Hk, Dk]
    k = F.normalize(torch.randn(qk_shape, generator=gen), dim=-1)  # [B, T, Hk, Dk]
    v = torch.randn(shape.batch, steps, shape.v_heads, shape.v_dim, generator=gen)  # [B, T, Hv, Dv]
    g = -F.softplus(torch.randn(shape.batch, steps, shape.v_heads, generator=gen))  # [B, T, Hv]
    beta = torch.sigmoid(torch.randn(shape.batch, steps, shape.v_heads, generator=gen))  # [B, T, Hv]
    state = torch.randn(shape.batch, shape.v_heads, shape.k_dim, shape.v_dim, generator=gen)  # [B, Hv, Dk, Dv]
    return (q, k, v, g, beta), dict(scale=shape.k_dim**-0.5, initial_state=state)


def time_forms(settings: Settings, phase: str, steps: int) -> list[Timing]:
    """The recurrent form and the chunked form at every chunk size, on one input."""
    args, kwargs = make_inputs(settings.shape, steps)

    def measure(form: str, chunk_size: int | None, run) -> Timing:
        return Timing(phase, steps, form, chunk_size, median_ms(run, settings.warmup, settings.repeats))

    timings = [measure("recurrent", None, lambda: recurrent_gated_delta_rule(*args, **kwargs))]
    for size in settings.chunk_sizes:
        timings.append(measure("chunked", size, lambda: chunked_gated_delta_rule(*args, **kwargs, chunk_size=size)))
    return timings


def default_chunk(settings: Settings) -> int:
    """The chunk size the comparison table uses: the op's default when it is measured."""
    return DEFAULT_CHUNK_SIZE if DEFAULT_CHUNK_SIZE in settings.chunk_sizes else settings.chunk_sizes[-1]


def print_tables(timings: list[Timing], settings: Settings) -> dict[int, int]:
    """Print recurrent vs chunked, then the chunk-size sweep; return the fastest chunk size per T."""
    chunk = default_chunk(settings)
    print(f"\nrecurrent vs chunked (C={chunk}); speedup = recurrent ms / chunked ms")
    print(f"{'phase':<8}{'T':>6}{'rec ms':>11}{'rec tok/s':>12}{'chunk ms':>11}{'chunk tok/s':>13}{'speedup':>9}")
    cases = sorted({(t.phase, t.steps) for t in timings}, key=lambda c: (c[0] != "prefill", c[1]))
    fastest = {}
    for phase, steps in cases:
        rows = [t for t in timings if (t.phase, t.steps) == (phase, steps)]
        rec = next(t for t in rows if t.form == "recurrent")
        chk = next(t for t in rows if t.chunk_size == chunk)
        print(
            f"{phase:<8}{steps:>6}{rec.median_ms:>11.3f}{rec.tokens_per_s:>12.0f}"
            f"{chk.median_ms:>11.3f}{chk.tokens_per_s:>13.0f}{rec.median_ms / chk.median_ms:>8.2f}x"
        )
        if phase == "prefill":
            fastest[steps] = min((t for t in rows if t.form == "chunked"), key=lambda t: t.median_ms).chunk_size
    print("\nchunked prefill by chunk size (ms)")
    print(f"{'T':>6}" + "".join(f"{f'C={c}':>11}" for c in settings.chunk_sizes) + f"{'fastest':>10}")
    for steps, best in fastest.items():
        row = {t.chunk_size: t.median_ms for t in timings if t.steps == steps and t.phase == "prefill" and t.chunk_size}
        print(f"{steps:>6}" + "".join(f"{row[c]:>11.3f}" for c in settings.chunk_sizes) + f"{f'C={best}':>10}")
    return fastest


def main() -> None:
    parser = argument_parser(__spec__.name, __doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats: a smoke run, not a measurement")
    options = parser.parse_args()

    torch.set_num_threads(options.threads)
    settings = QUICK if options.quick else FULL
    print(f"torch {torch.__version__}, {options.threads} threads, {platform.processor() or platform.machine()}")
    print(f"shape {settings.shape}, fp32, median of {settings.repeats} after {settings.warmup} warm-up")
    timings = []
    with torch.inference_mode():
        for steps in settings.prefill_lengths:
            timings += time_forms(settings, "prefill", steps)
        timings += time_forms(settings, "decode", 1)
    fastest = print_tables(timings, settings)

    if options.json:
        report = dict(
            torch=torch.__version__,
            threads=options.threads,
            quick=options.quick,
            shape=asdict(settings.shape),
            timings=[dict(asdict(t), tokens_per_s=t.tokens_per_s) for t in timings],
            fastest_chunk_size={str(steps): size for steps, size in fastest.items()},
        )
        with open(options.json, "w") as file:
            json.dump(report, file, indent=2)
        print(f"\nwrote {options.json}")


if __name__ == "__main__":
    main()
