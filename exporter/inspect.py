"""`qwen-edge inspect MODEL`: what a checkpoint or preset holds, without running it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from exporter.checkpoint import CheckpointInfo, checkpoint_files, iter_checkpoint_tensors
from exporter.errors import CheckpointError
from exporter.config import FULL, PRESETS, ModelConfig, load_config, preset
from exporter.model import Qwen35Model


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Decoder parameters by part, from the config alone (meta tensors, no memory)."""
    with torch.device("meta"):
        model = Qwen35Model(config.text)
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():
        part = name.split(".")[0] if not name.startswith("layers.") else name.split(".")[2]
        counts[part] += param.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return dict(counts)


def _checkpoint_info(path: Path) -> tuple[CheckpointInfo, int]:
    keys = list(iter_checkpoint_tensors(path))
    info = CheckpointInfo(
        files=[f.name for f in checkpoint_files(path)],
        vision_keys=[k for k, _, _ in keys if k.startswith(("model.visual.", "visual."))],
        mtp_keys=[k for k, _, _ in keys if k.startswith("mtp.")],
    )
    return info, len(keys)


def inspect_model(spec: str) -> str:
    path = Path(spec)
    is_preset = spec in PRESETS and not path.exists()
    if not is_preset and not path.exists():
        raise CheckpointError(f"{spec}: neither a checkpoint directory nor a preset; presets are {', '.join(PRESETS)}")
    config = preset(spec) if is_preset else load_config(path)
    t = config.text
    kinds = Counter(t.layer_types)
    lines = [
        f"model: {spec} ({'preset, random weights' if is_preset else 'checkpoint'}), model_type {config.model_type}",
        f"decoder: {t.num_hidden_layers} layers ({kinds['linear_attention']} DeltaNet, {kinds[FULL]} attention), "
        f"hidden {t.hidden_size}, vocab {t.vocab_size}, tied embeddings: {t.tie_word_embeddings}",
        f"attention: {t.num_attention_heads} q / {t.num_key_value_heads} kv heads x {t.head_dim}, "
        f"rotary {t.rotary_dim} dims, theta {t.rope_theta:g}",
        f"DeltaNet: {t.linear_num_key_heads} k / {t.linear_num_value_heads} v heads x "
        f"{t.linear_key_head_dim}/{t.linear_value_head_dim}, conv kernel {t.linear_conv_kernel_dim}",
    ]
    if t.moe:
        m = t.moe
        lines.append(f"MoE: {m.num_experts} experts, top {m.num_experts_per_tok}, FFN {m.moe_intermediate_size}, "
                     f"shared FFN {m.shared_expert_intermediate_size}")
    else:
        lines.append(f"MLP: SwiGLU, FFN {t.intermediate_size}")
    if config.vision:
        v = config.vision
        lines.append(f"vision: {v.depth} blocks, hidden {v.hidden_size}, patch {v.patch_size}, out {v.out_hidden_size}")
    counts = parameter_counts(config)
    parts = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in sorted(counts.items()) if k != "total")
    lines.append(f"parameters: {counts['total'] / 1e6:.1f} M decoder ({parts})")
    if not is_preset:
        info, n_tensors = _checkpoint_info(path)
        lines.append(f"checkpoint: {n_tensors} tensors in {', '.join(info.files)}")
        lines.append(f"  vision tower tensors: {len(info.vision_keys)}; multi-token-prediction (mtp.*) tensors: "
                     f"{len(info.mtp_keys)} (kept aside, not part of the exported decoder)")
    return "\n".join(lines)
