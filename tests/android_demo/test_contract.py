"""The names the Android app reads are the names the exporter writes.

The app's side is `Contract.java` (android_demo/core), printed as JSON by its `main`; its Python
mirror is `runtime.contract`; the exporter's side is a real bundle with a real .pte, exported here. Every manifest and self-check
field the app reads must be in the bundle, every method the runner calls in the program, and the
core must read the bundle: renaming a field on either side fails a test here.

The program is a two-layer variant of the `tiny` preset (one layer of each kind): lowering to
XNNPACK takes tens of seconds per layer on two cores, and the names do not depend on the depth.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from exporter import bundle as bundle_module
from exporter.artifact import ExportOptions
from exporter.config import PRESETS, preset
from exporter.tokenizer import COPIED
from runtime import contract as contract_py
from runtime.bundle import file_entries
from runtime.config import FULL, ModelConfig
from runtime.contract import MANIFEST, SCHEMA_VERSION
from tests.android_demo.java import run_json

PRESET = "tiny-two-layers"
OPTIONS = ExportOptions(max_seq_len=64, prefill_chunk=16)


def two_layers() -> ModelConfig:
    tiny = preset("tiny")
    linear = next(kind for kind in tiny.text.layer_types if kind != FULL)
    return dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, layer_types=(linear, FULL)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, PRESET, two_layers)
        return bundle_module.export_bundle(PRESET, tmp_path_factory.mktemp("contract") / "bundle", formats=["pte"],
                                           options=OPTIONS, validate=False)


@pytest.fixture(scope="module")
def contract() -> dict:
    return run_json("Contract")


@pytest.fixture(scope="module")
def manifest(exported) -> dict:
    return json.loads((exported / MANIFEST).read_text())


@pytest.fixture(scope="module")
def selfcheck(exported, manifest) -> dict:
    return json.loads((exported / manifest["selfcheck"]["path"]).read_text())


def pte_artifact(manifest: dict, contract: dict) -> dict:
    fmt = contract["values"]["pte_format"]
    found = [a for a in manifest["artifacts"] if a["format"] == fmt]
    assert len(found) == 1, f"expected one {fmt!r} artifact, the manifest has {[a['format'] for a in manifest['artifacts']]}"
    return found[0]


def missing(wanted: list[str], have: dict, where: str) -> list[str]:
    return [f"{where}.{name}" for name in wanted if name not in have]


def test_manifest_has_every_field_the_app_reads(contract, manifest):
    fields = contract["fields"]
    gaps = missing(fields["manifest"], manifest, "manifest")
    for section in ("source", "export", "tokenizer"):
        gaps += missing(fields[f"manifest.{section}"], manifest[section], f"manifest.{section}")
    gaps += missing(fields["manifest.artifacts[]"], pte_artifact(manifest, contract), "manifest.artifacts[pte]")
    for where, entry in file_entries(manifest):
        gaps += missing(fields["file_entry"], entry, where)
    assert not gaps, f"the app reads fields the exporter does not write: {gaps}"


def test_selfcheck_has_every_field_the_app_reads(contract, selfcheck):
    fields = contract["fields"]
    gaps = missing(fields["selfcheck"], selfcheck, "selfcheck")
    gaps += missing(fields["selfcheck.tolerance"], selfcheck["tolerance"], "selfcheck.tolerance")
    assert not gaps, f"the app reads self-check fields the exporter does not write: {gaps}"


def test_file_names_formats_and_versions_agree(contract, manifest, selfcheck):
    values = contract["values"]
    assert values["manifest_file"] == MANIFEST
    assert values["manifest_schema"] == SCHEMA_VERSION == manifest["schema_version"]
    assert values["selfcheck_schema"] == contract_py.SELFCHECK_SCHEMA == selfcheck["schema_version"]
    assert values["selfcheck_sampling"] == selfcheck["sampling"]
    assert values["pte_format"] == contract_py.PTE_FORMAT
    assert values["pte_format"] in bundle_module.EXPORTERS
    # The tokenizer is copied under its checkpoint name; the runner loads tokenizer.json.
    assert values["tokenizer_file"] == COPIED[0] == contract_py.TOKENIZER


def test_program_has_every_method_the_runner_calls(contract, exported, manifest):
    from executorch.runtime import Runtime

    files = [exported / e["path"] for e in pte_artifact(manifest, contract)["files"]]
    program = Runtime.get().load_program(str(files[0]), data_path=str(files[1]) if len(files) > 1 else None)
    assert contract["program"]["methods"] == [contract_py.FORWARD_METHOD]
    wanted = contract["program"]["methods"] + contract["program"]["metadata_methods"]
    absent = sorted(set(wanted) - set(program.method_names))
    assert not absent, f"the program lacks methods ExecuTorch's runner calls: {absent} (has {sorted(program.method_names)})"
    # The app sizes its chat by export.max_seq_len; the runner by this method.
    context = program.load_method(contract["program"]["context_method"]).execute([])
    assert list(context) == [manifest["export"]["max_seq_len"]]


def test_the_core_reads_the_exported_bundle(contract, exported, manifest, selfcheck):
    read = run_json("BundleCli", "check", exported)
    artifact = pte_artifact(manifest, contract)
    assert read["program_files"] == [e["path"] for e in artifact["files"]]
    assert read["quant"] == artifact["quant"] == OPTIONS.quant
    assert read["context_length"] == manifest["export"]["max_seq_len"] == OPTIONS.max_seq_len
    assert read["source_name"] == manifest["source"]["name"] == PRESET
    assert read["eos_token_ids"] == manifest["tokenizer"]["eos_token_ids"]
    assert read["tokenizer"] is None and read["chat_template"] is None  # a preset has neither
    check = read["selfcheck"]
    for key in ("prompt_text", "prompt_ids", "expected_ids", "eos_token_ids", "max_new_tokens"):
        assert check[key] == selfcheck[key], key
    assert check["min_matching_prefix"] == selfcheck["tolerance"]["min_matching_prefix"]
    assert check["seq_len"] == len(selfcheck["prompt_ids"]) + selfcheck["max_new_tokens"]


def test_a_renamed_field_stops_the_app_with_its_name(exported, tmp_path):
    copy = Path(shutil.copytree(exported, tmp_path / "bundle"))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["export"]["max_len"] = manifest["export"].pop("max_seq_len")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    error = run_json("BundleCli", "check", copy, status=2)["error"]
    assert "manifest.json: export.max_seq_len is missing or not an integer" in error


def test_a_changed_program_fails_its_checksum(exported, tmp_path):
    copy = Path(shutil.copytree(exported, tmp_path / "bundle"))
    data = bytearray((copy / "model.ptd").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.ptd").write_bytes(bytes(data))
    error = run_json("BundleCli", "check", copy, status=2)["error"]
    assert error.startswith("Checksum:") and "model.ptd: sha256" in error and "changed after export" in error
