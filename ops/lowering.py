"""The table each op exports: how it leaves PyTorch in each exporter, per profile or kernel set.

Every `qwen35::` op module ends with one `LOWERING = OpLowering(...)`; `ops.LOWERINGS` collects
them and both exporters iterate that tuple, so adding an op touches its own module only:

- `onnx[profile]` ("ort", "portable"): an `OnnxLowering`, either a *translation* (an onnxscript
  function torch.onnx traces in place of the node: its `custom_translation_table`) or a
  *decomposition* (a PyTorch function applied to the exported program before conversion, so the
  op becomes standard ONNX ops). A profile missing from the table means the op never appears in
  that profile's graph.
- `executorch[kernels]` ("stock", "llm"): an `ExecuTorchLowering`, the PyTorch function that
  replaces the node before `to_edge` (XNNPACK has no kernel for these ops). Missing: the op never
  appears in a `.pte`'s graph.

`build` takes the prefill chunk (the most tokens one call takes), which some forms are sized by.
`report` is what the export report says the op became (a lowering reports, it does not assert); it
may name `{prefill_chunk}`, which `describe(prefill_chunk)` fills in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

TRANSLATION, DECOMPOSITION = "translation", "decomposition"


@dataclass(frozen=True)
class OnnxLowering:
    kind: str  # TRANSLATION or DECOMPOSITION
    build: Callable[[int], Callable]  # prefill_chunk -> the function
    report: str

    def describe(self, prefill_chunk: int) -> str:
        return self.report.format(prefill_chunk=prefill_chunk)


@dataclass(frozen=True)
class ExecuTorchLowering:
    build: Callable[[int], Callable]  # prefill_chunk -> the decomposition (same signature as the op's schema)
    report: str
    needs_llm_ops: bool = False  # calls ExecuTorch's LLM custom ops (`runtime.contract.load_llm_custom_ops`)

    def describe(self, prefill_chunk: int) -> str:
        return self.report.format(prefill_chunk=prefill_chunk)


@dataclass(frozen=True)
class OpLowering:
    name: str  # "gated_delta_rule": the op is torch.ops.qwen35.<name>.default
    onnx: Mapping[str, OnnxLowering] = field(default_factory=dict)
    executorch: Mapping[str, ExecuTorchLowering] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "onnx", MappingProxyType(dict(self.onnx)))
        object.__setattr__(self, "executorch", MappingProxyType(dict(self.executorch)))

    @property
    def overload(self):
        import torch

        return getattr(torch.ops.qwen35, self.name).default


def fixed(fn: Callable) -> Callable[[int], Callable]:
    """`build` for a form that does not depend on the prefill chunk."""
    return lambda _prefill_chunk: fn
