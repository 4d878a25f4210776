"""The error hierarchy of qwen-edge, exporter and runtime alike.

Every error a user can cause derives from `QwenEdgeError`, carries a message
that says what happened, what was expected and what to do, and maps to an exit
code of the command line: 2 for malformed input (a config, checkpoint, bundle
or image that cannot be used), 1 for a validation-style failure (a file whose
checksum no longer matches, an artifact that misses its tolerances).

It lives in the runtime because the runtime owns the bundle contract; the
exporter raises the same classes.
"""

from __future__ import annotations


class QwenEdgeError(Exception):
    """Base of every error qwen-edge raises on purpose."""

    exit_code = 2


class ConfigError(QwenEdgeError):
    """A `config.json` (or preset) that qwen-edge cannot build a model from."""


class CheckpointError(QwenEdgeError):
    """A checkpoint directory whose files or tensors do not match its config."""


class InputError(QwenEdgeError):
    """Inputs a model cannot take: an image grid or an image prompt that does not fit its config."""


class BundleError(QwenEdgeError):
    """A bundle directory or manifest that qwen-edge cannot read (malformed input: exit 2)."""


class ChecksumError(QwenEdgeError):
    """A bundle file whose size or sha256 differs from its manifest entry (exit 1)."""

    exit_code = 1


class ValidationFailed(QwenEdgeError):
    """An artifact missed a tolerance: the report says which check and by how much (exit 1)."""

    exit_code = 1


class ImageError(QwenEdgeError):
    """An image Pillow cannot read, or whose shape the vision tower cannot take (malformed input: exit 2)."""
