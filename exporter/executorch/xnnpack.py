"""The XNNPACK side of the lowering: weights tagged for one data file, `to_edge` with XNNPACK's partitioner, `to_executorch`.

- `XNNPACK_DECOMPOSITIONS`: aten ops replaced by forms XNNPACK takes (applied with the ops' own
  lowerings, `exporter.executorch.lower.lower_custom_ops`);
- `tag_external_weights`: every weight to the external `.ptd`, where identical bytes are stored once;
- `lower_to_xnnpack`: `to_edge_transform_and_lower`, collecting the partitioner's why-not notes for the report;
- `to_executorch_program`: the KV caches written in place, the weights in the data file.

The partitioner and the pass selection it runs under reach into ExecuTorch's internals; they are in
`exporter.executorch.private_api`, behind its switch. Not here: the report (`exporter.executorch.report`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from exporter.executorch import private_api


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """softplus as relu(x) + log(1 + exp(-|x|)), scaled by beta: the same values in fp32.

    aten's own decomposition uses where and log1p, which XNNPACK does not take; these ops it does.
    Past the threshold softplus(x) = x, and log(1 + exp(-20)) = 2e-9 is below half an ulp of 20.
    """
    scaled = x * beta
    return (torch.relu(scaled) + torch.log(1.0 + torch.exp(-torch.abs(scaled)))) / beta


# aten op -> the decomposition XNNPACK can delegate, applied before `to_edge` decomposes the rest.
XNNPACK_DECOMPOSITIONS = {torch.ops.aten.softplus.default: softplus}


def tag_external_weights(program: torch.export.ExportedProgram, tag: str) -> torch.export.ExportedProgram:
    """Tag every weight for the external data file `{tag}.ptd`, so tied weights are stored once.

    What ExecuTorch's `delegate_external_constants_pass_unlifted` does on an unlifted
    module, done in place on the lifted program's weight placeholders: no second export.
    """
    signature = program.graph_signature
    weights = set(signature.inputs_to_parameters) | set(signature.inputs_to_lifted_tensor_constants)
    weights |= {name for name, buffer in signature.inputs_to_buffers.items() if buffer not in signature.buffers_to_mutate.values()}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in weights:
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = tag
    return program


def lower_to_xnnpack(program, constant_methods: dict[str, object]):
    """to_edge_transform_and_lower with the XNNPACK partitioner; returns the edge program and why-not notes.

    `program` is one exported program or {method: program}.
    """
    from executorch.exir import to_edge_transform_and_lower

    with _capture_logs("executorch.backends.xnnpack") as notes, private_api.applicable_xnnpack_passes():
        edge = to_edge_transform_and_lower(
            program,
            transform_passes=[private_api.root_provenance],
            partitioner=[private_api.xnnpack_partitioner()],
            constant_methods=constant_methods,
            compile_config=private_api.edge_compile_config(),
        )
    return edge, notes


def to_executorch_program(edge, tag: str):
    """Weights tagged for the external data file; KV caches written in place.

    `run_reinplace_pass` turns each cache's index_put into index_put_ on its buffer. The functional
    form copies the whole cache into a new tensor and the write-back copies it again: at the
    default 2048 slots, 0.8B, 96 MB of copies per decoded token.
    """
    from executorch.exir import ExecutorchBackendConfig

    return edge.to_executorch(ExecutorchBackendConfig(external_constants=lambda _node: tag, run_reinplace_pass=True))


class _capture_logs:
    """Collect the partitioner's log records (its why-not-partitioned notes) for the report."""

    def __init__(self, name: str):
        self.logger, self.records = logging.getLogger(name), []

    def __enter__(self) -> list[str]:
        self.handler = logging.Handler(level=logging.DEBUG)
        self.handler.emit = lambda record: self.records.append(record.getMessage())
        self.old_level, self.old_propagate = self.logger.level, self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False  # the notes go to the report, not to the user's console
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)
        self.logger.propagate = self.old_propagate
