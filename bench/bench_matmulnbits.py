"""ONNX Runtime's MatMulNBits alone, at the 0.8B's shapes: what the LM head and a linear cost per call.

Each case is a one-node model (random packed weights; timing does not depend on their values)
run with plain onnxruntime on 2 threads without spinning, the cases interleaved call by call so
that the machine's drift hits them alike; the median of the calls is printed, and each case's
ratio to the first one of its shape. Cases: bits, block size, accuracy_level (1: fp32
activations, 4: int8 activations per block) and the activation dtype (fp16: Cast in and out,
fp16 scales: what an fp16-activation artifact would store).

    .venv/bin/python -m bench.bench_matmulnbits
"""

from __future__ import annotations

import statistics

import numpy as np

from bench.common import argument_parser, in_turns, timings

HEAD = (1024, 248320)  # K, N of the tied LM head
LINEAR = (1024, 3584)  # K, N of an MLP up/gate projection
CASES = [  # bits, block, accuracy_level, fp16 activations
    (8, 1024, 4, False), (4, 32, 4, False), (4, 32, 1, False), (8, 1024, 4, True), (4, 32, 4, True),
]


def session(k: int, n: int, bits: int, block: int, level: int, half: bool, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, size=(n, k // block, block * bits // 8), dtype=np.uint8)
    scales = (rng.random((n, k // block), dtype=np.float32) * 0.01).astype(np.float16 if half else np.float32)
    a, y = ("x_half", "y_half") if half else ("x", "y")
    nodes = [helper.make_node("MatMulNBits", [a, "B", "scales"], [y], domain="com.microsoft",
                              K=k, N=n, bits=bits, block_size=block, accuracy_level=level)]
    if half:
        nodes = [helper.make_node("Cast", ["x"], [a], to=TensorProto.FLOAT16), *nodes,
                 helper.make_node("Cast", [y], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "matmulnbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def name(case) -> str:
    bits, block, level, half = case
    return f"int{bits} block {block}, accuracy_level {level}, {'fp16' if half else 'fp32'} activations"


def measure(shape: tuple[int, int], rows: int, cases, calls: int, threads: int) -> dict:
    sessions = {case: session(*shape, *case, threads) for case in cases}
    x = np.random.default_rng(1).random((rows, shape[0]), dtype=np.float32)
    calls_s = in_turns({case: (lambda s=s: timings(lambda: s.run(None, {"x": x}), 0, 1)[0])
                        for case, s in sessions.items()}, calls)  # call by call
    return {case: statistics.median(t) * 1e3 for case, t in calls_s.items()}


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for label, shape, rows in (("LM head, decode", HEAD, 1), ("MLP linear, decode", LINEAR, 1),
                               ("MLP linear, 128-token prefill", LINEAR, 128)):
        ms = measure(shape, rows, CASES, args.calls, args.threads)
        first = ms[CASES[0]]
        print(f"{label}: M={rows}, K={shape[0]}, N={shape[1]}")
        for case in CASES:
            print(f"  {ms[case]:8.2f} ms  {ms[case] / first:5.2f}x  {name(case)}")


if __name__ == "__main__":
    main()
