"""The numbers validation reports: logit metrics, greedy agreement, state differences, perplexity, layer attribution.

Plain functions over NumPy arrays (and, for layer attribution, two PyTorch
reference models), each checked against a `Tolerance` into a `Check`.
`runtime.validate` decides what to run and assembles the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.tolerances import Tolerance


@dataclass
class Check:
    """One comparison: its metrics, whether they meet the bounds (None: not applicable), and a note."""

    name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "metrics": self.metrics, "passed": self.passed, "note": self.note}


def logit_metrics(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """candidate, reference [n, V] -> max_abs, rel_rms, cosine (worst row), top1 (fraction of rows agreeing)."""
    c = np.atleast_2d(candidate).astype(np.float64)
    r = np.atleast_2d(reference).astype(np.float64)
    diff = c - r
    rms_ref = math.sqrt(float(np.mean(r * r))) or 1e-30
    norms = np.linalg.norm(c, axis=-1) * np.linalg.norm(r, axis=-1)
    cosine = np.sum(c * r, axis=-1) / np.maximum(norms, 1e-30)
    return {
        "max_abs": float(np.max(np.abs(diff))),
        "rel_rms": math.sqrt(float(np.mean(diff * diff))) / rms_ref,
        "cosine": float(np.min(cosine)),
        "top1": float(np.mean(np.argmax(c, -1) == np.argmax(r, -1))),
        "positions": int(c.shape[0]),
    }


# A lossy artifact's top-1 over a golden trace's few positions fails only when its agreements are this unlikely
# under the scheme's bound (one-sided binomial test); see `top1_consistent`.
TOP1_ALPHA = 0.05


def logit_check(name: str, candidate: np.ndarray, reference: np.ndarray, tol: Tolerance) -> Check:
    """The logit metrics against the bounds. Top-1 counts a disagreement at a near-tie of the reference (its
    two tokens within `tol.greedy_tie_margin` logits) as agreement, as the greedy check does, and is judged
    as a sample (`top1_consistent`): over the few positions of a golden trace (7 decode steps) a correct lossy
    artifact flips a position or two by chance, and which ones moves with any change of summation order.
    """
    m = logit_metrics(candidate, reference)
    top1, notes = m["top1"], []
    ties = near_tie_flips(candidate, reference, tol.greedy_tie_margin)
    if ties:
        m["near_tie_flips"] = ties
        top1 += ties / m["positions"]
        notes.append(f"{ties} top-1 flip(s) at a near-tie of the reference (<= {tol.greedy_tie_margin:g} logits) excused")
    top1_ok = top1 >= tol.min_top1
    if not top1_ok:
        top1_ok, chance = top1_consistent(round(top1 * m["positions"]), m["positions"], tol.min_top1)
        m["top1_chance"] = chance
        if top1_ok:
            notes.append(f"top-1 {top1:.3f} over {m['positions']} positions is below {tol.min_top1:g} by chance "
                         f"(P = {chance:.2f} at that rate)")
    passed = m["max_abs"] <= tol.max_abs and m["rel_rms"] <= tol.rel_rms and m["cosine"] >= tol.min_cosine and top1_ok
    return Check(name, m, passed, "; ".join(notes))


def top1_consistent(agree: int, positions: int, bound: float) -> tuple[bool, float]:
    """Whether `agree` agreeing positions of `positions` are consistent with a top-1 rate of `bound`; (verdict, P).

    P is P(X <= agree) for X ~ Binomial(positions, bound): the chance that an artifact whose top-1 rate is
    the bound agrees this rarely. Consistent when P >= TOP1_ALPHA. An exact bound (1.0) allows no flip. On
    the trained fixture an 8da4w artifact agrees at 0.84 over 1016 held-out tokens; over a 7-step trace it
    shows 2 or more flips (below the 0.75 bound) 31 % of the time. Held-out tokens gate top-1 at the plain
    bound (`PerplexityMeter`).
    """
    if bound >= 1.0:
        return agree >= positions, float(agree >= positions)
    chance = sum(math.comb(positions, k) * bound**k * (1 - bound) ** (positions - k) for k in range(agree + 1))
    return chance >= TOP1_ALPHA, chance


def near_tie_flips(candidate: np.ndarray, reference: np.ndarray, margin: float) -> int:
    """Rows whose argmax differs where the reference scores the candidate's token within `margin` of its own."""
    c, r = np.atleast_2d(candidate), np.atleast_2d(reference)
    ours, theirs = np.argmax(c, -1), np.argmax(r, -1)
    rows = np.arange(len(r))
    gap = r[rows, theirs].astype(np.float64) - r[rows, ours]
    return int(np.sum((ours != theirs) & (gap <= margin))) if margin > 0 else 0


