"""Random-weight transformers models (the independent oracle) and their checkpoints on disk."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeTextConfig,
    Qwen3_5TextConfig,
)

TEXT = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    max_position_embeddings=1024,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 1e7,
        "partial_rotary_factor": 0.25,
        "mrope_section": [1, 1, 2],
        "mrope_interleaved": True,
    },
    tie_word_embeddings=True,
    eos_token_id=2,
    pad_token_id=0,
)

# Variants of the text decoder: each changes what could hide a bug in the others.
VARIANTS = {
    "grouped-heads": {},  # Hv = 2 Hk, GQA 2:1, tied head
    "odd-dims": dict(
        head_dim=24,  # rotary 6 of 24 dims
        rope_parameters={**TEXT["rope_parameters"], "mrope_section": [1, 1, 1]},
        linear_key_head_dim=12,
        linear_value_head_dim=20,
        linear_num_key_heads=1,
        linear_num_value_heads=3,
        num_attention_heads=3,
        num_key_value_heads=1,
        hidden_size=48,
        tie_word_embeddings=False,
    ),
    "custom-layer-types": dict(
        num_hidden_layers=5,
        layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention", "linear_attention"],
        linear_num_key_heads=4,
        linear_num_value_heads=4,
    ),
    # One layer of each kind: the cheapest decoder that still has both (end-to-end checks of the exports).
    "two-layers": dict(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"]),
}

MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)

VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    num_position_embeddings=64,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
)

# The multimodal special tokens, moved inside the tiny vocabulary (the real ids are near 248 000).
MULTIMODAL_IDS = dict(vision_start_token_id=500, vision_end_token_id=501, image_token_id=502, video_token_id=503)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Give every weight (norms, decays, biases included) seeded non-default values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            scale = 0.3 if name.endswith(("conv1d.weight", "A_log", "dt_bias")) else 0.05
            param.copy_(param.float() + scale * noise if "norm" in name or "A_log" in name else scale * noise)


def build(kind: str, variant: str = "grouped-heads", seed: int = 0) -> torch.nn.Module:
    """A random-weight oracle model: kind in {causal, conditional, moe}."""
    torch.manual_seed(seed)
    text = {**TEXT, **VARIANTS[variant]}
    if kind == "causal":
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**text))
    elif kind == "conditional":
        config = Qwen3_5Config(
            text_config=text, vision_config=VISION, tie_word_embeddings=text["tie_word_embeddings"], **MULTIMODAL_IDS
        )
        model = Qwen3_5ForConditionalGeneration(config)
    elif kind == "moe":
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**{**text, **MOE}))
    else:
        raise ValueError(kind)
    _perturb(model, seed)
    return model.float().eval()


def save(model: torch.nn.Module, path: Path, **kwargs) -> Path:
    model.save_pretrained(path, **kwargs)
    return path
