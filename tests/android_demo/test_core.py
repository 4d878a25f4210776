"""The Android demo's core, on this machine: its own tests, and its tokenizer decoding against `tokenizers`."""

from __future__ import annotations

from tests.android_demo.java import run, run_json
from tests.conftest import need_fixture


def test_core_tests_pass():
    result = run("TestMain")
    assert result.returncode == 0, f"android_demo/core tests failed:\n{result.stdout}{result.stderr}"
    assert " 0 failed" in result.stdout


def test_token_decoder_agrees_with_the_tokenizers_library():
    """The self-check decodes reference ids in Java: byte-level pieces, split characters, special tokens."""
    from tokenizers import Tokenizer

    path = need_fixture("qwen35-tiny-code") / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    text = "def f(x):\n    return x  # \u4e2d\u6587 \u00e9 \U0001F600\n<|im_start|>user\nHi<|im_end|>\n"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    decoded = run_json("BundleCli", "decode", path, ",".join(map(str, ids)))["text"]
    assert decoded == tokenizer.decode(ids, skip_special_tokens=False) == text
