"""exporter.onnx: the exported decoder, run by ONNX Runtime, matches the reference model; I/O as documented.

One export per (preset, profile), shared by the tests of its module-scoped fixture. Each test
runs the same token ids and positions through ONNX Runtime and through `Qwen35Model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

import ops
from exporter.artifact import Artifact, ExportOptions
from exporter.checkpoint import random_model
from exporter.config import preset
from exporter.model import Qwen35Model
from exporter.onnx import OnnxExportError, export_onnx, save_atomically
from ops.moe import moe_portable, moe_reference
from ops.onnx_contrib import ort_schema
from runtime.config import FULL, ModelConfig
from runtime.contract import ONNX_DATA, ONNX_MODEL, capacity_kv, io_names
from tests.exporter import onnx_feeds

ort = pytest.importorskip("onnxruntime")

PROMPT, DECODE, BATCH = 20, 16, 2
OPTIONS = dict(max_seq_len=64, prefill_chunk=32)  # a 20-token prompt fits one call
# fp32 logits: the bound the lowering promises; observed ~1e-6, from reassociated fp32 sums
# (ONNX Runtime's GEMMs and LinearAttention's own chunking against PyTorch's).
LOGITS_ATOL = 1e-3
# fp32 states (KV rows, conv taps, recurrent matrices, all O(1)): the same reassociation, observed ~5e-6.
STATE_ATOL = 1e-4
# One ONNX model against itself, prompt whole or in pieces: only the chunk boundaries of the delta
# rule and the attention softmax move; observed <= 1.5e-6 on logits and states (0 where the op is recurrent).
CHUNKED_ATOL = 1e-5


@dataclass
class Exported:
    config: ModelConfig
    model: Qwen35Model
    out_dir: Path
    artifact: Artifact
    session: object

    @property
    def profile(self) -> str:
        return self.artifact.details["profile"]

    def run(self, ids: torch.Tensor, start: int, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call: ids [B, T] at positions start.. start+T-1; returns logits [B, V] and the next state."""
        logits, *present = self.session.run(None, onnx_feeds.feeds(self.config, self.profile, ids.numpy(), start, state))
        return logits[:, -1], present  # [B, 1, V] -> [B, V]

    def empty_state(self, batch: int = BATCH) -> list[np.ndarray]:
        return onnx_feeds.empty_state(self.config, self.profile, batch)

    def held(self, state: list[np.ndarray], length: int) -> list[np.ndarray]:
        return onnx_feeds.held(self.config, self.profile, state, length)

    @property
    def chunk_batch(self) -> int:
        """Sequences a call of several tokens after a cache may carry (GroupQueryAttention's CPU kernel: 1)."""
        return 1 if capacity_kv(self.profile) else BATCH


def positions(ids: torch.Tensor, start: int) -> torch.Tensor:
    """Text positions as M-RoPE expects them: [3, B, T], the three rows equal."""
    batch, steps = ids.shape
    return (start + torch.arange(steps)).expand(3, batch, steps).contiguous()


def flat(state) -> list[torch.Tensor]:
    return [tensor for layer in state for tensor in layer]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny shapes: one thread is fastest, and on a shared 2-core machine two spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(
    scope="module",
    params=[("tiny", "ort"), ("tiny", "portable"), ("tiny-moe", "ort"), ("tiny-moe", "portable")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def exported(request, tmp_path_factory) -> Exported:
    name, profile = request.param
    config = preset(name)
    model = random_model(config)
    out_dir = tmp_path_factory.mktemp(f"onnx-{name}-{profile}")
    artifact = export_onnx(model, config, out_dir, ExportOptions(onnx_profile=profile, **OPTIONS))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out_dir / artifact.files[0]), options, providers=["CPUExecutionProvider"])
    return Exported(config, model, out_dir, artifact, session)


def prompt_ids(config: ModelConfig, steps: int = PROMPT, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config.text.vocab_size, (BATCH, steps), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_prompt_and_decode_match_reference(exported):
    ids = prompt_ids(exported.config)
    logits, state = exported.run(ids, 0, exported.empty_state())
    expected = exported.model(ids, positions=positions(ids, 0))
    np.testing.assert_allclose(logits, expected.logits[:, -1].numpy(), rtol=0, atol=LOGITS_ATOL)
    reference_state = expected.state
    token = expected.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]: both sides decode the same tokens
    for step in range(DECODE):
        start = PROMPT + step
        logits, state = exported.run(token, start, state)  # the state goes back in
        expected = exported.model(token, reference_state, positions=positions(token, start))
        reference_state = expected.state
        np.testing.assert_allclose(logits, expected.logits[:, -1].numpy(), rtol=0, atol=LOGITS_ATOL, err_msg=f"step {step}")
        token = expected.logits[:, -1].argmax(-1, keepdim=True)
    _, outputs = io_names(exported.config, exported.profile)
    for name, actual, wanted in zip(outputs[1:], exported.held(state, PROMPT + DECODE), flat(reference_state), strict=True):
        np.testing.assert_allclose(actual, wanted.numpy(), rtol=0, atol=STATE_ATOL, err_msg=name)


