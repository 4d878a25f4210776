"""Quantized `.pte`s: what torchao's quantization becomes in an ExecuTorch program.

The program against the eager quantized model, the tied table stored once (int8 or int4
rows), the LM head in row blocks, the lowering's private-API shortcuts, the shape-only
quantization kernels that tracing uses, and each scheme's bound on the trained fixture (slow).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from exporter.artifact import ExportOptions
from exporter.checkpoint import random_model
from exporter.config import preset
from exporter.quantize import resolve
from tests.exporter.test_quantize import assert_meets_bound, quantized_bundle


@pytest.fixture(scope="module")
def tiny_8da4w(tmp_path_factory):
    """A tiny model (one layer of each kind: lowering time grows with layers), 8da4w, lowered; (model, config, options, report, dir)."""
    from exporter.executorch import export_executorch

    config = preset("tiny")
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, layer_types=("linear_attention", "full_attention")))
    model = random_model(config, seed=3)
    options = ExportOptions(max_seq_len=64, prefill_chunk=32, quant="8da4w")
    out = tmp_path_factory.mktemp("tiny-8da4w")
    report = export_executorch(model, config, out, options).details["quantization"]  # quantizes `model` in place
    return model, config, options, report, out


def test_pte_8da4w_on_tiny_matches_the_quantized_model_and_stores_the_embedding_once(tiny_8da4w):
    model, config, _, report, out = tiny_8da4w
    assert report["embedding"]["stored_once"]
    table = model.embed_tokens.qdata.numpy().tobytes()
    assert (out / "model.ptd").read_bytes().count(table) == 1  # lookup and head: one copy of the int8 rows
    import executorch.kernels.quantized  # noqa: F401

    assert_program_matches_eager(model, config, out, seed=0)


def assert_program_matches_eager(model, config, out, seed: int) -> None:
    """The lowered quantized program's logits after a 12-token prompt against the eager quantized model."""
    from tests.exporter.test_executorch import load_forward

    prompt = torch.randint(0, config.text.vocab_size, (1, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(prompt).logits[:, -1]
    got = load_forward(out)(prompt, 0)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert (got - expected).norm() / expected.norm() < 0.05  # per-token activation rounding differs from eager


def test_pte_int4_embedding_is_stored_once_and_matches_the_quantized_model(tmp_path):
    """8da4w with an int4 embedding: the lookup reads the head's XNNPACK-packed table, so the file holds it once."""
    from executorch.backends.xnnpack.operators.node_visitor import NodeVisitor

    from exporter.executorch import export_executorch

    config = preset("tiny")
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, layer_types=("linear_attention",)))
    model = random_model(config, seed=5)
    options = ExportOptions(max_seq_len=64, prefill_chunk=32, quant="8da4w", embedding_bits=4)
    artifact = export_executorch(model, config, tmp_path, options)  # quantizes `model` in place
    report = artifact.details["quantization"]
    assert report["embedding"]["stored_once"] and report["embedding"]["copies"] == 1
    table = model.embed_tokens.qdata.numpy().tobytes()
    assert table == NodeVisitor.convert_to_qc4w(model.lm_head.weight.qdata).numpy().tobytes()  # what XNNPACK stores
    assert (tmp_path / "model.ptd").read_bytes().count(table) == 1  # lookup and head: one copy of the packed rows
    assert not [op for op in artifact.details["export_report"]["not_delegated"] if "quantized" in op]  # stock kernels
    assert_program_matches_eager(model, config, tmp_path, seed=1)


def test_pte_head_in_blocks_is_one_delegate_a_block_and_computes_the_same_logits(tiny_8da4w, tmp_path, monkeypatch):
    """A head over HEAD_BLOCK_BYTES is lowered as row blocks, each its own XNNPACK delegate (so loading
    packs one block at a time); the program's logits are those of the head in one piece, bit for bit,
    and the data file still holds each row of the tied table once."""
    import executorch.kernels.quantized  # noqa: F401

    import exporter.executorch.quantize as qe
    from exporter.executorch import export_executorch
    from tests.exporter.test_executorch import load_forward

    whole_model, config, options, whole_report, whole = tiny_8da4w
    monkeypatch.setattr(qe, "HEAD_BLOCK_BYTES", 20_000)  # the tiny head is 1024 x 64 int8: 64 KiB
    model = random_model(config, seed=3)
    report = export_executorch(model, config, tmp_path, options).details["quantization"]

    blocks = report["embedding"]["head_blocks"]
    assert blocks == 4 and whole_report["embedding"]["head_blocks"] == 1
    assert report["embedding"]["bytes"] == whole_report["embedding"]["bytes"]
    assert len(_delegates(tmp_path)) >= len(_delegates(whole)) + blocks  # one delegate would hold all four
    assert torch.equal(model.embed_tokens.qdata, whole_model.embed_tokens.qdata)
    data = (tmp_path / "model.ptd").read_bytes()
    for _, table, _ in model.embed_tokens.tables():
        assert data.count(table.numpy().tobytes()) == 1
    prompt = torch.randint(0, config.text.vocab_size, (1, 12), generator=torch.Generator().manual_seed(4))
    assert torch.equal(load_forward(tmp_path)(prompt, 0), load_forward(whole)(prompt, 0))


