"""What the benchmarks share: memory as an app sees it, steps in fresh interpreters, medians and turns,
the random-weight checkpoint every peer reads, and the peers' and runtimes' set-up.

Each measurement is a *step*: its bench re-invoked as `python -m bench.NAME --step=STEP` in a fresh
interpreter (`run_step`), so that its imports and memory are its own; a peer's command runs the
same way (`run_module`). Peak RSS is read one way, in the step (`peak_rss_mb`); `rss_mb` is read
before a model loads, so that the peak minus it is the model's own memory.

Memory as an app sees it: ExecuTorch's loaders (its Python runtime, and the C++ `Module` its LLM
runner and mobile SDKs use) memory-map the program and data files and `mlock` the mappings,
ignoring failure. In an app the lock fails (no CAP_IPC_LOCK; Android's RLIMIT_MEMLOCK is 64 KiB),
so only the pages a run touches become resident: an embedding table costs the rows looked up. Run
as root, the lock would pin every mapped byte, which no phone sees: so a run step calls
`run_as_an_app` first, for ours and the peers alike.

Not here: timing a bundle's backends (`runtime.bench`); running ONNX models (onnxruntime sessions,
onnxruntime-genai, a decoder without a bundle such as the builder's: `bench.onnx_run`); ExecuTorch's
`export_llm` (`bench.upstream_executorch`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
K, T = TypeVar("K"), TypeVar("T")

# -- Memory -----------------------------------------------------------------------------------------

CAP_IPC_LOCK = 14
_CAPABILITY_V3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapSets(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def run_as_an_app() -> None:
    """Drop CAP_IPC_LOCK from this process (and its children): `mlock` beyond RLIMIT_MEMLOCK now fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, sets = _CapHeader(_CAPABILITY_V3, 0), (_CapSets * 2)()
    if libc.capget(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), f"capget: {os.strerror(ctypes.get_errno())}")
    for part in sets:
        for name in ("effective", "permitted", "inheritable"):
            setattr(part, name, getattr(part, name) & ~(1 << CAP_IPC_LOCK))
    if libc.capset(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), f"capset: {os.strerror(ctypes.get_errno())}")


def rss_mb() -> float:
    """This process's resident set now (VmRSS), MiB."""
    return _status_mb("VmRSS:")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), or its largest waited-for child's if larger, MiB.

    Not its own ru_maxrss: CPython starts a child by vfork, and at exec the kernel carries the
    parent's high-water mark into it, so a step of a driver that once held 1 GiB reads at least 1 GiB.
    VmHWM counts what the process mapped since exec (a child's ru_maxrss, at most this one's mark more).
    """
    return max(_status_mb("VmHWM:"), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"/proc/self/status has no {field} line")


def mappings() -> list[dict]:
    """This process's memory mappings (/proc/self/smaps): path ("" if anonymous), offset_mb in the file,
    size_mb, and resident_mb now."""
    found = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
                start, end = (int(v, 16) for v in fields[0].split("-"))
                found.append({"path": " ".join(fields[5:]), "offset_mb": int(fields[2], 16) / 2**20,
                              "size_mb": (end - start) / 2**20, "resident_mb": 0.0})
            elif fields and fields[0] == "Rss:":
                found[-1]["resident_mb"] = int(fields[1]) / 1024
    return found


# -- Steps: one measurement, one fresh interpreter --------------------------------------------------

# Driver options a step never needs (they steer the driver: output, work directory, what to measure).
DRIVER_ONLY = ("step", "json", "quick", "work")


class StepFailed(RuntimeError):
    """A step's process exited with an error; the message ends with its stderr."""


def run_step(module: str, step: str, args=None, *, driver_only: tuple[str, ...] = DRIVER_ONLY,
             log: Path | None = None, **flags) -> dict:
    """`python -m module --step=step` with `args` (less `driver_only`) and `flags` as its options, stderr to `log`.

    `module` is the bench's own (`__spec__.name` from within it). Returns the step's result (the
    last JSON line it prints, `peak_rss_mb` among it: see `answer_step`) with its `wall_s` added.
    """
    command = [sys.executable, "-m", module, f"--step={step}"]
    for key, value in {**(vars(args) if args is not None else {}), **flags}.items():
        if value is None or value is False or key in driver_only:
            continue
        flag = f"--{key.replace('_', '-')}"
        command.append(flag if value is True else f"{flag}={value}")
    start = time.perf_counter()
    with open(log, "w+") if log else tempfile.TemporaryFile("w+") as stderr:
        done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                              errors="replace")  # runners print raw bytes
        if done.returncode != 0:
            stderr.seek(0)
            where = f" (all of it in {log})" if log else ""
            raise StepFailed(f"{module} --step={step} exited {done.returncode}; its stderr ends{where}:\n"
                             f"{stderr.read()[-4000:]}")
    results = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not results:
        raise StepFailed(f"{module} --step={step} printed no JSON result line")
    return {**json.loads(results[-1]), "wall_s": time.perf_counter() - start}


