"""Bundle writing: complete or absent, never half; replace only with force; golden outputs that round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import runtime.validate
from exporter.artifact import ExportOptions
from exporter.bundle import GOLDEN_PROMPT, export_bundle
from exporter.checkpoint import random_model
from exporter.config import preset
from exporter.reference import reference_trace
from runtime.bundle import SCHEMA_VERSION, file_entries, open_bundle, sha256_file
from runtime.config import to_hf
from runtime.errors import QwenEdgeError, ValidationFailed
from runtime.trace import load_trace
from tests.conftest import need_fixture
from tests.runtime import fakes
from tests.runtime.fakes import (
    SMALL,
    fake_bundle,
    fake_exporters,
    shared_trained_bundle,
)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return fake_bundle("tiny", tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture(scope="module")
def trained_bundle():
    return shared_trained_bundle(), need_fixture("qwen35-tiny-code")


def test_bundle_holds_every_file_its_manifest_lists(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["model"] == to_hf(preset("tiny"))
    assert manifest["source"] == {"kind": "preset", "name": "tiny", "seed": 0}
    assert manifest["export"] == {"max_seq_len": 256, "prefill_chunk": 32, "quant": "fp32", "group_size": None,
                                  "embedding_bits": None, "onnx_profile": "ort", "pte_kernels": "stock",
                                  "vision_max_tokens": 1024, "text_only": False}
    assert set(manifest["toolchain"]) >= {"torch", "executorch", "onnx", "onnxruntime", "qwen-edge"}
    (artifact,) = manifest["artifacts"]
    assert artifact["format"] == "fake" and artifact["quant"] == "fp32"
    assert artifact["details"]["methods"] == ["forward"]
    listed = {entry["path"] for _, entry in file_entries(manifest)}
    assert listed | {"manifest.json"} == {p.name for p in tiny_bundle.iterdir()}
    for _, entry in file_entries(manifest):
        assert entry["sha256"] == sha256_file(tiny_bundle / entry["path"])
    assert open_bundle(tiny_bundle).formats == ["fake"]


def test_preset_bundle_says_it_has_no_tokenizer(tiny_bundle):
    tokenizer = json.loads((tiny_bundle / "manifest.json").read_text())["tokenizer"]
    assert tokenizer["files"] == [] and "no tokenizer" in tokenizer["note"]
    assert tokenizer["eos_token_ids"] == [2] and tokenizer["pad_token_id"] == 0
    assert tokenizer["eos_token"] is None and tokenizer["chat_template"] is None


def test_nothing_but_the_bundle_is_left_in_its_directory(tiny_bundle):
    assert [p.name for p in tiny_bundle.parent.iterdir()] == ["bundle"]


def test_golden_outputs_round_trip(tiny_bundle):
    golden = load_trace(tiny_bundle / "golden.npz")
    again, _ = reference_trace(random_model(preset("tiny"), seed=0), golden.prompt_ids, golden.steps)
    for key in ("prompt_ids", "prompt_logits", "greedy_ids", "decode_logits"):
        np.testing.assert_array_equal(getattr(golden, key), getattr(again, key))
    assert golden.prompt_logits.shape == (len(golden.prompt_ids), 1024)
    assert golden.decode_logits.shape == (golden.steps - 1, 1024)
    assert golden.greedy_ids[0] == golden.prompt_logits[-1].argmax()
    assert all(golden.greedy_ids[1:] == golden.decode_logits.argmax(-1))


def test_golden_logits_are_the_models(tiny_bundle):
    golden = load_trace(tiny_bundle / "golden.npz")
    model = random_model(preset("tiny"), seed=0)
    tokens = torch.from_numpy(np.concatenate([golden.prompt_ids, golden.greedy_ids[:-1]]))[None]
    with torch.no_grad():
        logits = model(tokens).logits[0].numpy()
    T = len(golden.prompt_ids)
    np.testing.assert_allclose(golden.prompt_logits, logits[:T], atol=1e-5)
    np.testing.assert_allclose(golden.decode_logits, logits[T:], atol=1e-5)


@pytest.mark.parametrize("formats", [["zeroing", "reading"], ["reading", "zeroing"]])
def test_each_lowering_gets_a_model_of_its_own(tmp_path, formats):
    """A lowering may change its model (the ExecuTorch one quantizes it in place): no other stage sees that,
    whatever the order of the formats, and the golden outputs are the pristine model's."""
    fakes.SEEN.clear()
    with fake_exporters():
        export_bundle("tiny", tmp_path / "bundle", formats=formats, options=SMALL, validate=False)
    pristine = float(sum(p.abs().sum() for p in random_model(preset("tiny"), seed=0).parameters()))
    assert [fmt for fmt, _, _ in fakes.SEEN] == formats  # exported in the order asked
    assert len({model for _, model, _ in fakes.SEEN}) == 2
    assert all(weights == pytest.approx(pristine) for _, _, weights in fakes.SEEN)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert [a["format"] for a in manifest["artifacts"]] == formats
    golden = load_trace(tmp_path / "bundle" / "golden.npz")
    again, _ = reference_trace(random_model(preset("tiny"), seed=0), golden.prompt_ids, golden.steps)
    np.testing.assert_array_equal(golden.greedy_ids, again.greedy_ids)


