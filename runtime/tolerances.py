"""How close an artifact must stay to the reference, per quantization scheme: one frozen table.

Each entry bounds the metrics `runtime.validate` reports and says in one line
why the bounds are what they are. Logit metrics compare an artifact's logits
with the fp32 reference's on the same tokens; `min_greedy` is the fraction of
the greedy continuation that matches before the first differing token (after
it, the two continuations see different text, so later agreement means little);
`max_ppl_increase` bounds (artifact perplexity / reference perplexity - 1) on
`--eval-tokens`; `greedy_tie_margin` excuses a greedy continuation whose first
difference is a near-tie of the reference (a single prompt's greedy prefix ends
at the first such flip, however good the artifact). Keys are the scheme (`exporter.quantize.SCHEMES`), with `+emb4`
when a 4-bit scheme also stores the embedding / tied LM head at int4 (`key`). A
scheme missing here is an error, not a silent default: add its line when a
quantizer adds the scheme. The 4-bit bounds were set at group size 32; a coarser
group that misses them fails validation, as it should.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from runtime.errors import QwenEdgeError

OFF = math.inf  # a bound that does not apply to this scheme


@dataclass(frozen=True)
class Tolerance:
    max_abs: float  # largest |logit difference| at any position
    rel_rms: float  # RMS of the difference / RMS of the reference logits
    min_cosine: float  # worst per-position cosine similarity of logits
    min_top1: float  # fraction of positions whose argmax agrees
    min_greedy: float  # fraction of the greedy continuation matching before the first difference
    max_state_abs: float  # largest |difference| in the carried state after prefill (where exposed)
    max_ppl_increase: float  # relative perplexity increase on held-out tokens
    reason: str
    # A greedy continuation that first differs where the reference scores both tokens within this many
    # logits has hit a tie of the reference, not an error of the artifact: the check passes and says so.
    greedy_tie_margin: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The bounds for a report (JSON has no infinity: an unbounded metric is null)."""
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


GREEDY_STEPS = 32  # the eval prompts' greedy continuations (runtime.validate.EVAL_GREEDY_STEPS)


def greedy_floor(top1: float, steps: int = GREEDY_STEPS) -> float:
    """Expected matching-prefix fraction of a `steps`-token greedy continuation when each token agrees with
    probability `top1`: sum_k top1^k / steps. A greedy bound above this contradicts the top-1 bound beside it:
    one flipped near-tie ends the prefix (measured on the trained fixture: top-1 0.966 -> prefix 0.57, top-1
    0.846 -> 0.16, as this predicts)."""
    return top1 * (1 - top1**steps) / ((1 - top1) * steps) if top1 < 1 else 1.0


TOLERANCES = MappingProxyType({
    "fp32": Tolerance(
        max_abs=1e-3, rel_rms=1e-4, min_cosine=0.99999, min_top1=1.0, min_greedy=1.0,
        max_state_abs=1e-3, max_ppl_increase=1e-3,
        reason="same math in fp32: only summation order and fused kernels differ (about 1e-6 relative)",
    ),
    "fp16": Tolerance(
        max_abs=OFF, rel_rms=1e-2, min_cosine=0.9995, min_top1=0.95, min_greedy=greedy_floor(0.95),
        max_state_abs=OFF, max_ppl_increase=5e-3,
        reason="fp16 activations carry 11 mantissa bits: about 1e-3 relative per op, compounding over layers",
        greedy_tie_margin=0.02,
    ),
    "8w": Tolerance(
        max_abs=OFF, rel_rms=5e-2, min_cosine=0.998, min_top1=0.9, min_greedy=greedy_floor(0.9),
        max_state_abs=OFF, max_ppl_increase=0.01,
        reason="int8 per-channel weights (about 0.6 % weight error, logits ~1 % relative); quality bound: "
               "perplexity +1 %",
        greedy_tie_margin=0.05,
    ),
    "4w": Tolerance(
        max_abs=OFF, rel_rms=0.25, min_cosine=0.97, min_top1=0.75, min_greedy=greedy_floor(0.75),
        max_state_abs=OFF, max_ppl_increase=0.05,
        reason="int4 group-32 weights, int8 embedding; quality bound: perplexity +5 %",
        greedy_tie_margin=0.1,
    ),
    "8da4w": Tolerance(
        max_abs=OFF, rel_rms=0.25, min_cosine=0.97, min_top1=0.75, min_greedy=greedy_floor(0.75),
        max_state_abs=OFF, max_ppl_increase=0.05,
        reason="as 4w, plus per-token dynamic int8 activations (about 0.5 % per matmul); quality bound: perplexity +5 %",
        greedy_tie_margin=0.1,
    ),
    "4w+emb4": Tolerance(
        max_abs=OFF, rel_rms=0.25, min_cosine=0.97, min_top1=0.75, min_greedy=greedy_floor(0.75),
        max_state_abs=OFF, max_ppl_increase=0.10,
        reason="int4 group-32 weights and int4 embedding / LM head; quality bound: perplexity +10 %",
        greedy_tie_margin=0.1,
    ),
    "8da4w+emb4": Tolerance(
        max_abs=OFF, rel_rms=0.25, min_cosine=0.97, min_top1=0.75, min_greedy=greedy_floor(0.75),
        max_state_abs=OFF, max_ppl_increase=0.10,
        reason="as 4w+emb4, plus per-token dynamic int8 activations; quality bound: perplexity +10 %",
        greedy_tie_margin=0.1,
    ),
})


def key(quant: str, embedding_bits: int | None = None) -> str:
    """The table key of a scheme: `+emb4` marks an int4 embedding (int8, the default, needs no mark)."""
    return f"{quant}+emb{embedding_bits}" if embedding_bits not in (None, 8) else quant


def tolerance(quant: str, embedding_bits: int | None = None) -> Tolerance:
    """The bounds of a quantization scheme (with its embedding bits, for the 4-bit schemes)."""
    name = key(quant, embedding_bits)
    if name not in TOLERANCES:
        raise QwenEdgeError(
            f"quantization {name!r}: no tolerance entry; known: {', '.join(TOLERANCES)} "
            "(add one line with its reason to runtime/tolerances.py)"
        )
    return TOLERANCES[name]
