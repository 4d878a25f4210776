"""ops.LOWERINGS: one table per qwen35:: op, keyed by the contract's profiles and kernel sets."""

import pytest
import torch

import ops
from ops.lowering import DECOMPOSITION, TRANSLATION
from runtime.contract import ONNX_PROFILES, PTE_KERNELS

PREFILL_CHUNK = 32


def test_every_registered_op_has_one_table():
    registered = {name.removeprefix("qwen35::") for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("qwen35::")}
    names = [lowering.name for lowering in ops.LOWERINGS]
    assert sorted(names) == sorted(registered) and len(set(names)) == len(names)
    assert all(lowering.overload.name() == f"qwen35::{lowering.name}" for lowering in ops.LOWERINGS)


@pytest.mark.parametrize("lowering", ops.LOWERINGS, ids=lambda lowering: lowering.name)
def test_tables_use_the_contracts_keys_and_build(lowering):
    assert set(lowering.onnx) <= set(ONNX_PROFILES) and set(lowering.executorch) <= set(PTE_KERNELS)
    for entry in (*lowering.onnx.values(), *lowering.executorch.values()):
        assert callable(entry.build(PREFILL_CHUNK))
        report = entry.describe(PREFILL_CHUNK)
        assert report and "{" not in report
    assert all(entry.kind in (TRANSLATION, DECOMPOSITION) for entry in lowering.onnx.values())
    assert not any(entry.needs_llm_ops for kernels, entry in lowering.executorch.items() if kernels == "stock")


def test_what_each_exporter_reaches():
    """kv_attention is the ort decoder's attention core only; the llm kernel set's delta rule calls ExecuTorch's kernel."""
    tables = {lowering.name: lowering for lowering in ops.LOWERINGS}
    assert set(tables["kv_attention"].onnx) == {"ort"} and not tables["kv_attention"].executorch
    assert tables["gated_delta_rule"].executorch["llm"].needs_llm_ops
    assert "max_len 32" in tables["gated_delta_rule"].onnx["portable"].describe(32)