def test_selfcheck_is_what_an_app_needs(tiny_bundle):
    check = json.loads((tiny_bundle / "selfcheck.json").read_text())
    golden = load_trace(tiny_bundle / "golden.npz")
    assert check["prompt_ids"] == golden.prompt_ids.tolist()
    assert check["expected_ids"] == golden.greedy_ids.tolist()[: len(check["expected_ids"])]
    assert check["eos_token_ids"] == [2] and check["quant"] == "fp32"
    assert check["tolerance"]["min_matching_prefix"] == len(check["expected_ids"])  # fp32: every token
    assert check["prompt_text"] is None


def test_checkpoint_bundle_carries_tokenizer_and_chat_template(trained_bundle):
    bundle, checkpoint = trained_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    tokenizer = manifest["tokenizer"]
    assert [f["path"] for f in tokenizer["files"]] == ["tokenizer.json", "tokenizer_config.json"]
    assert (bundle / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()
    assert tokenizer["eos_token_ids"] == [248046] and tokenizer["pad_token_id"] == 248044
    assert tokenizer["eos_token"] == "<|im_end|>" and tokenizer["bos_token"] is None
    assert tokenizer["special_tokens"]["<|im_start|>"] == 248045
    assert "<|im_start|>" in tokenizer["chat_template"]
    assert manifest["source"] == {"kind": "checkpoint", "name": checkpoint.name, "seed": None}
    assert manifest["golden"]["prompt_text"] == GOLDEN_PROMPT
    selfcheck = json.loads((bundle / "selfcheck.json").read_text())
    assert selfcheck["prompt_text"] == GOLDEN_PROMPT and selfcheck["eos_token_ids"] == [248046]


@pytest.mark.parametrize("fmt, error", [("failing", RuntimeError), ("interrupted", KeyboardInterrupt)])
def test_a_failed_export_leaves_nothing(tmp_path, fmt, error):
    with fake_exporters(), pytest.raises(error):
        export_bundle("tiny", tmp_path / "new" / "dirs" / "out", formats=["fake", fmt], options=SMALL, validate=False)
    assert list(tmp_path.iterdir()) == []  # not even the parent directories it created


def test_existing_bundle_is_untouched_without_force(tmp_path):
    out = fake_bundle("tiny", tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(QwenEdgeError, match="already exists; pass --force"):
        fake_bundle("tiny", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_force_replaces_the_bundle_whole(tmp_path):
    out = fake_bundle("tiny", tmp_path / "out")
    fake_bundle("tiny", out, force=True, options=ExportOptions(max_seq_len=128, prefill_chunk=16))
    assert open_bundle(out).export["max_seq_len"] == 128
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the old one is gone, nothing staged is left


def test_force_keeps_the_old_bundle_when_the_new_export_fails(tmp_path):
    out = fake_bundle("tiny", tmp_path / "out")
    manifest = (out / "manifest.json").read_bytes()
    with fake_exporters(), pytest.raises(RuntimeError):
        export_bundle("tiny", out, formats=["failing"], options=SMALL, force=True, validate=False)
    assert (out / "manifest.json").read_bytes() == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_force_never_replaces_a_directory_that_is_not_a_bundle(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(QwenEdgeError, match="not a bundle"):
        fake_bundle("tiny", tmp_path / "out", force=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_a_missing_lowering_fails_before_any_work(tmp_path, monkeypatch):
    from exporter import bundle

    monkeypatch.setitem(bundle.EXPORTERS, "onnx", ("exporter.no_such_lowering", "export_onnx"))
    with pytest.raises(QwenEdgeError, match="exporter.no_such_lowering is not available"):
        export_bundle("tiny", tmp_path / "out", formats=["onnx"], options=SMALL)
    assert list(tmp_path.iterdir()) == []


def _validate_as_reference(passed: bool):
    """validate_bundle over the reference backend (the fakes have no runtime), with the verdict forced."""
    real = runtime.validate.validate_bundle

    def fake(bundle, backends, **kwargs):
        report = real(bundle, ["reference"], **kwargs)
        report["passed"] = passed
        report["artifacts"][0]["passed"] = passed
        return report

    return fake


def test_validation_is_recorded_in_the_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.validate, "validate_bundle", _validate_as_reference(True))
    out = fake_bundle("tiny", tmp_path / "out", validate=True)
    manifest = open_bundle(out).manifest
    assert manifest["validation"]["passed"] is True
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"] and report["artifacts"][0]["greedy_agreement"] == 1.0


def test_a_validation_miss_leaves_no_bundle(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.validate, "validate_bundle", _validate_as_reference(False))
    with pytest.raises(ValidationFailed, match="no bundle written") as err:
        fake_bundle("tiny", tmp_path / "out", validate=True)
    assert err.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []
