"""What an exporter takes and returns: export options and the description of one written artifact.

The contract between the lowerings (`exporter.executorch`, `exporter.onnx`), the
bundle writer (`exporter.bundle`) and the runtime backends (`runtime/`):

ExecuTorch (`model.pte`): method `forward(tokens int64 [1, T], input_pos int64 [1])
-> logits float32 [1, V]` (the last position's logits), 1 <= T <= prefill_chunk;
the state lives in mutable buffers; a call with input_pos = 0 starts a new
sequence. Constant methods as ExecuTorch's LLM runner reads them.

ONNX (`model.onnx`, `model.onnx.data` when external): inputs `input_ids` int64
[B, T] and `position_ids` int64 [3, B, T] (M-RoPE t, h, w; equal rows for text),
then (ort profile) `attention_mask` int64 [B, P + T] of ones, then per layer i the
past state: full-attention layers `past_key_values.{i}.key` and `.value`; DeltaNet
layers `past_key_values.{i}.conv` [B, C, K-1] and `.recurrent` float32
[B, Hv, Dk, Dv]. Outputs: `logits` [B, 1, V] (last position) and
`present.{i}.key|value|conv|recurrent` with the next state. 1 <= T <= prefill_chunk
per call. The KV caches (`details.kv_cache.layout`): ort profile, `capacity`: key/value
[B, Hkv, C, Dh] are buffers of the caller's capacity C (max_seq_len), the call writes
its T entries at slots P..P+T-1 and returns the same shape, and several tokens after
a cache need B = 1; portable profile, `grows`: key/value [B, Hkv, P, Dh] in,
[B, Hkv, P + T, Dh] out. `details.state_in_place.parts` lists the states whose present
may be bound to the past's own buffer (`exporter.onnx_state`). Beside it,
`genai_config.json` describes the model to onnxruntime-genai (`exporter.onnx.genai_config`).

Multimodal checkpoints add an image path to both, so image prompts need no second
decoder and no host-side copy of the embedding table: image embeddings [N, D]
(the vision encoder's output) fill the prompt's `<|image_pad|>` tokens, the k-th
pad taking row k. ONNX: an optional input `image_embeds` [N, D] (default: no
rows). ExecuTorch: a second method `forward_with_images(tokens [1, T],
image_embeds [N, D], input_pos [1], positions int64 [3, T]) -> logits [1, V]`
with explicit M-RoPE positions and its own state; an image session runs every
call, decode included, through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.config import FULL, TextConfig
from exporter.errors import QwenEdgeError
from exporter.quantize import QuantRecipe, resolve


IMAGE_EMBEDS = "image_embeds"  # ONNX input of multimodal decoders
ATTENTION_MASK = "attention_mask"  # ONNX input of decoders whose KV caches are buffers of the caller's capacity
IMAGE_METHOD = "forward_with_images"  # ExecuTorch method of multimodal decoders
# The `.pte`'s kernel sets: what the program calls outside XNNPACK, hence what an app must link.
PTE_KERNELS = {
    "stock": "the stock ExecuTorch runtime (portable kernels + XNNPACK); no custom ops",
    "llm": "the stock ExecuTorch runtime + ExecuTorch's LLM custom-ops library (extension/llm/custom_ops, "
           "for llama::gated_delta_rule), which its LLM runners and Android/iOS LLM packages link",
}


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
        if self.onnx_profile not in ("ort", "portable"):
            raise QwenEdgeError(f"--onnx-profile {self.onnx_profile!r}: choose 'ort' or 'portable'")
        if self.pte_kernels not in PTE_KERNELS:
            raise QwenEdgeError(f"--pte-kernels {self.pte_kernels!r}: choose one of {', '.join(PTE_KERNELS)}")

    @property
    def recipe(self) -> QuantRecipe:
        return QuantRecipe(self.quant, self.group_size, self.embedding_bits)


@dataclass
class Artifact:
    """One exported file set, as the manifest records it."""

    format: str  # "pte" or "onnx"
    files: list[str]  # bundle-relative; the first is the one to open
    quant: str
    details: dict[str, Any] = field(default_factory=dict)  # methods / I/O, profile, kernels, export report


def required_kernels(pte_kernels: str, quantized_embedding: bool = False) -> str:
    """What an app must link to run a `.pte` of kernel set `pte_kernels` (the manifest's `kernels_required`)."""
    needs = PTE_KERNELS[pte_kernels]
    if quantized_embedding:
        needs += ("; and ExecuTorch's quantized kernels library (quantized_decomposed::embedding_byte, "
                  "linked by its LLM runners)")
    return needs


def load_llm_custom_ops() -> None:
    """Load ExecuTorch's LLM custom-ops library, kernel set "llm": the llama:: ops' schemas for export, their
    kernels for ExecuTorch's Python runtime (one library registers both)."""
    try:
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    except (ImportError, OSError, AssertionError) as err:
        raise QwenEdgeError(f"kernel set 'llm': ExecuTorch's LLM custom-ops library did not load ({err}); install "
                            "the executorch wheel pinned in pyproject.toml (or export with --pte-kernels stock)") from err


def state_names(text: TextConfig) -> list[tuple[int, str]]:
    """(layer, part) of every state tensor, in the order the ONNX model lists them."""
    names = []
    for i, kind in enumerate(text.layer_types):
        names += [(i, "key"), (i, "value")] if kind == FULL else [(i, "conv"), (i, "recurrent")]
    return names
