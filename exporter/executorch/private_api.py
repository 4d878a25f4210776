"""Every private torch / ExecuTorch / torchao internal the ExecuTorch lowering touches, and the one switch over them.

This module is the audit list: no other module of `exporter/executorch/` imports an underscore
module, reads an underscore attribute or patches a library class. Its entries are of two kinds.

Shortcuts, behind the switch. Each makes lowering faster (or a load lighter) through an internal
that a torch / ExecuTorch / torchao upgrade may move or break; `with shortcuts(False):` lowers with
public APIs (but the needed internals below), so a broken shortcut can be told from a broken
lowering. On by default. With them off the program is byte for byte the same
(`test_lowering_shortcuts_write_the_same_program`), but for a head in blocks (4b).

1. `shape_only_quant_ops`: torchao's choose_qparams / quantize / dequantize_affine get shape-only
   kernels on fake tensors. Uses `torch._inductor.decomposition.decompositions` (the ops' bodies),
   `torch._subclasses.fake_tensor.FakeTensor`, `torch._C._get_dispatch_mode`, torchao's
   `quant_primitives._get_and_check_qmin_qmax` / `_get_reduction_params` / `_SUB_BYTE_UINT_BOUNDS`
   and `torch.library.Library._destroy`. Without it: a quantized lowering 1.3x slower.
2. `applicable_xnnpack_passes`: patches `executorch.backends.xnnpack._passes.XNNPACKPassManager.__init__`
   so a partition's preprocess skips the passes that cannot apply to it (`_PASS_APPLIES`). Without
   it: each skipped pass is a full retrace of each partition (~2 s a pass at 0.8B fp32).
3. `root_provenance`: cuts `node.meta["from_node"]` (torch.fx's internal provenance records) to
   its root, the only part ExecuTorch reads. Without it: a 4-layer 8da4w lowering ~10 % slower
   (3 % at fp32).
4. `xnnpack_partitioner`: a subclass of XNNPACK's partitioner that (a) returns no per-node check
   from `ops_to_not_decompose` when every node passes it, which sends `to_edge` down its path
   with one whole-graph retrace fewer (relies on how `to_edge` dispatches on the check), and
   (b) overrides `generate_partitions` (XNNPACK's `get_matched_nodes_from_configs`, exir's
   grouping helper) so each block of a `BlockedLinear` head is a delegate of its own. Without
   it: stock `XnnpackPartitioner`; (a) one more retrace, (b) a head in blocks is one delegate,
   and loading the program peaks higher by the head's size
   (`exporter.executorch.quantize.HEAD_BLOCK_BYTES`).

Needed, always used (not shortcuts: without them the program changes):

- `edge_compile_config`: `EdgeCompileConfig(_check_ir_validity=False)`, a private field of a public
  config. It skips exir's ATen and edge dialect verifiers, which are not checks only: with them on,
  a MoE program is emitted differently (tiny-moe: its 33 `et_view` calls gone, a 4 % smaller
  `.pte`; not validated), while the dense, quantized, "llm" and vision programs stay the same.
- `UNSAFE_VIEW`, `ASSERT_TENSOR_METADATA`: private aten ops the graph passes match (names, not
  calls). Decompositions emit `aten._unsafe_view` for reshapes; unmatched, a reshape with a
  dynamic size stays portable and splits the delegate. Export emits `aten._assert_tensor_metadata`
  after casts; `to_edge` would retrace them before dropping them.

Not here: what the shortcuts are applied to (`exporter.executorch.lower`), the public XNNPACK
lowering (`exporter.executorch.xnnpack`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from exporter.executorch.report import op_name

_ENABLED = contextvars.ContextVar("qwen_edge_private_api_shortcuts", default=True)
_QUANT_OPS_ACTIVE = contextvars.ContextVar("qwen_edge_shape_only_quant_ops", default=False)

UNSAFE_VIEW = torch.ops.aten._unsafe_view.default
ASSERT_TENSOR_METADATA = torch.ops.aten._assert_tensor_metadata.default


@contextlib.contextmanager
def shortcuts(enabled: bool) -> Iterator[None]:
    """The switch: inside `with shortcuts(False):` the lowering uses none of the shortcuts (see the module docstring)."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def enabled() -> bool:
    """Whether the shortcuts are on here (they are unless a `shortcuts(False)` block is open)."""
    return _ENABLED.get()


