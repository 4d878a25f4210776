"""Quantizing an exported ONNX decoder: MatMul -> MatMulNBits, embedding Gather -> GatherBlockQuantized.

`quantize_onnx` rewrites the fp32 graph that `exporter.onnx.export` traced, in place, into ONNX
Runtime's contrib ops:

- each quantized linear (a MatMul on a [K, N] initializer) becomes `MatMulNBits` with the
  integers and scales `exporter.quantize.qparams` chose for the PyTorch module it came from
  (found through the exporter's `pkg.torch.onnx.name_scopes` node metadata);
- the LM head (a Gemm with transB on the [V, D] matrix) becomes `MatMulNBits` on that matrix;
- the MatMulNBits that read one activation (q, k and v; in_proj_qkv and in_proj_z; gate and up)
  are stacked into one node and split after (`_pack_siblings`): the same integers and scales;
- the embedding lookup becomes `GatherBlockQuantized`. With tied embeddings it reads the head's
  quantized initializer [V, blocks, blob] as it is, quantized along its last axis, so the matrix
  is stored once in the file and in memory. (ONNX Runtime GenAI's model builder reshapes it to
  [V, blocks * blob] first; ONNX Runtime constant-folds that Reshape into a second copy in memory,
  measured +29 MB on the fixture's 33 MB matrix. Only the scales are reshaped here.)

Both ops store symmetric integers with their default zero point 2^(bits-1) (no zero-point
tensor), packed low nibble first along K, with one scale per block of K: the layout of both ops.
The scales are stored in fp16 and widened at load (see `_Quantized`).
A per-channel scale is one block of the next power of two >= K (the ops pad K to whole blocks).

Why not ORT's `MatMulNBitsQuantizer`: it rewrites MatMul nodes only (not the Gemm head), its
scale choices measured worse on the trained fixture, and its HQQ's float zero points cannot be
shared with GatherBlockQuantized (see `exporter.quantize`). The ops and their layout are ORT's.
"""

from __future__ import annotations

import ast
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from exporter.quantize import (
    SCHEMES,
    SOLVER_ROWS,
    QuantizationError,
    QuantRecipe,
    check_group_size,
    dequantize,
    qparams,
    quantized_linears,
)
from ops.onnx_contrib import CONTRIB_DOMAIN

HALF_SCALES = "_fp16"  # name suffix of scales stored in fp16 (the Cast's output drops it)
# MatMulNBits accuracy_level per scheme: 1 keeps fp32 activations, 4 lets ORT quantize them to int8 per block.
ACCURACY_LEVEL = {"8w": 4, "4w": 1, "8da4w": 4}


def block_for(k: int, group: int | None) -> int:
    """Block size along K: the group, or for one scale per row the next power of two >= K (at least 16)."""
    return group if group else max(16, 1 << (k - 1).bit_length())


def pack(qdata: torch.Tensor, bits: int, block: int) -> np.ndarray:
    """Symmetric integers [N, K] -> uint8 [N, blocks, block * bits / 8], offset by 2^(bits-1), low nibble first."""
    n, k = qdata.shape
    blocks = -(-k // block)
    offset = 1 << (bits - 1)
    codes = np.full((n, blocks * block), offset, dtype=np.uint8)  # padding dequantizes to zero
    codes[:, :k] = qdata.numpy().view(np.uint8) + np.uint8(offset)  # two's complement + offset, mod 256
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return codes.reshape(n, blocks, -1)


def unpack(packed: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    """MatMulNBits' B and scales back to fp32 [N, K] (for tests and reports)."""
    n = packed.shape[0]
    flat = packed.reshape(n, -1)
    codes = np.stack([flat & 15, flat >> 4], -1).reshape(n, -1) if bits == 4 else flat
    values = codes.astype(np.float32) - (1 << (bits - 1))
    blocks = scales.shape[1]
    return (values.reshape(n, blocks, -1) * scales[..., None]).reshape(n, -1)[:, :k]


class _Quantized:
    """One quantized matrix as ORT stores it: packed B [N, blocks, blob], scales [N, blocks].

    The file stores the scales in fp16 (`stored_scales`); MatMulNBits takes them in the activation
    dtype (fp32), so `add_to` widens them with a Cast that ONNX Runtime constant-folds at session
    load (checked: the same outputs, bit for bit, and the same speed as fp32 scales). At the 0.8B
    with int4 g32 linears that halves 62 MB of scales. The integers stay the ones `qparams` chose
    for the fp32 scales (the pte carries the same); rounding a scale to fp16 moves it by at most
    2^-11 relative, and the reported error is measured with the stored scales.
    """

    def __init__(self, name: str, weight: torch.Tensor, bits: int, group: int | None):
        qdata, scale = qparams(weight, bits, group)
        self.bits, self.n, self.k = bits, weight.shape[0], weight.shape[1]
        self.block = block_for(self.k, group)
        self.packed = ir.tensor(pack(qdata, bits, self.block), name=f"{name}.q{bits}")
        stored = stored_scales(scale)
        self.scales = ir.tensor(stored, name=f"{name}.scales" + (HALF_SCALES if stored.dtype == np.float16 else ""))
        self.error = _relative_error(qdata, torch.from_numpy(stored.astype(np.float32)), weight)

    def add_to(self, graph: ir.Graph) -> tuple[ir.Value, ir.Value]:
        """B and the fp32 scales MatMulNBits reads (see `_fp32_scales`)."""
        return _initializer(graph, self.packed), _fp32_scales(graph, self.scales)

    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes


def stored_scales(scale: torch.Tensor) -> np.ndarray:
    """The scales as the file stores them: fp16 when every one rounds to within 2^-11 of itself (fp16's normal
    range), else the matrix keeps fp32 (a scale past 65504, or a subnormal one that would lose its digits)."""
    full = scale.numpy().astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        half = full.astype(np.float16)
        fits = bool((np.abs(half.astype(np.float32) - full) <= np.abs(full) * 2.0**-11).all())
    return half if fits else full


def _fp32_scales(graph: ir.Graph, stored: ir.TensorProtocol) -> ir.Value:
    """The stored scales as an initializer, read through a Cast to fp32 (placed first in the graph) when fp16."""
    scales = _initializer(graph, stored)
    if stored.dtype != ir.DataType.FLOAT:
        cast = ir.Node("", "Cast", [scales], ir.convenience.convert_attributes({"to": ir.DataType.FLOAT}),
                       name=f"{stored.name}_to_fp32")
        cast.outputs[0].name = stored.name.removesuffix(HALF_SCALES)
        graph.insert_before(next(iter(graph)), cast)
        scales = cast.outputs[0]
    return scales


def _relative_error(qdata: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor) -> float:
    """mean((dequantized - weight)^2) / mean(weight^2), a block of rows at a time (fp32 copies of the
    0.8B's head are 1 GB each: all at once, they were the ONNX export's peak RSS)."""
    num = den = 0.0
    for q, s, w in zip(qdata.split(SOLVER_ROWS), scale.split(SOLVER_ROWS), weight.split(SOLVER_ROWS)):
        w = w.float()
        num += float((dequantize(q, s) - w).pow(2).sum())
        den += float(w.pow(2).sum())
    return num / den


def _initializer(graph: ir.Graph, tensor) -> ir.Value:
    value = ir.Value(name=tensor.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    graph.register_initializer(value)
    return value


def _int64(graph: ir.Graph, name: str, values: list[int]) -> ir.Value:
    return _initializer(graph, ir.tensor(np.array(values, np.int64), name=name))


def _scope(node: ir.Node) -> str | None:
    """The PyTorch module a node was traced from ('layers.0.mlp.up_proj'), from the exporter's metadata."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if not scopes:
        return None
    names = ast.literal_eval(scopes)
    module = names[-2] if len(names) >= 2 else ""
    # OnnxDecoder holds the model as `model`, the vision export's VisionEncoder the tower as `tower`.
    return module.removeprefix("model.").removeprefix("tower.")


def _replace(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    ir.convenience.replace_nodes_and_values(graph, old, [old], [new], old.outputs, new.outputs)


def _matmul_nbits(x: ir.Value, b: ir.Value, scales: ir.Value, q: _Quantized, level: int, like: ir.Node) -> ir.Node:
    attributes = {"K": q.k, "N": q.n, "bits": q.bits, "block_size": q.block, "accuracy_level": level}
    return ir.Node(CONTRIB_DOMAIN, "MatMulNBits", [x, b, scales], ir.convenience.convert_attributes(attributes),
                   name=f"{like.name}_nbits", metadata_props=dict(like.metadata_props))


def _quantize_linears(graph: ir.Graph, model: nn.Module, recipe: QuantRecipe, level: int) -> dict[str, float]:
    """MatMul (3-D inputs) or Gemm (2-D inputs, bias fused) on a module's weight -> MatMulNBits; {module: relative MSE}."""
    linears = dict(quantized_linears(model))
    errors = {}
    for node in list(graph):
        kind = node.op_type if node.op_type in ("MatMul", "Gemm") and not node.domain else None
        name = _scope(node) if kind else None
        if name not in linears or node.inputs[1].const_value is None:
            continue
        weight = linears[name].weight.detach()  # [N, K]
        stored = tuple(node.inputs[1].shape)
        transposed = kind == "Gemm" and _attribute(node, "transB", 0) == 1  # Gemm may keep W as [N, K]
        if stored != (tuple(weight.shape) if transposed else (weight.shape[1], weight.shape[0])):
            raise QuantizationError(f"ONNX node {node.name}: weight {stored} does not match {name} {tuple(weight.shape)}")
        if kind == "Gemm" and (_attribute(node, "transA", 0) or _attribute(node, "alpha", 1.0) != 1.0
                               or _attribute(node, "beta", 1.0) != 1.0):
            raise QuantizationError(f"ONNX node {node.name}: a Gemm that is not x @ W^T + b; cannot quantize {name}")
        q = _Quantized(name, weight, recipe.weight_bits, recipe.group_size)
        fp32 = node.inputs[1]
        matmul = _matmul_nbits(node.inputs[0], *q.add_to(graph), q, level, like=node)
        if kind == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = ir.Node("", "Add", [matmul.outputs[0], node.inputs[2]], name=f"{node.name}_bias",
                           metadata_props=dict(node.metadata_props))
            ir.convenience.replace_nodes_and_values(graph, node, [node], [matmul, bias], node.outputs, bias.outputs)
        else:
            _replace(graph, node, matmul)
        _drop_if_unused(graph, fp32)
        errors[name] = q.error
    missing = sorted(set(linears) - set(errors))
    if missing:
        raise QuantizationError(f"ONNX graph: no MatMul found for {', '.join(missing[:3])}; the exporter's "
                                "node metadata (pkg.torch.onnx.name_scopes) changed")
    return errors


def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    """Free a replaced fp32 initializer (the exporter's transposed copy of a linear) now, not at the end of the pass."""
    if value.is_initializer() and not value.uses() and value.name in graph.initializers:
        del graph.initializers[value.name]


def _attribute(node: ir.Node, name: str, default):
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.value


def _find(graph: ir.Graph, op_type: str, scope: str) -> ir.Node:
    found = [n for n in graph if n.op_type == op_type and not n.domain and _scope(n) == scope]
    if len(found) != 1:
        raise QuantizationError(f"ONNX graph: expected one {op_type} from {scope}, found {len(found)}")
    return found[0]


def _gather(graph: ir.Graph, node: ir.Node, data: ir.Value, scales: ir.Value, q: _Quantized, width: int) -> None:
    """Embedding Gather -> GatherBlockQuantized on MatMulNBits' own B [V, blocks, blob] (no copy of it).

    Quantized along the last axis in blocks of `q.block`; the scales take the same rank as the data
    ([V, blocks, 1], a Reshape of the head's [V, blocks]: ORT folds it into a copy of the scales only, where
    a Reshape of B would have copied the whole matrix). Rows [.., blocks, block] merge back to the padded
    width and are sliced to D where the ops padded K.
    """
    scales_3d = _reshape(graph, scales, [q.n, -1, 1], f"{node.name}_scale_blocks")
    attributes = ir.convenience.convert_attributes(
        {"bits": q.bits, "block_size": q.block, "gather_axis": 0, "quantize_axis": 2})
    gbq = ir.Node(CONTRIB_DOMAIN, "GatherBlockQuantized", [data, node.inputs[1], scales_3d], attributes,
                  name=f"{node.name}_blockquantized", metadata_props=dict(node.metadata_props))
    rows = ir.Node("", "Reshape", [gbq.outputs[0], _int64(graph, f"{node.name}.rows_shape", [0, 0, -1])],
                   name=f"{node.name}_rows")  # [B, T, blocks, block] -> [B, T, padded D]
    new_nodes, out = [scales_3d.producer(), gbq, rows], rows.outputs[0]
    if q.block * (-(-width // q.block)) != width:  # padded rows: keep the first D columns
        consts = [_int64(graph, f"{node.name}.slice_{what}", [v]) for what, v in (("start", 0), ("end", width), ("axis", -1))]
        sliced = ir.Node("", "Slice", [out, *consts], name=f"{node.name}_unpad")
        new_nodes.append(sliced)
        out = sliced.outputs[0]
    ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, node.outputs, [out])


def _reshape(graph: ir.Graph, value: ir.Value, shape: list[int], name: str) -> ir.Value:
    """A Reshape node's output (the node is not inserted: the caller places `output.producer()`)."""
    node = ir.Node("", "Reshape", [value, _int64(graph, f"{name}.shape", shape)], name=name)
    return node.outputs[0]


def _quantize_embedding(graph: ir.Graph, model: nn.Module, recipe: QuantRecipe, level: int) -> dict[str, Any]:
    """The LM head Gemm -> MatMulNBits and the lookup Gather -> GatherBlockQuantized, sharing one matrix if tied."""
    head, lookup = _find(graph, "Gemm", "lm_head"), _find(graph, "Gather", "embed_tokens")
    transposed = head.attributes.get("transB")
    if transposed is None or transposed.value != 1 or len(head.inputs) > 2:
        raise QuantizationError(f"ONNX node {head.name}: expected the LM head as Gemm(transB=1) without bias")
    tied = lookup.inputs[0] is head.inputs[1]
    width = model.config.hidden_size
    head_q = _Quantized("lm_head", model.lm_head.weight.detach(), recipe.embedding_bits, recipe.embedding_group)
    b, scales = head_q.add_to(graph)
    _replace(graph, head, _matmul_nbits(head.inputs[0], b, scales, head_q, level, like=head))
    lookup_q, data, lookup_scales = head_q, b, scales
    if not tied:  # separate matrices: the lookup gets its own
        lookup_q = _Quantized("embed_tokens", model.embed_tokens.weight.detach(), recipe.embedding_bits,
                              recipe.embedding_group)
        data, lookup_scales = lookup_q.add_to(graph)
    _gather(graph, lookup, data, lookup_scales, lookup_q, width)
    stored = head_q.nbytes() + (0 if tied else lookup_q.nbytes())
    return {"tied": tied, "stored_once": tied, "bytes": stored,
            "fp32_bytes": model.lm_head.weight.numel() * 4 * (1 if tied else 2), "relative_mse": head_q.error,
            "in_memory_copies": "ONNX Runtime folds the scales' Reshape: one extra copy of the scales, not of the matrix"}


def _pack_siblings(graph: ir.Graph) -> dict[str, int]:
    """MatMulNBits nodes that read the same activation with the same K and layout -> one MatMulNBits + Split.

    The model's projections of one input (an attention layer's q, k and v; a DeltaNet layer's
    in_proj_qkv and in_proj_z; an MLP's gate and up) become one matrix with their rows stacked:
    MatMulNBits quantizes along K per output row, so stacking rows changes no stored integer or
    scale, and each output is the same dot product. A decode step then makes one call where it made
    two or three; measured per call at the 0.8B shapes (ORT 1.32 CPU, 2 threads): 10-13 us saved
    per merged node, ~0.5 ms a token over 24 layers. A matrix another node also reads (the tied
    embedding's GatherBlockQuantized) is left alone, so nothing is stored twice.
    """
    groups: dict[tuple, list[ir.Node]] = {}
    for node in graph:
        if node.domain != CONTRIB_DOMAIN or node.op_type != "MatMulNBits" or len(node.inputs) != 3:
            continue
        data, scales = node.inputs[1], _stored_scales(node.inputs[2])
        if data.const_value is None or scales is None or len(data.uses()) != 1:
            continue
        layout = tuple(_attribute(node, a, None) for a in ("K", "bits", "block_size", "accuracy_level"))
        groups.setdefault((id(node.inputs[0]), layout, scales.dtype), []).append(node)
    packed = [nodes for nodes in groups.values() if len(nodes) > 1]
    for nodes in packed:
        _pack(graph, nodes)
    return {"groups": len(packed), "matrices": sum(map(len, packed))}


def _stored_scales(scales: ir.Value) -> ir.Value | None:
    """The initializer a MatMulNBits' scales come from: itself, or the input of the Cast that widens it."""
    producer = scales.producer()
    if producer is not None and producer.op_type == "Cast" and len(scales.uses()) == 1:
        scales = producer.inputs[0]
    return scales if scales.const_value is not None else None


def _pack(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    """Stack the matrices of `nodes` (one input, one layout) into one MatMulNBits whose output is split back."""
    first = nodes[0]
    names = [n.inputs[1].name.rpartition(".q")[0] for n in nodes]  # "layers.3.self_attn.q_proj"
    prefix = names[0].rpartition(".")[0]
    name = prefix + "." + "+".join(n.rpartition(".")[2] for n in names)  # "layers.3.self_attn.q_proj+k_proj+v_proj"
    widths = [_attribute(n, "N", None) for n in nodes]
    bits = _attribute(first, "bits", None)
    data = ir.tensor(np.concatenate([n.inputs[1].const_value.numpy() for n in nodes]), name=f"{name}.q{bits}")
    stored = [_stored_scales(n.inputs[2]) for n in nodes]
    half = stored[0].dtype != ir.DataType.FLOAT
    scales = ir.tensor(np.concatenate([s.const_value.numpy() for s in stored]),
                       name=f"{name}.scales" + (HALF_SCALES if half else ""))
    attributes = {a.name: a for a in first.attributes.values()}
    attributes["N"] = ir.AttrInt64("N", sum(widths))
    matmul = ir.Node(CONTRIB_DOMAIN, "MatMulNBits", [first.inputs[0], _initializer(graph, data), _fp32_scales(graph, scales)],
                     attributes.values(), name=f"{first.name}_packed", metadata_props=dict(first.metadata_props))
    split = ir.Node("", "Split", [matmul.outputs[0], _int64(graph, f"{name}.split", widths)],
                    ir.convenience.convert_attributes({"axis": -1}), num_outputs=len(nodes), name=f"{first.name}_unpack")
    graph.insert_before(first, [matmul, split])
    for node, output in zip(nodes, split.outputs, strict=True):
        output.name, node.outputs[0].name = node.outputs[0].name, None
        ir.convenience.replace_all_uses_with(node.outputs[0], output)
        graph.remove(node, safe=True)


def quantize_linears_onnx(onnx_model: ir.Model, module: nn.Module, recipe: QuantRecipe) -> dict[str, Any]:
    """The linears of a module without an embedding (the vision tower) -> MatMulNBits, in place."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    check_group_size(module, recipe)
    onnx_model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
    errors = _quantize_linears(onnx_model.graph, module, recipe, ACCURACY_LEVEL[recipe.scheme])
    RemoveUnusedNodesPass()(onnx_model)
    return {"matrices": len(errors), "accuracy_level": ACCURACY_LEVEL[recipe.scheme],
            "linear_relative_mse_mean": float(np.mean(list(errors.values()))) if errors else None}


def quantize_onnx(onnx_model: ir.Model, model: nn.Module, recipe: QuantRecipe) -> dict[str, Any]:
    """Rewrite `onnx_model` (traced from `model`) for `recipe`, in place; returns what the manifest records."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    if SCHEMES[recipe.scheme].weight_bits is None:
        raise QuantizationError(f"{recipe.scheme}: not an integer scheme; nothing to rewrite")
    level = ACCURACY_LEVEL[recipe.scheme]
    graph = onnx_model.graph
    onnx_model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
    errors = _quantize_linears(graph, model, recipe, level)
    embedding = _quantize_embedding(graph, model, recipe, level)
    half = sum(name.endswith(HALF_SCALES) for name in graph.initializers)  # per matrix, before packing
    packed = _pack_siblings(graph)
    RemoveUnusedNodesPass()(onnx_model)  # drops the fp32 initializers nothing reads any more
    worst = max(errors, key=errors.get) if errors else None
    matrices = len(errors) + 1 + (0 if embedding["tied"] else 1)
    return {
        "matrices": matrices,
        "accuracy_level": level,
        "scales_stored": {"fp16": half, "fp32": matrices - half,
                          "note": "fp16 scales are widened to fp32 by a Cast that ONNX Runtime constant-folds at "
                                  "session load: keep its graph optimizations on (the default)"},
        "linear_relative_mse": {"mean": float(np.mean(list(errors.values()))) if errors else None,
                                "worst": worst, "worst_value": errors.get(worst)},
        "embedding": embedding,
        "packed": {**packed, "note": "MatMulNBits nodes reading one activation are stacked into one (rows "
                                     "concatenated, the same integers and scales) and split after"},
    }
