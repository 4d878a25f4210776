"""The vision encoder of a multimodal bundle on each backend: an image's patches in, its decoder embeddings out.

An encoder takes one preprocessed image (`runtime.image.PixelPatches`) and
returns its M merged-token embeddings [M, D], which the decoder splices into
the prompt (`runtime.session`). The grid's tables (the four position-table
taps and the rotary cos/sin of every patch) are computed on the host
(`runtime.image_prompt.grid_tables`) and fed with the patches, as the exported
encoder's I/O contract says (`runtime.contract.VISION_INPUTS`):

- `reference`: the PyTorch tower from the checkpoint, which the exporter provides (`runtime.reference`);
- `onnx`: `vision.onnx` in ONNX Runtime;
- `pte`: `vision.pte` (method `vision_encoder`) in ExecuTorch's Python runtime.

Not here: preprocessing (`runtime.image`), the prompt around the image (`runtime.image_prompt`).
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from runtime import reference
from runtime.bundle import Bundle
from runtime.contract import VISION_INPUTS, VISION_METHOD
from runtime.errors import BundleError
from runtime.image import ImageSpec, PixelPatches
from runtime.image_prompt import grid_tables


class VisionEncoder(abc.ABC):
    """Runs one image through the tower."""

    def __init__(self, bundle: Bundle):
        self.config = bundle.config.vision

    def encode(self, image: PixelPatches) -> np.ndarray:
        """float32 [M, D]: the decoder embeddings of the image's M tokens."""
        if image.grid_thw[0] != 1:
            raise BundleError(f"image grid {image.grid_thw}: the exported encoder takes still images (t = 1)")
        tables = grid_tables(self.config, image.grid_thw)
        inputs = [np.ascontiguousarray(image.pixel_values, dtype=np.float32)]
        inputs += [np.ascontiguousarray(t) for t in (tables.pos_index, tables.pos_weight, tables.cos, tables.sin)]
        return self._run(inputs)

    @abc.abstractmethod
    def _run(self, inputs: list[np.ndarray]) -> np.ndarray:
        """(pixel_patches, pos_index, pos_weight, rotary_cos, rotary_sin) -> image_embeds [M, D]."""


class OnnxVisionEncoder(VisionEncoder):
    def __init__(self, bundle: Bundle, threads: int):
        import onnxruntime as ort

        super().__init__(bundle)
        path = bundle.file(bundle.vision_artifact("onnx")["files"][0]["path"])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types with no common base
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from err
        self._names = VISION_INPUTS

    def _run(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self._session.run(None, dict(zip(self._names, inputs, strict=True)))[0]


class PteVisionEncoder(VisionEncoder):
    def __init__(self, bundle: Bundle):
        import torch
        from executorch.runtime import Runtime

        super().__init__(bundle)
        files = [bundle.file(entry["path"]) for entry in bundle.vision_artifact("pte")["files"]]
        data = [f for f in files[1:] if f.suffix == ".ptd"]
        try:
            program = Runtime.get().load_program(files[0], data_path=data[0] if data else None)
            self._method = program.load_method(VISION_METHOD)
        except (RuntimeError, ValueError) as err:
            raise BundleError(f"{files[0]}: ExecuTorch cannot load it ({str(err).splitlines()[0]})") from err
        self._torch = torch

    def _run(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self._method.execute([self._torch.from_numpy(x) for x in inputs])[0].float().numpy()


def image_spec(bundle: Bundle) -> ImageSpec:
    """How to cut images for this bundle: the processor settings the export recorded."""
    vision = bundle.manifest.get("vision")
    if not vision:
        raise BundleError(f"{bundle.root}: has no vision encoder; image prompts need a bundle exported from a "
                          "multimodal (Qwen3_5ForConditionalGeneration) checkpoint")
    processor = vision["image_processor"]
    return ImageSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in processor.items()})


def make_vision_encoder(bundle: Bundle, backend: str, *, checkpoint: str | Path | None = None,
                        threads: int = 1) -> VisionEncoder:
    """The encoder for `backend`; the reference one loads the tower from `checkpoint`."""
    if backend == "onnx":
        return OnnxVisionEncoder(bundle, threads)
    if backend == "pte":
        return PteVisionEncoder(bundle)
    if checkpoint is None:
        raise BundleError(f"{bundle.root}: the reference vision tower loads from the checkpoint; pass --model CHECKPOINT")
    return reference.get().vision_encoder(bundle, checkpoint)