def _delegates(out) -> list:
    """The backend delegates of a written program's forward method."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    return deserialize_pte_binary((out / "model.pte").read_bytes()).program.execution_plan[0].delegates


@pytest.mark.parametrize("bits", [8, 4])
def test_lookup_in_blocks_equals_the_lookup_in_one_table(bits):
    """Every id, at both widths and with a last block shorter than the others, finds its own row."""
    import executorch.exir.passes.quant_fusion_pass  # noqa: F401  quantized_decomposed ops, eager kernels

    from exporter.executorch.quantize import QuantizedEmbedding

    generator = torch.Generator().manual_seed(1)
    low, high = (-128, 128) if bits == 8 else (-8, 8)
    codes = torch.randint(low, high, (50, 64), generator=generator, dtype=torch.int8)
    scales = torch.rand(50, 1 if bits == 8 else 2, generator=generator) + 0.01
    whole, blocked = QuantizedEmbedding(codes, scales, bits), QuantizedEmbedding(codes, scales, bits, block_rows=16)
    assert [start for start, _, _ in blocked.tables()] == [0, 16, 32, 48]
    assert torch.equal(blocked.qdata, whole.qdata)
    ids = torch.arange(50).flip(0).reshape(2, 25)
    assert torch.equal(blocked(ids), whole(ids))


def test_int4_lookup_reads_xnnpacks_packing_and_equals_embedding_4bit():
    """The table is XNNPACK's own serialisation of the head's codes; the rows are ExecuTorch's embedding_4bit's."""
    import executorch.exir.passes.quant_fusion_pass  # noqa: F401  quantized_decomposed ops, eager kernels
    from executorch.backends.xnnpack.operators.node_visitor import NodeVisitor

    from exporter.executorch.quantize import QuantizedEmbedding

    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (40, 64), generator=generator, dtype=torch.int8)  # every code, both nibbles
    scales = torch.rand(40, 2, generator=generator) + 0.01  # [V, G]: groups of 32
    lookup = QuantizedEmbedding(codes, scales, 4)
    assert torch.equal(lookup.qdata, NodeVisitor.convert_to_qc4w(codes))
    ids = torch.tensor([[0, 39, 7, 7, 12]])
    unsigned = (codes.to(torch.int16) + 8).to(torch.uint8)
    high_nibble_first = unsigned[:, 0::2] << 4 | unsigned[:, 1::2]  # the packing embedding_4bit reads
    expected = torch.ops.quantized_decomposed.embedding_4bit(high_nibble_first, scales, None, -8, 7, ids)
    got = lookup(ids)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(got, (codes[ids].float().unflatten(-1, (2, 32)) * scales[ids].unsqueeze(-1)).flatten(-2))


def test_lowering_shortcuts_write_the_same_program(tiny_8da4w, tmp_path):
    """Lowering with the private-API shortcuts off (`exporter.executorch.private_api`: torchao's own op
    bodies for fake propagation, whole provenance chains, every XNNPACK pass on every partition, the
    stock partitioner) writes the same bytes."""
    from exporter.executorch import export_executorch, private_api
    from runtime.contract import PTD, PTE

    _, config, options, _, out = tiny_8da4w
    with private_api.shortcuts(False):
        export_executorch(random_model(config, seed=3), config, tmp_path, options)  # the fixture's weights, again
    for name in (PTE, PTD):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


QUANT_OP_CASES = [  # (op, args after the input, input shape, input dtype)
    ("choose_qparams_affine", ("ASYMMETRIC", [1, 64], torch.int8, -128, 127, None, torch.float32, torch.int8), (5, 64), torch.float32),
    ("choose_qparams_affine", ("ASYMMETRIC", [1, 1, 64], torch.int8, None, None, 1e-6, None, None), (1, 5, 64), torch.float32),
    ("choose_qparams_affine", ("SYMMETRIC", [1, 32], torch.int4, -8, 7, None, torch.float32, torch.int8), (6, 64), torch.float32),
    ("choose_qparams_affine", ("SYMMETRIC", [1, 32], torch.int8, None, None, None, None, None, True), (6, 64), torch.float16),
    ("choose_qparams_affine", ("SYMMETRIC_NO_CLIPPING_ERR", [2, 64], torch.int8, None, None, None, None, None), (6, 64), torch.float32),
    ("quantize_affine", ([1, 64], "scale", "zero", torch.int8, -128, 127), (5, 64), torch.float32),
    ("quantize_affine", ([1, 32], "scale", "zero", torch.uint4, None, None), (5, 64), torch.float32),
    ("dequantize_affine", ([1, 32], "scale", "zero", torch.int8, -8, 7, torch.float32), (5, 64), torch.int8),
    ("dequantize_affine", ([1, 64], "scale", "zero", torch.int8, None, None, torch.float16), (5, 64), torch.int8),
]


@pytest.mark.parametrize("op,args,shape,dtype", QUANT_OP_CASES)
def test_shape_only_quant_ops_match_torchao(op, args, shape, dtype):
    """On fake tensors the shape-only kernels give what torchao's bodies give: shapes, dtypes, strides."""
    import torchao.quantization.quant_primitives  # noqa: F401  defines the ops
    from torch._subclasses.fake_tensor import FakeTensorMode

    from exporter.executorch.private_api import shape_only_quant_ops

    x = (torch.randn(shape) * 4).to(dtype)
    groups = shape[-1] // args[0][-1] if op != "choose_qparams_affine" else 1
    qparam = {"scale": torch.rand(shape[0], groups) + 0.1, "zero": torch.zeros(shape[0], groups, dtype=torch.int8)}
    args = tuple(qparam.get(a, a) if isinstance(a, str) else a for a in args)
    kernel = getattr(torch.ops.torchao, op)

    def describe(result):
        return [(tuple(t.shape), t.dtype, t.stride()) for t in (result if isinstance(result, tuple) else (result,))]

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in (x, *args))
        theirs = describe(kernel(*fake_args))
        with shape_only_quant_ops():
            ours = describe(kernel(*fake_args))
    assert ours == theirs == describe(kernel(x, *args))


