"""The app's first launch on a desktop: ExecuTorch's stock runner drives the bundle, the Java core judges it.

`TextLLMRunner` (executorch.extension.llm.runner) is the C++ runner that Android's `LlmModule`
wraps: same tokenizer, same prefill and sampling, same text callbacks and statistics. Feeding its
output to the core's self-check (`BundleCli selfcheck`) checks what no unit test can: that the
runner's tokenizer reproduces the exporter's prompt ids, and that the core's decoding of the
reference ids lines up with the runner's text. Uses the trained fixture (a tokenizer, a chat
template, confident greedy tokens); lowering its eight layers takes minutes on two cores, so the
module runs with the slow tests (`make test-slow`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.artifact import ExportOptions
from exporter.bundle import export_bundle
from tests.android_demo.java import run_json
from tests.conftest import need_fixture

OPTIONS = ExportOptions(max_seq_len=128, prefill_chunk=32)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return export_bundle(str(need_fixture("qwen35-tiny-code")), tmp_path_factory.mktemp("trained") / "bundle", formats=["pte"],
                         options=OPTIONS, validate=False)


@pytest.fixture(scope="module")
def runner(exported):
    from executorch.extension.llm.runner import TextLLMRunner

    return TextLLMRunner(str(exported / "model.pte"), str(exported / "tokenizer.json"), str(exported / "model.ptd"))


def generate(runner, prompt: str, *, seq_len: int = -1, max_new_tokens: int = -1) -> tuple[str, str]:
    """(text, statistics JSON) of one greedy call, as LlmCallback.onResult and onStats receive them."""
    from executorch.extension.llm.runner import GenerationConfig

    pieces, stats = [], []
    config = GenerationConfig(echo=False, seq_len=seq_len, max_new_tokens=max_new_tokens, temperature=0.0)
    runner.reset()
    runner.generate(prompt, config, token_callback=pieces.append, stats_callback=lambda s: stats.append(s.to_json_string()))
    return "".join(pieces), stats[-1]


def judge(exported: Path, tmp_path: Path, text: str, stats: str | None, status: int) -> dict:
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    stats_file = "-"
    if stats is not None:
        (tmp_path / "stats.json").write_text(stats)
        stats_file = str(tmp_path / "stats.json")
    return run_json("BundleCli", "selfcheck", exported, tmp_path / "text.txt", stats_file, status=status)


def test_the_self_check_passes_through_the_stock_runner(exported, runner, tmp_path):
    check = json.loads((exported / "selfcheck.json").read_text())
    seq_len = len(check["prompt_ids"]) + check["max_new_tokens"]  # what the app passes: SelfCheck.seqLen()
    text, stats = generate(runner, check["prompt_text"], seq_len=seq_len)
    result = judge(exported, tmp_path, text, stats, status=0)
    assert result["passed"] and result["matching"] == len(check["expected_ids"]), result["summary"]
    assert json.loads(stats)["prompt_tokens"] == len(check["prompt_ids"])


def test_other_output_fails_the_self_check(exported, tmp_path):
    check = json.loads((exported / "selfcheck.json").read_text())
    result = judge(exported, tmp_path, "x" + check["prompt_text"], None, status=1)
    assert not result["passed"] and result["matching"] == 0
    assert result["summary"].startswith("Self-check FAILED: 0 of ")
    assert "first difference at token 0" in result["summary"]


def test_a_chat_turn_is_what_the_runner_expects(exported, runner):
    """The core's ChatML turn: special tokens reach the runner as single tokens, and a reply comes back."""
    from tokenizers import Tokenizer

    prompt = run_json("BundleCli", "prompt", exported, "Write a function that adds two numbers.")["prompt"]
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    _, stats = generate(runner, prompt, max_new_tokens=8)
    ids = Tokenizer.from_file(str(exported / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids
    assert json.loads(stats)["prompt_tokens"] == len(ids)
    assert json.loads(stats)["generated_tokens"] > 0
