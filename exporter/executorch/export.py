"""The entry point: the reference decoder to `model.pte` + `model.ptd`, and the artifact that describes them.

    export (decoder.export_programs) -> lower_custom_ops -> lower -> write_program

The lowering owns the model it is given: under a quantized scheme it quantizes it in place
(`exporter.executorch.quantize`, torchao's tensor subclasses, which torch.export traces) before
tracing, so the caller hands it a model no one else uses (`exporter.bundle` loads one per
lowering). The state lives in the wrapper's own buffers, never in the model's.
"""

from __future__ import annotations

from pathlib import Path

from exporter.artifact import Artifact, ExportOptions
from exporter.executorch import private_api
from exporter.executorch.decoder import export_programs, metadata, methods
from exporter.executorch.lower import (
    Stages,
    custom_ops_report,
    lower,
    lower_custom_ops,
    write_program,
)
from exporter.executorch.quantize import quantize_for_executorch
from exporter.model import Qwen35Model
from runtime.config import ModelConfig
from runtime.contract import FORWARD_METHOD, PTE, PTE_WEIGHTS_TAG, required_kernels


def export_executorch(model: Qwen35Model, config: ModelConfig, out_dir: Path, options: ExportOptions) -> Artifact:
    """Export `model` (quantized in place under a quantized scheme) to out_dir/model.pte (+ model.ptd)."""
    stages = Stages("pte")
    quantization = None if options.quant == "fp32" else stages("quantize", quantize_for_executorch, model, options.recipe)
    quantized_embedding = bool(quantization) and quantization.get("embedding", {}).get("bits") == 8
    meta = metadata(config, options)
    with private_api.shape_only_quant_ops():  # the export propagates fake tensors through quantized weights too
        programs = stages("export", export_programs, model, config, options)
        custom_ops = custom_ops_report(programs[FORWARD_METHOD], options)
        programs = stages("lower custom ops", lambda: {k: lower_custom_ops(p, options) for k, p in programs.items()})
        lowered = lower(programs, weights_tag=PTE_WEIGHTS_TAG, constant_methods=meta, stages=stages)
    files = stages("write", write_program, lowered.program, Path(out_dir), PTE)
    details = {
        "methods": methods(config),
        "constant_methods": meta,
        "prefill_chunk": options.prefill_chunk,
        "max_seq_len": options.max_seq_len,
        "backend": "XNNPACK",
        "kernels": options.pte_kernels,
        "kernels_required": required_kernels(options.pte_kernels, quantized_embedding=quantized_embedding),
        "data_files": files[1:],
        "export_report": {**lowered.report, "custom_ops": custom_ops},
        "export_seconds": stages.total(),
    }
    if quantization is not None:
        details["quantization"] = quantization
    return Artifact(format="pte", files=files, quant=options.quant, details=details)
