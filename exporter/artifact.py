"""What an exporter takes and returns: export options, and the description of one written artifact.

The files, names and shapes an artifact must have are the bundle contract, which the
runtime owns (`runtime.contract`); this module holds only what the export side adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.quantize import QuantRecipe, resolve
from runtime.contract import ONNX_PROFILES, PTE_KERNELS
from runtime.errors import QwenEdgeError


@dataclass(frozen=True)
class ExportOptions:
    max_seq_len: int = 2048  # KV-cache capacity: prompt + generated tokens
    prefill_chunk: int = 128  # most tokens one call takes; a power of two
    quant: str = "fp32"  # a scheme of exporter.quantize.SCHEMES
    group_size: int | None = None  # int4 group size of 4w / 8da4w (default 32); None elsewhere
    embedding_bits: int | None = None  # embedding / tied LM head of 4w / 8da4w: 8 (default) or 4
    onnx_profile: str = "ort"  # "ort" (ONNX Runtime contrib ops) or "portable" (standard ONNX only)
    pte_kernels: str = "stock"  # "stock" (portable kernels + XNNPACK) or "llm" (+ ExecuTorch's LLM custom ops)
    vision_max_tokens: int = 1024  # multimodal checkpoints: most tokens one image becomes (about 1 Mpx)
    text_only: bool = False  # multimodal checkpoints: the decoder alone (no vision encoder, no image inputs)

    def __post_init__(self):
        recipe = resolve(self.quant, self.group_size, self.embedding_bits)  # raises on a bad name or option
        object.__setattr__(self, "group_size", recipe.group_size)  # the defaults, recorded in the manifest
        object.__setattr__(self, "embedding_bits", recipe.embedding_bits)
        chunk = self.prefill_chunk
        if chunk < 1 or chunk & (chunk - 1):
            raise QwenEdgeError(f"--prefill-chunk {chunk}: must be a power of two (e.g. 64 or 128)")
        if self.max_seq_len < chunk:
            raise QwenEdgeError(f"--max-seq-len {self.max_seq_len}: must be at least the prefill chunk ({chunk})")
        if self.onnx_profile not in ONNX_PROFILES:
            raise QwenEdgeError(f"--onnx-profile {self.onnx_profile!r}: choose 'ort' or 'portable'")
        if self.pte_kernels not in PTE_KERNELS:
            raise QwenEdgeError(f"--pte-kernels {self.pte_kernels!r}: choose one of {', '.join(PTE_KERNELS)}")

    @property
    def recipe(self) -> QuantRecipe:
        return QuantRecipe(self.quant, self.group_size, self.embedding_bits)


@dataclass(frozen=True)
class Artifact:
    """One exported file set, as the manifest records it: what a lowering returns."""

    format: str  # "pte" or "onnx"
    files: list[str]  # bundle-relative; the first is the one to open
    quant: str
    details: dict[str, Any] = field(default_factory=dict)  # methods / I/O, profile, kernels, export report
