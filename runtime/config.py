"""Architecture config of a Qwen3.5 model, parsed once from an HF `config.json`.

Frozen dataclasses, one per concern: `TextConfig` (the decoder), `MoeConfig`
(sparse-expert MLPs, when present), `VisionConfig` (the image tower, when
present) and `ModelConfig` tying them together with the multimodal token ids.
Export, quantization and validation knobs live elsewhere; this module only
describes the network. The runtime owns it (a bundle's manifest carries the
config); the exporter's presets (`exporter.config`) build the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError
from runtime.files import read_json

LINEAR = "linear_attention"
FULL = "full_attention"
MODEL_TYPES = ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")


@dataclass(frozen=True)
class MoeConfig:
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    norm_topk_prob: bool = True


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    num_position_embeddings: int
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0  # the 2-D rotary of the ViT blocks (`rope_parameters`, type "axial")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e7
    partial_rotary_factor: float = 0.25
    mrope_section: tuple[int, ...] = ()
    mrope_interleaved: bool = True
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    moe: MoeConfig | None = None

    @property
    def num_hidden_layers(self) -> int:
        return len(self.layer_types)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def conv_dim(self) -> int:
        """Channels of the DeltaNet causal conv: q, k and v side by side."""
        key_dim = self.linear_num_key_heads * self.linear_key_head_dim
        return 2 * key_dim + self.linear_num_value_heads * self.linear_value_head_dim


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    text: TextConfig
    vision: VisionConfig | None = None
    image_token_id: int | None = None
    video_token_id: int | None = None
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None

    @property
    def is_moe(self) -> bool:
        return self.text.moe is not None


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def text_only(config: ModelConfig) -> ModelConfig:
    """The decoder alone: no vision tower and no image token ids, as a text-only app embeds it."""
    return dataclasses.replace(config, vision=None, image_token_id=None, video_token_id=None,
                               vision_start_token_id=None, vision_end_token_id=None)


def load_config(path: str | Path) -> ModelConfig:
    """Read `config.json` from a checkpoint directory (or the file itself)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{file}: not found; a checkpoint directory must hold the HF config.json")
    return parse_config(read_json(file, ConfigError, "re-download the checkpoint's config.json"))


def parse_config(raw: Mapping[str, Any]) -> ModelConfig:
    """Build a `ModelConfig` from the dict of an HF `config.json`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config: expected a JSON object at the top level")
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model_type: {model_type!r} is not a Qwen3.5 model; expected one of {', '.join(MODEL_TYPES)}"
        )
    text_raw = raw.get("text_config", raw)
    if not isinstance(text_raw, Mapping):
        raise ConfigError("text_config: expected an object holding the decoder's fields")
    vision_raw = raw.get("vision_config")
    return ModelConfig(
        model_type=model_type,
        text=_parse_text(text_raw, is_moe=model_type.startswith("qwen3_5_moe")),
        vision=_parse_vision(vision_raw) if vision_raw else None,
        image_token_id=raw.get("image_token_id"),
        video_token_id=raw.get("video_token_id"),
        vision_start_token_id=raw.get("vision_start_token_id"),
        vision_end_token_id=raw.get("vision_end_token_id"),
    )


def _require(raw: Mapping[str, Any], name: str, kind: type = int) -> Any:
    if name not in raw or raw[name] is None:
        raise ConfigError(f"{name}: missing from config.json; copy it from the model's published config")
    value = raw[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if kind is int and value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {value}")
    return value


def _rope(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Rope settings from `rope_parameters` (transformers 5) or the older top-level/rope_scaling keys."""
    params = dict(raw.get("rope_scaling") or {})
    params.update(raw.get("rope_parameters") or {})
    for key in ("rope_theta", "partial_rotary_factor"):
        if key not in params and key in raw:
            params[key] = raw[key]
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"rope_parameters.rope_type: {rope_type!r} is not supported; Qwen3.5 uses 'default'")
    return params