def greedy_check(candidate: np.ndarray, reference: np.ndarray, tol: Tolerance,
                 reference_logits: np.ndarray | None = None) -> Check:
    """Agreement of two greedy continuations: the matching prefix, as a fraction of the reference's length.

    reference_logits [n, V] (row i chose reference[i]): where the first difference is a near-tie of the
    reference (both tokens within `tol.greedy_tie_margin` logits), the check passes and the note says so.
    """
    n = len(reference)
    mismatch = next((i for i in range(n) if i >= len(candidate) or candidate[i] != reference[i]), None)
    agreement = 1.0 if mismatch is None else mismatch / n
    metrics = {"agreement": agreement, "steps": n, "first_mismatch": mismatch}
    passed, note = agreement >= tol.min_greedy, ""
    if mismatch is not None:
        got = int(candidate[mismatch]) if mismatch < len(candidate) else None
        note = f"first difference at step {mismatch}: {got} vs reference {int(reference[mismatch])}"
        if reference_logits is not None and got is not None:
            row = reference_logits[mismatch]
            margin = float(row[int(reference[mismatch])] - row[got])
            metrics["reference_margin"] = margin
            if not passed and margin <= tol.greedy_tie_margin:
                passed = True
                note += f"; a near-tie of the reference ({margin:.3g} <= {tol.greedy_tie_margin:g} logits)"
    return Check(f"greedy decode, {n} tokens", metrics, passed, note)


def state_check(candidate: dict[str, np.ndarray] | None, reference: dict[str, np.ndarray] | None,
                tol: Tolerance) -> Check:
    """Final carried state after the one-call prefill, tensor by tensor."""
    name = "final state after prefill"
    if reference is None:
        return Check(name, note="needs the live reference model (--model, or a preset bundle)")
    if candidate is None:
        return Check(name, note="this engine keeps the state in the program's buffers; checked through the "
                                "decode logits that follow it")
    worst, where, shapes = 0.0, None, []
    for key, ref in reference.items():
        got = candidate.get(key)
        if got is None or got.shape != ref.shape:
            shapes.append(f"{key} {None if got is None else got.shape} vs {ref.shape}")
            continue
        err = float(np.max(np.abs(got.astype(np.float64) - ref), initial=0.0))
        if err >= worst:
            worst, where = err, key
    if shapes:
        return Check(name, {"tensors": len(reference)}, False, "shape mismatch: " + "; ".join(shapes[:3]))
    return Check(name, {"max_abs": worst, "worst_tensor": where, "tensors": len(reference)}, worst <= tol.max_state_abs)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in fp32 (the max is subtracted first, so fp32 loses nothing that matters here;
    fp64 would double the memory of a [W, 248k] window)."""
    x = x.astype(np.float32, copy=True)
    x -= x.max(-1, keepdims=True)
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x


def next_token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits [n, V] predicting targets [n] -> negative log-likelihood per position."""
    return -_log_softmax(logits)[np.arange(len(targets)), targets].astype(np.float64)


def kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over rows of KL(p_reference || p_candidate) of next-token distributions."""
    lr, lc = _log_softmax(reference), _log_softmax(candidate)
    return float(np.mean(np.sum(np.exp(lr) * (lr - lc), axis=-1, dtype=np.float64)))


class PerplexityMeter:
    """Accumulates, window by window, the perplexity of a candidate and of the reference on held-out tokens.

    One window's logits for a 248k vocabulary are about 1 MB a token, so each
    window is reduced to sums as it comes instead of being kept.
    """

    def __init__(self):
        self.nll, self.ref_nll, self.agree, self.kl, self.count = 0.0, 0.0, 0, 0.0, 0

    def add(self, candidate: np.ndarray, reference: np.ndarray, tokens: np.ndarray) -> None:
        """candidate, reference logits [W, V] over the window `tokens` [W] (position i predicts i+1)."""
        targets = tokens[1:]
        c, r = candidate[:-1], reference[:-1]
        self.nll += float(next_token_nll(c, targets).sum())
        self.ref_nll += float(next_token_nll(r, targets).sum())
        self.agree += int(np.sum(np.argmax(c, -1) == np.argmax(r, -1)))
        self.kl += kl_divergence(r, c) * len(targets)
        self.count += len(targets)

    def check(self, tol: Tolerance) -> Check:
        n = max(self.count, 1)
        ppl, ref_ppl = math.exp(self.nll / n), math.exp(self.ref_nll / n)
        metrics = {
            "perplexity": ppl,
            "reference_perplexity": ref_ppl,
            "increase": ppl / ref_ppl - 1.0,
            "top1": self.agree / n,
            "kl_divergence": self.kl / n,
            "tokens": self.count,
        }
        passed = metrics["increase"] <= tol.max_ppl_increase and metrics["top1"] >= tol.min_top1
        return Check("perplexity on eval tokens", metrics, passed)


def first_diverging_layer(candidate: list[tuple[str, np.ndarray]], reference: list[tuple[str, np.ndarray]],
                          tol: Tolerance) -> str:
    """The first hidden state (name, [T, D]) of `candidate` beyond `tol.rel_rms` of `reference`'s."""
    for (name, a), (_, b) in zip(candidate, reference, strict=True):
        a, b = a.astype(np.float64), b.astype(np.float64)
        rel = float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30))
        if rel > tol.rel_rms:
            return f"{name}: hidden-state relative RMS difference {rel:.2e} > {tol.rel_rms:g}"
    return "none of the layers: the divergence starts in the final norm or the LM head"
