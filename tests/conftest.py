"""Shared test helpers: where the shared fixtures live, and how a missing one is handled.

Fixtures (a small trained checkpoint, held-out tokens, the real configs) are
found through `QWEN_EDGE_FIXTURES` (default: `../shared/fixtures` from the
repository root). A test that needs a missing fixture skips and names the path,
except under CI (`CI=true`), where the absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path:
    return Path(os.environ.get("QWEN_EDGE_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()


def need_fixture(relative: str) -> Path:
    """The path of a shared fixture, or skip (fail under CI) naming what is missing."""
    path = fixtures_dir() / relative
    if not path.exists():
        message = f"fixture not found: {path} (set QWEN_EDGE_FIXTURES to the fixtures directory)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def trained_checkpoint() -> Path:
    return need_fixture("qwen35-tiny-code")


@pytest.fixture
def real_configs() -> Path:
    """The published 0.8B/2B text configs, kept beside the fixtures."""
    return need_fixture("../configs")
