"""A loaded bundle ready to generate: prefill, decode, reset and generate over any backend.

`Session` owns what every backend shares: the position in the sequence, the
split of a prompt into chunks of at most the artifact's prefill chunk, the
capacity check, the tokenizer and chat template, sampling, EOS stops and
streaming text. Backends (`runtime.backends`) only run chunks.

Not here: validation against the reference (`runtime.validate`), timing (`runtime.bench`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from exporter.errors import QwenEdgeError
from runtime.backends import Backend
from runtime.bundle import Bundle
from runtime.sampling import Sampler, Sampling
from runtime.tokenizer import BundleTokenizer

Prompt = str | Sequence[int] | Sequence[dict[str, str]]


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

    def __init__(self, bundle: Bundle, backend: Backend, tokenizer: BundleTokenizer | None):
        self.bundle, self.backend, self.tokenizer = bundle, backend, tokenizer
        self.eos_token_ids = frozenset(bundle.eos_token_ids)
        self.pos = 0

    def reset(self) -> None:
        """Start a new sequence."""
        self.backend.reset()
        self.pos = 0

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` to the sequence, in chunks of at most the prefill chunk -> logits [V] after the last."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise QwenEdgeError("prompt: empty; give at least one token")
        self._check_room(ids.size)
        vocab = self.bundle.config.text.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise QwenEdgeError(f"prompt: token ids must lie in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
        logits = None
        for start in range(0, ids.size, self.backend.max_chunk):
            chunk = ids[start : start + self.backend.max_chunk]
            logits = self.backend.forward(chunk, self.pos)
            self.pos += chunk.size
        return logits

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
    ) -> Generation:
        """Reset, prefill the prompt and sample up to `max_new_tokens`, stopping at the bundle's EOS ids.

        `on_text` receives the text as it completes, never a partial UTF-8 character.
        """
        if max_new_tokens < 0:
            raise QwenEdgeError(f"--max-new-tokens {max_new_tokens}: must be >= 0")
        prompt_ids = self.encode_prompt(prompt, chat)
        result = Generation(prompt_ids)
        stream = self.tokenizer.stream() if self.tokenizer is not None else None
        sampler = Sampler(sampling)
        self.reset()
        start = time.perf_counter()
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
    from runtime.backends import make_backend
    from runtime.bundle import open_bundle

    if not isinstance(bundle, Bundle):
        bundle = open_bundle(bundle, verify=verify)
    engine = make_backend(bundle, backend, model=model, threads=threads)
    tokenizer = BundleTokenizer.from_bundle(bundle) if bundle.has_tokenizer else None
    return Session(bundle, engine, tokenizer)
