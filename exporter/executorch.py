"""ExecuTorch lowering: the reference decoder as a stateful XNNPACK `.pte` that ExecuTorch's stock LLM runner drives.

Pipeline (plain stages): wrap the model with its state in mutable buffers ->
`torch.export` (the `qwen35::` ops stay single nodes) -> drop dtype asserts, replace each op by
its decomposition, fold layout round trips and drop repeated subexpressions
(`lower_custom_ops`: fewer nodes to lower, fewer copies at run time) -> tag weights for one external `.ptd` ->
`to_edge_transform_and_lower` with the XNNPACK partitioner -> `to_executorch`
-> write `model.pte` and `model.ptd` atomically, with an export report. A quantized model's
torchao ops get shape-only fake kernels throughout (`shape_only_quant_ops`).

The program's contract (exporter/artifact.py): `forward(tokens [1, T], input_pos [1])
-> logits [1, V]` of the last position, 1 <= T <= prefill_chunk, so a prompt
chunk is prefilled in one call. ExecuTorch's runner splits prompts by
`get_max_seq_len`, so that is the prefill chunk; `get_max_context_len` is the
KV capacity. With max_seq_len < max_context_len the runner treats the model as
a sliding-window one and stops checking capacity, so the KV cache is a ring
buffer: exact within capacity, sliding-window attention past it, never an
out-of-bounds write. input_pos = 0 starts a new sequence: the DeltaNet states
are zeroed in-graph (the runner's reset() calls nothing in the program). The recurrent
state buffers hold the layout the delta rule's kernel computes in: S^T [1, Hv, Dv, Dk] for the
delegable decomposition (kernels "stock"), S [1, Hv, Dk, Dv] for ExecuTorch's
`llama::gated_delta_rule` (kernels "llm", `ExportOptions.pte_kernels`).

Multimodal checkpoints add a method `forward_with_images` (image embeddings and
M-RoPE positions in, `ExecuTorchImageDecoder`); both methods' weights share the
one `model.ptd`.

Weights go to an external `model.ptd`: inside one `.pte` the XNNPACK delegate
and the portable embedding lookup would each store the tied embedding; the
external data store de-duplicates identical bytes, so it is stored once.

Not here: quantization (exporter.quantize), the bundle (exporter.bundle).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from exporter.artifact import IMAGE_METHOD, Artifact, ExportOptions, load_llm_custom_ops, required_kernels
from exporter.config import FULL, ModelConfig
from exporter.model import Qwen35Model, StaticKV, splice_image_embeds
from exporter.quantize_executorch import shape_only_quant_ops

log = logging.getLogger(__name__)

PTE, PTD = "model.pte", "model.ptd"
_WEIGHTS_TAG = "model"  # external data file stem: model.ptd


@dataclass
class RingKV(StaticKV):
    """A KV cache of capacity S written at slot (position mod S); see the module docstring for why a ring."""

    key: Tensor  # [1, Hkv, S, Dh] buffer
    value: Tensor  # [1, Hkv, S, Dh] buffer
    slots: Tensor  # [T]: where the new tokens go
    mask: Tensor  # [T, S]: which slots each new token sees

    @staticmethod
    def addressing(positions: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        """positions [T] (absolute) -> (slots [T], mask [T, S]); the same for every layer, so built once."""
        slots = positions % capacity
        # Absolute position now held by each slot (negative: never written).
        end = positions[-1]
        held = end - (end - torch.arange(capacity)) % capacity  # [S]
        query = positions[:, None]  # [T, 1]
        return slots, (held >= 0) & (held <= query) & (held > query - capacity)  # [T], [T, S]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # The op called directly: `key[:, :, slots] = k` strips k's leading 1 (values [Hkv, T, Dh]), which
        # ExecuTorch's in-place index_put kernel (`run_reinplace_pass`) reads as Dh tokens.
        indices = [None, None, self.slots]
        torch.ops.aten.index_put_(self.key, indices, k)  # [1, Hkv, T, Dh] into [1, Hkv, S, Dh]
        torch.ops.aten.index_put_(self.value, indices, v)
        return self.key, self.value, self.mask


class ExecuTorchDecoder(nn.Module):
    """The reference model with its state as buffers: forward(tokens [1, T], input_pos [1]) -> logits [1, V]."""

    def __init__(self, model: Qwen35Model, max_seq_len: int, transposed_state: bool = True):
        super().__init__()
        self.model = model
        self.capacity = max_seq_len
        self.transposed_state = transposed_state  # recurrent buffers hold S^T (see the module docstring)
        t = model.config
        dtype = model.embed_tokens.weight.dtype
        for i, kind in enumerate(t.layer_types):
            if kind == FULL:
                shape = (1, t.num_key_value_heads, max_seq_len, t.head_dim)
                self.register_buffer(f"key_{i}", torch.zeros(shape, dtype=dtype))
                self.register_buffer(f"value_{i}", torch.zeros(shape, dtype=dtype))
            else:
                conv = (1, t.conv_dim, t.linear_conv_kernel_dim - 1)
                dims = (t.linear_value_head_dim, t.linear_key_head_dim)  # S^T [Dv, Dk] per head; S reversed
                recurrent = (1, t.linear_num_value_heads, *(dims if transposed_state else dims[::-1]))
                self.register_buffer(f"conv_{i}", torch.zeros(conv, dtype=dtype))
                self.register_buffer(f"recurrent_{i}", torch.zeros(recurrent, dtype=torch.float32))

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        positions = input_pos[0] + torch.arange(tokens.shape[1])  # [T]: text positions are cache positions
        return self.step(tokens, input_pos, positions.view(1, -1), None)

    def step(self, tokens: Tensor, input_pos: Tensor, positions: Tensor, embeds: Tensor | None) -> Tensor:
        """tokens [1, T] from cache slot input_pos[0] on, at rotary positions [1, T] or [3, 1, T]; embeds [1, T, D] or None."""
        steps = tokens.shape[1]
        # 1.0 continues the sequence, 0.0 starts a new one, whose DeltaNet layers start from zero. A
        # multiply, which XNNPACK runs: a portable `where` on the 1 MB recurrent state took 4.4 ms a
        # layer, more than the layer's weights. A multiply passes on a stale inf or NaN, but the state
        # cannot hold one unless the activations themselves overflowed: each step decays it
        # (exp(g) <= 1, |1 - beta k.k| <= 1 with k L2-normalised) and adds beta v k^T. The recurrent
        # state's multiply does not stay: `fold_state_resets` moves it onto the first step's decay.
        keep = (input_pos[0] > 0).to(torch.float32).view(1, 1, 1)
        slots = input_pos[0] + torch.arange(steps)  # [T]: the cache (sequence) index of each new token
        addressing = RingKV.addressing(slots, self.capacity)
        state = []
        for i, kind in enumerate(self.model.config.layer_types):
            if kind == FULL:
                state.append(RingKV(getattr(self, f"key_{i}"), getattr(self, f"value_{i}"), *addressing))
            else:
                conv, recurrent = getattr(self, f"conv_{i}"), getattr(self, f"recurrent_{i}")
                state.append((conv * keep.to(conv.dtype), self._as_s(recurrent) * keep.unsqueeze(0)))
        ids = tokens if embeds is None else None
        out = self.model(ids, state, positions=positions, inputs_embeds=embeds, last_only=True)
        for i, kind in enumerate(self.model.config.layer_types):
            if kind != FULL:
                getattr(self, f"conv_{i}").copy_(out.state[i][0])
                getattr(self, f"recurrent_{i}").copy_(self._as_s(out.state[i][1]))
        return out.logits[:, -1]  # [1, V]

    def _as_s(self, state: Tensor) -> Tensor:
        """Buffer layout <-> the model's S [B, Hv, Dk, Dv] (a transpose each way when the buffer holds S^T)."""
        return state.transpose(-1, -2) if self.transposed_state else state


