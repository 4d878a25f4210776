"""How the benches run ONNX models: onnxruntime sessions, onnxruntime-genai, and a decoder that has no
bundle, fed on plain onnxruntime as `runtime.backends` feeds ours.

Our bundles run through `runtime.backends.OnnxBackend` itself (`open_onnx`). What it cannot open is
a model without a manifest: the builder's (`past_key_values.{i}.key|value`, `past.{i}.conv|recurrent`,
an `attention_mask`, every position's logits) and the bare `exporter.onnx` exports the benches
time before any bundle is written. `GraphRunner` feeds those by their input names with the same
I/O binding, so that the comparison is of the models and not of two drivers: the state stays in
ONNX Runtime's tensors from call to call (a numpy round trip would copy ~20 MB a token at the 0.8B
shape, a cost no app pays), and the states that `exporter.onnx.state` proves may be updated in place
(both models' conv and recurrent states, and KV caches written by GroupQueryAttention into buffers
of `capacity` slots) are bound as their own output, as `runtime.backends` binds ours and
onnxruntime-genai binds both. `in_place=False` gives every present a fresh buffer instead, the
KV caches growing.

The state shapes come from the graph's own inputs: batch 1, a KV cache empty or of `capacity`
slots, and a dimension the graph leaves symbolic otherwise (the builder's head size, which it
keeps symbolic for quantized caches) from the model's `genai_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.contract import (
    ATTENTION_MASK,
    GENAI_CONFIG,
    INPUT_IDS,
    MANIFEST,
    ONNX_MODEL,
    POSITION_IDS,
)


def genai_model(folder: Path, threads: int = 2):
    """An onnxruntime-genai model on the CPU with `threads` intra-op threads.

    Set, because neither config sets a count (the builder's nor ours), and onnxruntime-genai's own
    default decoded the 0.8B at 41-44 tok/s on this 2-core machine where 2 threads gave 60.
    """
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def onnx_session(model: Path, threads: int):
    """A CPU onnxruntime session with `threads` intra-op threads (and one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def random_prompt(folder: Path, tokens: int) -> np.ndarray:
    """`tokens` ids drawn (seed 0) below the vocabulary size in the model's genai_config.json (speed does not
    depend on which ids)."""
    vocab = json.loads((Path(folder) / GENAI_CONFIG).read_text())["model"]["vocab_size"]
    return np.random.default_rng(0).integers(0, vocab, size=tokens)


def open_onnx(folder: Path, threads: int):
    """The ONNX decoder in `folder`: our bundle through `runtime.backends`, any other through `GraphRunner`.

    Either has `reset()` and `forward(ids [T], pos) -> logits [V]`.
    """
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        from runtime.backends import make_backend
        from runtime.bundle import open_bundle

        return make_backend(open_bundle(folder, verify=False), "onnx", threads=threads)
    return GraphRunner(onnx_session(folder / ONNX_MODEL, threads), folder / ONNX_MODEL)


class GraphRunner:
    """Feeds a decoder graph by its input names (ours, or the builder's); `forward` as `runtime.backends`'."""

    def __init__(self, session, model: Path, *, in_place: bool = True, capacity: int = 2048):
        import onnx
        import onnxruntime as ort

        from exporter.onnx.state import in_place_states

        self.session, self.capacity, self._value = session, capacity, ort.OrtValue.ortvalue_from_numpy
        self.inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self.logits = outputs[0]
        # present.X feeds the input of the same suffix: past_key_values.X (ours; the builder's KV) or past.X
        past_by_suffix = {name.split(".", 1)[1]: name for name in self.inputs if name.startswith("past")}
        self.feeds_back = {present: past_by_suffix[present.split(".", 1)[1]] for present in outputs[1:]}
        graph = onnx.load(str(model), load_external_data=False).graph
        pairs = {past: present for present, past in self.feeds_back.items()}
        self.in_place = set(in_place_states(graph, pairs)) if in_place else set()
        genai = Path(model).parent / GENAI_CONFIG
        self.head_size = json.loads(genai.read_text())["model"]["decoder"]["head_size"] if genai.exists() else None
        self.reset()

    def _shape(self, name: str, dims) -> list[int]:
        shape = []
        for index, dim in enumerate(dims):
            if index == 0 or isinstance(dim, int):
                shape.append(1 if index == 0 else dim)  # batch 1
            elif index == 2 and name.endswith((".key", ".value")):
                shape.append(self.capacity if name in self.in_place else 0)
            elif self.head_size is not None:
                shape.append(self.head_size)
            else:
                raise ValueError(f"{name}: dimension {index} is symbolic ({dim!r}) and no genai_config.json "
                                 "beside the model names the head size; give the model's directory as exported")
        return shape

    def reset(self) -> None:
        """A fresh, zero state (a call updates the in-place parts of the state it is given)."""
        self.state = {past: self._value(np.zeros(self._shape(past, self.inputs[past].shape), np.float32))
                      for past in self.feeds_back.values()}

    def forward(self, ids: np.ndarray, pos: int) -> np.ndarray:
        """ids int64 [T] at positions pos..pos+T-1 -> the last position's logits [V]."""
        steps, binding = len(ids), self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_IDS, self._value(np.asarray(ids, np.int64).reshape(1, steps)))
        positions = np.arange(pos, pos + steps, dtype=np.int64)
        rank = len(self.inputs[POSITION_IDS].shape)  # ours [3, B, T] (M-RoPE), or [B, T]
        binding.bind_ortvalue_input(POSITION_IDS, self._value(np.broadcast_to(positions, (3, 1, steps)[-rank:]).copy()))
        if ATTENTION_MASK in self.inputs:
            binding.bind_ortvalue_input(ATTENTION_MASK, self._value(np.ones((1, pos + steps), np.int64)))
        binding.bind_output(self.logits, "cpu")
        for present, past in self.feeds_back.items():
            binding.bind_ortvalue_input(past, self.state[past])
            if past in self.in_place:
                binding.bind_ortvalue_output(present, self.state[past])
            else:
                binding.bind_output(present, "cpu")
        self.session.run_with_iobinding(binding)
        logits, *presents = binding.get_outputs()  # in binding order
        self.state = {past: self.state[past] if past in self.in_place else value
                      for past, value in zip(self.feeds_back.values(), presents, strict=True)}
        logits = logits.numpy()  # ours [1, 1, V] (exports before genai_config.json: [1, V]); the builder's [1, T, V]
        return logits[0, -1] if logits.ndim == 3 else logits[0]
