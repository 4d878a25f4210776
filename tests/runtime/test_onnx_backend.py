"""The ONNX backend's plumbing, on a toy model with exactly the contract's I/O (exporter/artifact.py).

The real lowering is checked in test_formats.py; here the model is a stand-in whose
outputs reveal what the backend fed it: positions, chunking and the state it carries.
"""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from tests.runtime.fakes import contract_onnx_bundle


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    bundle = contract_onnx_bundle(tmp_path_factory.mktemp("toy") / "bundle")
    return runtime.load(bundle, "onnx", threads=1)


def test_logits_come_from_the_last_token_and_position(session):
    session.reset()
    logits = session.prefill([7, 8, 9])
    assert int(np.argmax(logits)) == 10
    np.testing.assert_allclose(logits[10] - 1.0, 0.002, atol=1e-6)  # position 2


def test_a_bundle_with_rank_2_logits_still_runs(tmp_path):
    """Bundles exported before the logits became [B, 1, V] (for onnxruntime-genai) give the same logits."""
    older = runtime.load(contract_onnx_bundle(tmp_path / "bundle", "export_contract_onnx_rank2_logits"), "onnx",
                         threads=1)
    logits = older.prefill([7, 8, 9])
    assert logits.shape == (older.bundle.config.text.vocab_size,) and int(np.argmax(logits)) == 10
    np.testing.assert_allclose(logits[10] - 1.0, 0.002, atol=1e-6)


def test_state_is_fed_back_and_grows(session):
    session.reset()
    session.prefill(list(range(40)))  # chunks of 32 + 8: two calls
    state = session.backend.state()
    assert state["3.key"].shape == (1, 2, 40, 32)
    np.testing.assert_array_equal(state["3.key"][0, 0, :, 0], np.arange(1, 41))  # position + 1, in order
    assert state["0.conv"].shape == (1, 128, 3) and np.all(state["0.conv"] == 2.0)  # two calls
    session.decode(5)
    state = session.backend.state()
    assert state["3.value"].shape[2] == 41 and float(state["0.recurrent"].max()) == 3.0


def test_states_the_export_proved_safe_are_updated_in_place(session):
    """The toy's conv and recurrent presents are element-wise Adds of their pasts: the manifest lists them,
    and the backend binds each as its own output (the buffer stays, its values move, as the test above reads)."""
    artifact = session.bundle.artifact("onnx")
    assert artifact["details"]["state_in_place"]["parts"] == ["conv", "recurrent"]
    session.reset()
    conv, key = session.backend._past["past_key_values.0.conv"], session.backend._past["past_key_values.3.key"]
    session.prefill([1, 2])
    session.decode(1)
    assert session.backend._past["past_key_values.0.conv"] is conv and float(conv.numpy().max()) == 2.0
    assert session.backend._past["past_key_values.3.key"] is not key  # the KV cache grows: a new buffer a call


def test_reset_drops_the_state(session):
    session.prefill([1, 2])
    session.reset()
    session.prefill([1])
    state = session.backend.state()
    assert state["3.key"].shape[2] == 1 and float(state["0.conv"].max()) == 1.0


def test_greedy_generation_follows_the_toy_rule(session):
    result = session.generate([100], max_new_tokens=5)
    assert result.ids == [101, 102, 103, 104, 105]


def test_threads_are_set_explicitly(session):
    assert session.backend._session.get_session_options().intra_op_num_threads == 1


def test_running_an_onnx_bundle_does_not_load_torch(tmp_path):
    """The ONNX path needs onnxruntime only: torch would add ~0.35 GB of RSS to every app process."""
    import subprocess
    import sys

    bundle = contract_onnx_bundle(tmp_path / "bundle")
    script = ("import sys, runtime; s = runtime.load(sys.argv[1], 'onnx', threads=1); s.prefill([7, 8]); "
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(bundle)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr
