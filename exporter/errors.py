"""The error hierarchy of qwen-edge.

Every error a user can cause derives from `QwenEdgeError`, carries a message
that says what happened, what was expected and what to do, and maps to an exit
code of the command line (2: bad input, 1: a validation miss).
"""


class QwenEdgeError(Exception):
    """Base of every error qwen-edge raises on purpose."""

    exit_code = 2


class ConfigError(QwenEdgeError):
    """A `config.json` (or preset) that qwen-edge cannot build a model from."""


class CheckpointError(QwenEdgeError):
    """A checkpoint directory whose files or tensors do not match its config."""


class InputError(QwenEdgeError):
    """Inputs a model cannot take: an image grid or an image prompt that does not fit its config."""
