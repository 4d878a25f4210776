"""Clean-up passes on the converted decoder graph, before it is quantized, fused and written.

Not here: the conversion (`exporter.onnx.export`), the norm fusions (`exporter.onnx.fusions`),
the quantization rewrite (`exporter.onnx.quantize`).
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir

from runtime.contract import ATTENTION_MASK, IMAGE_EMBEDS, INPUT_IDS

_LAYOUT_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Gather", "Slice")


def fold_weight_layouts(model: ir.Model) -> None:
    """Fold layout ops on weights into initializers (MoE's gate/up interleave, the conv taps).

    The exporter's optimizer folds only small tensors (and Transposes of single-use weights), so
    a Reshape or Gather of a large weight would otherwise run on every call. A weight is folded
    only when every use of it is such a layout op, so that the original dies and no weight is
    ever stored twice.
    """
    from onnx_ir.passes.common import RemoveUnusedNodesPass
    from onnxscript.optimizer import fold_constants

    def is_layout(node) -> bool:
        return not node.domain and node.op_type in _LAYOUT_OPS

    def should_fold(node) -> bool | None:
        data = node.inputs[0] if node.inputs else None
        if not is_layout(node) or data is None:
            return None  # the optimizer's own rules (it folds only nodes whose inputs are all constant)
        return all(is_layout(user) for user, _ in data.uses()) or None

    fold_constants(model, should_fold=should_fold)
    RemoveUnusedNodesPass()(model)


def name_dynamic_dims(model: ir.Model, kv_buffers: bool) -> None:
    """Rename the tracer's symbols (s0, s12, ...) to batch / sequence / past_sequence (or kv_capacity and
    total_sequence) / image_tokens everywhere."""
    from onnx_ir.traversal import RecursiveGraphIterator

    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    first_key = next((v for v in graph.inputs if v.name.endswith(".key")), None)
    named = [(inputs[INPUT_IDS].shape[0], "batch"), (inputs[INPUT_IDS].shape[1], "sequence")]
    if first_key is not None:
        named.append((first_key.shape[2], "kv_capacity" if kv_buffers else "past_sequence"))
    if ATTENTION_MASK in inputs:
        named.append((inputs[ATTENTION_MASK].shape[1], "total_sequence"))
    if IMAGE_EMBEDS in inputs:
        named.append((inputs[IMAGE_EMBEDS].shape[0], "image_tokens"))
    renames = {str(sym.value): name for sym, name in named if sym.value}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")

    def rename(value) -> None:
        if value is None or value.shape is None:
            return
        dims = [
            ir.SymbolicDim(pattern.sub(lambda m: renames[m.group(1)], d.value))
            if isinstance(d, ir.SymbolicDim) and isinstance(d.value, str)
            else d
            for d in value.shape
        ]
        value.shape = ir.Shape(dims)

    for value in [*graph.inputs, *graph.outputs]:
        rename(value)
    for node in RecursiveGraphIterator(graph):
        for value in node.outputs:
            rename(value)


def default_to_no_images(model: ir.Model) -> None:
    """Give the `image_embeds` input a default of zero rows, so text-only callers may leave it out.

    ONNX lets a graph input share its name with an initializer: the initializer is the value
    used when the caller feeds nothing (ONNX Runtime lists it in `get_overridable_initializers`).
    """
    value = next((v for v in model.graph.inputs if v.name == IMAGE_EMBEDS), None)
    if value is not None:
        value.const_value = ir.tensor(np.zeros((0, value.shape[1]), dtype=np.float32), name=IMAGE_EMBEDS)
        model.graph.register_initializer(value)
