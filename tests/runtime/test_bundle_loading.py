"""Loading a bundle refuses what cannot be trusted, naming the file and the problem."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from runtime.bundle import open_bundle
from runtime.errors import BundleError, ChecksumError
from tests.runtime.fakes import fake_bundle


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return fake_bundle("tiny", tmp_path_factory.mktemp("pristine") / "bundle")


@pytest.fixture
def bundle(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "bundle")


def edit_manifest(bundle, edit):
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_pristine_bundle_opens(bundle):
    assert open_bundle(bundle).config.text.vocab_size == 1024


def test_a_changed_byte_is_a_checksum_error_naming_the_file(bundle):
    data = bytearray((bundle / "model.fake").read_bytes())
    data[10] ^= 1
    (bundle / "model.fake").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"model\.fake: sha256 .* does not match") as err:
        open_bundle(bundle)
    assert err.value.exit_code == 1


def test_a_truncated_file_is_a_checksum_error(bundle):
    with open(bundle / "golden.npz", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ChecksumError, match=r"golden\.npz: size 100 bytes"):
        open_bundle(bundle)


@pytest.mark.parametrize("path, problem", [
    ("../x", "contains '..'"),
    ("sub/../../x", "contains '..'"),
    ("/etc/passwd", "is absolute"),
    ("", "is empty"),
])
def test_paths_that_leave_the_bundle_are_refused(bundle, path, problem):
    edit_manifest(bundle, lambda m: m["artifacts"][0]["files"][0].update(path=path))
    with pytest.raises(BundleError, match=f"artifacts\\[0\\].files\\[0\\]: path .* {problem}") as err:
        open_bundle(bundle)
    assert err.value.exit_code == 2


def test_a_symlink_is_refused(bundle, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes((bundle / "model.fake").read_bytes())
    (bundle / "model.fake").unlink()
    os.symlink(outside, bundle / "model.fake")
    with pytest.raises(BundleError, match="symlink"):
        open_bundle(bundle)


def test_a_missing_file_is_named(bundle):
    (bundle / "selfcheck.json").unlink()
    with pytest.raises(BundleError, match=r"selfcheck\.json is missing"):
        open_bundle(bundle)


@pytest.mark.parametrize("version, hint", [(99, "upgrade qwen-edge"), (0, "re-export"), ("1", "re-export")])
def test_an_unknown_schema_version_is_refused(bundle, version, hint):
    edit_manifest(bundle, lambda m: m.update(schema_version=version))
    with pytest.raises(BundleError, match=f"schema_version .* {hint}"):
        open_bundle(bundle)


def test_a_missing_field_is_named(bundle):
    edit_manifest(bundle, lambda m: m.pop("golden"))
    with pytest.raises(BundleError, match="field 'golden' is missing"):
        open_bundle(bundle)


def test_a_manifest_that_is_not_json(bundle):
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        open_bundle(bundle)


def test_a_directory_without_manifest(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: not found"):
        open_bundle(tmp_path)


def test_unknown_format_is_named_with_what_there_is(bundle):
    with pytest.raises(BundleError, match=r"no 'onnx' artifact \(it has: fake\)"):
        open_bundle(bundle).artifact("onnx")