def test_prefill_in_chunks_equals_one_call(exported):
    batch = exported.chunk_batch
    ids = prompt_ids(exported.config, seed=1)[:batch]
    whole_logits, whole_state = exported.run(ids, 0, exported.empty_state(batch))
    state, start = exported.empty_state(batch), 0
    for size in (8, 8, 4):
        logits, state = exported.run(ids[:, start : start + size], start, state)
        start += size
    np.testing.assert_allclose(logits, whole_logits, rtol=0, atol=CHUNKED_ATOL)
    _, outputs = io_names(exported.config, exported.profile)
    for name, chunked, whole in zip(outputs[1:], state, whole_state, strict=True):
        assert chunked.shape == whole.shape, name
        np.testing.assert_allclose(chunked, whole, rtol=0, atol=CHUNKED_ATOL, err_msg=name)


def test_model_passes_the_checker(exported):
    # ONNX Runtime registers SimplifiedLayerNormalization (the ort profile's norms) in ONNX's own domain,
    # where the checker knows only ONNX's ops: it checks those nodes against the runtime's schema.
    if exported.artifact.details["profile"] == "ort" and not onnx.defs.has("SimplifiedLayerNormalization"):
        onnx.defs.register_schema(ort_schema("SimplifiedLayerNormalization", ""))
    onnx.checker.check_model(str(exported.out_dir / "model.onnx"), full_check=True)


def test_io_follows_the_artifact_contract(exported):
    config, details = exported.config, exported.artifact.details
    inputs, outputs = io_names(config, exported.profile)
    assert [i.name for i in exported.session.get_inputs()] == inputs
    assert [o.name for o in exported.session.get_outputs()] == outputs
    shapes = {entry["name"]: (entry["dtype"], entry["shape"]) for entry in details["inputs"] + details["outputs"]}
    t = config.text
    assert shapes["input_ids"] == ("int64", ["batch", "sequence"])
    assert shapes["position_ids"] == ("int64", [3, "batch", "sequence"])
    assert shapes["logits"] == ("float32", ["batch", 1, t.vocab_size])
    full = t.layer_types.index(FULL)
    linear = t.layer_types.index("linear_attention")
    if capacity_kv(exported.profile):  # one buffer of the caller's capacity, past and present
        kv = ("float32", ["batch", t.num_key_value_heads, "kv_capacity", t.head_dim])
        assert shapes[f"past_key_values.{full}.key"] == kv and shapes[f"present.{full}.value"] == kv
        assert shapes["attention_mask"] == ("int64", ["batch", "total_sequence"])
        assert details["kv_cache"]["layout"] == "capacity"
    else:
        assert shapes[f"past_key_values.{full}.key"] == ("float32", ["batch", t.num_key_value_heads, "past_sequence", t.head_dim])
        assert shapes[f"present.{full}.value"][1][2] == "sequence + past_sequence"
        assert details["kv_cache"]["layout"] == "grows" and "attention_mask" not in shapes
    assert shapes[f"past_key_values.{linear}.conv"] == ("float32", ["batch", t.conv_dim, t.linear_conv_kernel_dim - 1])
    recurrent = ["batch", t.linear_num_value_heads, t.linear_key_head_dim, t.linear_value_head_dim]
    assert shapes[f"present.{linear}.recurrent"] == ("float32", recurrent)
    # Every weight stored once: the tied embedding serves Gather and the LM head's Gemm, re-laid weights replace theirs.
    parameter_bytes = sum(p.numel() * p.element_size() for p in exported.model.parameters())
    assert 0 <= details["weight_bytes"] - parameter_bytes < 4096  # plus a few small constants
    assert exported.artifact.files == ["model.onnx", "genai_config.json"] and not details["external_data"]
    assert sorted(p.name for p in exported.out_dir.iterdir()) == ["genai_config.json", "model.onnx"]  # no temporary left