# ---------------------------------------------------------------------------
# Needed
# ---------------------------------------------------------------------------


def edge_compile_config():
    """`to_edge`'s config: no IR verifiers (see the module docstring: with them a MoE program changes)."""
    from executorch.exir import EdgeCompileConfig

    return EdgeCompileConfig(_check_ir_validity=False)


# ---------------------------------------------------------------------------
# 1. Shape-only kernels for torchao's quantize ops
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def shape_only_quant_ops() -> Iterator[None]:
    """While lowering, compute torchao's quantize ops' fake outputs from their shapes alone.

    torchao defines choose_qparams_affine / quantize_affine / dequantize_affine as
    CompositeImplicitAutograd ops, so every pass that re-propagates fake tensors (export, each
    decomposition retrace, XNNPACK's preprocess passes, to_executorch) runs each op's Python body,
    a dozen ops on symbolic shapes, for each of the four such ops of every quantized linear. Here they
    are overridden with kernels that, on a bare FakeTensor with no graph being traced, return empty
    tensors of the body's shape and dtype, and otherwise run the body: real tensors compute as
    before, and a trace that decomposes the op records the same nodes. The lowered program is byte
    for byte the same (`test_lowering_shortcuts_write_the_same_program`); a 4-layer 8da4w lowering
    takes 0.76x the time. The override is a torch.library registration that is removed on exit.
    Re-entering it (an export and its lowering, each inside one) keeps the outer registration.
    """
    if not enabled() or _QUANT_OPS_ACTIVE.get():
        yield
        return
    library = torch.library.Library("torchao", "IMPL")
    token = _QUANT_OPS_ACTIVE.set(True)
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore", UserWarning)
            for name, kernel in _shape_only_kernels().items():
                library.impl(name, kernel, "CompositeImplicitAutograd")
        yield
    finally:
        _QUANT_OPS_ACTIVE.reset(token)
        library._destroy()


def _is_fake_propagation(tensor: Tensor | None) -> bool:
    """A bare FakeTensor with no graph being traced: only the result's shape and dtype are wanted."""
    from torch._subclasses.fake_tensor import FakeTensor

    return type(tensor) is FakeTensor and torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is None


