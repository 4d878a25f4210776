"""The three ways to run a bundle's model, behind one small interface.

A `Backend` runs a chunk of token ids at given positions and returns the last
position's logits; it owns the model's state between calls and drops it on
`reset()`. Chunking, positions, capacity checks, sampling and text live in
`runtime.session`, once for all backends. Each backend follows the I/O
contract in `runtime.contract`:

- `reference`: the PyTorch decoder, which the exporter provides (`runtime.reference`);
- `onnx`: an ONNX Runtime session, state fed back as `past_key_values.*` from `present.*`;
- `pte`: ExecuTorch's Python runtime, `forward(tokens, input_pos)`, state in the
  program's mutable buffers (input_pos = 0 starts a new sequence).

Not here: reading or verifying the bundle (`runtime.bundle`).
"""

from __future__ import annotations

import abc
import logging
import os
from pathlib import Path

import numpy as np

from runtime import reference
from runtime.bundle import Bundle
from runtime.contract import (
    ATTENTION_MASK,
    FORWARD_METHOD,
    IMAGE_EMBEDS,
    IMAGE_METHOD,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    load_llm_custom_ops,
    past_name,
    present_name,
    state_names,
    state_shape,
)
from runtime.errors import BundleError

log = logging.getLogger("qwen_edge")

BACKENDS = ("reference", "onnx", "pte")


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads share one core's FPUs, so they rarely help GEMV."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return allowed
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            physical = value.strip()
        elif key.strip() == "core id":
            cores.add((physical, value.strip()))
    return max(1, min(allowed, len(cores) or allowed))


