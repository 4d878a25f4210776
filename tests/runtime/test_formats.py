"""The real artifacts (ONNX, ExecuTorch) through the runtime: exported, validated and generating what the
reference generates. Each format is exported once per module; the trained-fixture round trip is `slow`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import runtime
from exporter.bundle import export_bundle
from runtime.bundle import open_bundle
from runtime.errors import ChecksumError
from tests.conftest import need_fixture
from tests.runtime.fakes import SMALL, need_module

MODULES = {"onnx": "exporter.onnx", "pte": "exporter.executorch"}


@pytest.fixture(scope="module", params=list(MODULES))
def exported(request, tmp_path_factory):
    fmt = request.param
    need_module(MODULES[fmt])
    out = export_bundle("tiny", tmp_path_factory.mktemp(fmt) / "bundle", formats=[fmt], options=SMALL)
    return fmt, open_bundle(out)


def test_export_validated_the_artifact(exported):
    fmt, bundle = exported
    assert bundle.manifest["validation"]["passed"] is True
    report = json.loads(bundle.file("validation.json").read_text())
    (entry,) = report["artifacts"]
    assert entry["format"] == fmt and entry["greedy_agreement"] == 1.0
    assert all(check["passed"] is not False for check in entry["checks"])


def test_greedy_generation_matches_the_reference(exported):
    fmt, bundle = exported
    prompt = np.random.default_rng(1).integers(0, 1024, size=20).tolist()
    ours = runtime.load(bundle, fmt).generate(prompt, 24)
    reference = runtime.load(bundle, "reference").generate(prompt, 24)
    assert ours.ids == reference.ids


def test_chunked_prefill_matches_one_reference_forward(exported):
    fmt, bundle = exported
    session = runtime.load(bundle, fmt)
    ids = np.random.default_rng(2).integers(0, 1024, size=77).tolist()  # calls of 32 + 32 + 13 tokens
    reference = runtime.load(bundle, "reference").backend.model
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(session.prefill(ids), expected, atol=1e-3)


def test_sequences_do_not_leak_into_each_other(exported):
    fmt, bundle = exported
    session = runtime.load(bundle, fmt)
    fresh = session.prefill([7, 8, 9])
    session.reset()
    session.prefill(list(range(40)))
    session.reset()
    np.testing.assert_allclose(session.prefill([7, 8, 9]), fresh, atol=1e-6)


def test_a_tampered_artifact_is_refused(exported, tmp_path):
    fmt, bundle = exported
    copy = shutil.copytree(bundle.root, tmp_path / "copy")
    artifact = copy / bundle.artifact(fmt)["files"][0]["path"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=artifact.name):
        runtime.load(copy, fmt)


@pytest.mark.slow
def test_trained_fixture_generates_the_reference_text_on_every_backend(tmp_path):
    """Export the trained model to both formats; each backend writes the reference's text."""
    for module in MODULES.values():
        need_module(module)
    checkpoint = need_fixture("qwen35-tiny-code")
    out = export_bundle(str(checkpoint), tmp_path / "bundle", formats=list(MODULES))
    texts = {backend: runtime.load(out, backend, model=checkpoint).generate("import os", 24).text
             for backend in ("reference", *MODULES)}
    assert texts["onnx"] == texts["reference"] and texts["pte"] == texts["reference"]