class ExecuTorchImageDecoder(ExecuTorchDecoder):
    """Method `forward_with_images(tokens [1, T], image_embeds [N, D], input_pos [1], positions [3, T])` -> logits [1, V].

    The k-th `<|image_pad|>` of tokens takes row k of image_embeds (`splice_image_embeds`); positions
    are the M-RoPE (t, h, w) rotary positions, which after an image differ from the cache slots
    input_pos[0] + i. A session with images runs every call through this method, decode included
    (it passes one unused image row then); it has its own state, separate from `forward`'s.
    """

    def __init__(self, model: Qwen35Model, max_seq_len: int, image_token_id: int, transposed_state: bool = True):
        super().__init__(model, max_seq_len, transposed_state)
        self.image_token_id = image_token_id

    def forward(self, tokens: Tensor, image_embeds: Tensor, input_pos: Tensor, positions: Tensor) -> Tensor:
        embeds = splice_image_embeds(self.model.embed_tokens(tokens), tokens, image_embeds, self.image_token_id)
        return self.step(tokens, input_pos, positions.unsqueeze(1), embeds)


def metadata(config: ModelConfig, options: ExportOptions) -> dict[str, object]:
    """Constant methods, as ExecuTorch's LLM runner reads them (see the module docstring)."""
    t = config.text
    eos = list(t.eos_token_ids) or [t.pad_token_id or 0]
    return {
        "get_max_seq_len": options.prefill_chunk,
        "get_max_context_len": options.max_seq_len,
        "get_vocab_size": t.vocab_size,
        "get_bos_id": t.bos_token_id if t.bos_token_id is not None else -1,
        "get_eos_ids": eos,
        "get_n_layers": t.num_hidden_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
    }


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------


