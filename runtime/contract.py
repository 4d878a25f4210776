"""The bundle contract: file, method, input, output and state names, and state shapes.

The bundle contract: every name, method and state shape that the lowerings
(`exporter.executorch`, `exporter.onnx`), the bundle writer (`exporter.bundle`),
the runtime backends and the Android core (`Contract.java`) share. Written once,
here; everything else derives from it. Torch-free.

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
may be bound to the past's own buffer (`exporter.onnx.state`). Beside it,
`genai_config.json` describes the model to onnxruntime-genai (`exporter.onnx.genai`).

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

from runtime.config import FULL, ModelConfig, TextConfig
from runtime.errors import QwenEdgeError

# Bundle files
MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
TOKENIZER = "tokenizer.json"
GOLDEN = "golden.npz"
SELFCHECK = "selfcheck.json"
SELFCHECK_SCHEMA = 1
PTE_FORMAT, ONNX_FORMAT = "pte", "onnx"  # an artifact's `format` in the manifest

# ExecuTorch decoder and vision encoder
PTE, PTD = "model.pte", "model.ptd"
PTE_WEIGHTS_TAG = "model"  # external data file stem of the decoder's .pte: model.ptd
FORWARD_METHOD = "forward"
IMAGE_METHOD = "forward_with_images"  # ExecuTorch method of multimodal decoders
VISION_PTE, VISION_ONNX = "vision.pte", "vision.onnx"
VISION_METHOD = "vision_encoder"
VISION_WEIGHTS_TAG = "vision"  # external data file stem of the vision .pte: vision.ptd
# The `.pte`'s kernel sets: what the program calls outside XNNPACK, hence what an app must link.
PTE_KERNELS = {
    "stock": "the stock ExecuTorch runtime (portable kernels + XNNPACK); no custom ops",
    "llm": "the stock ExecuTorch runtime + ExecuTorch's LLM custom-ops library (extension/llm/custom_ops, "
           "for llama::gated_delta_rule), which its LLM runners and Android/iOS LLM packages link",
}

# ONNX decoder and vision encoder
ONNX_MODEL, ONNX_DATA = "model.onnx", "model.onnx.data"
GENAI_CONFIG = "genai_config.json"  # what onnxruntime-genai reads to drive the model
ONNX_PROFILES = ("ort", "portable")
INPUT_IDS, POSITION_IDS, LOGITS = "input_ids", "position_ids", "logits"
IMAGE_EMBEDS = "image_embeds"  # ONNX input of multimodal decoders
ATTENTION_MASK = "attention_mask"  # ONNX input of decoders whose KV caches are buffers of the caller's capacity
VISION_INPUTS = ("pixel_patches", "pos_index", "pos_weight", "rotary_cos", "rotary_sin")
VISION_OUTPUTS = ("image_embeds",)

STATE_PARTS = ("key", "value", "conv", "recurrent")


def state_names(text: TextConfig) -> list[tuple[int, str]]:
    """(layer, part) of every state tensor, in the order the ONNX model lists them."""
    names = []
    for i, kind in enumerate(text.layer_types):
        names += [(i, "key"), (i, "value")] if kind == FULL else [(i, "conv"), (i, "recurrent")]
    return names


def state_shape(text: TextConfig, part: str, *, batch: int = 1, kv_slots: int = 0) -> tuple[int, ...]:
    """The shape of one state tensor: key/value [B, Hkv, slots, Dh] (slots: the tokens a growing cache
    holds, or a capacity cache's size), conv [B, C, K-1], recurrent [B, Hv, Dk, Dv]."""
    if part in ("key", "value"):
        return (batch, text.num_key_value_heads, kv_slots, text.head_dim)
    if part == "conv":
        return (batch, text.conv_dim, text.linear_conv_kernel_dim - 1)
    if part == "recurrent":
        return (batch, text.linear_num_value_heads, text.linear_key_head_dim, text.linear_value_head_dim)
    raise ValueError(f"state part {part!r}: not one of {', '.join(STATE_PARTS)}")


def past_name(layer: int, part: str) -> str:
    return f"past_key_values.{layer}.{part}"


def present_name(layer: int, part: str) -> str:
    return f"present.{layer}.{part}"


def capacity_kv(profile: str) -> bool:
    """Whether a profile's KV caches are buffers of the caller's capacity (ort) rather than growing (portable)."""
    return profile == "ort"


def io_names(config: ModelConfig, profile: str) -> tuple[list[str], list[str]]:
    """The ONNX decoder's input and output names in graph order."""
    parts = state_names(config.text)
    images = [IMAGE_EMBEDS] if config.vision is not None else []
    mask = [ATTENTION_MASK] if capacity_kv(profile) else []
    inputs = [INPUT_IDS, POSITION_IDS, *images, *mask] + [past_name(i, part) for i, part in parts]
    outputs = [LOGITS] + [present_name(i, part) for i, part in parts]
    return inputs, outputs


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