def _layer_types(raw: Mapping[str, Any]) -> tuple[str, ...]:
    num_layers = _require(raw, "num_hidden_layers")
    types = raw.get("layer_types")
    if types is None:
        interval = raw.get("full_attention_interval", 4)
        types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(num_layers)]
    if len(types) != num_layers:
        raise ConfigError(
            f"layer_types: has {len(types)} entries but num_hidden_layers is {num_layers}; "
            "give one type per layer"
        )
    unknown = sorted({t for t in types if t not in (LINEAR, FULL)})
    if unknown:
        raise ConfigError(f"layer_types: unknown kinds {unknown}; each entry must be '{LINEAR}' or '{FULL}'")
    return tuple(types)


def _parse_text(raw: Mapping[str, Any], *, is_moe: bool) -> TextConfig:
    hidden = _require(raw, "hidden_size")
    heads = _require(raw, "num_attention_heads")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act: {act!r} is not supported; Qwen3.5 uses 'silu'")
    rope = _rope(raw)
    eos = raw.get("eos_token_id")
    text = TextConfig(
        vocab_size=_require(raw, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=raw.get("intermediate_size") or 0 if is_moe else _require(raw, "intermediate_size"),
        num_attention_heads=heads,
        num_key_value_heads=_require(raw, "num_key_value_heads"),
        head_dim=raw.get("head_dim") or hidden // heads,
        layer_types=_layer_types(raw),
        linear_num_key_heads=_require(raw, "linear_num_key_heads"),
        linear_num_value_heads=_require(raw, "linear_num_value_heads"),
        linear_key_head_dim=_require(raw, "linear_key_head_dim"),
        linear_value_head_dim=_require(raw, "linear_value_head_dim"),
        linear_conv_kernel_dim=raw.get("linear_conv_kernel_dim", 4),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", 1e7)),
        partial_rotary_factor=float(rope.get("partial_rotary_factor", 0.25)),
        mrope_section=tuple(rope.get("mrope_section") or ()),
        mrope_interleaved=bool(rope.get("mrope_interleaved", True)),
        max_position_embeddings=raw.get("max_position_embeddings", 262144),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,)),
        pad_token_id=raw.get("pad_token_id"),
        moe=_parse_moe(raw) if is_moe else None,
    )
    _check_text(text)
    return text


def _parse_moe(raw: Mapping[str, Any]) -> MoeConfig:
    moe = MoeConfig(
        num_experts=_require(raw, "num_experts"),
        num_experts_per_tok=_require(raw, "num_experts_per_tok"),
        moe_intermediate_size=_require(raw, "moe_intermediate_size"),
        shared_expert_intermediate_size=_require(raw, "shared_expert_intermediate_size"),
        norm_topk_prob=bool(raw.get("norm_topk_prob", True)),
    )
    if moe.num_experts_per_tok > moe.num_experts:
        raise ConfigError(
            f"num_experts_per_tok: {moe.num_experts_per_tok} exceeds num_experts ({moe.num_experts}); "
            "a token cannot pick more experts than exist"
        )
    return moe


def _check_text(t: TextConfig) -> None:
    """Cross-field consistency: what a single field check cannot see."""
    if t.num_attention_heads % t.num_key_value_heads:
        raise ConfigError(
            f"num_attention_heads: {t.num_attention_heads} is not a multiple of num_key_value_heads "
            f"({t.num_key_value_heads}); each KV head must serve a whole number of query heads"
        )
    if t.linear_num_value_heads % t.linear_num_key_heads:
        raise ConfigError(
            f"linear_num_value_heads: {t.linear_num_value_heads} is not a multiple of linear_num_key_heads "
            f"({t.linear_num_key_heads}); each DeltaNet key head must serve a whole number of value heads"
        )
    rotary = t.rotary_dim
    if rotary <= 0 or rotary % 2:
        raise ConfigError(
            f"partial_rotary_factor: head_dim {t.head_dim} x {t.partial_rotary_factor} = {rotary} rotary "
            "dims; it must be a positive even number"
        )
    if t.mrope_section and sum(t.mrope_section) != rotary // 2:
        raise ConfigError(
            f"rope_parameters.mrope_section: {list(t.mrope_section)} sums to {sum(t.mrope_section)}, "
            f"expected rotary_dim/2 = {rotary // 2} (one frequency per section entry)"
        )
    if t.linear_conv_kernel_dim < 2:
        raise ConfigError(f"linear_conv_kernel_dim: {t.linear_conv_kernel_dim}; the causal conv needs at least 2 taps")


