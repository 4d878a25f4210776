"""The PyTorch reference behind the runtime's `reference` backend, validation and golden traces.

The runtime owns the bundle contract and never imports the exporter; it reaches the PyTorch
decoder and vision tower through `runtime.reference`, where importing `exporter` registers
`TorchReference`. Everything crossing that seam is NumPy or a runtime type.

Not here: the model itself (`exporter.model`, `exporter.vision`), loading (`exporter.checkpoint`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from exporter.checkpoint import load_model, load_vision, random_model
from exporter.model import Qwen35Model, splice_image_embeds
from runtime.backends import Backend
from runtime.bundle import Bundle
from runtime.contract import state_names
from runtime.errors import BundleError
from runtime.reference import Reference
from runtime.trace import Trace
from runtime.vision import VisionEncoder


class ReferenceBackend(Backend):
    """The PyTorch decoder, its state as the model's list of tensors."""

    name = "reference"

    def __init__(self, model: Qwen35Model, max_chunk: int, capacity: int, image_token_id: int | None = None):
        self.model, self.max_chunk, self.capacity = model, max_chunk, capacity
        self.image_token_id = image_token_id
        self._state = None

    def reset(self) -> None:
        self._state = None

    def forward(self, ids: np.ndarray, pos: int, *, positions: np.ndarray | None = None,
                image_embeds: np.ndarray | None = None) -> np.ndarray:
        tokens = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).view(1, -1)  # [1, T]
        if positions is None:
            rope = torch.arange(pos, pos + tokens.shape[1]).view(1, -1)  # [1, T]
        else:
            rope = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)).view(3, 1, -1)  # [3, 1, T]
        with torch.no_grad():
            embeds = None
            if image_embeds is not None:
                rows = torch.from_numpy(np.ascontiguousarray(image_embeds, dtype=np.float32))
                embeds = splice_image_embeds(self.model.embed_tokens(tokens), tokens, rows, self.image_token_id)
            out = self.model(None if embeds is not None else tokens, self._state, positions=rope, inputs_embeds=embeds)
        self._state = out.state
        return out.logits[0, -1].float().numpy()

    def state(self) -> dict[str, np.ndarray] | None:
        return None if self._state is None else _named_state(self.model, self._state)


class ReferenceVisionEncoder(VisionEncoder):
    def __init__(self, bundle: Bundle, tower):
        super().__init__(bundle)
        self.tower = tower

    def _run(self, inputs: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self.tower.encode(*(torch.from_numpy(x) for x in inputs)).float().numpy()


def _named_state(model: Qwen35Model, state) -> dict[str, np.ndarray]:
    flat = [t for layer in state for t in layer]
    names = state_names(model.config)
    return {f"{i}.{part}": t.float().numpy() for (i, part), t in zip(names, flat, strict=True)}


def reference_model(bundle: Bundle, checkpoint: str | Path | None = None) -> Qwen35Model:
    """The reference decoder of a bundle: from `checkpoint`, or rebuilt from the manifest's preset source + seed."""
    source = bundle.source
    if checkpoint is not None:
        config, model, _ = load_model(checkpoint)
        _check_same_model(bundle, config.text, checkpoint)
        return model
    if source.get("kind") == "preset":
        return random_model(bundle.config, seed=int(source.get("seed") or 0))
    raise BundleError(
        f"{bundle.root}: exported from checkpoint {source.get('name')!r}; the reference model needs it: "
        "pass --model CHECKPOINT"
    )


def _check_same_model(bundle: Bundle, text, checkpoint) -> None:
    expected = bundle.config.text
    diff = [f.name for f in fields(expected) if getattr(expected, f.name) != getattr(text, f.name)]
    if diff:
        shown = ", ".join(f"{n} {getattr(text, n)!r} vs {getattr(expected, n)!r}" for n in diff[:3])
        raise BundleError(f"{checkpoint}: not the bundle's model ({shown}); give the checkpoint it was exported from")


def reference_trace(model: Qwen35Model, prompt_ids, steps: int) -> tuple[Trace, dict[str, np.ndarray]]:
    """The golden trace of the reference model, and its state after the prompt as {"{layer}.{part}": array}."""
    if steps < 1:
        raise BundleError(f"golden steps {steps}: need at least one greedy token")
    tokens = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64)).view(1, -1)  # [1, T]
    with torch.no_grad():
        out = model(tokens)
        prompt_logits = out.logits[0].float().numpy()  # [T, V]
        greedy = [int(prompt_logits[-1].argmax())]
        decode_logits, state = [], out.state
        for _ in range(steps - 1):
            step = model(torch.tensor([[greedy[-1]]]), state)
            state = step.state
            decode_logits.append(step.logits[0, -1].float().numpy())
            greedy.append(int(decode_logits[-1].argmax()))
    trace = Trace(
        prompt_ids=np.asarray(prompt_ids, dtype=np.int64),
        prompt_logits=prompt_logits.astype(np.float32),
        greedy_ids=np.asarray(greedy, dtype=np.int64),
        decode_logits=np.asarray(decode_logits, dtype=np.float32).reshape(steps - 1, prompt_logits.shape[-1]),
    )
    return trace, _named_state(model, out.state)


class TorchReference(Reference):
    """`runtime.reference.Reference` over `exporter.model` and `exporter.vision`."""

    def model(self, bundle: Bundle, checkpoint: str | Path | None = None) -> Qwen35Model:
        return reference_model(bundle, checkpoint)

    def backend(self, bundle: Bundle, model, threads: int | None = None) -> Backend:
        if threads:
            torch.set_num_threads(threads)  # process-wide: PyTorch has no per-model thread pool
        if model is None or isinstance(model, (str, Path)):
            model = reference_model(bundle, model)
        return ReferenceBackend(model, int(bundle.export["prefill_chunk"]), int(bundle.export["max_seq_len"]),
                                bundle.config.image_token_id)

    def trace(self, model: Qwen35Model, prompt_ids, steps: int) -> tuple[Trace, dict[str, np.ndarray]]:
        return reference_trace(model, prompt_ids, steps)

    def logits(self, model: Qwen35Model, ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.asarray(ids, dtype=np.int64)).view(1, -1)).logits[0].float().numpy()

    def hidden_states(self, model: Qwen35Model, ids: np.ndarray) -> list[tuple[str, np.ndarray]]:
        tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).view(1, -1)  # [1, T]
        with torch.no_grad():
            hidden = model(tokens, output_hidden_states=True).hidden_states
        names = ["embed_tokens"] + [f"layers.{i} ({kind})" for i, kind in enumerate(model.config.layer_types)]
        return [(name, h[0].float().numpy()) for name, h in zip(names, hidden, strict=True)]

    def vision_encoder(self, bundle: Bundle, checkpoint: str | Path) -> VisionEncoder:
        return ReferenceVisionEncoder(bundle, load_vision(checkpoint))
