"""qwen-edge exporter: config presets, checkpoint loading, the reference model and the two lowerings.

The reference model is the exporter's input: every lowering (`exporter.executorch`,
`exporter.onnx`) starts from it, and every artifact is validated against it. The exporter
builds on the runtime, which owns the bundle contract; importing this package registers the
PyTorch reference with the runtime (`runtime.reference`), which never imports the exporter.

`load_model` and `Qwen35Model` are imported on first use: they need torch, and this package's
own import does not.
"""

from importlib import import_module

from exporter.config import preset
from runtime import reference as _reference
from runtime.config import ModelConfig, load_config
from runtime.errors import CheckpointError, ConfigError, QwenEdgeError

_NEED_TORCH = {"load_model": "exporter.checkpoint", "Qwen35Model": "exporter.model"}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "QwenEdgeError",
    "Qwen35Model",
    "load_config",
    "load_model",
    "preset",
]

_reference.register(lambda: import_module("exporter.reference").TorchReference())


def __getattr__(name: str):
    if name in _NEED_TORCH:
        return getattr(import_module(_NEED_TORCH[name]), name)
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
