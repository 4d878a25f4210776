"""The bundle tokenizer: streaming never cuts a character, chat templates render as the checkpoint says."""

from __future__ import annotations

import json

import pytest

from runtime.tokenizer import CHATML, JINJA, BundleTokenizer
from tests.conftest import need_fixture

TEXT = "def greet():\n    return \"héllo 🙂 世界 🎉 — naïve café 👩‍👩‍👧\"\n"
REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def checkpoint():
    return need_fixture("qwen35-tiny-code")


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    return BundleTokenizer(checkpoint / "tokenizer.json", config["chat_template"], {"eos_token": "<|im_end|>"})


def test_the_text_really_splits_characters_across_tokens(tokenizer):
    ids = tokenizer.encode(TEXT)
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids), "no token holds a partial character: weak test"
    assert tokenizer.decode(ids) == TEXT


def test_streaming_never_splits_a_multibyte_character(tokenizer):
    stream = tokenizer.stream()
    pieces = [stream.push(i) for i in tokenizer.encode(TEXT)] + [stream.flush()]
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) == TEXT
    assert sum(1 for p in pieces if p) > 10  # it streams, rather than holding everything to the end


def test_streaming_releases_a_cut_character_only_when_complete(tokenizer):
    ids = tokenizer.encode("🎉")
    assert len(ids) > 1
    stream = tokenizer.stream()
    assert [stream.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🎉"]


def test_flush_gives_out_an_unfinished_character_as_replacement(tokenizer):
    ids = tokenizer.encode("🎉")
    stream = tokenizer.stream()
    assert stream.push(ids[0]) == ""
    assert stream.flush() == tokenizer.decode(ids[:1])


def test_chat_template_renders_with_jinja(tokenizer):
    assert tokenizer.chat_engine == JINJA
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tokenizer.encode(text)
    assert ids[0] == 248045 and 248046 in ids  # <|im_start|>, <|im_end|> as single special tokens


def test_without_a_template_a_plain_chatml_formatter_stands_in(checkpoint):
    tokenizer = BundleTokenizer(checkpoint / "tokenizer.json", None, {})
    assert tokenizer.chat_engine == CHATML
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_malformed_message_is_refused(tokenizer):
    from runtime.errors import BundleError

    with pytest.raises(BundleError, match=r"messages\[0\]"):
        tokenizer.apply_chat_template([{"text": "Hi"}])
