"""qwen-edge exporter: config parsing, checkpoint loading, the reference model.

The reference model is the exporter's input: every lowering (ExecuTorch, ONNX)
starts from it, and every artifact is validated against it.

`load_model` and `Qwen35Model` are imported on first use: they need torch, and the modules
a runtime imports from here (configs, the artifact contract) do not, so running an ONNX
artifact does not load torch.
"""

from importlib import import_module

from exporter.config import ModelConfig, load_config, preset
from exporter.errors import CheckpointError, ConfigError, QwenEdgeError

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


def __getattr__(name: str):
    if name in _NEED_TORCH:
        return getattr(import_module(_NEED_TORCH[name]), name)
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
