"""Which of an ONNX decoder's states a runtime may update in place: the present written into the past's buffer.

Some states keep their shape from call to call: a DeltaNet layer's conv and recurrent states,
and (ort profile) the KV caches, buffers of the caller's capacity that GroupQueryAttention
writes. A runtime that binds `present.X` to the very buffer it feeds as `past_key_values.X`
(ONNX Runtime's I/O binding; onnxruntime-genai does so with `past_present_share_buffer`)
allocates and copies nothing for them and keeps the ~1 MB state a layer where the kernels just
read it: 0.8B 4-bit decode runs 7-11 % faster on this CPU (BENCHMARKS.md). That is only sound when nothing reads the past after the present's writer
has started. ONNX states no such thing about a graph, so this module proves it, per state, from
the graph as exported:

- every node that reads the past's buffer (its consumers, and through view ops that ONNX Runtime
  runs as aliases of their input, their consumers) runs before the present's writer: it is one
  of the writer's ancestors. Shape and Size read no data, so they may run at any time;
- or it is the writer itself, and the writer's kernel is known to read its input before
  overwriting it (`ALIAS_SAFE`).

Growing KV caches (portable profile) never qualify: their present is a Concat of the past. The export
records its verdict in the manifest, which `runtime.backends` reads; the check is torch-free, so the
benches run it on any ONNX decoder, the builder's included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runtime.config import ModelConfig
from runtime.contract import past_name, present_name, state_names

# Kernels that may write their state output into their state input's buffer, and why (ONNX Runtime's CPU kernels).
ALIAS_SAFE = {
    ("com.microsoft", "LinearAttention"): "copies the past state into the present, then updates the present alone",
    ("com.microsoft", "GroupQueryAttention"): "writes the new entries at their slots of the present and reads the "
                                              "cache from the present (onnxruntime-genai's past_present_share_buffer)",
    ("com.microsoft", "CausalConvWithState"): "shifts each channel's window forward from a higher index: written "
                                              "to allow the past and present state in one buffer",
    **{("", op): "element-wise: output element i reads input element i only (ONNX Runtime may run it in place "
                 "itself); a broadcast past has another shape than the present, so it cannot share its buffer"
       for op in ("Add", "Sub", "Mul", "Div")},
}
# Ops whose output ONNX Runtime may hand out as a view of their first input: a reader of it reads the past.
_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
_METADATA = {"Shape", "Size"}


def state_in_place(path: Path, config: ModelConfig) -> dict[str, Any]:
    """The manifest's record for our decoder at `path`: the state parts (conv, ...) whose every layer qualifies.

    Checked on the file as written, the graph alone (no weights are read).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    states = state_names(config.text)
    safe = set(in_place_states(graph, {past_name(i, part): present_name(i, part) for i, part in states}))
    unsafe = {part for i, part in states if past_name(i, part) not in safe}
    return {
        "parts": sorted({part for _, part in states} - unsafe),
        "how": "bind present.{i}.{part} to the buffer fed as past_key_values.{i}.{part} (ONNX Runtime I/O binding): "
               "nothing reads the past after the present's writer starts, and that writer reads before it writes",
    }


def in_place_states(graph, pairs: Mapping[str, str]) -> list[str]:
    """The inputs of `pairs` (past input name -> present output name) whose present may overwrite them.

    `graph` is an `onnx.GraphProto` (weights need not be loaded). A name missing from the graph,
    a past that is also a graph output, or a past read inside a subgraph never qualifies.
    """
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    in_subgraphs = _subgraph_reads(graph)
    safe = []
    for past, present in pairs.items():
        writer = producer.get(present)
        if past not in inputs or past in outputs or writer is None or present not in outputs:
            continue
        readers = list(_readers(past, consumers))
        views = {out for reader in readers if reader.op_type in _VIEWS for out in reader.output}
        if not readers or views & outputs or ({past} | views) & in_subgraphs:
            continue
        before = _ancestors(writer, producer)
        if all(_reads_before(reader, writer, before, past) for reader in readers):
            safe.append(past)
    return safe


def _readers(name: str, consumers: Mapping[str, list], seen: set[str] | None = None) -> Iterable:
    """Nodes that read `name`'s buffer: its consumers, and the consumers of views of it."""
    seen = set() if seen is None else seen
    for node in consumers.get(name, []):
        if node.op_type in _VIEWS and node.input and node.input[0] == name:
            view = node.output[0]
            if view in seen:
                continue
            seen.add(view)
            yield node
            yield from _readers(view, consumers, seen)
        else:
            yield node


def _reads_before(reader, writer, before: set[int], past: str) -> bool:
    if reader.op_type in _METADATA:
        return True
    if reader is writer:
        domain = "" if reader.domain in ("", "ai.onnx") else reader.domain
        return (domain, reader.op_type) in ALIAS_SAFE and past in reader.input
    return id(reader) in before


def _ancestors(node, producer: Mapping[str, object]) -> set[int]:
    """ids of every node `node` depends on (all of them finish before it starts)."""
    found, stack = set(), [node]
    while stack:
        for name in stack.pop().input:
            parent = producer.get(name)
            if parent is not None and id(parent) not in found:
                found.add(id(parent))
                stack.append(parent)
    return found


def _subgraph_reads(graph) -> set[str]:
    """Names that any subgraph (If, Loop, Scan bodies) reads, at any depth."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                names.update(name for inner in body.node for name in inner.input)
                names.update(_subgraph_reads(body))
    return names