def test_shape_only_quant_ops_keep_torchaos_errors():
    """A dtype the op's body refuses is refused on fake tensors too, with the body's message."""
    import torchao.quantization.quant_primitives  # noqa: F401  defines the ops
    from torch._subclasses.fake_tensor import FakeTensorMode

    from exporter.executorch.private_api import shape_only_quant_ops

    with FakeTensorMode() as mode, shape_only_quant_ops():
        codes, scale = mode.from_tensor(torch.zeros(4, 64, dtype=torch.int32)), mode.from_tensor(torch.ones(4, 2))
        with pytest.raises(AssertionError, match="Expected: torch.int8, got: torch.int32"):
            torch.ops.torchao.dequantize_affine(codes, [1, 32], scale, None, torch.int8, -8, 7)


PTE_SLOW = [("fp16", None), ("8w", None), ("8da4w", 8), ("8da4w", 4)]


@pytest.mark.slow
@pytest.mark.parametrize("quant,bits", PTE_SLOW)
def test_pte_scheme_meets_its_bound_on_the_trained_fixture(tmp_path_factory, quant, bits):
    _, report = quantized_bundle(tmp_path_factory, "pte", quant, bits)
    assert_meets_bound(report, quant, 8 if quant == "8w" else bits)


def test_quantizing_for_executorch_leaves_kept_parameters_in_fp32():
    from exporter.executorch import quantize_for_executorch

    model = random_model(preset("tiny"))
    original = copy.deepcopy(model)
    quantize_for_executorch(model, resolve("8da4w", None, None))
    layer, before = model.layers[0].linear_attn, original.layers[0].linear_attn
    assert torch.equal(layer.in_proj_a.weight, before.in_proj_a.weight) and layer.A_log.dtype == torch.float32
    assert type(layer.in_proj_qkv.weight).__name__ == "IntxUnpackedToInt8Tensor"