class Backend(abc.ABC):
    """Runs token chunks on one model; subclasses hold the state in whatever form their engine wants."""

    name: str
    max_chunk: int  # most tokens one call takes
    capacity: int  # most tokens one sequence may hold

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the sequence: the next call starts at position 0."""

    @abc.abstractmethod
    def forward(self, ids: np.ndarray, pos: int, *, positions: np.ndarray | None = None,
                image_embeds: np.ndarray | None = None) -> np.ndarray:
        """ids int64 [T] at cache slots pos..pos+T-1 (1 <= T <= max_chunk) -> logits float32 [V] of the last.

        Image sequences (multimodal bundles) pass, on every call of the sequence, positions int64
        [3, T] (the M-RoPE rotary positions, which after an image differ from the slots) and
        image_embeds float32 [N, D] (N >= the image tokens in ids; row k fills the k-th).
        """

    def state(self) -> dict[str, np.ndarray] | None:
        """The carried state as `{"{layer}.{part}": array}` in the ONNX layout, where the engine exposes it."""
        return None


class OnnxBackend(Backend):
    """ONNX Runtime; the state stays in OrtValues between calls, so no NumPy copy of the caches per token."""

    name = "onnx"
    _DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

    def __init__(self, bundle: Bundle, threads: int):
        import onnxruntime as ort

        artifact = bundle.artifact("onnx")
        self.max_chunk, self.capacity = _limits(bundle, artifact)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # ORT's default spawns one per logical core: set it explicitly
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Errors only: a multimodal decoder's optional image_embeds input (a graph input with a default
        # initializer) makes ORT warn on every load that it cannot constant-fold it, which is intended.
        options.log_severity_level = 3
        path = bundle.file(artifact["files"][0]["path"])
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types (Fail, InvalidGraph, ...) with no common base
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from err
        self._ort = ort
        self._names = [(i, part) for i, part in state_names(bundle.config.text)]
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        self._takes_images = IMAGE_EMBEDS in {i.name for i in self._session.get_overridable_initializers()} | set(self._inputs)
        self._text = bundle.config.text
        # KV caches of a fixed capacity (ort profile): buffers of max_seq_len slots, the mask counting what they hold
        self._capacity_kv = ATTENTION_MASK in self._inputs
        self._held = 0
        # States whose present the export proved may overwrite the past (`exporter.onnx.state`): bound in place,
        # they cost no allocation or copy a call and stay where the kernels read them (0.8B 4-bit decode 7-11 %).
        self._in_place = set(artifact.get("details", {}).get("state_in_place", {}).get("parts", []))
        self.reset()

    def _empty(self, layer: int, part: str):
        name = past_name(layer, part)
        if name not in self._inputs:
            raise BundleError(f"model.onnx: input {name!r} missing; the file does not follow runtime/contract.py")
        dtype = self._DTYPES.get(self._inputs[name].type, np.float32)
        shape = state_shape(self._text, part, kv_slots=self.capacity if self._capacity_kv else 0)
        return self._ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype))

    def reset(self) -> None:
        self._past = {past_name(i, p): self._empty(i, p) for i, p in self._names}
        self._held = 0

    def forward(self, ids: np.ndarray, pos: int, *, positions: np.ndarray | None = None,
                image_embeds: np.ndarray | None = None) -> np.ndarray:
        T, value = len(ids), self._ort.OrtValue.ortvalue_from_numpy
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(INPUT_IDS, value(np.asarray(ids, dtype=np.int64).reshape(1, T)))
        if positions is None:
            positions = np.broadcast_to(np.arange(pos, pos + T, dtype=np.int64), (3, T))
        binding.bind_ortvalue_input(POSITION_IDS, value(np.ascontiguousarray(np.asarray(positions, dtype=np.int64).reshape(3, 1, T))))
        if image_embeds is not None:
            if not self._takes_images:
                raise BundleError("model.onnx: has no image_embeds input; export a multimodal checkpoint for image prompts")
            binding.bind_ortvalue_input(IMAGE_EMBEDS, value(np.ascontiguousarray(image_embeds, dtype=np.float32)))
        if self._capacity_kv:
            binding.bind_ortvalue_input(ATTENTION_MASK, value(np.ones((1, pos + T), dtype=np.int64)))
        for (i, part), (name, past) in zip(self._names, self._past.items(), strict=True):
            binding.bind_ortvalue_input(name, past)
            if part in self._in_place:  # the present overwrites the past's own buffer (see __init__)
                binding.bind_ortvalue_output(present_name(i, part), past)
            else:
                binding.bind_output(present_name(i, part), "cpu")
        binding.bind_output(LOGITS, "cpu")
        self._session.run_with_iobinding(binding)
        *present, logits = binding.get_outputs()  # in binding order
        self._past = {name: past if part in self._in_place else new
                      for (_, part), (name, past), new in zip(self._names, self._past.items(), present, strict=True)}
        self._held = pos + T
        logits = logits.numpy()  # [1, 1, V]; bundles exported before genai_config.json have [1, V]
        return (logits[0, -1] if logits.ndim == 3 else logits[0]).astype(np.float32, copy=False)

    def state(self) -> dict[str, np.ndarray] | None:
        """The state as the reference holds it: a capacity KV cache cut to the tokens it holds."""
        state = {f"{i}.{p}": self._past[past_name(i, p)].numpy().astype(np.float32) for i, p in self._names}
        if self._capacity_kv:
            state = {name: x[:, :, :self._held] if name.endswith((".key", ".value")) else x for name, x in state.items()}
        return state


class PteBackend(Backend):
    """ExecuTorch's Python runtime driving `forward(tokens [1, T], input_pos [1]) -> logits [1, V]`."""

    name = "pte"

    def __init__(self, bundle: Bundle, threads: int):
        import torch
        from executorch.runtime import Runtime

        artifact = bundle.artifact("pte")
        self.max_chunk, self.capacity = _limits(bundle, artifact)
        _set_executorch_threads(threads)
        _load_quantized_kernels()
        if artifact.get("details", {}).get("kernels") == "llm":
            load_llm_custom_ops()
        files = [bundle.file(entry["path"]) for entry in artifact["files"]]
        path, data = files[0], [f for f in files[1:] if f.suffix == ".ptd"]
        if len(data) > 1:
            raise BundleError(f"{path}: {len(data)} .ptd data files listed; ExecuTorch's Python runtime takes one")
        try:
            # Weights may live outside the program in a .ptd file (external constants).
            program = Runtime.get().load_program(path, data_path=data[0] if data else None)
            method = program.load_method(FORWARD_METHOD)
        except (RuntimeError, ValueError) as err:
            raise BundleError(f"{path}: ExecuTorch cannot load it ({str(err).splitlines()[0]})") from err
        if method is None:
            raise BundleError(f"{path}: has no 'forward' method; the file does not follow runtime/contract.py")
        self._program, self._method, self._image_method, self._torch = program, method, None, torch
        self._path, self._hidden = path, bundle.config.text.hidden_size

    def reset(self) -> None:
        """Nothing to drop here: the next call passes input_pos = 0, which the program takes as a new sequence."""

    def forward(self, ids: np.ndarray, pos: int, *, positions: np.ndarray | None = None,
                image_embeds: np.ndarray | None = None) -> np.ndarray:
        torch = self._torch
        tokens = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).view(1, -1)  # [1, T]
        input_pos = torch.tensor([pos], dtype=torch.int64)
        if positions is None and image_embeds is None:
            (logits,) = self._method.execute([tokens, input_pos])[:1]
            return logits.float().numpy()[0]
        # An image sequence: every call goes through forward_with_images, which keeps its own state.
        if positions is None:
            positions = np.broadcast_to(np.arange(pos, pos + tokens.shape[1], dtype=np.int64), (3, tokens.shape[1]))
        if image_embeds is None or len(image_embeds) == 0:
            image_embeds = np.zeros((1, self._hidden), dtype=np.float32)  # the method takes at least one row
        rope = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)).view(3, -1)  # [3, T]
        rows = torch.from_numpy(np.ascontiguousarray(image_embeds, dtype=np.float32))
        (logits,) = self._images().execute([tokens, rows, input_pos, rope])[:1]
        return logits.float().numpy()[0]

    def _images(self):
        """The program's `forward_with_images` method, loaded on first use (its own buffers and delegate)."""
        if self._image_method is None:
            if IMAGE_METHOD not in self._program.method_names:
                raise BundleError(f"{self._path}: has no {IMAGE_METHOD!r} method; export a multimodal checkpoint "
                                  "for image prompts")
            self._image_method = self._program.load_method(IMAGE_METHOD)
        return self._image_method


