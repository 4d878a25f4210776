"""Sampling: greedy is the argmax, a seed reproduces a run, top-k and top-p keep exactly their tokens."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import QwenEdgeError
from runtime.sampling import Sampler, Sampling, softmax, top_k_mask, top_p_mask

LOGITS = np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15]))  # probabilities sorted: 1, 3, 4, 2, 0


def draws(sampling: Sampling, logits=LOGITS, n: int = 200) -> list[int]:
    sampler = Sampler(sampling)
    return [sampler(logits) for _ in range(n)]


def test_greedy_is_the_argmax():
    rng = np.random.default_rng(1)
    for _ in range(20):
        logits = rng.normal(size=50).astype(np.float32)
        assert Sampler(Sampling())(logits) == int(np.argmax(logits))


def test_a_seed_reproduces_the_draws():
    sampling = Sampling(temperature=1.0, seed=7)
    assert draws(sampling) == draws(sampling)
    assert draws(sampling) != draws(Sampling(temperature=1.0, seed=8))


def test_top_k_keeps_the_k_largest():
    masked = top_k_mask(LOGITS, 2)
    assert np.isfinite(masked).tolist() == [False, True, False, True, False]
    assert set(draws(Sampling(temperature=1.0, top_k=2))) == {1, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert np.isfinite(top_p_mask(LOGITS, 0.7)).tolist() == [False, True, False, True, False]  # 0.4 + 0.3
    assert np.isfinite(top_p_mask(LOGITS, 0.71)).tolist() == [False, True, False, True, True]  # needs 0.15 more
    assert set(draws(Sampling(temperature=1.0, top_p=0.7))) == {1, 3}


def test_top_p_always_keeps_the_most_likely_token():
    assert np.isfinite(top_p_mask(LOGITS, 0.01)).tolist() == [False, True, False, False, False]


def test_top_k_one_is_greedy_at_any_temperature():
    assert set(draws(Sampling(temperature=5.0, top_k=1))) == {1}


def test_temperature_sharpens_and_flattens():
    cold = np.bincount(draws(Sampling(temperature=0.2, seed=3), n=400), minlength=5)
    hot = np.bincount(draws(Sampling(temperature=5.0, seed=3), n=400), minlength=5)
    assert cold[1] > hot[1] and cold[0] < hot[0]


def test_sampled_frequencies_follow_the_distribution():
    counts = np.bincount(draws(Sampling(temperature=1.0, seed=0), n=4000), minlength=5) / 4000
    np.testing.assert_allclose(counts, softmax(LOGITS), atol=0.03)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(temperature=-1.0), "--temperature"),
    (dict(top_k=-2), "--top-k"),
    (dict(top_p=0.0), "--top-p"),
    (dict(top_p=1.5), "--top-p"),
])
def test_bad_settings_are_refused(kwargs, flag):
    with pytest.raises(QwenEdgeError, match=flag):
        Sampling(**kwargs)