def answer_step(args, steps: dict[str, Callable]) -> bool:
    """In a step's own process (`--step=NAME`): print steps[NAME](args) and the process's `peak_rss_mb` as its
    last line; False in the driver."""
    if not args.step:
        return False
    print(json.dumps({**steps[args.step](args), "peak_rss_mb": peak_rss_mb()}), flush=True)
    return True


def run_module(module: str, argv: list[str], *, cwd: Path, log: Path | None = None) -> dict:
    """A peer's command, `python -m module *argv` in `cwd`, measured as a step: its `wall_s` and `peak_rss_mb`."""
    return run_step(__spec__.name, "module", log=log, run=module, argv=json.dumps([str(a) for a in argv]), cwd=cwd)


def _step_module(args) -> dict:
    import runpy

    os.chdir(args.cwd)
    sys.argv = [args.run, *json.loads(args.argv)]
    try:
        runpy.run_module(args.run, run_name="__main__", alter_sys=True)
    except SystemExit as done:  # a command line's own ending
        if done.code not in (None, 0):
            raise
    return {}


def argument_parser(module: str, description: str, **options) -> argparse.ArgumentParser:
    """A bench's parser, its usage line as the bench is run: `python -m module`."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description, **options)


def hidden_options(parser, *names: str) -> None:
    """`--step` and the given string options, which only the driver passes to its steps."""
    for name in ("step", *names):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)


@contextmanager
def work_dir(keep: str | None, prefix: str) -> Iterator[Path]:
    """The directory `keep` (kept after), or a temporary one removed after."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, each column padded to its widest cell."""
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def ours_against_peer(rows: list[tuple[str, str]], ours: dict, peer: dict | None) -> list[str]:
    """A text table of `ours[key]`, `peer[key]` and their ratio per (label, key) row; dashes with no peer."""
    lines = [f"{'':44s} {'ours':>10s} {'peer':>10s} {'ours/peer':>10s}"]
    for label, key in rows:
        theirs = f"{peer[key]:10.2f} {ours[key] / peer[key]:10.2f}" if peer else f"{'-':>10s} {'-':>10s}"
        lines.append(f"{label:44s} {ours[key]:10.2f} {theirs}")
    return lines


