"""Errors of the runtime side: bundles that cannot be trusted, and validation misses.

They extend `exporter.errors.QwenEdgeError`, so the command line maps them to
its exit codes: 2 for malformed input (a bundle that is not one, a path that
leaves the bundle), 1 for a validation-style failure (a file whose checksum no
longer matches, an artifact that misses its tolerances).
"""

from __future__ import annotations

from exporter.errors import QwenEdgeError


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
