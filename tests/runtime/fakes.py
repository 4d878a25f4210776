"""Stand-in lowerings for testing the bundle machinery without the real exporters.

The fakes write a small file and describe it as an `Artifact`, as a lowering
would; the failing ones fail the way a lowering can (an exception, an
interrupt) after writing part of their output, so tests can check that
nothing is left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from exporter import bundle as bundle_module
from exporter.artifact import Artifact, ExportOptions
from tests.conftest import need_fixture

SMALL = ExportOptions(max_seq_len=256, prefill_chunk=32)


def export_fake(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    (out_dir / "model.fake").write_bytes(b"not a real program\n" * 64)
    return Artifact("fake", ["model.fake"], options.quant, {"methods": ["forward"], "note": "test double"})


def export_failing(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    (out_dir / "model.failing").write_bytes(b"half written")
    raise RuntimeError("lowering failed half way")


def export_interrupted(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    (out_dir / "model.interrupted").write_bytes(b"half written")
    raise KeyboardInterrupt


def export_slow(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    """Writes part of its output, then takes its time: a window for a test to kill the process."""
    (out_dir / "model.slow").write_bytes(b"half written")
    time.sleep(120)
    raise RuntimeError("export_slow was not interrupted")


SEEN: list[tuple[str, int, float]] = []  # (format, id(model), sum of |weights|) as each lowering received it


def export_zeroing(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    """Changes its model in place, as a quantizing lowering may, after noting what it was given."""
    import torch

    SEEN.append(("zeroing", id(model), float(sum(p.abs().sum() for p in model.parameters()))))
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    (out_dir / "model.zeroing").write_bytes(b"zeroed\n")
    return Artifact("zeroing", ["model.zeroing"], options.quant, {})


def export_reading(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    SEEN.append(("reading", id(model), float(sum(p.abs().sum() for p in model.parameters()))))
    (out_dir / "model.reading").write_bytes(b"read only\n")
    return Artifact("reading", ["model.reading"], options.quant, {})


@contextlib.contextmanager
def fake_exporters():
    """Register the fakes as formats `fake`, `failing`, `interrupted`, `slow`, `zeroing`, `reading` for the duration."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("fake", "failing", "interrupted", "slow", "zeroing", "reading"):
            mp.setitem(bundle_module.EXPORTERS, name, (__name__, f"export_{name}"))
        yield


def fake_bundle(spec: str, out: Path, **kwargs) -> Path:
    """A bundle holding one fake artifact (plus tokenizer, golden outputs, selfcheck), not validated."""
    kwargs.setdefault("options", SMALL)
    kwargs.setdefault("validate", False)
    with fake_exporters():
        return bundle_module.export_bundle(spec, out, formats=["fake"], **kwargs)


def need_module(name: str) -> None:
    """Skip while a lowering module has not landed yet."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} not available yet")


def contract_onnx(config) -> "onnx.ModelProto":  # noqa: F821
    """A toy ONNX model with exactly the I/O of exporter/artifact.py, to test the ONNX backend's plumbing.

    logits = onehot(last id + 1) + 0.001 * last position; key/value grow by T
    entries of value (position + 1); conv and recurrent states count the calls
    (each call adds 1). So greedy from id i yields i+1, i+2, ...; the positions
    and the state a backend feeds back can be read off the outputs.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from runtime.contract import state_names

    t = config.text
    V = t.vocab_size
    shift = np.roll(np.eye(V, dtype=np.float32), 1, axis=1)  # row i = onehot(i + 1)
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["T"], axis=0),  # [1]
        helper.make_node("Sub", ["T", "one"], ["last"]),
        helper.make_node("Gather", ["input_ids", "last"], ["last_id"], axis=1),  # [1, 1]
        helper.make_node("Gather", ["shift", "last_id"], ["hot"], axis=0),  # [1, 1, V]
        helper.make_node("Squeeze", ["hot", "one"], ["onehot"]),  # [1, V]
        helper.make_node("Gather", ["position_ids", "zero"], ["pos_t"], axis=0),  # [1, T]
        helper.make_node("Gather", ["pos_t", "last"], ["pos_last"], axis=1),  # [1, 1]
        helper.make_node("Cast", ["pos_last"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pos_f", "milli"], ["pos_small"]),
        helper.make_node("Reshape", ["pos_small", "one_one"], ["pos_term"]),  # [1, 1]
        helper.make_node("Add", ["onehot", "pos_term"], ["logits_rows"]),  # [1, V]
        helper.make_node("Unsqueeze", ["logits_rows", "one"], ["logits"]),  # [1, 1, V], as the exporter writes
        helper.make_node("Cast", ["pos_t"], ["pos_tf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["pos_tf", "one_f"], ["pos_plus"]),  # [1, T]
        helper.make_node("Unsqueeze", ["pos_plus", "axes"], ["kv_base"]),  # [1, 1, T, 1]
        helper.make_node("Expand", ["kv_base", "kv_shape"], ["kv_new"]),  # [1, Hkv, T, Dh]
    ]
    inits = [
        numpy_helper.from_array(shift, "shift"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([1, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([1, 1], np.int64), "one_one"),
        numpy_helper.from_array(np.array(0.001, np.float32), "milli"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array([1, t.num_key_value_heads, 1, t.head_dim], np.int64), "kv_shape"),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [3, 1, "T"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, V])]
    for i, part in state_names(t):
        past, present = f"past_key_values.{i}.{part}", f"present.{i}.{part}"
        inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, None))
        outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, None))
        if part in ("key", "value"):
            nodes.append(helper.make_node("Concat", [past, "kv_new"], [present], axis=2))
        else:
            nodes.append(helper.make_node("Add", [past, "one_f"], [present]))
    graph = helper.make_graph(nodes, "contract", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def export_contract_onnx(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    import onnx

    from exporter.onnx.state import state_in_place

    onnx.save(contract_onnx(config), out_dir / "model.onnx")
    return Artifact("onnx", ["model.onnx"], options.quant, {"profile": "toy", "note": "contract test double",
                                                            "state_in_place": state_in_place(out_dir / "model.onnx", config)})


def export_contract_onnx_rank2_logits(model, config, out_dir: Path, options: ExportOptions) -> Artifact:
    """The toy model as bundles before genai_config.json were exported: logits [1, V], not [1, 1, V]."""
    import onnx

    proto = contract_onnx(config)
    graph = proto.graph
    unsqueeze = next(n for n in graph.node if n.output[0] == "logits")
    graph.node.remove(unsqueeze)
    next(n for n in graph.node if n.output[0] == "logits_rows").output[0] = "logits"
    del graph.output[0].type.tensor_type.shape.dim[1]
    onnx.save(proto, out_dir / "model.onnx")
    return Artifact("onnx", ["model.onnx"], options.quant, {"profile": "toy", "note": "contract test double"})


def contract_onnx_bundle(out: Path, exporter: str = "export_contract_onnx") -> Path:
    """A tiny-preset bundle whose `onnx` artifact is the toy contract model (not the decoder)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bundle_module.EXPORTERS, "onnx", (__name__, exporter))
        return bundle_module.export_bundle("tiny", out, formats=["onnx"], options=SMALL, validate=False)


@functools.lru_cache(maxsize=1)
def shared_trained_bundle() -> Path:
    """One fake-artifact bundle of the trained fixture per test session (read-only: copy it to change it).

    Building it costs a golden trace over a 248k vocabulary and a tokenizer load, so the
    test files that only read it share this one.
    """
    root = Path(tempfile.mkdtemp(prefix="qwen-edge-trained-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return fake_bundle(str(need_fixture("qwen35-tiny-code")), root / "bundle")
