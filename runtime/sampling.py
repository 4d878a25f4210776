"""Choosing the next token from logits: greedy, temperature, top-k and top-p, seeded.

`Sampling` holds the knobs (frozen, checked once); `Sampler` applies them with
its own NumPy generator so a seed reproduces a generation exactly. The masks
are separate functions so tests (and readers) can see each one alone.
Temperature 0 means greedy: the argmax, with no randomness at all.

Not here: stopping rules and the generation loop (`runtime.session`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import QwenEdgeError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise QwenEdgeError(f"--temperature {self.temperature}: must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise QwenEdgeError(f"--top-k {self.top_k}: must be >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise QwenEdgeError(f"--top-p {self.top_p}: must be in (0, 1] (1 keeps every token)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """The logits with all but the k largest set to -inf (ties at the k-th value are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def top_p_mask(logits: np.ndarray, p: float) -> np.ndarray:
    """The logits outside the nucleus set to -inf: the fewest top tokens whose probability reaches p.

    The most likely token is always kept, so the result is never empty.
    """
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    # Keep token i while the mass before it is below p: the token that crosses p stays in.
    keep_sorted = np.cumsum(probs) - probs < p
    keep = np.zeros(logits.shape, dtype=bool)
    keep[order[keep_sorted]] = True
    return np.where(keep, logits, -np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


class Sampler:
    """Picks tokens under one `Sampling`; its generator is seeded once, at construction."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self._rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits [V] -> the next token id."""
        s = self.sampling
        if s.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / s.temperature
        scaled = top_p_mask(top_k_mask(scaled, s.top_k), s.top_p)
        probs = softmax(scaled)
        return int(self._rng.choice(probs.shape[-1], p=probs))
