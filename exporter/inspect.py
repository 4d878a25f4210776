"""`qwen-edge inspect BUNDLE|MODEL`: what a bundle, checkpoint or preset holds, without running it.

For a bundle: the model it came from, its architecture, every artifact with its
files, sizes, quantization and recorded details (methods, I/O), the tokenizer,
golden outputs, validation status and toolchain. Checksums are not verified
here (so a damaged bundle can still be looked at): `qwen-edge validate` does.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from exporter.checkpoint import (
    CheckpointInfo,
    checkpoint_files,
    iter_checkpoint_tensors,
)
from exporter.config import PRESETS, preset
from exporter.model import Qwen35Model
from runtime.config import FULL, ModelConfig, load_config
from runtime.errors import CheckpointError


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
    keys = [key for key, _, _ in iter_checkpoint_tensors(path)]
    return CheckpointInfo.of(checkpoint_files(path), keys), len(keys)


def describe_config(config: ModelConfig) -> list[str]:
    """The architecture and parameter counts of a config, one line per part."""
    t = config.text
    kinds = Counter(t.layer_types)
    lines = [
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
    return lines


def inspect_model(spec: str) -> str:
    path = Path(spec)
    is_preset = spec in PRESETS and not path.exists()
    if not is_preset and not path.exists():
        raise CheckpointError(f"{spec}: neither a checkpoint directory nor a preset; presets are {', '.join(PRESETS)}")
    config = preset(spec) if is_preset else load_config(path)
    lines = [f"model: {spec} ({'preset, random weights' if is_preset else 'checkpoint'}), model_type {config.model_type}"]
    lines += describe_config(config)
    if not is_preset:
        info, n_tensors = _checkpoint_info(path)
        lines.append(f"checkpoint: {n_tensors} tensors in {', '.join(info.files)}")
        lines.append(f"  vision tower tensors: {len(info.vision_keys)}; multi-token-prediction (mtp.*) tensors: "
                     f"{len(info.mtp_keys)} (kept aside, not part of the exported decoder)")
    return "\n".join(lines)


def _details(details: dict[str, Any], limit: int = 160) -> list[str]:
    """An artifact's recorded details, one line per key (long values shortened)."""
    lines = []
    for key, value in details.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            lines.append(f"    {key}:")
            lines += [f"      {v['name']} {' '.join(str(v[k]) for k in v if k != 'name')}" for v in value]
            continue
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        lines.append(f"    {key}: {text if len(text) <= limit else text[: limit - 1] + '…'}")
    return lines


def inspect_bundle(path: Path) -> str:
    from runtime.bundle import open_bundle

    bundle = open_bundle(path, verify=False)
    m = bundle.manifest
    source = m["source"]
    seed = f", seed {source['seed']}" if source.get("seed") is not None else ""
    lines = [f"bundle: {path} (schema {m['schema_version']}, created {m.get('created_utc', '?')})",
             f"source: {source['kind']} {source['name']}{seed}, model_type {bundle.config.model_type}"]
    lines += describe_config(bundle.config)
    lines.append(f"export: {', '.join(f'{k} {v}' for k, v in m['export'].items())}")
    vision = m.get("vision") or {}
    tagged = [("artifact", a) for a in m["artifacts"]] + [("vision encoder", a) for a in vision.get("artifacts", [])]
    for kind, artifact in tagged:
        size = sum(f["size_bytes"] for f in artifact["files"])
        lines.append(f"{kind} {artifact['format']} ({artifact['quant']}, {size / 1e6:.1f} MB):")
        lines += [f"    {f['path']}  {f['size_bytes']} bytes  sha256 {f['sha256'][:16]}…" for f in artifact["files"]]
        lines += _details(artifact.get("details", {}))
    if vision:
        processor = vision["image_processor"]
        lines.append(f"images: {processor['min_pixels']}..{processor['max_pixels']} px, patch {processor['patch_size']}, "
                     f"merge {processor['merge_size']}; token ids {vision['token_ids']}")
    tok = m["tokenizer"]
    files = ", ".join(f["path"] for f in tok.get("files", [])) or "none"
    lines.append(f"tokenizer: {files}; eos {tok.get('eos_token_ids')}, pad {tok.get('pad_token_id')}, "
                 f"chat template {'yes' if tok.get('chat_template') else 'no'}")
    if tok.get("note"):
        lines.append(f"    {tok['note']}")
    golden = m["golden"]
    lines.append(f"golden: {golden['path']}, prompt {golden.get('prompt_len')} tokens, {golden.get('steps')} greedy steps")
    validation = m.get("validation")
    lines.append("validation: " + ("not run (exported with --no-validate)" if validation is None
                                   else f"{'passed' if validation.get('passed') else 'FAILED'} ({validation['path']})"))
    lines.append("toolchain: " + ", ".join(f"{k} {v}" for k, v in m["toolchain"].items()))
    lines.append("checksums: not verified here; `qwen-edge validate` verifies them")
    return "\n".join(lines)


def inspect_any(spec: str) -> str:
    """A bundle (a directory with manifest.json), else a checkpoint or preset."""
    from runtime.bundle import MANIFEST

    path = Path(spec)
    return inspect_bundle(path) if (path / MANIFEST).is_file() else inspect_model(spec)