def _shape_only_kernels() -> dict[str, Any]:
    """torchao's choose_qparams / quantize / dequantize_affine: shape and dtype only on fake tensors, else the op's body.

    The dtype rules are those of the bodies in torchao.quantization.quant_primitives (checked against
    them by `test_shape_only_quant_ops_match_torchao`).
    """
    from torch._inductor.decomposition import decompositions
    from torchao.quantization import quant_primitives as qp

    ops = torch.ops.torchao
    body = {name: decompositions[getattr(ops, name).default]
            for name in ("choose_qparams_affine", "quantize_affine", "dequantize_affine")}

    def choose_qparams_affine(input, mapping_type, block_size, target_dtype, quant_min=None, quant_max=None,
                              eps=None, scale_dtype=None, zero_point_dtype=None, keepdim=False):
        if not _is_fake_propagation(input):
            return body["choose_qparams_affine"](input, mapping_type, block_size, target_dtype, quant_min, quant_max,
                                                 eps, scale_dtype, zero_point_dtype, keepdim)
        qp._get_and_check_qmin_qmax(target_dtype, quant_min, quant_max)
        if keepdim:
            shape = [size // block for size, block in zip(input.shape, block_size)]
        else:
            grouped, reduced = qp._get_reduction_params(block_size, input.shape)
            shape = [size for dim, size in enumerate(grouped) if dim not in reduced]
        # the zero point is computed in the input's dtype; an asymmetric one defaults to int32
        default_zero_dtype = torch.int32 if mapping_type == qp.MappingType.ASYMMETRIC.name else input.dtype
        return (input.new_empty(shape, dtype=scale_dtype or input.dtype),
                input.new_empty(shape, dtype=zero_point_dtype or default_zero_dtype))

    def quantize_affine(input, block_size, scale, zero_point, output_dtype, quant_min=None, quant_max=None):
        if not _is_fake_propagation(input):
            return body["quantize_affine"](input, block_size, scale, zero_point, output_dtype, quant_min, quant_max)
        qp._get_and_check_qmin_qmax(output_dtype, quant_min, quant_max)
        return input.new_empty(input.shape, dtype=torch.uint8 if output_dtype in qp._SUB_BYTE_UINT_BOUNDS else output_dtype)

    def dequantize_affine(input, block_size, scale, zero_point, input_dtype, quant_min=None, quant_max=None,
                          output_dtype=torch.float32):
        mismatch = input.dtype != input_dtype and input_dtype not in qp._SUB_BYTE_UINT_BOUNDS  # the body says so
        if not _is_fake_propagation(input) or mismatch:
            return body["dequantize_affine"](input, block_size, scale, zero_point, input_dtype, quant_min, quant_max,
                                             output_dtype)
        qp._get_and_check_qmin_qmax(input_dtype, quant_min, quant_max)
        return input.new_empty(input.shape, dtype=output_dtype)

    return {"choose_qparams_affine": choose_qparams_affine, "quantize_affine": quantize_affine,
            "dequantize_affine": dequantize_affine}


# ---------------------------------------------------------------------------
# 2. XNNPACK's preprocess passes, only those that can apply
# ---------------------------------------------------------------------------


def _has_target(*names: str):
    """A pass applies when a node calls one of these edge ops (by op name, e.g. 'aten._prelu_kernel')."""
    def applies(graph) -> bool:
        calls = {op_name(node.target) for node in graph.nodes if node.op == "call_function"}
        return any(call == name or call.startswith(name + ".") for call in calls for name in names)

    return applies


def _decomposed_from(fragment: str):
    """A pass applies when a node was decomposed from an op whose name holds `fragment` (its pattern's source)."""
    return lambda graph: any(fragment in str(node.meta.get("original_aten", "")) for node in graph.nodes)


# XNNPACK passes that rewrite one op family each, and when they can apply. The delegate runs all 17 of
# its passes on every partition, each a full retrace of it (~2 s a pass at 0.8B fp32); these five
# find nothing in a graph without their ops, so they are dropped there (`applicable_xnnpack_passes`).
# Each test is what the pass itself looks for: the ops it rewrites, or an op every pattern it
# matches contains (softmax for the attention patterns, the upsample's own decomposition).
_PASS_APPLIES = {
    "ConvertToUpsampleBilinear2d": _decomposed_from("upsample_bilinear2d"),
    "ConvertToSDPAPass": _has_target("aten._softmax"),
    "FuseBatchNormPass": _has_target("aten.native_batch_norm", "aten._native_batch_norm_legit_no_training"),
    "DecomposeBatchNorm": _has_target("aten.native_batch_norm", "aten._native_batch_norm_legit_no_training"),
    "PReLUReshapePass": _has_target("aten._prelu_kernel"),
}


@contextlib.contextmanager
def applicable_xnnpack_passes() -> Iterator[None]:
    """While lowering, XNNPACK's preprocess runs only the passes that can change the partition it is given.

    The pass manager's default list is cut by `_PASS_APPLIES` per partition; a pass not listed there
    always runs. The program is byte for byte the one the full list gives
    (`test_lowering_shortcuts_write_the_same_program`).
    """
    if not enabled():
        yield
        return
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    original = XNNPACKPassManager.__init__

    def init(self, exported_program, passes=None):
        original(self, exported_program, passes)
        if not passes:  # the default list: keep what can apply here
            graph = exported_program.graph
            self.passes = [p for p in self.passes if _PASS_APPLIES.get(p.__name__, lambda _: True)(graph)]

    XNNPACKPassManager.__init__ = init
    try:
        yield
    finally:
        XNNPACKPassManager.__init__ = original


# ---------------------------------------------------------------------------
# 3. Provenance cut to its root
# ---------------------------------------------------------------------------


def root_provenance(graph_module: torch.fx.GraphModule) -> None:
    """Cut each node's provenance (`meta["from_node"]`) down to the export-graph node it descends from.

    Every retracing pass records a node's provenance as a deep copy of its source's whole chain, one
    level deeper per pass, so the copies grow with the number of passes run so far (cutting them
    measured -9 % of a 4-layer 8da4w lowering, -3 % at fp32). ExecuTorch reads only the chain's
    root, the node of the exported graph that a debug handle names
    (`get_greatest_ancestor_node_identifier`), so the root is what is kept: the same debug handles,
    byte for byte the same program (`test_lowering_shortcuts_write_the_same_program`).
    """
    if not enabled():
        return
    for node in graph_module.graph.nodes:
        chain = node.meta.get("from_node")
        if not chain:
            continue
        root = chain[-1]
        while root.from_node:
            root = root.from_node[-1]
        node.meta["from_node"] = [root]


# ---------------------------------------------------------------------------
# 4. XNNPACK's partitioner, adapted
# ---------------------------------------------------------------------------


def xnnpack_partitioner():
    """ExecuTorch's XNNPACK partitioner, as `_xnnpack_partitioner_class` adapts it (stock with the shortcuts off)."""
    if not enabled():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )

        return XnnpackPartitioner()
    return _xnnpack_partitioner_class()()