def _limits(bundle: Bundle, artifact: dict) -> tuple[int, int]:
    """(prefill chunk, max_seq_len) of an artifact: its own details first, the bundle's export options else."""
    details = artifact.get("details", {})
    export = bundle.export
    return int(details.get("prefill_chunk", export["prefill_chunk"])), int(details.get("max_seq_len", export["max_seq_len"]))


def _load_quantized_kernels() -> None:
    """Register ExecuTorch's quantized kernels (the quantized embedding lookups) with its Python runtime."""
    try:
        import executorch.kernels.quantized  # noqa: F401
    except ImportError as err:
        log.info("ExecuTorch quantized kernels not loaded (%s): quantized bundles will not run", err)


def _set_executorch_threads(threads: int) -> None:
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        log.info("ExecuTorch thread pool size not set: portable_lib is unavailable")
        return
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is None:
        log.info("ExecuTorch thread pool size not set: this ExecuTorch has no _unsafe_reset_threadpool")
        return
    reset(threads)


def make_backend(bundle: Bundle, name: str, *, model=None, threads: int | None = None) -> Backend:
    """A backend over the bundle. `model`: a checkpoint path or a loaded `Qwen35Model` (reference only).

    `threads`: intra-op threads; ONNX Runtime and ExecuTorch default to the physical cores, the
    reference keeps PyTorch's setting unless given.
    """
    if name == "reference":
        return reference.get().backend(bundle, model, threads)
    threads = threads or physical_cores()
    if name == "onnx":
        return OnnxBackend(bundle, threads)
    if name == "pte":
        return PteBackend(bundle, threads)
    raise BundleError(f"backend {name!r}: unknown; choose one of {', '.join(BACKENDS)}")