def test_external_data_layout_runs_the_same(exported, tmp_path):
    """Above 64 MiB of weights they go to model.onnx.data; the tiny presets never get there, so write them so."""
    save_atomically(ir.load(exported.out_dir / "model.onnx"), tmp_path, ONNX_MODEL, ONNX_DATA)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    external = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = prompt_ids(exported.config, steps=5)
    feeds = onnx_feeds.feeds(exported.config, exported.profile, ids.numpy(), 0, exported.empty_state())
    for actual, expected in zip(external.run(None, feeds), exported.session.run(None, feeds), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_onnxruntime_genai_generates_what_onnxruntime_does(exported):
    """The genai_config.json beside the model lets onnxruntime-genai's generator drive it: the same greedy tokens."""
    og = pytest.importorskip("onnxruntime_genai")
    ids = prompt_ids(exported.config)[:1]  # [1, T]: one sequence
    steps = 8
    state = exported.empty_state(1)
    logits, state = exported.run(ids, 0, state)
    expected = []
    for step in range(steps):
        expected.append(int(logits[0].argmax()))
        logits, state = exported.run(torch.tensor([[expected[-1]]]), PROMPT + step, state)
    config = og.Config(str(exported.out_dir))
    config.clear_providers()  # CPU
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=PROMPT + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids[0].numpy().astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    generated = [int(t) for t in generator.get_sequence(0)[PROMPT:]]
    # The generator stops early only at an end-of-sequence id, which the config names.
    assert generated == expected[: len(generated)]
    assert len(generated) == steps or generated[-1] in exported.config.text.eos_token_ids


def test_profile_uses_the_ops_it_promises(exported):
    details = exported.artifact.details
    model = onnx.load(str(exported.out_dir / "model.onnx"))
    domains = {opset.domain or "ai.onnx": opset.version for opset in model.opset_import}
    assert domains["ai.onnx"] == 18 and details["opset_imports"] == domains
    contrib = details["op_counts"].get("com.microsoft", {})
    if details["profile"] == "portable":
        assert set(domains) == {"ai.onnx"} and not contrib
        return
    layers = exported.config.text.layer_types
    linear, full = layers.count("linear_attention"), layers.count(FULL)
    assert contrib["LinearAttention"] == linear
    assert contrib["GroupQueryAttention"] == full and "Softmax" not in details["op_counts"]["ai.onnx"]
    # Every norm is one kernel: two per layer (the residual Add folded into all but the first) and the final one,
    # q/k norms per attention layer, l2 q/k norms and the gated output norm per DeltaNet layer; one decay gate each.
    standard = details["op_counts"]["ai.onnx"]
    assert "ReduceMean" not in standard
    assert details["fusions"] == {
        "SimplifiedLayerNormalization": 1 + 1 + 2 * full + 3 * linear,
        "SkipSimplifiedLayerNormalization": 2 * len(layers) - 1,
        "LinearAttentionGate": linear,
        "dropped_reshape_pairs": linear + full,  # v viewed as heads, packed again for LinearAttention / GQA
    }
    assert standard["SimplifiedLayerNormalization"] == details["fusions"]["SimplifiedLayerNormalization"]
    for op in ("SkipSimplifiedLayerNormalization", "LinearAttentionGate"):
        assert contrib[op] == details["fusions"][op]
    if exported.config.is_moe:
        assert contrib["MoE"] == len(layers)
        initializers = {init.name for init in model.graph.initializer}
        for node in (n for n in model.graph.node if n.op_type == "MoE"):
            assert node.input[2] in initializers and node.input[4] in initializers  # re-layout folded, not run per call


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(quant="8da4w", onnx_profile="portable"), "MatMulNBits and GatherBlockQuantized"),
        (dict(prefill_chunk=1), "1-token chunk"),
        (dict(max_seq_len=8192), "max_position_embeddings"),
    ],
)
def test_bad_options_raise(tmp_path, change, message):
    config = preset("tiny")
    with pytest.raises(OnnxExportError, match=message):
        export_onnx(random_model(config), config, tmp_path, ExportOptions(**{**OPTIONS, **change}))
    assert not any(tmp_path.iterdir())


def test_non_fp32_weights_raise(tmp_path):
    config = preset("tiny")
    with pytest.raises(OnnxExportError, match="float32 weights"):
        export_onnx(random_model(config, dtype=torch.bfloat16), config, tmp_path, ExportOptions(**OPTIONS))


class _MoeBlock(torch.nn.Module):
    def __init__(self, weights: list[torch.Tensor], top_k: int):
        super().__init__()
        self.top_k = top_k
        self.weights = torch.nn.ParameterList(weights)

    def forward(self, x):
        return ops.moe(x, *self.weights, top_k=self.top_k)


def test_portable_moe_matches_reference_on_both_sides_of_the_gather_bound(tmp_path):
    """The presets' MoE is always past the bound (E = 4), so this checks moe_portable's If itself.

    E = 16, K = 2: one token gathers (N·K = 2 <= E/8), nine run every expert; both branches must
    lower to standard ONNX and match the oracle.
    """
    hidden, experts, ffn, shared_ffn, top_k = 32, 16, 8, 12, 2
    gen = torch.Generator().manual_seed(0)
    shapes = [(experts, hidden), (experts, 2 * ffn, hidden), (experts, hidden, ffn)]
    shapes += [(shared_ffn, hidden), (shared_ffn, hidden), (hidden, shared_ffn), (1, hidden)]
    weights = [0.2 * torch.randn(shape, generator=gen) for shape in shapes]
    tokens = torch.export.Dim("tokens", min=1, max=64)
    program = torch.export.export(
        _MoeBlock(weights, top_k), (torch.randn(1, 5, hidden),), dynamic_shapes=({1: tokens},), strict=False
    )
    program = program.run_decompositions({torch.ops.qwen35.moe.default: moe_portable})
    torch.onnx.export(program, dynamo=True, opset_version=18).save(tmp_path / "moe.onnx")
    assert "If" in {node.op_type for node in onnx.load(str(tmp_path / "moe.onnx")).graph.node}
    session = ort.InferenceSession(str(tmp_path / "moe.onnx"), providers=["CPUExecutionProvider"])
    for steps in (1, 9):
        x = torch.randn(1, steps, hidden, generator=gen)
        (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        expected = moe_reference(x, *weights, top_k=top_k)
        np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=1e-5, err_msg=f"{steps} tokens")


def test_states_bound_in_place_give_what_fresh_buffers_give(exported):
    """The parts the export records as updatable in place (`exporter.onnx.state`), bound as their own output
    through prompt chunks and decode steps, give the logits and states of fresh buffers, bit for bit."""
    parts = exported.artifact.details["state_in_place"]["parts"]
    if capacity_kv(exported.profile):  # every state: what runtime.backends and onnxruntime-genai bind
        assert parts == ["conv", "key", "recurrent", "value"]
    else:  # the KV caches grow (Concat), and the recurrent state is an If's output: only the conv's window
        assert parts == ["conv"]
    names, outputs = io_names(exported.config, exported.profile)
    names = names[-len(outputs) + 1:]  # the state inputs
    value = ort.OrtValue.ortvalue_from_numpy
    batch = exported.chunk_batch
    bound = {name: value(np.ascontiguousarray(x)) for name, x in zip(names, exported.empty_state(batch), strict=True)}
    ids = prompt_ids(exported.config, seed=2)[:batch]
    fresh, start = exported.empty_state(batch), 0
    for size in (8, 8, 4, *[1] * 4):
        chunk = ids[:, start : start + size] if start < PROMPT else ids[:, :1] + start
        logits, fresh = exported.run(chunk, start, fresh)
        binding = exported.session.io_binding()
        for name, fed in onnx_feeds.feeds(exported.config, exported.profile, chunk.numpy(), start, []).items():
            binding.bind_ortvalue_input(name, value(np.ascontiguousarray(fed)))
        binding.bind_output("logits")
        for name, present in zip(names, outputs[1:], strict=True):
            binding.bind_ortvalue_input(name, bound[name])
            if name.rsplit(".", 1)[1] in parts:
                binding.bind_ortvalue_output(present, bound[name])
            else:
                binding.bind_output(present)
        exported.session.run_with_iobinding(binding)
        in_place_logits, *grown = binding.get_outputs()
        for name, new in zip(names, grown, strict=True):
            if name.rsplit(".", 1)[1] not in parts:
                bound[name] = new
        np.testing.assert_array_equal(in_place_logits.numpy()[:, -1], logits, err_msg=f"call at {start}")
        for name, expected in zip(names, fresh, strict=True):
            np.testing.assert_array_equal(bound[name].numpy(), expected, err_msg=f"{name} after the call at {start}")
        start += size


def test_a_batched_chunk_after_a_cache_runs_only_with_growing_caches(exported):
    """The one call the capacity layout does not take (ONNX Runtime's GroupQueryAttention): its error says so."""
    ids = prompt_ids(exported.config)
    _, state = exported.run(ids[:, :4], 0, exported.empty_state())
    if capacity_kv(exported.profile):
        with pytest.raises(Exception, match="batch_size must be 1 when sequence_length > 1 and past context is given"):
            exported.run(ids[:, 4:8], 4, state)
    else:
        logits, _ = exported.run(ids[:, 4:8], 4, state)
        assert logits.shape == (BATCH, exported.config.text.vocab_size) and np.isfinite(logits).all()