@functools.cache
def _xnnpack_partitioner_class():
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )

    class Partitioner(XnnpackPartitioner):
        """XNNPACK's partitioner, which spares `to_edge` one of its three whole-graph retraces when it can.

        A partitioner that returns a per-node check with its ops to keep whole sends `to_edge` down a
        path of three decomposition retraces (keep the ops, mark the ones that pass the check, decompose
        again); one without a check gets two (functionalize, decompose). When every node of those ops
        passes the check, both paths keep the same nodes, so the check is dropped; otherwise it is
        returned as it was.
        """

        def ops_to_not_decompose(self, ep):
            ops, check = super().ops_to_not_decompose(ep)
            candidates = (n for n in ep.graph.nodes if n.op == "call_function" and n.target in ops)
            if check is not None and all(check(node) for node in candidates):
                return ops, None
            return ops, check

        def generate_partitions(self, ep):
            """XNNPACK's grouping, but each block of a `BlockedLinear` is a delegate of its own.

            A delegate packs all its weights before it frees their mapped bytes, so a large
            head in one delegate adds its whole size to the load's peak (see
            `exporter.executorch.quantize.HEAD_BLOCK_BYTES`).
            """
            from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import (
                generate_grouped_partitions_from_list_of_nodes,
            )
            from torch.fx.passes.infra.partitioner import Partition

            matches = self.get_matched_nodes_from_configs(ep)
            alone = [match for match in matches if any(_in_blocked_linear(node) for node in match)]
            if not alone:
                return super().generate_partitions(ep)
            grouped = generate_grouped_partitions_from_list_of_nodes(
                ep.graph_module, [match for match in matches if match not in alone])
            ids = itertools.count(max((p.id for p in grouped), default=-1) + 1)
            return grouped + [Partition(id=next(ids), nodes=match) for match in alone]

    return Partitioner


def _in_blocked_linear(node: torch.fx.Node) -> bool:
    """Whether the node was traced inside a `BlockedLinear` (by its module stack)."""
    from exporter.executorch.quantize import BlockedLinear

    return any(BlockedLinear.__qualname__ in str(kind) for _, kind in node.meta.get("nn_module_stack", {}).values())
