"""What a bundle carries for text: the tokenizer files, special token ids and chat template of a checkpoint.

Read once from the checkpoint directory (`tokenizer.json`, `tokenizer_config.json`,
`chat_template.jinja`, `generation_config.json`) into a `TokenizerInfo` the
bundle writer copies and records in the manifest. EOS ids are the union of the
model config's, the generation config's and the tokenizer config's `eos_token`,
so a runtime stops where transformers' `generate` would.

A preset (random weights) has no tokenizer: its `TokenizerInfo` holds the special
ids of the config and a note that text commands need token ids instead.

Not here: tokenizing at run time (`runtime.tokenizer`).
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import ModelConfig
from runtime.errors import CheckpointError
from runtime.files import read_json

COPIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


@dataclass(frozen=True)
class TokenizerInfo:
    files: tuple[Path, ...]  # source files to copy into the bundle (tokenizer.json first)
    chat_template: str | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    tokens: dict[str, str | None] = field(  # the special tokens' strings, as tokenizer_config.json names them
        default_factory=lambda: {"bos_token": None, "eos_token": None, "pad_token": None})
    special_tokens: dict[str, int] = field(default_factory=dict)  # content -> id of every special token
    note: str | None = None

    def manifest(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """The manifest's `tokenizer` section, given the file entries of the copied files."""
        return {
            "files": entries,
            "chat_template": self.chat_template,
            **self.tokens,
            "bos_token_id": self.bos_token_id,
            "eos_token_ids": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
            "special_tokens": self.special_tokens,
            "note": self.note,
        }


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, CheckpointError, "fix or remove it")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _token_string(value: Any) -> str | None:
    """`eos_token` is a string, or (older files) an object with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(path: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    return template if isinstance(template, str) else None


def _special_tokens(path: Path, config: dict[str, Any]) -> dict[str, int]:
    decoder = config.get("added_tokens_decoder") or {}
    found = {v["content"]: int(k) for k, v in decoder.items() if isinstance(v, dict) and v.get("special")}
    if found:
        return found
    added = _read_json(path / "tokenizer.json").get("added_tokens") or []
    return {t["content"]: int(t["id"]) for t in added if isinstance(t, dict) and t.get("special")}


def _unique(ids) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


@functools.lru_cache(maxsize=2)
def _load(file: str):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(file)
    except Exception as err:  # tokenizers raises plain `Exception` for every parse error
        raise CheckpointError(f"{file}: not a loadable tokenizer ({err}); re-download it") from err


def _check_tokenizer(file: Path, vocab_size: int) -> None:
    """Load it once now, so a broken tokenizer fails the export rather than the phone."""
    size = _load(str(file)).get_vocab_size()
    if size > vocab_size:
        raise CheckpointError(f"{file}: {size} tokens, more than the model's vocab_size {vocab_size}")


def tokenizer_info(checkpoint: Path | None, config: ModelConfig) -> TokenizerInfo:
    """The tokenizer of a checkpoint directory (None for a preset)."""
    text = config.text
    if checkpoint is None or not (checkpoint / "tokenizer.json").is_file():
        why = "a preset with random weights" if checkpoint is None else f"{checkpoint} has no tokenizer.json"
        return TokenizerInfo(
            files=(), chat_template=None, bos_token_id=text.bos_token_id, eos_token_ids=text.eos_token_ids,
            pad_token_id=text.pad_token_id,
            note=f"no tokenizer ({why}): text prompts are unavailable; use token ids",
        )
    _check_tokenizer(checkpoint / "tokenizer.json", text.vocab_size)
    tok_config = _read_json(checkpoint / "tokenizer_config.json")
    generation = _read_json(checkpoint / "generation_config.json")
    special = _special_tokens(checkpoint, tok_config)
    tokens = {key: _token_string(tok_config.get(key)) for key in ("bos_token", "eos_token", "pad_token")}
    gen_eos = generation.get("eos_token_id")
    gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    eos = _unique([*text.eos_token_ids, *gen_eos, special.get(tokens["eos_token"] or "")])
    return TokenizerInfo(
        files=tuple(checkpoint / name for name in COPIED if (checkpoint / name).is_file()),
        chat_template=_chat_template(checkpoint, tok_config),
        bos_token_id=text.bos_token_id if text.bos_token_id is not None else special.get(tokens["bos_token"] or ""),
        eos_token_ids=eos,
        pad_token_id=text.pad_token_id if text.pad_token_id is not None else special.get(tokens["pad_token"] or ""),
        tokens=tokens,
        special_tokens=special,
    )


def copy_tokenizer(info: TokenizerInfo, out_dir: Path) -> list[str]:
    """Copy the tokenizer files into `out_dir`; their bundle-relative names."""
    names = []
    for file in info.files:
        shutil.copyfile(file, out_dir / file.name)
        names.append(file.name)
    return names


def encode(info: TokenizerInfo, text: str) -> list[int]:
    """Token ids of `text` with the checkpoint's tokenizer (no special tokens added)."""
    return _load(str(info.files[0])).encode(text, add_special_tokens=False).ids
