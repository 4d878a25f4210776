"""The PyTorch reference, as the runtime sees it: a provider the exporter registers, NumPy across the seam.

The runtime never imports the exporter (layers point one way), yet `--backend reference`,
validation against the live model and golden traces all need the PyTorch decoder. The
exporter provides it: importing `exporter` registers a `Reference` here (lazily: torch loads
only when a reference is asked for). A program that uses the runtime alone gets a clear
error naming what to import, and an ONNX session never loads torch.

Everything a `Reference` returns is NumPy or a runtime type (`Backend`, `VisionEncoder`,
`Trace`); the model itself is an opaque handle the runtime passes back.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import QwenEdgeError

if TYPE_CHECKING:
    from runtime.backends import Backend
    from runtime.bundle import Bundle
    from runtime.trace import Trace
    from runtime.vision import VisionEncoder


class Reference(abc.ABC):
    """The reference decoder and vision tower of a bundle's model."""

    @abc.abstractmethod
    def model(self, bundle: Bundle, checkpoint: str | Path | None = None) -> Any:
        """The decoder: from `checkpoint`, or rebuilt from a preset bundle's source and seed."""

    @abc.abstractmethod
    def backend(self, bundle: Bundle, model: Any, threads: int | None = None) -> Backend:
        """A backend running `model` (as `model` returned it) on the bundle's limits."""

    @abc.abstractmethod
    def trace(self, model: Any, prompt_ids, steps: int) -> tuple[Trace, dict[str, np.ndarray]]:
        """The golden trace of `model` on the prompt, and its state after the prompt (`{"{layer}.{part}": array}`)."""

    @abc.abstractmethod
    def logits(self, model: Any, ids: np.ndarray) -> np.ndarray:
        """float32 [T, V]: the logits at every position of one sequence from an empty state."""

    @abc.abstractmethod
    def hidden_states(self, model: Any, ids: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(layer name, its output [T, D]) for the embedding and every layer, on one sequence."""

    @abc.abstractmethod
    def vision_encoder(self, bundle: Bundle, checkpoint: str | Path) -> VisionEncoder:
        """The vision tower from `checkpoint`, behind the runtime's encoder interface."""


_PROVIDERS: dict[str, Callable[[], Reference]] = {}


def register(factory: Callable[[], Reference]) -> None:
    """Make `factory()` the reference (called on first use, so registering costs no import)."""
    _PROVIDERS["reference"] = factory


def get() -> Reference:
    """The registered reference, or an error saying how to get one."""
    if "reference" not in _PROVIDERS:
        raise QwenEdgeError(
            "the reference model is PyTorch code that comes with qwen-edge's exporter; `import exporter` "
            "(needs torch) before asking for the reference backend, or use backend 'onnx' or 'pte'"
        )
    return _PROVIDERS["reference"]()
