"""exporter.onnx.state: which states a runtime may bind as their own output, on hand-built graphs.

Each graph is the smallest one that has, or lacks, the property: a reader of the past that does
or does not finish before the present's writer starts. The last test runs one that lacks it
with the present bound in place, to show the corruption the check keeps out.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from exporter.onnx.state import in_place_states

PAIRS = {"past": "present"}


def graph(nodes, outputs=("present", "out")):
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4]) for name in ("past", "x")]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4]) for name in outputs]
    return helper.make_graph(nodes, "g", inputs, outs)


def test_a_past_read_before_its_writer_qualifies():
    nodes = [helper.make_node("Neg", ["past"], ["a"]),  # a reader, and the writer's ancestor
             helper.make_node("Mul", ["a", "x"], ["present"]),
             helper.make_node("Sigmoid", ["present"], ["out"])]
    assert in_place_states(graph(nodes), PAIRS) == ["past"]


def test_a_past_read_by_a_node_the_writer_does_not_wait_for_does_not():
    nodes = [helper.make_node("Neg", ["x"], ["present"]),
             helper.make_node("Sigmoid", ["past"], ["out"])]  # may run after the writer: it would read the present
    assert in_place_states(graph(nodes), PAIRS) == []


def test_a_read_through_a_view_counts_as_a_read_of_the_past():
    nodes = [helper.make_node("Reshape", ["past", "shape"], ["view"]),  # ONNX Runtime aliases the past
             helper.make_node("Neg", ["x"], ["present"]),
             helper.make_node("Sigmoid", ["view"], ["out"])]
    g = graph(nodes)
    g.initializer.append(helper.make_tensor("shape", TensorProto.INT64, [1], [4]))
    assert in_place_states(g, PAIRS) == []


def test_the_writer_may_read_the_past_only_if_its_kernel_reads_before_it_writes():
    elementwise = [helper.make_node("Add", ["past", "x"], ["present"]), helper.make_node("Neg", ["x"], ["out"])]
    assert in_place_states(graph(elementwise), PAIRS) == ["past"]
    reordering = [helper.make_node("Transpose", ["past"], ["present"], perm=[0]), helper.make_node("Neg", ["x"], ["out"])]
    assert in_place_states(graph(reordering), PAIRS) == []
    delta = helper.make_node("LinearAttention", ["x", "x", "x", "past"], ["out", "present"], domain="com.microsoft")
    assert in_place_states(graph([delta]), PAIRS) == ["past"]


def test_shape_reads_no_data_and_may_run_at_any_time():
    nodes = [helper.make_node("Neg", ["past"], ["present"]),
             helper.make_node("Shape", ["past"], ["shape"]),
             helper.make_node("Cast", ["shape"], ["out"], to=TensorProto.FLOAT)]
    assert in_place_states(graph(nodes), PAIRS) == []  # Neg is not in the list: it writes as it reads
    nodes[0] = helper.make_node("Mul", ["past", "x"], ["present"])
    assert in_place_states(graph(nodes), PAIRS) == ["past"]


def test_a_past_read_inside_a_subgraph_or_also_returned_does_not_qualify():
    body = helper.make_graph([helper.make_node("Neg", ["past"], ["b"])], "body", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    branch = helper.make_node("If", ["cond"], ["out"], then_branch=body, else_branch=body)
    g = graph([helper.make_node("Mul", ["past", "x"], ["present"]), branch])
    g.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    assert in_place_states(g, PAIRS) == []
    returned = graph([helper.make_node("Mul", ["past", "x"], ["present"])], outputs=("present", "past"))
    assert in_place_states(returned, PAIRS) == []


def test_binding_a_present_the_check_refuses_in_place_corrupts_it():
    """out = past + present runs after the present's writer: bound in place, it reads the present twice."""
    ort = pytest.importorskip("onnxruntime")
    g = graph([helper.make_node("Neg", ["x"], ["present"]), helper.make_node("Add", ["past", "present"], ["out"])])
    assert in_place_states(g, PAIRS) == []
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def out(in_place: bool) -> np.ndarray:
        past = ort.OrtValue.ortvalue_from_numpy(np.ones(4, np.float32))
        binding = session.io_binding()
        binding.bind_ortvalue_input("past", past)
        binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(np.full(4, 5.0, np.float32)))
        if in_place:
            binding.bind_ortvalue_output("present", past)
        else:
            binding.bind_output("present", "cpu")
        binding.bind_output("out", "cpu")
        session.run_with_iobinding(binding)
        return binding.get_outputs()[1].numpy()

    np.testing.assert_array_equal(out(in_place=False), np.full(4, -4.0))  # 1 + -5
    np.testing.assert_array_equal(out(in_place=True), np.full(4, -10.0))  # -5 + -5: the past was overwritten
