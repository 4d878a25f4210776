"""Text in and out of a bundle: the tokenizer, the chat template and UTF-8-safe streaming.

`BundleTokenizer` wraps the bundle's `tokenizer.json` (Hugging Face
`tokenizers`) and its chat template. The template is the Jinja source from the
checkpoint's `tokenizer_config.json`, rendered with jinja2 in a sandbox as
transformers does; without jinja2 (or without a template) a minimal ChatML
formatter stands in, and `chat_engine` says which one ran.

`TextStream` turns generated ids into text pieces as they arrive without ever
cutting a multi-byte character: byte-level BPE splits an emoji or a CJK
character over several tokens, and a piece is released only once the text
decoded so far no longer ends in an incomplete sequence (U+FFFD).

Not here: sampling (`runtime.sampling`), the generation loop (`runtime.session`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.bundle import Bundle
from runtime.errors import BundleError

log = logging.getLogger("qwen_edge")

CHATML = "chatml (built-in)"
JINJA = "jinja2"
_REPLACEMENT = "\ufffd"


def _chatml(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    """The ChatML layout Qwen models use, without any model-specific extras."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, mtime_ns: int):
    """Tokenizers are large (the Qwen vocabulary's file is 33 MB): load each file once per process."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def _compile_template(source: str):
    """A sandboxed Jinja template as transformers renders chat templates, or None without jinja2."""
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        log.info("jinja2 is not installed: chat prompts use the built-in ChatML formatter")
        return None

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as err:
        raise BundleError(f"chat template: not valid Jinja ({err}); fix tokenizer_config.json and re-export") from err


class BundleTokenizer:
    """Encode, decode and format chats with the bundle's tokenizer and chat template."""

    def __init__(self, tokenizer_json: Path, chat_template: str | None, special: dict[str, Any]):
        self._tok = _load_tokenizer(str(tokenizer_json), tokenizer_json.stat().st_mtime_ns)
        self.special = special
        self._template = _compile_template(chat_template) if chat_template else None
        self.chat_engine = JINJA if self._template is not None else CHATML

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> BundleTokenizer:
        info = bundle.manifest["tokenizer"]
        files = [entry["path"] for entry in info.get("files", [])]
        if "tokenizer.json" not in files:
            source = bundle.source
            raise BundleError(
                f"{bundle.root}: has no tokenizer ({source.get('kind')} {source.get('name')!r}"
                f"{', random weights' if source.get('kind') == 'preset' else ''}); text prompts need a bundle "
                "exported from a checkpoint with tokenizer.json; give token ids instead (--prompt-ids)"
            )
        return cls(bundle.file("tokenizer.json"), info.get("chat_template"), info)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added (chat templates write their own)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, ready to encode."""
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
                raise BundleError(f"messages[{i}]: expected an object with 'role' and 'content'")
        if self._template is None:
            return _chatml(messages, add_generation_prompt)
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.special.get("bos_token") or "",
                eos_token=self.special.get("eos_token") or "",
            )
        except TemplateError as err:
            raise BundleError(f"chat template: rendering failed ({err})") from err

    def stream(self) -> TextStream:
        return TextStream(self)


class TextStream:
    """Incremental detokenizer: `push(id)` returns the text that is now complete ('' while a character is cut).

    Decoding restarts from `prefix` (a few tokens back) rather than from the
    start, so a long generation costs O(tokens) decodes of short spans; the
    prefix keeps the tokenizer's whitespace and byte merging context intact.
    """

    def __init__(self, tokenizer: BundleTokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the span decoded each time
        self._read = 0  # tokens whose text has been released

    def push(self, token: int) -> str:
        self._ids.append(token)
        done = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        if len(text) <= len(done) or text.endswith(_REPLACEMENT):
            return ""  # an incomplete multi-byte character: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character comes out as U+FFFD)."""
        done = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(done) :]
