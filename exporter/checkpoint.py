"""Load a Qwen3.5 checkpoint directory (HF layout, safetensors only) into the reference model.

Handles the multimodal layout (`model.language_model.*`, `model.visual.*`,
`lm_head.*`), the text-only layout (`model.*`), single-file and sharded
(`model.safetensors.index.json`) checkpoints, MoE experts stored per expert or
fused, tied or untied LM heads, and the multi-token-prediction head (`mtp.*`),
which is recognised and set aside. Weights are read tensor by tensor, with
plain file reads, into a model built on the meta device, so a load holds one
copy of the weights (plus one tensor in flight for a dtype cast) and nothing
of the files stays mapped.

`load_model` reads the decoder and lists the vision tower's tensors;
`load_vision` reads those tensors (`model.visual.*`) into the vision tower.

Not here: pickled checkpoints (never loaded: they can run code).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from exporter.model import Qwen35Model
from exporter.vision.tower import VisionTower
from runtime.config import ModelConfig, load_config, text_to_hf
from runtime.errors import CheckpointError
from runtime.files import place_dir, staging_dir

_TEXT_PREFIXES = ("model.language_model.", "model.")
_VISION_PREFIXES = ("model.visual.", "visual.")
_MTP_PREFIX = "mtp."
_EXPERT_PARTS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class CheckpointInfo:
    """What a checkpoint holds beside the decoder: reported by `inspect`, kept for later use."""

    files: list[str]
    vision_keys: list[str] = field(default_factory=list)
    mtp_keys: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, files: list[Path], keys) -> CheckpointInfo:
        """Classify a checkpoint's tensor names: the vision tower's and the MTP head's are set aside."""
        return cls(
            files=[f.name for f in files],
            vision_keys=sorted(k for k in keys if k.startswith(_VISION_PREFIXES)),
            mtp_keys=sorted(k for k in keys if k.startswith(_MTP_PREFIX)),
        )


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in shard order."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{index}: unreadable shard index ({err}); re-download it") from err
        files = [path / name for name in sorted(set(weight_map.values()))]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {', '.join(pickles)}: pickled weights are never loaded; convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: shards listed in the index are missing: {', '.join(missing)}")
    return files


@dataclass(frozen=True)
class _Stored:
    """Where one tensor lives: its file's safetensors handle, the open file, the data's byte offset."""

    handle: object
    file: object  # the file opened for plain reads
    offset: int


def _open_all(files: list[Path], stack: ExitStack) -> dict[str, _Stored]:
    """key -> where the tensor is stored (safetensors validates each file's header and extent)."""
    stored: dict[str, _Stored] = {}
    for file in files:
        try:
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            raw = stack.enter_context(open(file, "rb", buffering=0))
            header_size = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(header_size))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{file}: not a readable safetensors file ({err}); re-download or re-save it") from err
        for key in handle.keys():
            stored[key] = _Stored(handle, raw, 8 + header_size + header[key]["data_offsets"][0])
    return stored


def _decoder_name(key: str) -> str | None:
    """Our parameter name for a checkpoint key of the decoder, or None if the key is not the decoder's."""
    if key.startswith(_VISION_PREFIXES) or key.startswith(_MTP_PREFIX):
        return None
    if key.startswith("lm_head."):
        return key
    for prefix in _TEXT_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _expert_key(name: str) -> tuple[str, int, str] | None:
    """`layers.3.mlp.experts.7.up_proj.weight` -> ('layers.3.mlp.experts', 7, 'up_proj')."""
    head, sep, tail = name.partition(".mlp.experts.")
    parts = tail.split(".")
    if sep and len(parts) == 3 and parts[0].isdigit() and parts[1] in _EXPERT_PARTS and parts[2] == "weight":
        return f"{head}.mlp.experts", int(parts[0]), parts[1]
    return None


