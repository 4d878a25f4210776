"""A loaded bundle ready to generate: prefill, decode, reset and generate over any backend.

`Session` owns what every backend shares: the position in the sequence, the
split of a prompt into chunks of at most the artifact's prefill chunk, the
capacity check, the tokenizer and chat template, sampling, EOS stops and
streaming text. Backends (`runtime.backends`) only run chunks.

Not here: validation against the reference (`runtime.validate`), timing (`runtime.bench`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import Backend
from runtime.bundle import Bundle
from runtime.errors import QwenEdgeError
from runtime.image import PixelPatches, preprocess
from runtime.image_prompt import expand_image_pads, mrope_positions
from runtime.sampling import Sampler, Sampling
from runtime.tokenizer import BundleTokenizer
from runtime.vision import VisionEncoder, image_spec

Prompt = str | Sequence[int] | Sequence[dict[str, str]]
ImageInput = str | Path | PixelPatches | Any  # Any: a PIL.Image.Image
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # one image, as the chat template renders it


@dataclass
class Generation:
    """What `generate` produced and how it stopped."""

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # new tokens, EOS excluded
    text: str | None = None  # None without a tokenizer
    stop_reason: str = "length"  # "eos", "length" or "max_seq_len"
    prefill_s: float = 0.0
    decode_s: float = 0.0


class Session:
    """One sequence on one backend of one bundle."""

    def __init__(self, bundle: Bundle, backend: Backend, tokenizer: BundleTokenizer | None,
                 vision: Callable[[], VisionEncoder] | None = None):
        self.bundle, self.backend, self.tokenizer = bundle, backend, tokenizer
        self.eos_token_ids = frozenset(bundle.eos_token_ids)
        self.pos = 0
        self._make_vision, self._vision = vision, None
        self._rope_shift: int | None = None  # image sequences: rotary position minus cache slot after the prompt

    def reset(self) -> None:
        """Start a new sequence."""
        self.backend.reset()
        self.pos = 0
        self._rope_shift = None

    def prefill(self, ids: Sequence[int], *, positions: np.ndarray | None = None,
                image_embeds: np.ndarray | None = None) -> np.ndarray:
        """Append `ids` to the sequence, in chunks of at most the prefill chunk -> logits [V] after the last.

        positions [3, T] and image_embeds [N, D] (one row per image token of ids, in order) come
        from `prefill_images`; a plain call continues the sequence, an image one included.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise QwenEdgeError("prompt: empty; give at least one token")
        self._check_room(ids.size)
        vocab = self.bundle.config.text.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise QwenEdgeError(f"prompt: token ids must lie in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
        if positions is None and self._rope_shift is not None:  # text after an image prompt: shifted positions
            positions = np.broadcast_to(np.arange(self.pos, self.pos + ids.size) + self._rope_shift, (3, ids.size))
        logits, row = None, 0
        for start in range(0, ids.size, self.backend.max_chunk):
            end = min(start + self.backend.max_chunk, ids.size)
            rope = None if positions is None else positions[:, start:end]
            rows = None
            if image_embeds is not None:  # this chunk's rows: one per image token in it
                count = int((ids[start:end] == self.bundle.config.image_token_id).sum())
                rows, row = image_embeds[row : row + count], row + count
            logits = self.backend.forward(ids[start:end], self.pos, positions=rope, image_embeds=rows)
            self.pos += end - start
        return logits

    def prefill_images(self, ids: Sequence[int], images: Sequence[PixelPatches]) -> np.ndarray:
        """Start a sequence with a prompt holding images -> logits [V] after it.

        ids: the prompt with each image as `<|vision_start|><|image_pad|><|vision_end|>` (or its
        pad already repeated once per image token), images in prompt order. The vision encoder
        runs on the session's backend; decoding then continues with `decode` as usual.
        """
        config = self.bundle.config
        grids = [image.grid_thw for image in images]
        expanded = expand_image_pads(list(ids), grids, config)  # raises on a prompt that does not fit the images
        self._check_room(len(expanded))
        positions, next_position = mrope_positions(expanded, grids, config)
        embeds = np.concatenate([self.vision().encode(image) for image in images])  # [sum M, D]
        self.reset()
        logits = self.prefill(expanded, positions=positions, image_embeds=embeds)
        self._rope_shift = next_position - len(expanded)
        return logits

    def vision(self) -> VisionEncoder:
        """The bundle's vision encoder on this session's backend (loaded on first use)."""
        if self._vision is None:
            if self._make_vision is None:
                raise QwenEdgeError("image prompts: this session has no vision encoder; open it with runtime.session.load")
            self._vision = self._make_vision()
        return self._vision

    def decode(self, token: int) -> np.ndarray:
        """Append one token -> logits [V] for the next."""
        return self.prefill([token])

    def _check_room(self, count: int) -> None:
        if self.pos + count > self.backend.capacity:
            raise QwenEdgeError(
                f"sequence: {self.pos + count} tokens exceed this bundle's max_seq_len {self.backend.capacity}; "
                "shorten the prompt or export with a larger --max-seq-len"
            )

    def encode_prompt(self, prompt: Prompt, chat: bool = False) -> list[int]:
        """Token ids of a prompt: text (raw, or wrapped as one user message with `chat`), messages, or ids."""
        if isinstance(prompt, str):
            tokenizer = self._need_tokenizer()
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
            return tokenizer.encode(text)
        items = list(prompt)
        if items and all(isinstance(m, dict) for m in items):
            tokenizer = self._need_tokenizer()
            return tokenizer.encode(tokenizer.apply_chat_template(items))
        if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
            return [int(i) for i in items]
        raise QwenEdgeError("prompt: expected text, a list of {role, content} messages, or a list of token ids")

    def _need_tokenizer(self) -> BundleTokenizer:
        if self.tokenizer is None:
            return BundleTokenizer.from_bundle(self.bundle)  # raises, naming why there is none
        return self.tokenizer

    def generate(
        self,
        prompt: Prompt,
        max_new_tokens: int = 64,
        sampling: Sampling = Sampling(),
        *,
        chat: bool = False,
        on_text: Callable[[str], None] | None = None,
        images: Sequence[ImageInput] = (),
    ) -> Generation:
        """Reset, prefill the prompt and sample up to `max_new_tokens`, stopping at the bundle's EOS ids.

        `images` (paths, Pillow images or preprocessed patches) go where the prompt has
        `<|vision_start|><|image_pad|><|vision_end|>`; a text prompt without one gets them in front.

        `on_text` receives the text as it completes, never a partial UTF-8 character.
        """
        if max_new_tokens < 0:
            raise QwenEdgeError(f"--max-new-tokens {max_new_tokens}: must be >= 0")
        if images and isinstance(prompt, str) and IMAGE_PLACEHOLDER not in prompt:
            prompt = IMAGE_PLACEHOLDER * len(images) + prompt  # images first, as Qwen's chat template puts them
        prompt_ids = self.encode_prompt(prompt, chat)
        result = Generation(prompt_ids)
        stream = self.tokenizer.stream() if self.tokenizer is not None else None
        sampler = Sampler(sampling)
        self.reset()
        start = time.perf_counter()
        if images:
            spec = image_spec(self.bundle)
            logits = self.prefill_images(prompt_ids, [image if isinstance(image, PixelPatches) else preprocess(image, spec)
                                                      for image in images])
        else:
            logits = self.prefill(prompt_ids)
        result.prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        while len(result.ids) < max_new_tokens:
            token = sampler(logits)
            if token in self.eos_token_ids:
                result.stop_reason = "eos"
                break
            result.ids.append(token)
            if stream is not None and on_text is not None:
                _emit(on_text, stream.push(token))
            if len(result.ids) == max_new_tokens:
                break
            if self.pos >= self.backend.capacity:
                result.stop_reason = "max_seq_len"
                break
            logits = self.decode(token)
        result.decode_s = time.perf_counter() - start
        if stream is not None and on_text is not None:
            _emit(on_text, stream.flush())
        if self.tokenizer is not None:
            result.text = self.tokenizer.decode(result.ids)
        return result


def _emit(on_text: Callable[[str], None], piece: str) -> None:
    if piece:
        on_text(piece)


def load(bundle, backend: str = "onnx", model=None, *, threads: int | None = None, verify: bool = True) -> Session:
    """Open a bundle (path or `Bundle`) and make a session on `backend` ("onnx", "pte" or "reference").

    `model`: for the reference backend, the checkpoint path (or a loaded model);
    without it, a bundle exported from a preset rebuilds its random weights from
    the manifest's seed. `threads`: intra-op threads (default: physical cores).
    """
    from runtime.backends import make_backend, physical_cores
    from runtime.bundle import open_bundle
    from runtime.vision import make_vision_encoder

    if not isinstance(bundle, Bundle):
        bundle = open_bundle(bundle, verify=verify)
    engine = make_backend(bundle, backend, model=model, threads=threads)
    tokenizer = BundleTokenizer.from_bundle(bundle) if bundle.has_tokenizer else None
    checkpoint = model if isinstance(model, (str, Path)) else None
    vision = functools.partial(make_vision_encoder, bundle, backend, checkpoint=checkpoint,
                               threads=threads or physical_cores())
    return Session(bundle, engine, tokenizer, vision)
