"""The lowering both ExecuTorch programs share (the decoder and the vision encoder): exported programs in, a written `.pte` + `.ptd` out.

Stages, each a plain function of the previous one's result:

    lower_custom_ops    the decoder's qwen35:: ops replaced by the forms their modules declare
                        (`ops.LOWERINGS`), then the graph tidied (`exporter.executorch.passes`)
    lower               weights tagged for the data file -> to_edge + XNNPACK -> to_executorch,
                        with the export report of the first method
    write_program       the program and its data file into a directory, each file renamed into place

Not here: the decoder's wrapper and export (`exporter.executorch.decoder`), the entry point that
strings them together (`exporter.executorch.export`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ops
from exporter.artifact import ExportOptions
from exporter.executorch import private_api
from exporter.executorch.passes import (
    dedupe,
    drop_asserts,
    dynamic_views_as_minus_one,
    fold_round_trips,
    fold_state_resets,
)
from exporter.executorch.report import delegation_report, kernel_calls
from exporter.executorch.xnnpack import (
    XNNPACK_DECOMPOSITIONS,
    lower_to_xnnpack,
    tag_external_weights,
    to_executorch_program,
)
from ops.lowering import ExecuTorchLowering, OpLowering
from runtime.contract import load_llm_custom_ops
from runtime.files import move_files, staging_dir

log = logging.getLogger(__name__)


@dataclass
class Stages:
    """Runs named stages and times each (the artifact's `export_seconds`), logging as it goes."""

    label: str = "pte"
    seconds: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def __call__(self, name: str, fn: Callable, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        log.info("%s: %s done in %.1f s", self.label, name, self.seconds[name])
        return result

    def total(self) -> dict[str, float]:
        """Every stage's seconds and the total since the stages began."""
        return {**self.seconds, "total": round(time.perf_counter() - self.start, 2)}


@dataclass
class Lowered:
    """A program ready to write (an ExecuTorch `ExecutorchProgramManager`) and its export report."""

    program: Any
    report: dict[str, Any]


def executorch_lowerings(kernels: str) -> list[tuple[OpLowering, ExecuTorchLowering]]:
    """Each qwen35:: op that may reach a `.pte`, with its lowering for the kernel set: the ops' own tables (`ops.LOWERINGS`)."""
    return [(op, op.executorch[kernels]) for op in ops.LOWERINGS if kernels in op.executorch]


def custom_ops_report(program: torch.export.ExportedProgram, options: ExportOptions) -> dict[str, str]:
    """What each qwen35:: op of the exported program becomes in the `.pte` (its lowering's own report)."""
    called = {node.target for node in program.graph.nodes if node.op == "call_function"}
    return {f"qwen35::{op.name}": form.describe(options.prefill_chunk)
            for op, form in executorch_lowerings(options.pte_kernels) if op.overload in called}


def lower_custom_ops(program: torch.export.ExportedProgram, options: ExportOptions) -> torch.export.ExportedProgram:
    """Replace each qwen35:: op by the form its module declares for ExecuTorch, then tidy the graph.

    The form depends on the kernel set (`ExportOptions.pte_kernels`): the delta rule is a delegable
    decomposition ("stock") or ExecuTorch's `llama::gated_delta_rule` ("llm"), whose library is
    loaded when a form needs it. aten ops XNNPACK cannot take in aten's own decomposition are
    replaced in the same retrace (`XNNPACK_DECOMPOSITIONS`).

    Before: export's dtype asserts dropped (`drop_asserts`), state resets folded into the first
    decay. Tidying after: `-1` for the dynamic size of views, layout round trips folded, repeated
    pure ops computed once, provenance cut to its root (`private_api.root_provenance`).
    """
    table = {}
    for op, form in executorch_lowerings(options.pte_kernels):
        if form.needs_llm_ops:
            load_llm_custom_ops()
        table[op.overload] = form.build(options.prefill_chunk)
    table.update(XNNPACK_DECOMPOSITIONS)
    program = fold_state_resets(drop_asserts(program)).run_decompositions(table)
    program = dedupe(fold_round_trips(dynamic_views_as_minus_one(program)))
    private_api.root_provenance(program.graph_module)
    return program


def lower(programs: Mapping[str, torch.export.ExportedProgram], *, weights_tag: str,
          constant_methods: Mapping[str, object] | None = None, stages: Stages | None = None) -> Lowered:
    """{method: program} -> an ExecuTorch program with XNNPACK delegates and its weights in `{weights_tag}.ptd`.

    The report (`exporter.executorch.report`) is the first method's: what was delegated, what was
    not and why, and the kernels one call runs. Runs under `private_api.shape_only_quant_ops`, which
    the caller may also hold around its export (it is re-entrant).
    """
    stages = stages or Stages()
    method = next(iter(programs))
    with private_api.shape_only_quant_ops():
        tagged = stages("tag weights", lambda: {m: tag_external_weights(p, weights_tag) for m, p in programs.items()})
        edge, notes = stages("to_edge + XNNPACK", lower_to_xnnpack, tagged, dict(constant_methods or {}))
        report = delegation_report(edge, notes, method)
        program = stages("to_executorch", to_executorch_program, edge, weights_tag)
        report["kernel_calls"] = kernel_calls(program, method)
    return Lowered(program, report)


def write_program(program, out_dir: Path, pte: str) -> list[str]:
    """Write the program (`pte`) and its external data file(s) into out_dir; [pte, data files...].

    Both are written into a staging directory inside out_dir and renamed into place, the data first,
    so a reader never finds a `.pte` without the data it names.
    """
    out_dir = Path(out_dir)
    with staging_dir(out_dir, ".pte-") as tmp:
        (tmp / pte).write_bytes(program.buffer)
        program.write_tensor_data_to_file(str(tmp))
        data = sorted(p.name for p in tmp.iterdir() if p.name != pte)
        move_files(tmp, out_dir, [*data, pte])
    return [pte, *data]