def _summarise(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (and {len(names) - limit} more)" if len(names) > limit else shown


class _Reader:
    """Reads decoder tensors by our parameter name, casting each to `dtype` as it goes."""

    def __init__(self, handles: dict[str, _Stored], dtype: torch.dtype):
        self.dtype = dtype
        self.handles = handles
        self.by_name: dict[str, str] = {}
        self.experts: dict[str, dict[int, dict[str, str]]] = {}
        for key in handles:
            name = _decoder_name(key)
            if name is None:
                continue
            expert = _expert_key(name)
            if expert:
                base, index, part = expert
                self.experts.setdefault(base, {}).setdefault(index, {})[part] = key
            else:
                self.by_name[name] = key

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor in this process's own memory, read with plain file reads, then cast to `dtype`.

        Not a view of safetensors' memory map: pages read through a map count towards this
        process's resident memory while the map lives, and one kept tensor keeps the whole file
        mapped. An fp32 checkpoint would then hold its weights twice once quantization made its
        own copies (0.8B: 3 GB of the export's peak); read, they are held once, in the tensors.
        """
        stored = self.handles[key]
        try:
            mapped = stored.handle.get_tensor(key)  # dtype and shape only: nothing of the map is touched
            value = torch.empty(mapped.shape, dtype=mapped.dtype)
            del mapped
            data = value.reshape(-1).view(torch.uint8).numpy()
            stored.file.seek(stored.offset)
            done = 0
            while done < data.nbytes:
                count = stored.file.readinto(memoryview(data)[done:])
                if not count:
                    raise OSError(f"the file ends {data.nbytes - done} bytes into the tensor's data")
                done += count
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"tensor {key}: unreadable ({err}); the file may be truncated") from err
        return value.to(self.dtype)

    def fused_experts(self, base: str, part: str, num_experts: int) -> torch.Tensor | None:
        """Stack per-expert tensors into the fused layout ([E, 2I, D] gate_up, [E, D, I] down)."""
        stored = self.experts.get(base)
        if stored is None:
            return None
        if sorted(stored) != list(range(num_experts)) or any(set(p) != set(_EXPERT_PARTS) for p in stored.values()):
            raise CheckpointError(f"{base}: experts stored per expert, but not all {num_experts} x {_EXPERT_PARTS} are present")
        if part == "down_proj":
            return torch.stack([self.tensor(stored[e]["down_proj"]) for e in range(num_experts)])
        rows = [torch.cat([self.tensor(stored[e]["gate_proj"]), self.tensor(stored[e]["up_proj"])]) for e in range(num_experts)]
        return torch.stack(rows)


def _refuse_mismatch(what: str, missing: list[str], unexpected: list[str], misshaped: list[str]) -> None:
    """One CheckpointError listing every problem at once (a user fixes them all in one go)."""
    counted = [(missing, "missing"), (unexpected, "unexpected"), (misshaped, "mis-shaped")]
    problems = [f"{len(names)} {kind}: {_summarise(names)}" for names, kind in counted if names]
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def _load_tensors(model: Qwen35Model, reader: _Reader) -> None:
    """Assign every parameter of `model` from the reader; collect and report all problems at once."""
    tied = model.config.tie_word_embeddings
    expected = dict(model.named_parameters(remove_duplicate=True))
    missing, misshaped, used = [], [], set()
    tensors = {}
    for name, param in expected.items():
        base, _, part = name.rpartition(".")
        value = None
        if name in reader.by_name:
            value = reader.tensor(reader.by_name[name])
            used.add(name)
        elif base.endswith("mlp.experts") and model.config.moe is not None:
            value = reader.fused_experts(base, part, model.config.moe.num_experts)
        if value is None:
            missing.append(name)
        elif value.shape != param.shape:
            misshaped.append(f"{name} {tuple(value.shape)} != {tuple(param.shape)}")
        else:
            tensors[name] = value
    # A tied checkpoint may still carry lm_head.weight (a copy of the embedding): harmless.
    unexpected = [k for k in reader.by_name if k not in used and not (tied and k == "lm_head.weight")]
    _refuse_mismatch("checkpoint does not match its config.json", missing, unexpected, misshaped)
    model.load_state_dict(tensors, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.embed_tokens.weight


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[ModelConfig, Qwen35Model, CheckpointInfo]:
    """Load config and decoder weights from a checkpoint directory, in `dtype`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; give a checkpoint directory with config.json and safetensors")
    config = load_config(path)
    files = checkpoint_files(path)
    with ExitStack() as stack:
        handles = _open_all(files, stack)
        reader = _Reader(handles, dtype)
        with torch.device("meta"):
            model = Qwen35Model(config.text)
        _load_tensors(model, reader)
        info = CheckpointInfo.of(files, handles)
    return config, model.eval().requires_grad_(False), info


def _vision_name(key: str) -> str | None:
    """Our vision-tower parameter name for a checkpoint key, or None if the key is not the tower's."""
    for prefix in _VISION_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return None


def _load_vision_tensors(tower: VisionTower, reader: _Reader) -> None:
    """Assign every parameter of `tower` from `model.visual.*`; report all problems at once."""
    by_name = {name: key for key in reader.handles if (name := _vision_name(key)) is not None}
    expected = dict(tower.named_parameters())
    tensors, missing, misshaped = {}, [], []
    for name, param in expected.items():
        if name not in by_name:
            missing.append(name)
            continue
        value = reader.tensor(by_name[name])
        if value.shape != param.shape:
            misshaped.append(f"{by_name[name]} {tuple(value.shape)} != {tuple(param.shape)}")
        else:
            tensors[name] = value
    unexpected = [by_name[name] for name in by_name if name not in expected]
    _refuse_mismatch("vision tower does not match the checkpoint's vision_config",
                     [f"model.visual.{n}" for n in missing], unexpected, misshaped)
    tower.load_state_dict(tensors, strict=True, assign=True)


def load_vision(path: str | Path, dtype: torch.dtype = torch.float32) -> VisionTower:
    """Load the vision tower (`model.visual.*`) of a multimodal checkpoint directory, in `dtype`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; give a checkpoint directory with config.json and safetensors")
    config = load_config(path)
    if config.vision is None:
        raise CheckpointError(
            f"{path}: config.json has no vision_config, so the checkpoint has no vision tower; "
            "give a multimodal (Qwen3_5ForConditionalGeneration) checkpoint to use images"
        )
    with ExitStack() as stack:
        reader = _Reader(_open_all(checkpoint_files(path), stack), dtype)
        with torch.device("meta"):
            tower = VisionTower(config.vision)
        _load_vision_tensors(tower, reader)
    return tower.eval().requires_grad_(False)


def random_vision(config: ModelConfig, dtype: torch.dtype = torch.float32, seed: int = 0) -> VisionTower:
    """A vision tower of this config with seeded random weights (LayerNorms near identity)."""
    if config.vision is None:
        raise CheckpointError("random_vision: the config has no vision_config; a multimodal config is needed")
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        tower = VisionTower(config.vision)
    tensors = {}
    for name, param in tower.named_parameters():
        module, _, kind = name.rpartition(".")
        base = 1.0 if kind == "weight" and module.rpartition(".")[2].startswith("norm") else 0.0
        tensors[name] = (base + 0.02 * torch.randn(tuple(param.shape), generator=generator)).to(dtype)
    tower.load_state_dict(tensors, strict=True, assign=True)
    return tower.eval().requires_grad_(False)


def random_model(config: ModelConfig, dtype: torch.dtype = torch.float32, seed: int = 0) -> Qwen35Model:
    """A model of this config with seeded random weights (presets and benchmarks: speed, not quality).

    Built on the meta device and filled tensor by tensor in `dtype`, so the 2B
    shape costs one copy of its weights and no default-init pass.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = Qwen35Model(config.text)
    tensors = {
        name: _random_init(name, tuple(param.shape), generator).to(dtype)
        for name, param in model.named_parameters()
    }
    model.load_state_dict(tensors, strict=False, assign=True)
    if config.text.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval().requires_grad_(False)


def _random_init(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if name.endswith("A_log"):
        # Decay rates spread as at training init: A = exp(A_log) in (1, 16).
        return torch.empty(shape).uniform_(0.0, 2.77, generator=generator)
    if name.endswith("linear_attn.norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)  # plain (not zero-centred) norm
    if name.endswith(("norm.weight", "dt_bias")):
        return 0.1 * torch.randn(shape, generator=generator)
    if name.endswith("conv1d.weight"):
        return 0.3 * torch.randn(shape, generator=generator)  # a handful of taps per channel
    return 0.02 * torch.randn(shape, generator=generator)


def iter_checkpoint_tensors(path: Path) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of every tensor in a checkpoint, without reading the data."""
    with ExitStack() as stack:
        for key, stored in _open_all(checkpoint_files(path), stack).items():
            sliced = stored.handle.get_slice(key)
            yield key, tuple(sliced.get_shape()), sliced.get_dtype()


def save_checkpoint(config: ModelConfig, model: Qwen35Model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the decoder as a text-only HF checkpoint (`config.json`, `model.safetensors`), atomically.

    The peers (transformers, ExecuTorch's and ONNX Runtime GenAI's exporters)
    read this layout, so a preset can be compared with them on the same weights.
    """
    path = Path(path)
    if path.exists():
        raise CheckpointError(f"{path}: already exists; remove it or choose another directory")
    with staging_dir(path.parent, f".{path.name}.") as tmp:
        tensors = {}
        for name, tensor in model.state_dict().items():
            if name == "lm_head.weight" and config.text.tie_word_embeddings:
                continue
            key = name if name.startswith("lm_head.") else f"model.{name}"
            tensors[key] = (tensor.to(dtype) if dtype else tensor).contiguous()
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        text = text_to_hf(config.text, "qwen3_5_moe_text" if config.is_moe else "qwen3_5_text")
        text["architectures"] = ["Qwen3_5MoeForCausalLM" if config.is_moe else "Qwen3_5ForCausalLM"]
        (tmp / "config.json").write_text(json.dumps(text, indent=1) + "\n")
        place_dir(tmp, path)
    return path


def open_model(spec: str, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, Qwen35Model, CheckpointInfo | None]:
    """A model from a checkpoint directory or a preset name (random weights, seed 0)."""
    from exporter.config import PRESETS, preset

    if spec in PRESETS and not Path(spec).exists():
        config = preset(spec)
        return config, random_model(config, dtype), None
    if not Path(spec).exists():
        raise CheckpointError(
            f"{spec}: neither a checkpoint directory nor a preset; presets are {', '.join(PRESETS)}"
        )
    return load_model(spec, dtype)
