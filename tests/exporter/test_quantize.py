"""Quantization: each scheme on the trained fixture meets its bound per format, the tied embedding is stored
once where the backend can share it, and bad scheme names or options fail with clear errors.

Quality runs on the trained fixture (random weights make top-1 and perplexity meaningless) with
1024 held-out tokens: the ONNX side in the default run (an export takes ~30 s), the ExecuTorch
side on the fixture under `slow` (a quantized fixture lowering takes ~10 min on 2 cores); the
tiny preset covers the ExecuTorch quantization path in the default run.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from exporter.artifact import ExportOptions
from exporter.bundle import export_bundle
from exporter.checkpoint import load_model, random_model
from exporter.cli import main
from exporter.config import preset
from exporter.onnx.quantize import block_for, pack, unpack
from exporter.quantize import (
    SCHEMES,
    QuantizationError,
    check_format,
    dequantize,
    qparams,
    resolve,
)
from runtime.tolerances import tolerance
from runtime.validate import validate_bundle
from tests.conftest import need_fixture

FIXTURE = "qwen35-tiny-code"
EVAL_TOKENS = 1024
SMALL = {"max_seq_len": 256, "prefill_chunk": 32}


def quantized_bundle(tmp_path_factory, fmt: str, quant: str, embedding_bits: int | None = None):
    """A bundle of the trained fixture with one artifact, validated with held-out tokens; (bundle, report)."""
    checkpoint = need_fixture(FIXTURE)
    tokens = need_fixture("heldout-stdlib-tokens.npy")
    options = ExportOptions(quant=quant, embedding_bits=embedding_bits, **SMALL)
    out = tmp_path_factory.mktemp(f"{fmt}-{quant}-{embedding_bits}") / "bundle"
    export_bundle(str(checkpoint), out, formats=[fmt], options=options, validate=False, golden_steps=8)
    report = validate_bundle(out, fmt, model=checkpoint, eval_tokens=tokens, eval_max_tokens=EVAL_TOKENS)
    return out, report


def assert_meets_bound(report, quant: str, embedding_bits: int | None) -> None:
    (entry,) = report["artifacts"]
    bound = tolerance(quant, embedding_bits).max_ppl_increase
    increase = entry["perplexity"] / entry["reference_perplexity"] - 1
    failed = [c["name"] for c in entry["checks"] if c["passed"] is False]
    assert report["passed"], f"{quant}/emb{embedding_bits}: checks missed: {failed}"
    assert increase <= bound and entry["quant"] == quant and entry["embedding_bits"] == embedding_bits
    assert entry["size_bytes"] and entry["top1_agreement"] >= tolerance(quant, embedding_bits).min_top1


# --- ONNX on the trained fixture ----------------------------------------------------------------

ONNX_FAST = [("8w", None), ("8da4w", 8), ("8da4w", 4)]
ONNX_SLOW = [("4w", 8), ("4w", 4)]


@pytest.fixture(scope="module", params=ONNX_FAST, ids=lambda p: f"{p[0]}-emb{p[1]}")
def onnx_bundle(request, tmp_path_factory):
    quant, bits = request.param
    return quant, (8 if quant == "8w" else bits), *quantized_bundle(tmp_path_factory, "onnx", quant, bits)


def test_onnx_scheme_meets_its_bound_on_the_trained_fixture(onnx_bundle):
    quant, bits, _, report = onnx_bundle
    assert_meets_bound(report, quant, bits)


@pytest.mark.slow
@pytest.mark.parametrize("quant,bits", ONNX_SLOW)
def test_onnx_weight_only_int4_meets_its_bound(tmp_path_factory, quant, bits):
    _, report = quantized_bundle(tmp_path_factory, "onnx", quant, bits)
    assert_meets_bound(report, quant, bits)


def test_onnx_tied_embedding_is_one_initializer(onnx_bundle):
    _, bits, bundle, _ = onnx_bundle
    model = ir.load(bundle / "model.onnx")
    nodes = {n.op_type: n for n in model.graph}
    gather, head = nodes["GatherBlockQuantized"], next(
        n for n in model.graph if n.op_type == "MatMulNBits" and n.attributes["N"].value == 248320)
    assert gather.inputs[0] is head.inputs[1]  # the same initializer, not a reshaped copy of it
    assert gather.inputs[2].producer().inputs[0] is head.inputs[2]  # scales: a Reshape of the head's
    big = [v for v in model.graph.initializers.values() if v.const_value.nbytes > 5_000_000]
    assert big == [head.inputs[1]]  # the only large tensor: the shared quantized matrix
    assert head.inputs[1].const_value.nbytes == 248320 * (128 if bits == 8 else 96 // 2)  # D = 96, padded at int8


def test_onnx_report_records_scheme_and_bytes(onnx_bundle):
    quant, bits, bundle, _ = onnx_bundle
    from runtime.bundle import open_bundle

    details = open_bundle(bundle).artifact("onnx")["details"]["quantization"]
    assert details["scheme"] == quant and details["embedding_bits"] == bits
    assert "hqq" in details["scales"]["int4 grouped"].lower() and "NO_CLIPPING" in details["scales"]["int8 per row"]
    assert details["scales_stored"]["fp16"] == details["matrices"] and details["scales_stored"]["fp32"] == 0
    assert details["embedding"]["stored_once"] and details["embedding"]["bytes"] < details["embedding"]["fp32_bytes"] / 2
    assert "recurrent state" in " ".join(details["kept_in_fp32"])


# --- scales, packing, options -------------------------------------------------------------------


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_packing_round_trips_to_the_dequantized_weight(bits, group):
    weight = torch.randn(40, 96, generator=torch.Generator().manual_seed(0))
    qdata, scale = qparams(weight, bits, group)
    block = block_for(96, group)
    packed = pack(qdata, bits, block)
    assert packed.shape == (40, -(-96 // block), block * bits // 8)
    np.testing.assert_array_equal(unpack(packed, scale.numpy(), bits, 96), dequantize(qdata, scale).numpy())


def test_hqq_scales_beat_round_to_nearest():
    config, model, _ = load_model(need_fixture(FIXTURE))
    weight = model.layers[0].mlp.down_proj.weight.detach()
    qdata, scale = qparams(weight, 4, 32)
    groups = weight.view(weight.shape[0], -1, 32)
    rtn_scale = groups.abs().amax(-1, keepdim=True) / 8
    rtn = ((groups / rtn_scale).round().clamp(-8, 7) * rtn_scale).view_as(weight)
    assert (dequantize(qdata, scale) - weight).pow(2).mean() < 0.9 * (rtn - weight).pow(2).mean()


def test_hqq_is_torchaos_bit_for_bit():
    """`hqq_scale_only` runs torchao's HQQ scale-only solver in place: the same integers and scales, exactly."""
    from torchao.quantization.quant_primitives import (
        _choose_qparams_and_quantize_scale_only_hqq,
    )

    from exporter.quantize import hqq_scale_only

    config, model, _ = load_model(need_fixture(FIXTURE))
    for weight, group in [(model.layers[0].mlp.down_proj.weight.detach(), 32),
                          (model.embed_tokens.weight.detach()[:4096], 32)]:
        qdata, scale = hqq_scale_only(weight, 4, group)
        expected_q, expected_scale = _choose_qparams_and_quantize_scale_only_hqq(weight, [1, group], -8, 7)
        assert torch.equal(qdata, expected_q.to(torch.int8)) and torch.equal(scale, expected_scale)


