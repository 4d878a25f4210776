"""The command line: exit codes 0/1/2, one-line errors (tracebacks only with --debug), nothing left behind, no
library noise unless --verbose."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime
from exporter.checkpoint import random_model, save_checkpoint
from exporter.cli import main
from exporter.config import preset
from exporter.quiet import silenced
from tests.conftest import REPO, need_fixture
from tests.runtime.fakes import fake_bundle, fake_exporters, shared_trained_bundle

SMALL_FLAGS = ["--max-seq-len", "256", "--prefill-chunk", "32"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return fake_bundle("tiny", tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_checkpoint(preset("tiny"), random_model(preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_a_bundle_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = tmp_path / "b"
    with fake_exporters():
        code, stdout, _ = run(capsys, "export", "tiny", "--out", str(out), "--format", "fake", "--no-validate", *SMALL_FLAGS)
        assert code == 0 and stdout.startswith(f"wrote {out}")
        manifest = (out / "manifest.json").read_bytes()
        code, _, err = run(capsys, "export", "tiny", "--out", str(out), "--format", "fake", "--no-validate")
        assert code == 2 and "already exists; pass --force" in one_line(err)
        assert (out / "manifest.json").read_bytes() == manifest
        code, _, _ = run(capsys, "export", "tiny", "--out", str(out), "--format", "fake", "--no-validate", "--force",
                         *SMALL_FLAGS)
        assert code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_a_killed_export_leaves_nothing(tmp_path):
    """SIGTERM mid-export (a CI timeout, a closed terminal) unwinds like Ctrl-C: the staging directory goes."""
    script = ("import sys\nfrom exporter.cli import main\nfrom tests.runtime.fakes import fake_exporters\n"
              "with fake_exporters():\n    sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    argv = [sys.executable, "-c", script, "export", "tiny", "--out", str(out), "--format", "slow", *SMALL_FLAGS]
    process = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.staging-*/model.slow")):
        assert process.poll() is None and time.monotonic() < deadline, "the export never reached the lowering"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_a_changed_artifact_byte_fails_validation_with_one_line(tmp_path, capsys):
    out = fake_bundle("tiny", tmp_path / "b")
    data = bytearray((out / "model.fake").read_bytes())
    data[0] ^= 1
    (out / "model.fake").write_bytes(bytes(data))
    code, _, err = run(capsys, "validate", str(out))
    assert code == 1
    assert "model.fake: sha256" in one_line(err) and "does not match" in err


def test_a_manifest_path_leaving_the_bundle_is_bad_input(tmp_path, capsys):
    out = fake_bundle("tiny", tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["artifacts"][0]["files"][0]["path"] = "../x"
    (out / "manifest.json").write_text(json.dumps(manifest))
    for command in (["validate", str(out)], ["run", str(out), "--prompt-ids", "1,2"]):
        code, _, err = run(capsys, *command)
        assert code == 2 and "'../x' contains '..'" in one_line(err)


def test_a_truncated_safetensors_file_is_bad_input_and_leaves_nothing(tmp_path, capsys, tiny_checkpoint):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with fake_exporters():
        code, _, err = run(capsys, "export", str(broken), "--out", str(tmp_path / "out"), "--format", "fake")
    assert code == 2 and "model.safetensors" in one_line(err)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_a_missing_config_is_bad_input_and_leaves_nothing(tmp_path, capsys, tiny_checkpoint):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    with fake_exporters():
        code, _, err = run(capsys, "export", str(broken), "--out", str(tmp_path / "out"), "--format", "fake")
    assert code == 2 and "config.json: not found" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_bad_export_options_are_bad_input(tmp_path, capsys):
    code, _, err = run(capsys, "export", "tiny", "--out", str(tmp_path / "b"), "--prefill-chunk", "3")
    assert code == 2 and "--prefill-chunk 3: must be a power of two" in one_line(err)
    assert not (tmp_path / "b").exists()


def test_tracebacks_only_with_debug(tmp_path, capsys):
    _, _, err = run(capsys, "validate", str(tmp_path))
    assert "Traceback" not in err
    for argv in (["--debug", "validate", str(tmp_path)], ["validate", str(tmp_path), "--debug"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "Traceback" in err and "manifest.json: not found" in err


def test_run_without_tokenizer_needs_token_ids(tiny_bundle, capsys):
    code, _, err = run(capsys, "run", str(tiny_bundle), "--prompt", "hello", "--backend", "reference")
    assert code == 2 and "no tokenizer" in one_line(err) and "--prompt-ids" in err
    code, stdout, err = run(capsys, "run", str(tiny_bundle), "--prompt-ids", "1,2,3", "--backend", "reference",
                            "--max-new-tokens", "5")
    expected = runtime.load(tiny_bundle, "reference").generate([1, 2, 3], 5).ids
    assert code == 0 and stdout.strip() == ",".join(map(str, expected))
    assert "stop: length" in err


def test_run_prints_the_reference_greedy_text(capsys):
    checkpoint = need_fixture("qwen35-tiny-code")
    bundle = shared_trained_bundle()
    code, stdout, _ = run(capsys, "run", str(bundle), "--prompt", "import os", "--backend", "reference",
                          "--model", str(checkpoint), "--max-new-tokens", "12")
    expected = runtime.load(bundle, "reference", model=checkpoint).generate("import os", 12).text
    assert code == 0 and stdout == expected + "\n"


def test_a_pte_with_llm_kernels_runs_in_a_fresh_process(tmp_path, capsys):
    """`--pte-kernels llm`: the manifest names the kernel set, and a new process (no export before it to load
    ExecuTorch's LLM custom ops) runs the program and decodes the reference's greedy tokens."""
    out = tmp_path / "b"
    code, _, _ = run(capsys, "export", "tiny", "--out", str(out), "--format", "pte", "--pte-kernels", "llm",
                     "--no-validate", *SMALL_FLAGS)
    assert code == 0
    details = json.loads((out / "manifest.json").read_text())["artifacts"][0]["details"]
    assert details["kernels"] == "llm" and "custom-ops" in details["kernels_required"]
    script = "import sys\nfrom exporter.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    argv = [sys.executable, "-c", script, "run", str(out), "--prompt-ids", "1,2,3", "--backend", "pte",
            "--max-new-tokens", "8"]
    process = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    expected = runtime.load(out, "reference").generate([1, 2, 3], 8).ids
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.strip() == ",".join(map(str, expected))


def test_validate_writes_the_json_report(tiny_bundle, tmp_path, capsys):
    report = tmp_path / "report.json"
    code, stdout, _ = run(capsys, "validate", str(tiny_bundle), "--backend", "reference", "--json", str(report))
    assert code == 0 and "PASSED" in stdout
    entry = json.loads(report.read_text())["artifacts"][0]
    assert {"format", "quant", "perplexity", "reference_perplexity", "top1_agreement", "greedy_agreement",
            "size_bytes"} <= entry.keys()


def test_a_validation_miss_exits_1(tiny_bundle, tmp_path, capsys):
    model = random_model(preset("tiny"))
    with torch.no_grad():
        model.layers[1].mlp.up_proj.weight.mul_(2.0)
    other = save_checkpoint(preset("tiny"), model, tmp_path / "other")
    code, stdout, _ = run(capsys, "validate", str(tiny_bundle), "--backend", "reference", "--model", str(other))
    assert code == 1 and "FAILED" in stdout and "first diverging layer: layers.1" in stdout


def test_bench_reports_throughput_and_memory(tiny_bundle, tmp_path, capsys):
    results = tmp_path / "bench.json"
    code, stdout, _ = run(capsys, "bench", str(tiny_bundle), "--backend", "reference", "--prompt-len", "8",
                          "--gen-len", "4", "--runs", "1", "--threads", "2", "--json", str(results))
    assert code == 0 and "decode tok/s" in stdout
    (entry,) = json.loads(results.read_text())["results"]
    assert entry["prefill_tokens_per_s"] > 0 and entry["decode_tokens_per_s"] > 0 and entry["threads"] == 2
    assert entry["peak_rss_bytes"] > 0


def test_inspect_a_bundle_and_a_preset(tiny_bundle, capsys):
    code, stdout, _ = run(capsys, "inspect", str(tiny_bundle))
    assert code == 0
    assert "source: preset tiny, seed 0" in stdout and "artifact fake (fp32" in stdout and "model.fake" in stdout
    assert "validation: not run" in stdout
    code, stdout, _ = run(capsys, "inspect", "tiny")
    assert code == 0 and stdout.startswith("model: tiny (preset, random weights)")


def test_unknown_backend_is_bad_input(tiny_bundle, capsys):
    code, _, err = run(capsys, "run", str(tiny_bundle), "--prompt-ids", "1", "--backend", "tflite")
    assert code == 2 and "backend 'tflite': unknown" in one_line(err)


def test_eval_tokens_need_the_reference_model(tmp_path, capsys):
    bundle = shared_trained_bundle()
    np.save(tmp_path / "t.npy", np.arange(10))
    code, _, err = run(capsys, "validate", str(bundle), "--backend", "reference", "--eval-tokens", str(tmp_path / "t.npy"))
    assert code == 2 and "--model" in one_line(err)


# What the libraries print unasked (exporter/quiet.py lists each line): Python warnings, their log lines
# (torch's own format "W1208 12:00:00.000000 123 torch/...py:630]"), ExecuTorch's C++ log ("[threadpool.cpp:66]").
NOISE = re.compile(r"Warning\b|\.py:\d+|^[WIE]\d{4} |cpuinfo|threadpool|torchao|triton|torchvision|torch\.onnx|"
                   r"Failed to load")


def noise(*texts: str) -> list[str]:
    return [line for text in texts for line in text.splitlines() if NOISE.search(line)]


def cli(*argv: str) -> subprocess.CompletedProcess:
    """`qwen-edge` in a fresh process: the libraries' import-time noise happens only once a process."""
    return subprocess.run([sys.executable, "-m", "exporter.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def quiet_export(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One normal export of `tiny` to ONNX, validated: what the ONNX exporter and the reference say on the way."""
    out = tmp_path_factory.mktemp("quiet") / "bundle"
    return out, cli("export", "tiny", "--out", str(out), "--format", "onnx", *SMALL_FLAGS)


def test_a_normal_export_and_run_print_only_our_lines(quiet_export):
    out, export = quiet_export
    assert export.returncode == 0, export.stderr[-2000:]
    assert export.stdout.startswith(f"wrote {out}") and "PASSED" in export.stderr
    assert noise(export.stdout, export.stderr) == []
    run_onnx = cli("run", str(out), "--prompt-ids", "1,2,3", "--max-new-tokens", "4", "--backend", "onnx")
    assert run_onnx.returncode == 0 and "[onnx: 3 prompt tokens" in run_onnx.stderr
    assert noise(run_onnx.stdout, run_onnx.stderr) == []
    # Asking for the pte backend imports ExecuTorch (and, through it, torchao) before the bundle says it has
    # no .pte: the one-line error stays, the libraries' import notes do not.
    run_pte = cli("run", str(out), "--prompt-ids", "1", "--backend", "pte")
    assert run_pte.returncode == 2 and one_line(run_pte.stderr).startswith("qwen-edge run:")


def test_verbose_brings_the_libraries_noise_back(quiet_export):
    """The other side of the test above: the noise is there to hide, and `--verbose` shows it."""
    out, _ = quiet_export
    run_pte = cli("run", str(out), "--prompt-ids", "1", "--backend", "pte", "--verbose")
    lines = run_pte.stderr.strip().splitlines()
    assert run_pte.returncode == 2 and lines[-1].startswith("qwen-edge run:")
    assert noise(*lines[:-1]), f"no library noise left to silence? update exporter/quiet.py:\n{run_pte.stderr}"


def test_silenced_drops_only_the_listed_warnings_and_records():
    from torch.onnx._internal.exporter._registration import ONNXRegistry
    from torch.utils._pytree import LeafSpec

    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    records = _Collect()
    registration.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with silenced():
                LeafSpec()  # torch's deprecation of its own class
                ONNXRegistry.from_torchlib()  # "torchvision is not installed. Skipping torchvision::nms", ...
                warnings.warn("ours", FutureWarning)
                registration.warning("torchvision is installed but broke")
            LeafSpec()
            ONNXRegistry.from_torchlib()
    finally:
        registration.removeHandler(records)
    assert [str(w.message)[:30] for w in caught] == ["ours", "`isinstance(treespec, LeafSpec"]
    messages = [r.getMessage() for r in records.records]
    assert messages[0] == "torchvision is installed but broke"
    assert len(messages) > 1 and all(m.startswith("torchvision is not installed") for m in messages[1:])


def test_executorch_thread_pool_lines_are_kept_off_stderr(capfd):
    """ExecuTorch's C++ log reaches Python's sys.stderr (its bindings redirect std::cerr), line by line."""
    portable_lib = pytest.importorskip("executorch.extension.pybindings.portable_lib")
    from runtime.backends import physical_cores

    threads = physical_cores()  # what a pte backend sets anyway
    with silenced():
        portable_lib._unsafe_reset_threadpool(threads)
    assert "threadpool" not in capfd.readouterr().err
    portable_lib._unsafe_reset_threadpool(threads)
    assert f"[threadpool.cpp:66] Resetting threadpool to {threads} threads." in capfd.readouterr().err


def test_only_the_listed_runtime_lines_are_dropped(capsys):
    """Any other line (a real error), a progress bar's partial write and our own lines pass, in order.

    The writes are ExecuTorch's: one per line, the newline included (its log ends each line with std::endl).
    """
    with silenced():
        sys.stderr.write("[threadpool.cpp:66] Resetting threadpool to 4 threads.\n"
                         "[method.cpp:353] external_data_map is null\n")
        sys.stderr.write("\rvalidate pte:  50%|#####     | 21/42")
        sys.stderr.write("[cpuinfo_utils.cpp:125] CPU info and manual query on # of cpus dont match.\n")
        print("qwen-edge run: ours", file=sys.stderr)
    assert capsys.readouterr().err == ("[method.cpp:353] external_data_map is null\n"
                                       "\rvalidate pte:  50%|#####     | 21/42qwen-edge run: ours\n")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
