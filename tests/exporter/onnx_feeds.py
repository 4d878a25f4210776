"""Feeding an exported ONNX decoder by hand, either KV layout (`runtime.contract.capacity_kv`), for tests.

The ort profile's KV caches are buffers of the caller's capacity with an `attention_mask`
saying how many tokens they hold; the portable profile's grow. These helpers hide the
difference, so a test runs both the same way and compares KV caches over the tokens they hold.
"""

from __future__ import annotations

import numpy as np

from exporter.onnx import example_state
from runtime.config import ModelConfig
from runtime.contract import ATTENTION_MASK, capacity_kv, io_names

CAPACITY = 64  # KV slots of a capacity-KV test run: the tests' max_seq_len


def empty_state(config: ModelConfig, profile: str, batch: int) -> list[np.ndarray]:
    capacity = CAPACITY if capacity_kv(profile) else None
    return [x.numpy() for x in example_state(config, batch, 0, capacity)]


def feeds(config: ModelConfig, profile: str, ids: np.ndarray, start: int, state: list[np.ndarray]) -> dict:
    """The inputs of one call: ids [B, T] at positions start.. start+T-1 after `state`."""
    batch, steps = ids.shape
    names, _ = io_names(config, profile)
    fed = {"input_ids": np.asarray(ids, np.int64),
           "position_ids": np.broadcast_to(start + np.arange(steps), (3, batch, steps)).astype(np.int64)}
    if capacity_kv(profile):
        fed[ATTENTION_MASK] = np.ones((batch, start + steps), np.int64)
    return {**fed, **dict(zip(names[len(names) - len(state):], state, strict=True))}


def held(config: ModelConfig, profile: str, state: list[np.ndarray], length: int) -> list[np.ndarray]:
    """The state as a growing cache holds it: each KV cache cut to the `length` tokens it holds."""
    _, outputs = io_names(config, profile)
    cut = capacity_kv(profile)
    return [x[:, :, :length] if cut and name.endswith((".key", ".value")) else x
            for name, x in zip(outputs[1:], state, strict=True)]