def export_program(model: Qwen35Model, options: ExportOptions) -> torch.export.ExportedProgram:
    """torch.export of `forward` with a dynamic T in [1, prefill_chunk]; the qwen35:: ops stay single nodes."""
    wrapper = ExecuTorchDecoder(model, options.max_seq_len, _transposed_state(options)).eval()
    steps = torch.export.Dim("T", min=1, max=options.prefill_chunk)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        return torch.export.export(wrapper, example, dynamic_shapes=({1: steps}, None), strict=False)


def export_image_program(model: Qwen35Model, config: ModelConfig, options: ExportOptions) -> torch.export.ExportedProgram:
    """torch.export of `forward_with_images`: dynamic T and image rows N, each in [1, prefill_chunk]."""
    wrapper = ExecuTorchImageDecoder(model, options.max_seq_len, config.image_token_id,
                                     _transposed_state(options)).eval()
    steps = torch.export.Dim("T", min=1, max=options.prefill_chunk)
    rows = torch.export.Dim("N", min=1, max=options.prefill_chunk)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(2, config.text.hidden_size),
               torch.zeros(1, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    dynamic = ({1: steps}, {0: rows}, None, {1: steps})
    with torch.no_grad():
        return torch.export.export(wrapper, example, dynamic_shapes=dynamic, strict=False)


def export_programs(model: Qwen35Model, config: ModelConfig, options: ExportOptions) -> dict[str, torch.export.ExportedProgram]:
    """{method: program}: `forward`, and `forward_with_images` for a checkpoint with a vision tower."""
    programs = {"forward": export_program(model, options)}
    if config.vision is not None:
        programs[IMAGE_METHOD] = export_image_program(model, config, options)
    return programs


def _transposed_state(options: ExportOptions) -> bool:
    """Whether the recurrent buffers hold S^T: for the delegable delta rule, which computes in S^T."""
    return options.pte_kernels == "stock"


def lower_custom_ops(program: torch.export.ExportedProgram, options: ExportOptions) -> torch.export.ExportedProgram:
    """Replace each qwen35:: op by the decomposition its module declares for ExecuTorch, then tidy the graph.

    The delta rule's replacement depends on the kernel set (`ExportOptions.pte_kernels`): the
    delegable decomposition ("stock") or ExecuTorch's `llama::gated_delta_rule` ("llm").

    Before: export's dtype asserts dropped (`drop_asserts`). Tidying after: `-1` for the dynamic size
    of views, layout round trips folded, repeated pure ops computed once, provenance cut to its root
    (`root_provenance`).
    """
    from ops.causal_conv1d import executorch_decomposition as conv
    from ops.gated_delta_rule import executorch_decomposition, executorch_llm_decomposition
    from ops.moe import executorch_decomposition as moe

    if options.pte_kernels == "llm":
        load_llm_custom_ops()
        delta_rule = executorch_llm_decomposition
    else:
        delta_rule = functools.partial(executorch_decomposition, max_len=options.prefill_chunk)
    table = {
        torch.ops.qwen35.gated_delta_rule.default: delta_rule,
        torch.ops.qwen35.causal_conv1d.default: conv,
        torch.ops.qwen35.moe.default: moe,
        torch.ops.aten.softplus.default: _softplus,
    }
    program = fold_state_resets(drop_asserts(program)).run_decompositions(table)
    program = dedupe(fold_round_trips(dynamic_views_as_minus_one(program)))
    root_provenance(program.graph_module)
    return program


# Added to the first step's log-decay of a new sequence: exp(g - 1e4) is exactly 0 in fp32 (g is fp32
# whatever the model's dtype), and, unlike -inf, it stays finite inside the delegable form's sums.
_RESET_LOG_DECAY = -1e4


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


def root_provenance(graph_module: torch.fx.GraphModule) -> None:
    """Cut each node's provenance (`meta["from_node"]`) down to the export-graph node it descends from.

    Every retracing pass records a node's provenance as a deep copy of its source's whole chain, one
    level deeper per pass, so the copies grow with the number of passes run so far (cutting them
    measured -9 % of a 4-layer 8da4w lowering, -3 % at fp32). ExecuTorch reads only the chain's
    root, the node of the exported graph that a debug handle names
    (`get_greatest_ancestor_node_identifier`), so the root is what is kept: the same debug handles,
    byte for byte the same program (`test_lowering_shortcuts_write_the_same_program`).
    """
    for node in graph_module.graph.nodes:
        chain = node.meta.get("from_node")
        if not chain:
            continue
        root = chain[-1]
        while root.from_node:
            root = root.from_node[-1]
        node.meta["from_node"] = [root]


def drop_asserts(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Remove the dtype asserts export puts after each cast (one node in fifteen). `to_edge` removes
    them too, but only after retracing them through its decomposition passes."""
    graph = program.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
    program.graph_module.recompile()
    return program


def _softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """softplus as relu(x) + log(1 + exp(-|x|)), scaled by beta: the same values in fp32.

    aten's own decomposition uses where and log1p, which XNNPACK does not take; these ops it does.
    Past the threshold softplus(x) = x, and log(1 + exp(-20)) = 2e-9 is below half an ulp of 20.
    """
    scaled = x * beta
    return (torch.relu(scaled) + torch.log(1.0 + torch.exp(-torch.abs(scaled)))) / beta


_VIEWS = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.reshape.default)


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


_PERMUTE, _TRANSPOSE = torch.ops.aten.permute.default, torch.ops.aten.transpose.int
_VIEW_LIKE = (*_VIEWS, torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims, torch.ops.aten.unsqueeze.default)


def tag_external_weights(program: torch.export.ExportedProgram, tag: str = _WEIGHTS_TAG) -> torch.export.ExportedProgram:
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


@functools.cache
def _xnnpack_partitioner_class():
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

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
            `exporter.quantize_executorch.HEAD_BLOCK_BYTES`).
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
    from exporter.quantize_executorch import BlockedLinear

    return any(BlockedLinear.__qualname__ in str(kind) for _, kind in node.meta.get("nn_module_stack", {}).values())


def xnnpack_partitioner():
    """ExecuTorch's XNNPACK partitioner, as `_xnnpack_partitioner_class` adapts it."""
    return _xnnpack_partitioner_class()()


def lower_to_xnnpack(program: torch.export.ExportedProgram, constant_methods: dict[str, object]):
    """to_edge_transform_and_lower with the XNNPACK partitioner; returns the edge program and why-not notes."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    with _capture_logs("executorch.backends.xnnpack") as notes, applicable_xnnpack_passes():
        edge = to_edge_transform_and_lower(
            program,
            transform_passes=[root_provenance],
            partitioner=[xnnpack_partitioner()],
            constant_methods=constant_methods,
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
        )
    return edge, notes


def _has_target(*names: str):
    """A pass applies when a node calls one of these edge ops (by op name, e.g. 'aten._prelu_kernel')."""
    def applies(graph) -> bool:
        calls = {_op_name(node.target) for node in graph.nodes if node.op == "call_function"}
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
def applicable_xnnpack_passes():
    """While lowering, XNNPACK's preprocess runs only the passes that can change the partition it is given.

    The pass manager's default list is cut by `_PASS_APPLIES` per partition; a pass not listed there
    always runs. The program is byte for byte the one the full list gives
    (`test_lowering_shortcuts_write_the_same_program`).
    """
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


def to_executorch_program(edge, tag: str = _WEIGHTS_TAG):
    """Weights tagged for the external data file; KV caches written in place.

    `run_reinplace_pass` turns each cache's index_put into index_put_ on its buffer. The functional
    form copies the whole cache into a new tensor and the write-back copies it again: at the
    default 2048 slots, 0.8B, 96 MB of copies per decoded token.
    """
    from executorch.exir import ExecutorchBackendConfig

    return edge.to_executorch(ExecutorchBackendConfig(external_constants=lambda _node: tag, run_reinplace_pass=True))


def write_program(program, out_dir: Path, pte: str = PTE) -> list[str]:
    """Write the program (`pte`) and its external data file(s) into out_dir, each through a temporary name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir / f".pte-{os.getpid()}"
    tmp_dir.mkdir()
    try:
        (tmp_dir / pte).write_bytes(program.buffer)
        program.write_tensor_data_to_file(str(tmp_dir))
        written = sorted(p.name for p in tmp_dir.iterdir())
        for name in written:
            os.replace(tmp_dir / name, out_dir / name)
    finally:
        for leftover in tmp_dir.glob("*"):
            leftover.unlink()
        tmp_dir.rmdir()
    return [pte] + [name for name in written if name != pte]


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

# Why XNNPACK leaves these ops to the portable kernels (what a reader of the report needs to know).
_PORTABLE_REASONS = {
    "aten.embedding.default": "XNNPACK has no gather; the lookup reads one row per token",
    "aten.index_put.default": "KV-cache write at dynamic positions (in place, not an XNNPACK op)",
    "aten.index.Tensor": "gathers (cache slots, expert rows) are not XNNPACK ops",
    "aten.where.self": "state reset and masks: select ops run portable",
    "aten.arange.start_step": "position arithmetic on a handful of integers",
}


def delegation_report(edge, notes: list[str], method: str = "forward") -> dict[str, object]:
    """Op counts per backend and what stayed outside XNNPACK, with reasons."""
    from executorch.devtools.backend_debug import get_delegation_info

    graph = edge.exported_program(method).graph_module
    info = get_delegation_info(graph)
    portable = Counter()
    for node in graph.graph.nodes:
        if node.op == "call_function" and "executorch_call_delegate" not in str(node.target):
            portable[_op_name(node.target)] += 1
    return {
        "delegated_ops": info.num_delegated_nodes,
        "portable_ops": info.num_non_delegated_nodes,
        "delegate_calls": info.num_delegated_subgraphs,
        "not_delegated": {
            name: {"count": count, "reason": _reason(name)} for name, count in portable.most_common()
        },
        "partitioner_notes": notes[:50],
    }


def kernel_calls(et_program, method: str = "forward") -> dict[str, int]:
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


def _op_name(target) -> str:
    """'aten.index_put.default' for edge, aten and python targets alike."""
    name = getattr(target, "_name", None) or getattr(target, "__name__", None) or str(target)
    return name.replace("::", ".")


def _reason(op_name: str) -> str:
    for key, reason in _PORTABLE_REASONS.items():
        if key in op_name:
            return reason
    if "sym_size" in op_name or "getitem" in op_name or "_local_scalar" in op_name:
        return "shape bookkeeping, no kernel work"
    return "not supported by XNNPACK with these shapes/dtypes (see partitioner_notes)"


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


def methods(config: ModelConfig) -> dict[str, dict[str, list[str]]]:
    """The manifest's description of the program's methods (constant methods aside)."""
    described = {"forward": {"inputs": ["tokens int64 [1, T]", "input_pos int64 [1]"], "outputs": ["logits float32 [1, V]"]}}
    if config.vision is not None:
        described[IMAGE_METHOD] = {
            "inputs": ["tokens int64 [1, T]", "image_embeds float32 [N, D]", "input_pos int64 [1]", "positions int64 [3, T]"],
            "outputs": ["logits float32 [1, V]"],
            "image_token_id": config.image_token_id,
            "state": "its own, separate from forward's: run a whole image session through this method",
        }
    return described


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def export_executorch(model: Qwen35Model, config: ModelConfig, out_dir: Path, options: ExportOptions) -> Artifact:
    """Export `model` to out_dir/model.pte (+ model.ptd) and describe it."""
    timings, start = {}, time.perf_counter()

    def stage(name, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - t0, 2)
        log.info("pte: %s done in %.1f s", name, timings[name])
        return result

    meta = metadata(config, options)
    with shape_only_quant_ops():
        programs = stage("export", export_programs, model, config, options)
        programs = stage("lower custom ops", lambda: {k: lower_custom_ops(p, options) for k, p in programs.items()})
        programs = stage("tag weights", lambda: {k: tag_external_weights(p) for k, p in programs.items()})
        edge, notes = stage("to_edge + XNNPACK", lower_to_xnnpack, programs, meta)
        report = delegation_report(edge, notes)
        et_program = stage("to_executorch", to_executorch_program, edge)
        report["kernel_calls"] = kernel_calls(et_program)
    files = stage("write", write_program, et_program, Path(out_dir))
    timings["total"] = round(time.perf_counter() - start, 2)
    details = {
        "methods": methods(config),
        "constant_methods": meta,
        "prefill_chunk": options.prefill_chunk,
        "max_seq_len": options.max_seq_len,
        "backend": "XNNPACK",
        "kernels": options.pte_kernels,
        "kernels_required": required_kernels(options.pte_kernels),
        "data_files": files[1:],
        "export_report": report,
        "export_seconds": timings,
    }
    return Artifact(format="pte", files=files, quant=options.quant, details=details)
