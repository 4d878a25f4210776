"""The `qwen35::` ops' ONNX lowerings of one profile, read from each op's own table (`ops.LOWERINGS`).

Each op declares, per profile, either a translation (an onnxscript function torch.onnx traces in
place of the node: the `custom_translation_table`) or a decomposition (a PyTorch function applied to
the exported program before conversion). This module only sorts those tables by kind for the
exporter, and collects their reports; it names no op. Not here: the lowerings themselves (`ops/`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ops import LOWERINGS
from ops.lowering import DECOMPOSITION, TRANSLATION


def _of_kind(profile: str, kind: str, prefill_chunk: int) -> dict[torch._ops.OpOverload, Callable]:
    return {
        op.overload: op.onnx[profile].build(prefill_chunk)
        for op in LOWERINGS
        if profile in op.onnx and op.onnx[profile].kind == kind
    }


def translations(profile: str, prefill_chunk: int) -> dict[torch._ops.OpOverload, Callable]:
    """The `custom_translation_table` of a profile: op -> onnxscript function."""
    return _of_kind(profile, TRANSLATION, prefill_chunk)


def decompositions(profile: str, prefill_chunk: int) -> dict[torch._ops.OpOverload, Callable]:
    """The torch decompositions of a profile, applied before conversion: op -> PyTorch function."""
    return _of_kind(profile, DECOMPOSITION, prefill_chunk)


def lowering_report(profile: str, prefill_chunk: int) -> dict[str, str]:
    """What each op became, for the artifact's details (a lowering reports, it does not assert)."""
    return {op.name: op.onnx[profile].describe(prefill_chunk) for op in LOWERINGS if profile in op.onnx}
