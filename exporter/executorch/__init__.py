"""The ExecuTorch lowering: the reference decoder (and, through the same `lower`, the vision encoder) as XNNPACK `.pte` programs.

What this folder is, a module a concern:

    decoder.py      the decoder wrapped with its state in mutable buffers (`RingKV`, `ExecuTorchDecoder`,
                    `ExecuTorchImageDecoder`), the runner's constant methods, `torch.export`
    passes.py       graph passes between export and `to_edge` (state resets, asserts, views, round trips, dedupe)
    lower.py        `lower_custom_ops` (the ops' own ExecuTorch lowerings, `ops.LOWERINGS`), `lower`
                    (to_edge + XNNPACK + to_executorch, shared with the vision encoder), `write_program`
    xnnpack.py      the XNNPACK side: weight tagging for the `.ptd`, the partitioner call, `to_executorch`
    private_api.py  every private torch / ExecuTorch / torchao internal used, and the one switch over them
    report.py       the export report: what was delegated, what was not and why, what a call runs
    quantize.py     quantizing the model for XNNPACK (torchao's weights, the quantized embedding)
    export.py       `export_executorch`, the entry point

Weights go to an external `model.ptd`: inside one `.pte` the XNNPACK delegate and the portable
embedding lookup would each store the tied embedding; the external data store de-duplicates
identical bytes, so it is stored once.

What it is not: the bundle contract (file, method and state names and shapes: `runtime.contract`),
the scheme policy (`exporter.quantize`), the bundle (`exporter.bundle`), the vision encoder's
wrapper (`exporter.vision.export`), running a `.pte` (`runtime.backends`).
"""

from exporter.executorch.decoder import export_program
from exporter.executorch.export import export_executorch
from exporter.executorch.lower import lower, lower_custom_ops, write_program
from exporter.executorch.quantize import (
    quantize_for_executorch,
    quantize_linears_executorch,
)

__all__ = [
    "export_executorch", "export_program", "lower", "lower_custom_ops", "quantize_for_executorch",
    "quantize_linears_executorch", "write_program",
]
