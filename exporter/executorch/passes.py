"""Graph passes on an exported program, between `torch.export` and `to_edge`: fewer nodes to lower, fewer copies at run time.

Each takes an `ExportedProgram`, rewrites its graph in place and returns it:

- `drop_asserts`: export's dtype asserts, which `to_edge` would retrace before dropping;
- `fold_state_resets`: a new sequence starts through the delta rule's first decay, not by zeroing its state;
- `dynamic_views_as_minus_one`: the one symbolic size of a view spelled -1, so XNNPACK takes the view;
- `fold_round_trips`: permute pairs that undo each other and view chains back to their source's shape dropped;
- `dedupe`: each pure aten op on the same inputs computed once.

Not here: replacing the `qwen35::` ops (`exporter.executorch.lower.lower_custom_ops`, which runs
these), XNNPACK's own decompositions (`exporter.executorch.xnnpack`).
"""

from __future__ import annotations

import torch

from exporter.executorch.private_api import ASSERT_TENSOR_METADATA, UNSAFE_VIEW

# Added to the first step's log-decay of a new sequence: exp(g - 1e4) is exactly 0 in fp32 (g is fp32
# whatever the model's dtype), and, unlike -inf, it stays finite inside the delegable form's sums.
_RESET_LOG_DECAY = -1e4


