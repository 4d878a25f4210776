"""The third-party noise a normal `qwen-edge` run keeps off the terminal, line by line, with why.

A normal run prints our own lines, progress bars and one-line errors. The libraries under it print
more: deprecation notes about their own code, CUDA kernels a CPU build cannot load, the runtime's
probes of the CPU. Each such line is listed here once, with where it comes from and why it is
harmless, in a table by the way it reaches the terminal:

- `WARNINGS`: Python warnings, ignored by category and message;
- `RECORDS`: log records, dropped by a filter on the one logger that makes them (a filter, not a
  level: that logger's other messages, and its children's, still show);
- `RUNTIME_LINES`: ExecuTorch's C++ log. Its Python bindings send it to std::cerr and wrap every
  call in pybind11's `scoped_estream_redirect`, so it arrives as writes to Python's `sys.stderr`
  (extension/pybindings/pybindings.cpp, `emit_log_message`), not to file descriptor 2 directly.
  A stand-in `sys.stderr` drops exactly these lines and lets every other write through (a line
  that starts with "[" once its newline comes): an error, a traceback or a progress bar is never
  swallowed.

Patterns match at the start of the message or line (as `warnings.filterwarnings` does). `silenced()`
applies all three for the duration of a command; cli.py enters it unless `--verbose` or `--debug`.
Not here: our own logging set-up (cli.py), anything that changes what a library computes, and C code
writing straight to file descriptor 2 (none does on a normal run today; such a line would need fd 2
captured around the one call that writes it).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class NoisyWarning:
    category: type[Warning]
    message: str  # regular expression, matched at the start of the warning's message
    reason: str  # where it comes from, and why it is harmless


@dataclass(frozen=True)
class NoisyRecord:
    logger: str  # the exact logger that makes the record
    message: str  # regular expression, matched at the start of the formatted message
    reason: str


@dataclass(frozen=True)
class NoisyLine:
    line: str  # regular expression, matched at the start of one line written to sys.stderr
    reason: str


WARNINGS: tuple[NoisyWarning, ...] = (
    NoisyWarning(FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                 "torch deprecates its own pytree LeafSpec, and copy.deepcopy of an exported program (torch.export, "
                 "ExecuTorch's and the ONNX exporter's passes) rebuilds one through copyreg: torch's code, not ours"),
    NoisyWarning(UserWarning, r"Mutation on a buffer in the model is detected",
                 "ExecuTorch's emitter (exir/emit/_emitter.py) serializes mutated buffers without their initial "
                 "value. Ours (KV caches, DeltaNet and conv states) are started in-graph: input_pos = 0 resets the "
                 "states, and the cache is read only at slots written (exporter/executorch/decoder.py); each "
                 "export's validation runs the program from a fresh load"),
)

RECORDS: tuple[NoisyRecord, ...] = (
    NoisyRecord("torchao", r"Failed to load \S*torchao/_C_(mxfp8|cutlass_90a)\b",
                "torchao's __init__ loads each of its kernel libraries; the MX-fp8 and CUTLASS sm90a ones are "
                "CUDA-only and fail on a CPU torch. Our quantization runs torchao's CPU paths, which need neither"),
    NoisyRecord("torchao.kernel.intmm", r"Warning: Detected no triton\b",
                "torchao's int8 matmul has Triton kernels for CUDA; without a GPU there is no triton, and the CPU "
                "path is torch's own ops"),
    NoisyRecord("torch.utils._pytree", r"<enum '\w+'> is an Enum subclass and is now natively supported",
                "torchao registers its KernelPreference enum with register_constant(), which torch 2.13 deprecates "
                "for enums: a note about torchao's code, made when it is imported"),
    NoisyRecord("torch.onnx._internal.exporter._registration", r"torchvision is not installed\. Skipping torchvision::",
                "the ONNX exporter's registry offers translations of torchvision's detection ops (nms, roi_align, "
                "...) and skips them without torchvision; our models use none"),
)

RUNTIME_LINES: tuple[NoisyLine, ...] = (
    NoisyLine(r"\[cpuinfo_utils\.cpp:\d+\] (Reading file|Failed to open midr file|CPU info and manual query)",
              "ExecuTorch's thread pool, made on first use (runtime/backends.py sizing it), counts performance "
              "cores by reading ARM MIDR files; elsewhere (x86, containers) they are absent and it falls back to "
              "sysconf. The count is only the pool's default size, which the same call replaces (--threads)"),
    NoisyLine(r"\[threadpool\.cpp:\d+\] Resetting threadpool to \d+ threads\.$",
              "ExecuTorch's info log echoing the thread count runtime/backends.py just asked for"),
)


class _DropKnown(logging.Filter):
    """Drops the records whose message starts with one of `patterns`; on a logger, sees only its own records."""

    def __init__(self, patterns: list[str]):
        super().__init__()
        self._patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self._patterns)


class _StderrWithoutRuntimeLines:
    """`sys.stderr` less the lines of `RUNTIME_LINES`; all else goes through as it is written.

    std::cerr is unit-buffered, so ExecuTorch's bindings write a log line a piece at a time ("[",
    "threadpool.cpp", ":", "66", "] ", the message, "\\n"). A piece that starts with "[", as every
    ExecuTorch log line does, is held until its newline and then dropped or written whole; any other
    (a progress bar's redraw, an error, a traceback) goes through at once.
    """

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._patterns = [re.compile(noisy.line) for noisy in RUNTIME_LINES]
        self._held = ""  # the start of a line that may be one of RUNTIME_LINES

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            self._write_piece(piece)
        return len(text)

    def _write_piece(self, piece: str) -> None:
        if self._held or piece.startswith("["):
            self._held += piece
            if not piece.endswith("\n"):
                return
            line, self._held = self._held, ""
            if any(p.match(line.rstrip("\n")) for p in self._patterns):
                return
            piece = line
        self._stream.write(piece)

    def release(self) -> None:
        """Write out what is held: a line starting with "[" that never got its newline."""
        if self._held:
            self._stream.write(self._held)
            self._held = ""

    def __getattr__(self, name: str):  # flush, isatty, fileno, encoding: the real stream's
        return getattr(self._stream, name)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """`WARNINGS` ignored, `RECORDS` dropped and `RUNTIME_LINES` kept off stderr for the duration; undone after."""
    patterns: dict[str, list[str]] = {}
    for record in RECORDS:
        patterns.setdefault(record.logger, []).append(record.message)
    filters = {name: _DropKnown(found) for name, found in patterns.items()}
    stderr = _StderrWithoutRuntimeLines(sys.stderr)
    with warnings.catch_warnings(), contextlib.redirect_stderr(stderr):
        for noisy in WARNINGS:
            warnings.filterwarnings("ignore", message=noisy.message, category=noisy.category)
        for name, drop in filters.items():
            logging.getLogger(name).addFilter(drop)
        try:
            yield
        finally:
            stderr.release()
            for name, drop in filters.items():
                logging.getLogger(name).removeFilter(drop)
