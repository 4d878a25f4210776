"""The export report of a lowered program: what XNNPACK took, what it left to portable kernels and why, what a call runs.

Lowering reports, it does not assert: an op left outside the delegate is counted here with a reason,
beside the partitioner's own why-not notes; nothing here fails an export.

Not here: the lowering (`exporter.executorch.lower`), the bundle's manifest (`exporter.bundle`).
"""

from __future__ import annotations

from collections import Counter

# Why XNNPACK leaves these ops to the portable kernels (what a reader of the report needs to know).
_PORTABLE_REASONS = {
    "aten.embedding.default": "XNNPACK has no gather; the lookup reads one row per token",
    "aten.index_put.default": "KV-cache write at dynamic positions (in place, not an XNNPACK op)",
    "aten.index.Tensor": "gathers (cache slots, expert rows) are not XNNPACK ops",
    "aten.where.self": "state reset and masks: select ops run portable",
    "aten.arange.start_step": "position arithmetic on a handful of integers",
}


def delegation_report(edge, notes: list[str], method: str) -> dict[str, object]:
    """Op counts per backend and what stayed outside XNNPACK, with reasons."""
    from executorch.devtools.backend_debug import get_delegation_info

    graph = edge.exported_program(method).graph_module
    info = get_delegation_info(graph)
    portable = Counter()
    for node in graph.graph.nodes:
        if node.op == "call_function" and "executorch_call_delegate" not in str(node.target):
            portable[op_name(node.target)] += 1
    return {
        "delegated_ops": info.num_delegated_nodes,
        "portable_ops": info.num_non_delegated_nodes,
        "delegate_calls": info.num_delegated_subgraphs,
        "not_delegated": {
            name: {"count": count, "reason": _reason(name)} for name, count in portable.most_common()
        },
        "partitioner_notes": notes[:50],
    }


def kernel_calls(et_program, method: str) -> dict[str, int]:
    """What one call of `method` runs, counted from the emitted program: kernels by name, delegate calls as DelegateCall."""
    plan = next(p for p in et_program.executorch_program.execution_plan if p.name == method)
    calls = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if hasattr(args, "op_index"):
                op = plan.operators[args.op_index]
                calls[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
            else:
                calls[type(args).__name__] += 1
    return dict(calls.most_common())


def _reason(name: str) -> str:
    for key, reason in _PORTABLE_REASONS.items():
        if key in name:
            return reason
    if "sym_size" in name or "getitem" in name or "_local_scalar" in name:
        return "shape bookkeeping, no kernel work"
    return "not supported by XNNPACK with these shapes/dtypes (see partitioner_notes)"


def op_name(target) -> str:
    """'aten.index_put.default' for edge, aten and python targets alike (the report's keys)."""
    name = getattr(target, "__name__", None) or str(target)
    namespace = getattr(target, "namespace", None)  # aten ops' __name__ lacks it, edge ops' has it
    return name if namespace is None or name.startswith(namespace + ".") else f"{namespace}.{name}"