def _parse_vision(raw: Mapping[str, Any]) -> VisionConfig:
    rope = dict(raw.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", "axial")
    if rope_type != "axial":
        raise ConfigError(
            f"vision_config.rope_parameters.rope_type: {rope_type!r} is not supported; the Qwen3.5 vision tower uses 'axial'"
        )
    vision = VisionConfig(
        depth=_require(raw, "depth"),
        hidden_size=_require(raw, "hidden_size"),
        intermediate_size=_require(raw, "intermediate_size"),
        num_heads=_require(raw, "num_heads"),
        out_hidden_size=_require(raw, "out_hidden_size"),
        num_position_embeddings=_require(raw, "num_position_embeddings"),
        in_channels=raw.get("in_channels", 3),
        patch_size=raw.get("patch_size", 16),
        temporal_patch_size=raw.get("temporal_patch_size", 2),
        spatial_merge_size=raw.get("spatial_merge_size", 2),
        hidden_act=raw.get("hidden_act", "gelu_pytorch_tanh"),
        rope_theta=float(rope.get("rope_theta", 10000.0)),
    )
    _check_vision(vision)
    return vision


VISION_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")


def _check_vision(v: VisionConfig) -> None:
    """What the vision tower's layout needs beyond positive sizes."""
    if v.hidden_act not in VISION_ACTIVATIONS:
        raise ConfigError(
            f"vision_config.hidden_act: {v.hidden_act!r} is not supported; expected one of {', '.join(VISION_ACTIVATIONS)}"
        )
    if v.hidden_size % v.num_heads or v.head_dim % 4:
        raise ConfigError(
            f"vision_config.hidden_size: {v.hidden_size} over {v.num_heads} heads must give a head size that is a "
            "multiple of 4 (the 2-D rotary gives a quarter of each head to rows, a quarter to columns, twice)"
        )
    side = math.isqrt(v.num_position_embeddings)
    if side * side != v.num_position_embeddings:
        raise ConfigError(
            f"vision_config.num_position_embeddings: {v.num_position_embeddings} is not a square; "
            "the learned position table is a square grid"
        )


# ---------------------------------------------------------------------------
# Back to HF form (for bundles, and for building the oracle from a preset)
# ---------------------------------------------------------------------------


def text_to_hf(t: TextConfig, model_type: str = "qwen3_5_text") -> dict[str, Any]:
    """The `config.json` dict of a text-only checkpoint with this decoder."""
    fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
    rope = {
        "rope_type": "default",
        "rope_theta": fields.pop("rope_theta"),
        "partial_rotary_factor": fields.pop("partial_rotary_factor"),
        "mrope_interleaved": fields.pop("mrope_interleaved"),
    }
    section = fields.pop("mrope_section")
    if section:
        rope["mrope_section"] = list(section)
    moe = fields.pop("moe")
    eos = fields.pop("eos_token_ids")
    hf = {
        "model_type": model_type,
        **fields,
        "layer_types": list(t.layer_types),
        "num_hidden_layers": t.num_hidden_layers,
        "hidden_act": "silu",
        "rope_parameters": rope,
        "eos_token_id": list(eos) if len(eos) > 1 else (eos[0] if eos else None),
    }
    if moe is not None:
        hf.update(dataclasses.asdict(moe))
    return hf


def to_hf(config: ModelConfig) -> dict[str, Any]:
    """The `config.json` dict of this model (text-only layout unless it has a vision tower)."""
    suffix = "_moe" if config.is_moe else ""
    if config.vision is None:
        return text_to_hf(config.text, f"qwen3_5{suffix}_text")
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return {
        "model_type": f"qwen3_5{suffix}",
        "text_config": text_to_hf(config.text, f"qwen3_5{suffix}_text"),
        "vision_config": _vision_to_hf(config.vision),
        "tie_word_embeddings": config.text.tie_word_embeddings,
        **{key: getattr(config, key) for key in ids if getattr(config, key) is not None},
    }


def _vision_to_hf(v: VisionConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(v)
    rope = {"rope_type": "axial", "rope_theta": fields.pop("rope_theta")}
    return {"model_type": "qwen3_5_vision", **fields, "rope_parameters": rope}
