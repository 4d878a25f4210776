"""Presets: the `ModelConfig` of random-weight models at the published shapes, and tiny ones for tests.

`tiny` and `tiny-moe` hold both layer kinds (and the MoE) at a size every path runs fast at;
`0.8b` and `2b` are the published phone shapes. The dataclasses and their parsing are the
runtime's (`runtime.config`), which owns the bundle contract.
"""

from __future__ import annotations

from runtime.config import (
    FULL,
    LINEAR,
    ModelConfig,
    MoeConfig,
    TextConfig,
    VisionConfig,
)
from runtime.errors import ConfigError

_SMALL_PATTERN = (LINEAR, LINEAR, LINEAR, FULL)
_QWEN_SPECIALS = {"bos_token_id": None, "eos_token_ids": (248046,), "pad_token_id": 248044}


# The vision tower of Qwen3.5-0.8B (its config.json `vision_config`); used at this shape with random
# weights by bench/bench_vision.py.
VISION_0_8B = VisionConfig(
    depth=12, hidden_size=768, intermediate_size=3072, num_heads=12, out_hidden_size=1024,
    num_position_embeddings=2304, hidden_act="gelu_pytorch_tanh",
)


def _phone_size(hidden: int, ffn: int) -> TextConfig:
    """The published 0.8B/2B text shapes: 24 layers of (3 x DeltaNet, 1 x attention)."""
    return TextConfig(
        vocab_size=248320,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=256,
        layer_types=_SMALL_PATTERN * 6,
        linear_num_key_heads=16,
        linear_num_value_heads=16,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        mrope_section=(11, 11, 10),
        tie_word_embeddings=True,
        **_QWEN_SPECIALS,
    )


def _tiny(moe: MoeConfig | None = None) -> TextConfig:
    """Both layer kinds, grouped DeltaNet heads (Hv = 2 Hk), GQA, partial rotary: fast, yet every path runs."""
    return TextConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        layer_types=_SMALL_PATTERN,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        mrope_section=(1, 1, 2),
        max_position_embeddings=4096,
        tie_word_embeddings=moe is None,
        eos_token_ids=(2,),
        pad_token_id=0,
        moe=moe,
    )


PRESETS = {
    "tiny": lambda: ModelConfig("qwen3_5_text", _tiny()),
    "tiny-moe": lambda: ModelConfig("qwen3_5_moe_text", _tiny(MoeConfig(4, 2, 32, 48))),
    "0.8b": lambda: ModelConfig("qwen3_5_text", _phone_size(1024, 3584)),
    "2b": lambda: ModelConfig("qwen3_5_text", _phone_size(2048, 6144)),
}


def preset(name: str) -> ModelConfig:
    """The `ModelConfig` of a named random-weight preset."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r}: unknown; choose one of {', '.join(PRESETS)} or give a checkpoint directory")
    return PRESETS[name]()