def files_bytes(folder: Path, suffixes: tuple[str, ...]) -> int:
    """Bytes of the files below `folder` ending in one of `suffixes` (a model's files: its size)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and f.suffix in suffixes)


# -- Medians and turns ------------------------------------------------------------------------------


def timings(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    return statistics.median(timings(fn, warmup, repeats)) * 1e3


def describe(values: list[float]) -> str:
    """'median 0.412 of 0.405, 0.412, 0.431'."""
    return f"median {statistics.median(values):.3f} of {', '.join(f'{v:.3f}' for v in values)}"


def in_turns(runs: dict[K, Callable[[], T]], rounds: int, *, alternate: bool = False) -> dict[K, list[T]]:
    """Each run once a round (A B C A B C ...), so that a slow spell of this shared machine falls on all alike.

    With `alternate`, every other round goes in reverse order: within one process a later run is favoured.
    """
    results: dict[K, list[T]] = {name: [] for name in runs}
    for index in range(rounds):
        for name in list(runs)[::-1] if alternate and index % 2 else runs:
            results[name].append(runs[name]())
    return results


def median_ratio(values: list[float], baseline: list[float]) -> float:
    """The median of the per-round ratios: round i of `values` over round i of `baseline`."""
    return statistics.median(a / b for a, b in zip(values, baseline, strict=True))


# -- The checkpoint every peer reads, and ours exported from it -------------------------------------


def with_layer_types(config, layer_types):
    """`config` with these decoder layers (say, a preset's first few kinds): a quicker look, not a figure."""
    import dataclasses

    return dataclasses.replace(config, text=dataclasses.replace(config.text, layer_types=tuple(layer_types)))


def write_checkpoint(config, out: Path) -> Path:
    """`config`'s random weights (seed 0) as an HF checkpoint in `out` (kept if there), by a fresh interpreter.

    The multimodal layout (`Qwen3_5ForConditionalGeneration`, the decoder under `model.language_model.*`,
    a minimal vision config, no vision weights): ONNX Runtime GenAI's builder refuses text-only
    checkpoints; our loader and ExecuTorch's `convert_weights` read it too.
    """
    import multiprocessing

    if (Path(out) / "config.json").exists():
        return Path(out)
    child = multiprocessing.get_context("spawn").Process(target=_write_checkpoint, args=(config, Path(out)))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise StepFailed(f"writing the checkpoint {out} failed ({child.exitcode}); its error is printed above")
    return Path(out)


def _write_checkpoint(config, out: Path) -> None:
    import dataclasses

    from safetensors.torch import save_file

    from exporter.checkpoint import random_model
    from runtime.config import VisionConfig, to_hf

    text = config.text
    vision = VisionConfig(  # never run: the peers export the text decoder only, but the builder wants the layout
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text.hidden_size,
        num_position_embeddings=16,
    )
    special = range(text.vocab_size - 4, text.vocab_size)
    ids = dict(zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"), special))
    hf = to_hf(dataclasses.replace(config, vision=vision, **ids))
    hf["architectures"] = ["Qwen3_5ForConditionalGeneration"]
    tensors = {
        name if name == "lm_head.weight" else f"model.language_model.{name}": tensor.contiguous()
        for name, tensor in random_model(config).state_dict().items()
        if not (name == "lm_head.weight" and text.tie_word_embeddings)
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=1) + "\n")  # last: a checkpoint is whole once it has one


def export_ours(checkpoint: Path, out: Path, fmt: str, options):
    """Ours from `checkpoint` in `fmt` ("onnx" or "pte"), the decoder alone as the peers export it; run it in a
    step. Returns the artifact and what quantizing it reported."""
    from exporter.checkpoint import load_model
    from runtime.config import text_only

    config, model, _ = load_model(checkpoint)
    config = text_only(config)  # the checkpoint is multimodal for the builder
    if fmt == "onnx":
        from exporter.onnx import export_onnx

        artifact = export_onnx(model, config, Path(out), options)
        return artifact, artifact.details.get("quantization", {})
    from exporter.executorch import export_executorch

    artifact = export_executorch(model, config, Path(out), options)  # quantizes `model` in place
    return artifact, artifact.details.get("quantization", {})


# -- Peers and runtimes -----------------------------------------------------------------------------

# A word the Qwen3.5 tokenizer encodes as one token, repeated to make a prompt of N tokens.
PROMPT_WORD = " hello"
# Kernel libraries an LLM app links beside ExecuTorch's runtime: quantized ops (an int8 embedding's
# lookup) and the LLM custom ops (llama::custom_sdpa, update_cache, gated_delta_rule: export_llm's
# programs need them, ours with --pte-kernels llm). Loaded for every program alike, as the app has them.
KERNEL_LIBRARIES = ("lib/libexecutorch_kernels_quantized.so", "extension/llm/custom_ops/libcustom_ops_aot_lib.so")


def export_builder(checkpoint: Path, out: Path, precision: str, log: Path | None = None) -> dict:
    """ONNX Runtime GenAI's model builder, `-m checkpoint -o out -p precision -e cpu`, measured (`run_module`)."""
    argv = ["-m", Path(checkpoint).resolve(), "-o", Path(out).resolve(), "-p", precision, "-e", "cpu"]
    return run_module("onnxruntime_genai.models.builder", argv, cwd=REPO, log=log)


def pte_files(folder: Path) -> tuple[Path, Path | None]:
    """A program directory's `.pte` (model.pte, else the first *.pte) and its `model.ptd` if there is one."""
    folder = Path(folder)
    program = folder / "model.pte" if (folder / "model.pte").exists() else next(folder.glob("*.pte"), None)
    if program is None:
        raise FileNotFoundError(f"{folder}: holds no .pte program")
    data = folder / "model.ptd"
    return program, data if data.exists() else None


def executorch_runtime(threads: int):
    """ExecuTorch's Python runtime with `threads` threads and every kernel library an app links registered."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.extension.pybindings import (
        portable_lib,  # usort: skip  (the libraries register into it)
    )
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    return Runtime.get()


def llm_runner_module():
    """ExecuTorch's `_llm_runner` extension (TextLLMRunner) and its kernel libraries, loaded by path so that torch
    is not imported (the package's `__init__` imports it). The extension still maps libtorch's C++ libraries,
    so "model's MB" (peak minus the RSS once this is loaded) is what an app would add."""
    import importlib.util

    root = Path(importlib.util.find_spec("executorch").submodule_search_locations[0])
    for library in KERNEL_LIBRARIES:
        ctypes.CDLL(str(root / library), mode=ctypes.RTLD_GLOBAL)
    extension = next((root / "extension" / "llm" / "runner").glob("_llm_runner*.so"))
    spec = importlib.util.spec_from_file_location("_llm_runner", extension)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if "torch" in sys.modules:
        raise RuntimeError("torch was imported with the LLM runner: the RSS would include it")
    return module


def main(argv=None) -> None:
    """Only a step: `run_module`'s (the driver is the caller's bench)."""
    parser = argument_parser(__spec__.name, "Run a peer's `python -m` command as a measured step.")
    hidden_options(parser, "run", "argv", "cwd")
    answer_step(parser.parse_args(argv), {"module": _step_module})


if __name__ == "__main__":
    main()