@pytest.mark.parametrize("bits,group", [(4, 32), (8, None)])
def test_dynamic_int8_weight_is_what_quantize_makes(bits, group):
    """The pte linears' weights, built on qparams, equal torchao's quantize_ with the 8da4w / 8w config."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    from exporter.executorch.quantize import _dynamic_int8_weight
    from exporter.quantize import scale_choice

    linear = torch.nn.Linear(128, 48, bias=False)
    torch.nn.init.normal_(linear.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    ours = _dynamic_int8_weight(linear.weight.detach(), bits, group)
    algorithm, mapping = scale_choice(group)
    quantize_(linear, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=getattr(torch, f"int{bits}"), weight_granularity=PerAxis(0) if group is None else PerGroup(group),
        weight_mapping_type=mapping, intx_choose_qparams_algorithm=algorithm))
    theirs = linear.weight
    assert type(ours) is type(theirs) and ours.block_size == theirs.block_size and ours.dtype == theirs.dtype
    assert ours.activation_quantization == theirs.activation_quantization and ours.target_dtype == theirs.target_dtype
    for part in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(ours, part), getattr(theirs, part).reshape(getattr(ours, part).shape)), part


def test_int8_rows_use_the_whole_grid_and_clip_nothing():
    """Per-row int8 (8w, the int8 embedding): every weight within half a step of its level, each row reaching an end."""
    config, model, _ = load_model(need_fixture(FIXTURE))
    weight = model.embed_tokens.weight.detach()[:4096]
    qdata, scale = qparams(weight, 8, None)
    assert (dequantize(qdata, scale) - weight).abs().le(scale / 2 * (1 + 1e-5)).all()  # no clipped extreme
    assert (qdata.int().abs().amax(1) >= 127).all()  # no unused range


@pytest.mark.parametrize("kwargs,message", [
    ({"quant": "int4"}, "unknown scheme; choose one of fp32, fp16, 8w, 4w, 8da4w"),
    ({"quant": "8w", "group_size": 32}, "--group-size applies to the grouped int4 schemes"),
    ({"quant": "fp32", "embedding_bits": 4}, "--embedding-bits applies to the 4-bit schemes"),
    ({"quant": "8da4w", "group_size": 48}, "--group-size 48: choose one of 32, 64, 128"),
    ({"quant": "4w", "embedding_bits": 2}, "--embedding-bits 2: choose 8"),
])
def test_bad_schemes_and_options_raise_clear_errors(kwargs, message):
    with pytest.raises(QuantizationError, match=message.replace("-", r"\-")):
        ExportOptions(**kwargs)


def test_defaults_are_resolved_and_recorded():
    options = ExportOptions(quant="8da4w")
    assert (options.group_size, options.embedding_bits) == (32, 8)
    assert resolve("8w", None, None).embedding_bits == 8 and resolve("fp32", None, None).group_size is None


@pytest.mark.parametrize("quant,fmt", [(q, f) for q, s in SCHEMES.items() for f in s.refused])
def test_a_format_that_does_not_offer_a_scheme_says_why(quant, fmt):
    with pytest.raises(QuantizationError, match=f"--quant {quant} --format {fmt}: not offered"):
        check_format(resolve(quant, None, None), fmt)


def test_group_size_that_does_not_divide_the_model_names_the_layer(tmp_path):
    from exporter.onnx import export_onnx

    config, model, _ = load_model(need_fixture(FIXTURE))
    with pytest.raises(QuantizationError, match="has 96 input channels, not a multiple of it; use --group-size 32"):
        export_onnx(model, config, tmp_path, ExportOptions(quant="8da4w", group_size=64, **SMALL))


def test_cli_rejects_a_bad_scheme_before_loading_anything(tmp_path, capsys):
    code = main(["export", "tiny", "--out", str(tmp_path / "b"), "--quant", "int3"])
    assert code == 2 and "unknown scheme" in capsys.readouterr().err
    code = main(["export", "tiny", "--out", str(tmp_path / "b"), "--quant", "4w", "--format", "pte"])
    assert code == 2 and "8da4w" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_onnx_untied_moe_model_quantizes_linears_and_keeps_the_moe_in_fp32(tmp_path):
    from exporter.onnx import export_onnx

    config = preset("tiny-moe")
    artifact = export_onnx(random_model(config), config, tmp_path,
                           ExportOptions(max_seq_len=64, prefill_chunk=16, quant="8da4w", embedding_bits=4))
    ops = artifact.details["op_counts"]["com.microsoft"]
    assert ops["MoE"] == 4 and ops["GatherBlockQuantized"] == 1
    # Per DeltaNet layer in_proj_qkv+in_proj_z (packed) and out_proj, per attention layer q+k+v (packed) and
    # o_proj, and the LM head: 14 matrices in 9 nodes; the untied lookup table is the 15th matrix.
    assert ops["MatMulNBits"] == 3 * 2 + 1 * 2 + 1 and artifact.details["quantization"]["matrices"] == 15
    assert artifact.details["quantization"]["packed"]["groups"] == 4
    embedding = artifact.details["quantization"]["embedding"]
    assert not embedding["tied"] and not embedding["stored_once"]


def test_onnx_packed_projections_compute_what_separate_ones_do(tmp_path, monkeypatch):
    """Stacking the projections of one input into one MatMulNBits changes no output bit, and leaves one node each."""
    import exporter.onnx.quantize as quantize_onnx
    from exporter.onnx import export_onnx
    from runtime.contract import io_names
    from tests.exporter import onnx_feeds

    config = preset("tiny")
    model = random_model(config, seed=5)
    options = ExportOptions(max_seq_len=64, prefill_chunk=16, quant="8da4w", embedding_bits=4)
    packed = export_onnx(model, config, tmp_path / "packed", options)
    monkeypatch.setattr(quantize_onnx, "_pack_siblings", lambda graph: {"groups": 0, "matrices": 0})
    separate = export_onnx(model, config, tmp_path / "separate", options)
    layers = config.text.layer_types
    linear, full = layers.count("linear_attention"), len(layers) - layers.count("linear_attention")
    # Packed: in_proj_qkv+in_proj_z, the MLP's gate+up, q+k+v; separate: 2, 2 and 3 nodes for those.
    assert packed.details["quantization"]["packed"] == {
        **packed.details["quantization"]["packed"], "groups": 2 * linear + 2 * full, "matrices": 4 * linear + 5 * full}
    count = {name: a.details["op_counts"]["com.microsoft"]["MatMulNBits"] for name, a in (("p", packed), ("s", separate))}
    assert count["s"] - count["p"] == 2 * linear + 3 * full

    import onnxruntime as ort

    _, outputs = io_names(config, options.onnx_profile)
    sessions = [ort.InferenceSession(str(tmp_path / d / "model.onnx"), providers=["CPUExecutionProvider"])
                for d in ("packed", "separate")]
    ids = torch.randint(0, config.text.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0)).numpy()
    state = onnx_feeds.empty_state(config, options.onnx_profile, 2)
    for start in (0, 9):  # a 9-token prompt (matrix kernels), then one token after it (vector kernels)
        runs = [session.run(None, onnx_feeds.feeds(config, options.onnx_profile, ids, start, state)) for session in sessions]
        for name, a, b in zip(outputs, *runs, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} at position {start}")
        ids, state = runs[0][0][:, -1].argmax(-1)[:, None], runs[0][1:]  # logits [B, 1, V]
