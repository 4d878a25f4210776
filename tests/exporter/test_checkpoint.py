"""Checkpoint loading: layouts (sharded, fused experts, MTP head, bf16) and the errors for broken ones."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from exporter import CheckpointError, load_model
from exporter.checkpoint import iter_checkpoint_tensors
from tests.exporter.oracle import build, save

TOKENS = torch.arange(3, 23).view(1, 20)


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    return save(build("causal"), tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="module")
def reference_logits(causal_dir):
    _, model, _ = load_model(causal_dir)
    with torch.no_grad():
        return model(TOKENS).logits


def rewrite(src, dst, edit):
    """Copy a single-file checkpoint with its tensors passed through `edit(dict) -> dict`."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(edit(load_file(src / "model.safetensors")), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@torch.no_grad()
def test_sharded_checkpoint_loads_the_same(tmp_path, reference_logits):
    path = save(build("causal"), tmp_path / "sharded", max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    _, model, info = load_model(path)
    assert len(info.files) > 1
    assert torch.equal(model(TOKENS).logits, reference_logits)


@torch.no_grad()
def test_bf16_checkpoint_loads_into_fp32(tmp_path, causal_dir):
    path = rewrite(causal_dir, tmp_path / "bf16", lambda t: {k: v.bfloat16() for k, v in t.items()})
    _, model, _ = load_model(path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    expected = load_file(causal_dir / "model.safetensors")["model.norm.weight"].bfloat16().float()
    assert torch.equal(model.norm.weight, expected)


@torch.no_grad()
def test_mtp_head_is_recognised_not_loaded(tmp_path, causal_dir, reference_logits):
    extra = {"mtp.fc.weight": torch.zeros(64, 128), "mtp.layers.0.input_layernorm.weight": torch.zeros(64)}
    path = rewrite(causal_dir, tmp_path / "mtp", lambda t: {**t, **extra})
    _, model, info = load_model(path)
    assert info.mtp_keys == sorted(extra)
    assert torch.equal(model(TOKENS).logits, reference_logits)


@torch.no_grad()
def test_fused_and_per_expert_layouts_agree(tmp_path):
    per_expert = save(build("moe"), tmp_path / "per-expert")

    def fuse(tensors):
        out = {k: v for k, v in tensors.items() if ".mlp.experts." not in k}
        layers = {k.split(".mlp.experts.")[0] for k in tensors if ".mlp.experts." in k}
        for layer in layers:
            get = lambda e, part: tensors[f"{layer}.mlp.experts.{e}.{part}.weight"]  # noqa: E731
            num = len({k for k in tensors if k.startswith(f"{layer}.mlp.experts.") and k.endswith("down_proj.weight")})
            out[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([get(e, "gate_proj"), get(e, "up_proj")]) for e in range(num)]
            )
            out[f"{layer}.mlp.experts.down_proj"] = torch.stack([get(e, "down_proj") for e in range(num)])
        return out

    fused = rewrite(per_expert, tmp_path / "fused", fuse)
    assert any(k.endswith("experts.gate_up_proj") for k, _, _ in iter_checkpoint_tensors(fused))
    logits = [load_model(p)[1](TOKENS).logits for p in (per_expert, fused)]
    assert torch.equal(*logits)


def test_missing_unexpected_and_misshaped_tensors_are_listed(tmp_path, causal_dir):
    def damage(tensors):
        del tensors["model.layers.0.linear_attn.A_log"]
        tensors["model.layers.9.mlp.gate_proj.weight"] = torch.zeros(1)
        tensors["model.norm.weight"] = torch.zeros(7)
        return tensors

    with pytest.raises(CheckpointError) as err:
        load_model(rewrite(causal_dir, tmp_path / "broken", damage))
    message = str(err.value)
    assert "1 missing: layers.0.linear_attn.A_log" in message
    assert "1 unexpected: layers.9.mlp.gate_proj.weight" in message
    assert "1 mis-shaped: norm.weight (7,) != (64,)" in message


def test_many_missing_tensors_are_summarised(tmp_path, causal_dir):
    path = rewrite(causal_dir, tmp_path / "half", lambda t: {k: v for k, v in t.items() if "layers.0." not in k})
    with pytest.raises(CheckpointError, match=r"14 missing: .* \(and 9 more\)"):
        load_model(path)


def test_truncated_file_is_a_checkpoint_error(tmp_path, causal_dir):
    path = tmp_path / "truncated"
    path.mkdir()
    (path / "config.json").write_text((causal_dir / "config.json").read_text())
    data = (causal_dir / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(path)


def test_directory_errors(tmp_path, causal_dir):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((causal_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickled weights are never loaded"):
        load_model(pickled)
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}
    (pickled / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shards listed in the index are missing"):
        load_model(pickled)


@torch.no_grad()
def test_trained_fixture_loads(trained_checkpoint):
    config, model, info = load_model(trained_checkpoint)
    assert info.files == ["model.safetensors"] and not info.mtp_keys
    n_params = sum(p.numel() for p in model.parameters())
    assert 25.0e6 < n_params < 25.2e6  # 25.1 M, as the fixture's README states
    assert model.lm_head.weight is model.embed_tokens.weight
    assert os.path.getsize(trained_checkpoint / "model.safetensors") < n_params * 2 + 1_000_000  # bf16 on disk