def drop_asserts(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Remove the dtype asserts export puts after each cast (one node in fifteen). `to_edge` removes
    them too, but only after retracing them through its decomposition passes."""
    graph = program.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == ASSERT_TENSOR_METADATA:
            graph.erase_node(node)
    program.graph_module.recompile()
    return program


def fold_state_resets(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Start a new sequence through the first step's decay instead of by zeroing the recurrent state.

    The decoder hands each delta rule `S * keep` (keep = 0.0 when input_pos is 0): a pass over the
    1 MB state per layer and call (5 % of a 0.8B 4-bit decode step). The rule's first step decays the
    incoming state by exp(g_0) before anything reads it, so adding (keep - 1) * 1e4 to g_0 gives the
    same result from S itself: a few ops on [1, T, 1] instead. A stale inf or NaN in S passes either
    way (see `ExecuTorchDecoder.step`).
    """
    graph = program.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.qwen35.gated_delta_rule.default:
            continue
        state = node.args[6]
        if not (isinstance(state, torch.fx.Node) and state.target == torch.ops.aten.mul.Tensor
                and isinstance(state.args[1], torch.fx.Node) and state.args[1].meta["val"].numel() == 1):
            continue
        scaled, keep = state.args
        g = node.args[3]  # [B, T, Hv] fp32
        aten = torch.ops.aten
        with graph.inserting_before(node):
            call = graph.call_function
            index = call(aten.arange.default, (call(aten.sym_size.int, (g, 1)),), {"dtype": torch.float32})  # [T]
            first = call(aten.clamp.default, (call(aten.rsub.Scalar, (index, 1.0)), 0.0))  # [T]: 1, 0, 0, ...
            drop = call(aten.mul.Tensor, (call(aten.sub.Tensor, (keep, 1.0)), -_RESET_LOG_DECAY))  # 0 or -1e4
            first, drop = call(aten.view.default, (first, [1, -1, 1])), call(aten.view.default, (drop, [1, 1, 1]))
            g = call(aten.add.Tensor, (g, call(aten.mul.Tensor, (first, drop))))  # g_0 - 1e4 on a reset, else g
        node.args = (*node.args[:3], g, *node.args[4:6], scaled, *node.args[7:])
    graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


_VIEWS = (torch.ops.aten.view.default, UNSAFE_VIEW, torch.ops.aten.reshape.default)
_PERMUTE, _TRANSPOSE = torch.ops.aten.permute.default, torch.ops.aten.transpose.int
_VIEW_LIKE = (*_VIEWS, torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims, torch.ops.aten.unsqueeze.default)


def dynamic_views_as_minus_one(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Spell the one symbolic size of each view as -1 (the token count T, inferred again at run time).

    XNNPACK delegates a reshape only when its target shape is all ints: `x.view(B, T, H, D)` with a
    dynamic T would fall back to a portable kernel and split the delegate around it.
    """
    graph = program.graph
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _VIEWS:
            sizes = list(node.args[1])
            symbolic = [i for i, size in enumerate(sizes) if not isinstance(size, int)]
            if len(symbolic) == 1 and -1 not in sizes:
                sizes[symbolic[0]] = -1
                node.args = (node.args[0], sizes, *node.args[2:])
    graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


def fold_round_trips(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Drop layout round trips: permute pairs that undo each other, and view chains back to their source's shape.

    - The recurrent state is held as S^T and the delta rule computes in S^T, but the op between
      them speaks S: without this each step would transpose the 1 MB state on the way in and out.
    - A conv weight reaches the conv through squeeze and unsqueeze; XNNPACK takes a conv only
      when its weight is the parameter itself.
    """
    replaced = {}
    for node in program.graph.nodes:
        source = _round_trip_source(node)
        if source is not None:
            replaced[node] = replaced.get(source, source)
    _replace(program, replaced)
    return program


def dedupe(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Common-subexpression elimination: compute each pure op on the same inputs once.

    Every DeltaNet layer builds the same position tables and masks from T (the delta rule's pair
    tables and doubling masks), every attention layer the same cache addressing: about one node in
    eight. Export time grows with the node count (each ExecuTorch and XNNPACK pass retraces the
    graph), so they are dropped before lowering. The graph is functional here (mutations are graph
    outputs) and draws no random numbers, so any aten op but an in-place one or an assert may be
    merged. Other namespaces are left alone: merging torchao's quantize/dequantize nodes across
    their consumers gives XNNPACK's partitioner dependency cycles.
    """
    graph, seen, replaced = program.graph, {}, {}
    for node in graph.nodes:
        if node.op != "call_function" or not _is_pure(node.target):
            continue
        key = (node.target, _canonical(node.args, replaced), _canonical(node.kwargs, replaced))
        first = seen.setdefault(key, node)
        if first is not node:
            replaced[node] = first
    _replace(program, replaced)
    return program


def _is_pure(target) -> bool:
    """An aten op that is neither in place nor an assert (see `dedupe`)."""
    name = getattr(target, "__name__", str(target))
    namespace = getattr(target, "namespace", "aten")
    return namespace == "aten" and not name.split(".")[0].endswith("_") and "assert" not in name


def _canonical(value, replaced):
    if isinstance(value, torch.fx.Node):
        return ("node", replaced.get(value, value).name)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_canonical(v, replaced) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _canonical(v, replaced)) for k, v in value.items())))
    return (type(value).__name__, repr(value))


def _replace(program: torch.export.ExportedProgram, replaced: dict) -> None:
    """Point every use of each key node at its value, in the graph and in the signature's outputs."""
    for node, source in replaced.items():
        node.replace_all_uses_with(source)
        for spec in program.graph_signature.output_specs:  # a graph output is named in the signature
            if getattr(spec.arg, "name", None) == node.name:
                spec.arg.name = source.name
    program.graph.eliminate_dead_code()
    program.graph_module.recompile()


def _round_trip_source(node: torch.fx.Node) -> torch.fx.Node | None:
    """The node that `node` is the same tensor as, through a layout round trip, else None."""
    outer = _permutation(node)
    if outer is not None:
        inner = node.args[0]
        p = _permutation(inner) if isinstance(inner, torch.fx.Node) else None
        if p is not None and len(p) == len(outer) and all(p[outer[i]] == i for i in range(len(outer))):
            return inner.args[0]
        return None
    if not _is_view(node):
        return None
    source = node.args[0]
    while _is_view(source):
        source = source.args[0]
    shape, origin = node.meta["val"].shape, source.meta.get("val")
    static = all(isinstance(size, int) for size in shape)
    if static and isinstance(origin, torch.Tensor) and origin.shape == shape and origin.dtype == node.meta["val"].dtype:
        return source
    return None


def _permutation(node: torch.fx.Node) -> list[int] | None:
    """The dims of a permute or transpose node (out dim i is in dim p[i]), else None."""
    if node.op != "call_function" or node.target not in (_PERMUTE, _TRANSPOSE):
        return None
    rank = node.meta["val"].dim()
    if node.target == _PERMUTE:
        return [d % rank for d in node.args[1]]
    a, b = (d % rank for d in node.args[1:3])
    dims = list(range(rank))
    dims[a], dims[b] = b, a
    return dims


def _is_view(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _VIEW_LIKE
