"""qwen-edge exporter: config parsing, checkpoint loading, the reference model.

The reference model is the exporter's input: every lowering (ExecuTorch, ONNX)
starts from it, and every artifact is validated against it.
"""

from exporter.checkpoint import load_model
from exporter.config import ModelConfig, load_config, preset
from exporter.errors import CheckpointError, ConfigError, QwenEdgeError
from exporter.model import Qwen35Model

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
