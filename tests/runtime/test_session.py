"""Generation over the reference backend: greedy equals the model's argmax chain, chunked prefill equals
one forward, EOS stops, streaming text matches the result, and sequences do not leak into each other."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import runtime
from exporter.checkpoint import load_model, random_model
from exporter.config import preset
from runtime.bundle import open_bundle
from runtime.errors import QwenEdgeError
from tests.conftest import need_fixture
from tests.runtime.fakes import fake_bundle, shared_trained_bundle


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return open_bundle(fake_bundle("tiny", tmp_path_factory.mktemp("tiny") / "bundle"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    bundle = open_bundle(shared_trained_bundle())
    _, model, _ = load_model(need_fixture("qwen35-tiny-code"))
    return bundle, model


def greedy_by_hand(model, ids: list[int], steps: int) -> list[int]:
    """The argmax chain, one full forward per token: no state handling to get wrong."""
    ids = list(ids)
    start = len(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[start:]


def test_reference_generate_is_the_models_greedy_text(trained):
    bundle, model = trained
    session = runtime.load(bundle, "reference", model=model)
    result = session.generate("import os", max_new_tokens=12)
    assert result.ids == greedy_by_hand(model, session.tokenizer.encode("import os"), 12)
    assert result.text == session.tokenizer.decode(result.ids)
    assert result.stop_reason == "length"


def test_streamed_text_is_the_result_text(trained):
    bundle, model = trained
    session = runtime.load(bundle, "reference", model=model)
    pieces = []
    result = session.generate("class Parser:\n", max_new_tokens=16, on_text=pieces.append)
    assert "".join(pieces) == result.text


def test_chat_prompt_goes_through_the_template(trained):
    bundle, model = trained
    session = runtime.load(bundle, "reference", model=model)
    result = session.generate("Hi", max_new_tokens=1, chat=True)
    assert session.tokenizer.decode(result.prompt_ids).startswith("<|im_start|>user\nHi<|im_end|>\n")
    messages = [{"role": "user", "content": "Hi"}]
    assert session.generate(messages, max_new_tokens=1).prompt_ids == result.prompt_ids


def test_preset_reference_is_rebuilt_from_the_manifest_seed(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    model = random_model(preset("tiny"), seed=0)
    ids = [5, 9, 200, 3]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(session.prefill(ids), expected, atol=1e-5)


def test_chunked_prefill_equals_one_forward(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    assert session.backend.max_chunk == 32
    ids = np.random.default_rng(0).integers(0, 1024, size=77).tolist()  # 32 + 32 + 13
    with torch.no_grad():
        full = session.backend.model(torch.tensor([ids])).logits[0]
    np.testing.assert_allclose(session.prefill(ids), full[-1].numpy(), atol=1e-4)
    assert session.pos == 77


def test_prefill_then_decode_equals_one_forward(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    ids = [1, 2, 3, 4, 5, 6, 7]
    session.prefill(ids[:4])
    for token in ids[4:-1]:
        session.decode(token)
    last = session.decode(ids[-1])
    with torch.no_grad():
        full = session.backend.model(torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(last, full, atol=1e-4)


def test_reset_starts_a_fresh_sequence(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    first = session.prefill([10, 11, 12])
    session.prefill([13, 14])
    session.reset()
    np.testing.assert_array_equal(session.prefill([10, 11, 12]), first)
    assert session.generate([4, 5], 6).ids == session.generate([4, 5], 6).ids


def test_generation_stops_at_an_eos_id(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    free = session.generate([1, 2, 3], 8, runtime.Sampling(temperature=1.0, seed=5))
    stop = free.ids[3]
    manifest = dict(tiny_bundle.manifest, tokenizer={**tiny_bundle.manifest["tokenizer"], "eos_token_ids": [stop]})
    eos_bundle = dataclasses.replace(tiny_bundle, manifest=manifest)
    session = runtime.load(eos_bundle, "reference")
    result = session.generate([1, 2, 3], 8, runtime.Sampling(temperature=1.0, seed=5))
    assert result.stop_reason == "eos"
    assert result.ids == free.ids[: free.ids.index(stop)]


def test_a_sequence_longer_than_max_seq_len_is_refused(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    with pytest.raises(QwenEdgeError, match="exceed this bundle's max_seq_len 256"):
        session.prefill(list(range(257)))


def test_generation_stops_at_max_seq_len(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    result = session.generate(list(range(250)), max_new_tokens=20)
    assert result.stop_reason == "max_seq_len" and len(result.ids) == 7  # 250 + 6 fed, the 7th is not


def test_text_prompts_on_a_bundle_without_tokenizer_say_why(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    with pytest.raises(QwenEdgeError, match="has no tokenizer .*preset 'tiny', random weights.*--prompt-ids"):
        session.generate("hello", 4)


def test_out_of_vocabulary_ids_are_refused(tiny_bundle):
    session = runtime.load(tiny_bundle, "reference")
    with pytest.raises(QwenEdgeError, match=r"\[0, 1024\)"):
        session.prefill([1, 5000])


def test_reference_of_a_checkpoint_bundle_needs_the_checkpoint(trained):
    bundle, _ = trained
    with pytest.raises(QwenEdgeError, match="pass --model CHECKPOINT"):
        runtime.load(bundle, "reference")


def test_a_different_checkpoint_is_refused(tiny_bundle, tmp_path):
    checkpoint = need_fixture("qwen35-tiny-code")
    with pytest.raises(QwenEdgeError, match="not the bundle's model"):
        runtime.load(tiny_bundle, "reference", model=str(checkpoint))
