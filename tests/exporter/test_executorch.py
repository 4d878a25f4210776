"""The .pte against the reference model, run through ExecuTorch's own runtime and its stock LLM runner.

fp32 bound: max abs <= 1e-3 on logits. The program runs the same fp32 math as
the reference through other kernels (XNNPACK GEMMs, the delegable one-chunk delta rule,
portable ops), which move logits of O(1) by ~1e-6; 1e-3 is the contract of an
fp32 artifact and leaves room for longer, larger models while any real bug
(state not carried, wrong cache slot, stale state after a reset) is far above it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from exporter.artifact import ExportOptions
from exporter.checkpoint import load_model, random_model
from exporter.config import preset
from exporter.executorch import export_executorch, export_program, lower_custom_ops
from runtime.config import FULL
from runtime.contract import PTD, PTE

ATOL = 1e-3
PROMPT_LEN, DECODE_STEPS = 20, 16
OPTIONS = ExportOptions(max_seq_len=64, prefill_chunk=32)


def load_forward(out: Path):
    from executorch.runtime import Runtime

    data = out / PTD
    program = Runtime.get().load_program(str(out / PTE), data_path=str(data) if data.exists() else None)
    method = program.load_method("forward")
    return lambda tokens, pos: method.execute([tokens, torch.tensor([pos])])[0]


@pytest.fixture(scope="module", params=[("tiny", "stock"), ("tiny-moe", "stock"), ("tiny", "llm")], ids="-".join)
def exported(request, tmp_path_factory):
    name, kernels = request.param
    config = preset(name)
    model = random_model(config, seed=3)
    out = tmp_path_factory.mktemp(name)
    artifact = export_executorch(model, config, out, dataclasses.replace(OPTIONS, pte_kernels=kernels))
    return config, model, out, artifact


def tokens(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_prompt_and_decode_match_reference(exported):
    config, model, out, _ = exported
    forward = load_forward(out)
    prompt = tokens(PROMPT_LEN, config.text.vocab_size)
    ref = model(prompt)
    got = forward(prompt, 0)
    assert got.shape == (1, config.text.vocab_size)
    assert (got - ref.logits[:, -1]).abs().max() <= ATOL
    state, token = ref.state, got.argmax(-1, keepdim=True)
    for step in range(DECODE_STEPS):
        ref = model(token, state)
        state = ref.state
        got = forward(token, PROMPT_LEN + step)
        assert (got - ref.logits[:, -1]).abs().max() <= ATOL, f"decode step {step}"
        token = ref.logits[:, -1].argmax(-1, keepdim=True)


@torch.no_grad()
def test_one_call_prefill_equals_token_by_token(exported):
    config, _, out, _ = exported
    forward = load_forward(out)
    prompt = tokens(OPTIONS.prefill_chunk, config.text.vocab_size, seed=1)
    whole = forward(prompt, 0)
    for i in range(prompt.shape[1]):
        last = forward(prompt[:, i : i + 1], i)
    assert (whole - last).abs().max() <= 1e-5  # same program, same math, order of sums only


@torch.no_grad()
def test_new_sequence_does_not_see_the_previous_one(exported):
    config, _, out, _ = exported
    forward = load_forward(out)
    first, second = tokens(12, config.text.vocab_size, 2), tokens(9, config.text.vocab_size, 3)
    fresh = load_forward(out)(second, 0)
    forward(first, 0)
    forward(first[:, :1], 12)
    again = forward(second, 0)  # input_pos 0: a new sequence
    assert torch.equal(again, fresh)


@torch.no_grad()
def test_past_capacity_slides_instead_of_failing(exported):
    """Beyond max_seq_len the KV cache wraps: the runner never crashes the program (sliding window)."""
    config, _, out, _ = exported
    forward = load_forward(out)
    prompt = tokens(OPTIONS.prefill_chunk, config.text.vocab_size, seed=4)
    pos = 0
    for _ in range(OPTIONS.max_seq_len // OPTIONS.prefill_chunk + 1):
        logits = forward(prompt, pos)
        pos += prompt.shape[1]
    assert pos > OPTIONS.max_seq_len and torch.isfinite(logits).all()


def test_artifact_describes_the_program(exported):
    config, _, out, artifact = exported
    assert artifact.files[0] == PTE and all((out / f).is_file() for f in artifact.files)
    assert sorted(p.name for p in out.iterdir()) == sorted(artifact.files)  # no staging directory left behind
    meta = artifact.details["constant_methods"]
    assert meta["get_max_seq_len"] == OPTIONS.prefill_chunk and meta["get_max_context_len"] == OPTIONS.max_seq_len
    assert meta["enable_dynamic_shape"] is True and meta["get_vocab_size"] == config.text.vocab_size
    report, layers = artifact.details["export_report"], config.text.layer_types
    assert report["delegated_ops"] > 0 and all("reason" in v for v in report["not_delegated"].values())
    assert report["not_delegated"]["aten.index_put.default"]["reason"].startswith("KV-cache write")
    # Each op of ours is reported as what its lowering table (ops.LOWERINGS) says it became.
    ours = {"qwen35::causal_conv1d", "qwen35::gated_delta_rule"} | ({"qwen35::moe"} if config.is_moe else set())
    assert set(report["custom_ops"]) == ours
    if artifact.details["kernels"] == "llm":
        assert "llama::gated_delta_rule" in report["custom_ops"]["qwen35::gated_delta_rule"]
    # No custom op of ours survives into the program; ExecuTorch's LLM ops only where asked for.
    custom = [name for name in report["kernel_calls"] if name.startswith(("qwen35", "llama"))]
    if artifact.details["kernels"] == "llm":
        assert custom == ["llama::gated_delta_rule.out"], custom
        assert report["kernel_calls"]["llama::gated_delta_rule.out"] == layers.count("linear_attention")
        assert "custom-ops" in artifact.details["kernels_required"]
    else:
        assert custom == [] and "no custom ops" in artifact.details["kernels_required"]
    # With a dynamic T, norms and the delta rule's matmul chain stay inside XNNPACK: a rank-3 mean,
    # a padded inverse or aten's softplus would split the delegate at every layer. (Views of integer
    # positions and boolean masks stay portable: XNNPACK takes float tensors only.)
    for op in ("aten.mean.dim", "aten.bmm", "aten.diagonal_copy", "aten.index_select", "aten.log1p", "aten.convolution"):
        assert not any(name.startswith(op) for name in report["not_delegated"]), op
    if not config.is_moe:  # MoE layers gather expert weights with portable ops, which split the delegate
        assert report["delegate_calls"] <= 6 * len(config.text.layer_types)
    # KV caches are written in place; only the DeltaNet states (delegate outputs) are copied back into their buffers.
    calls = report["kernel_calls"]
    assert calls["aten::index_put_"] == 2 * layers.count(FULL) and "aten::index_put.out" not in calls
    assert calls["aten::copy_"] == 2 * layers.count("linear_attention")
    assert calls["DelegateCall"] == report["delegate_calls"]


def test_graph_tidying_folds_round_trips_and_computes_repeats_once():
    """The passes between export and lowering: same outputs, no transpose pair, no repeated op."""
    from exporter.executorch.passes import dedupe, fold_round_trips

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(6, 1, 3))

        def forward(self, x):  # x [2, 6, 5]
            there_and_back = x.transpose(1, 2).transpose(1, 2)
            kernel = self.weight.squeeze(1).unsqueeze(1)
            conv = torch.nn.functional.conv1d(there_and_back, kernel, groups=6)
            return conv * 2 + conv * 2

    x = torch.randn(2, 6, 5)
    program = torch.export.export(Twice(), (x,)).run_decompositions({})
    expected = program.module()(x)
    tidied = dedupe(fold_round_trips(program))
    targets = [str(n.target) for n in tidied.graph.nodes if n.op == "call_function"]
    assert not any("transpose" in t or "permute" in t or "squeeze" in t for t in targets), targets
    assert sum("mul" in t for t in targets) == 1, targets
    conv = next(n for n in tidied.graph.nodes if "conv" in str(n.target))
    assert conv.args[1].op == "placeholder"  # the parameter itself: what XNNPACK needs to take the conv
    torch.testing.assert_close(tidied.module()(x), expected, rtol=0, atol=0)


def test_state_resets_fold_into_the_first_decay():
    """No delta rule reads `S * keep` after `fold_state_resets`: the buffer goes in as it is (the reset
    itself is checked end to end by test_new_sequence_does_not_see_the_previous_one)."""
    from exporter.executorch.passes import fold_state_resets

    options = ExportOptions(max_seq_len=16, prefill_chunk=8)
    program = export_program(random_model(preset("tiny"), seed=0), options)
    rules = [n for n in program.graph.nodes if n.target == torch.ops.qwen35.gated_delta_rule.default]
    assert rules and all(n.args[6].target == torch.ops.aten.mul.Tensor for n in rules)
    program = fold_state_resets(program)
    rules = [n for n in program.graph.nodes if n.target == torch.ops.qwen35.gated_delta_rule.default]
    assert rules and not any(n.args[6].target == torch.ops.aten.mul.Tensor for n in rules)


def test_private_api_switch_turns_every_shortcut_off():
    """`private_api.shortcuts(False)`: the stock partitioner, XNNPACK's pass manager untouched,
    provenance kept whole; on again after the block. (That the bytes stay the same is
    test_quantize.py's test_lowering_shortcuts_write_the_same_program.)"""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )

    from exporter.executorch import private_api

    assert private_api.enabled() and type(private_api.xnnpack_partitioner()) is not XnnpackPartitioner
    with private_api.shortcuts(False):
        assert not private_api.enabled() and type(private_api.xnnpack_partitioner()) is XnnpackPartitioner
        init = XNNPACKPassManager.__init__
        with private_api.applicable_xnnpack_passes(), private_api.shape_only_quant_ops():
            assert XNNPACKPassManager.__init__ is init
        program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
        graph = program.run_decompositions({}).run_decompositions({}).graph_module  # chains two deep
        chains = {n.name: n.meta.get("from_node") for n in graph.graph.nodes}
        private_api.root_provenance(graph)
        assert {n.name: n.meta.get("from_node") for n in graph.graph.nodes} == chains
    assert private_api.enabled()


def test_lowering_hands_to_edge_no_asserts_and_no_per_node_check():
    """What spares `to_edge` retraces: the dtype asserts are gone before it, and the partitioner drops
    its per-node check because every linear passes it. A linear XNNPACK cannot take (its weight an
    input, not a constant) keeps the check, so that path still decides per node."""
    from exporter.executorch.private_api import xnnpack_partitioner

    options = ExportOptions(max_seq_len=16, prefill_chunk=8)
    exported_program = export_program(random_model(preset("tiny"), seed=0), options)
    assert any(n.target == torch.ops.aten._assert_tensor_metadata.default for n in exported_program.graph.nodes)
    lowered = lower_custom_ops(exported_program, options).run_decompositions({})  # what to_edge does first
    assert not any("assert" in str(n.target) for n in lowered.graph.nodes)
    ops, check = xnnpack_partitioner().ops_to_not_decompose(lowered)
    assert torch.ops.aten.linear.default in ops and check is None

    class InputWeight(torch.nn.Module):
        def forward(self, x, w):
            return torch.nn.functional.linear(x, w)

    dynamic = torch.export.export(InputWeight(), (torch.randn(2, 4), torch.randn(3, 4))).run_decompositions({})
    assert xnnpack_partitioner().ops_to_not_decompose(dynamic)[1] is not None


def test_xnnpack_passes_are_dropped_only_where_their_ops_are_absent(monkeypatch):
    """`applicable_xnnpack_passes`: the decoder's partitions skip the batch-norm, PReLU and upsample
    rewrites, and the attention one where there is no softmax; a graph with those ops keeps them (PReLU's
    pass rewrites `_prelu_kernel`, which XNNPACK's partitioner keeps as `prelu`: it never applies here)."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    from exporter.executorch.private_api import _PASS_APPLIES
    from exporter.executorch.xnnpack import lower_to_xnnpack

    ran = []
    transform = XNNPACKPassManager.transform
    monkeypatch.setattr(XNNPACKPassManager, "transform",
                        lambda self: ran.append({p.__name__ for p in self.passes}) or transform(self))

    class Vision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.PReLU()

        def forward(self, x):  # x [1, 3, 8, 8]
            y = torch.nn.functional.interpolate(self.act(self.bn(self.conv(x))), scale_factor=2, mode="bilinear")
            q = y.flatten(2).transpose(1, 2)  # [1, 144, 4]
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    lower_to_xnnpack(torch.export.export(Vision().eval(), (torch.randn(1, 3, 8, 8),)), {})
    kept = {"ConvertToUpsampleBilinear2d", "FuseBatchNormPass", "DecomposeBatchNorm", "ConvertToSDPAPass"}
    assert ran and kept <= set().union(*ran) and kept <= set(_PASS_APPLIES)
    ran.clear()
    program = export_program(random_model(preset("tiny"), seed=0), ExportOptions(max_seq_len=16, prefill_chunk=8))
    lower_to_xnnpack(lower_custom_ops(program, ExportOptions(max_seq_len=16, prefill_chunk=8)), {})
    assert ran and not any(names & (set(_PASS_APPLIES) - {"ConvertToSDPAPass"}) for names in ran)
    assert sum("ConvertToSDPAPass" in names for names in ran) < len(ran)  # only partitions with a softmax


def test_rooted_provenance_names_the_same_exported_nodes():
    """`root_provenance` cuts each chain to one level and keeps the exported node a debug handle names."""
    from executorch.exir.debug_handle_utils import (
        get_greatest_ancestor_node_identifier as root_of,
    )

    from exporter.executorch.private_api import root_provenance

    def depth(source):
        return 1 + max((depth(parent) for parent in source.from_node), default=0)

    options = ExportOptions(max_seq_len=16, prefill_chunk=8)
    program = export_program(random_model(preset("tiny"), seed=0), options).run_decompositions({}).run_decompositions({})
    nodes = [n for n in program.graph.nodes if n.meta.get("from_node")]
    before = {n.name: root_of(n) for n in nodes}
    assert max(depth(n.meta["from_node"][-1]) for n in nodes) >= 2  # two retraces: chains two deep
    root_provenance(program.graph_module)
    assert {n.name: root_of(n) for n in nodes} == before
    assert all(len(n.meta["from_node"]) == 1 and depth(n.meta["from_node"][0]) == 1 for n in nodes)


def test_tied_embedding_is_stored_once(tmp_path):
    """The tied 248320-row embedding: the program's files hold it once, not twice."""
    config = preset("tiny")  # one layer: the check is about the table, and lowering time grows with layers
    text = dataclasses.replace(config.text, vocab_size=32768, layer_types=("full_attention",))
    config = dataclasses.replace(config, text=text)
    model = random_model(config)
    export_executorch(model, config, tmp_path, OPTIONS)
    total = sum(f.stat().st_size for f in tmp_path.iterdir())
    table = 32768 * text.hidden_size * 4
    other = sum(p.numel() for n, p in model.named_parameters() if n != "embed_tokens.weight") * 4
    assert total < 1.5 * table + other  # twice the table would be 2 x table + other


@pytest.mark.parametrize("kernels", ["stock", "llm"])
@torch.no_grad()
def test_stock_runner_generates_the_reference_greedy_text(tmp_path, trained_checkpoint, kernels):
    """ExecuTorch's TextLLMRunner (what its Android/iOS SDKs use) drives the .pte with the real tokenizer.

    With kernels "llm" the program calls `llama::gated_delta_rule`, from the LLM custom-ops library
    that the runner's apps link (loaded here by the export, as `runtime.backends` loads it)."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from tokenizers import Tokenizer

    config, model, _ = load_model(trained_checkpoint)
    export_executorch(model, config, tmp_path, dataclasses.replace(OPTIONS, pte_kernels=kernels))
    tokenizer = Tokenizer.from_file(str(trained_checkpoint / "tokenizer.json"))
    prompt = "import os\nimport sys\n\n\ndef main():\n"
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    out = model(ids)
    state, generated = out.state, []
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(24):
        generated.append(token.item())
        out = model(token, state)
        state, token = out.state, out.logits[:, -1].argmax(-1, keepdim=True)
    expected = tokenizer.decode(generated)

    runner = TextLLMRunner(str(tmp_path / PTE), str(trained_checkpoint / "tokenizer.json"), str(tmp_path / PTD))
    pieces = []
    runner.generate(prompt, GenerationConfig(max_new_tokens=24, temperature=0.0, echo=False), token_callback=pieces.append)
    assert "".join(pieces) == expected
