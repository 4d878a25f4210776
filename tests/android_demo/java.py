"""Compiling and running the Android demo's plain-Java core here, with `javac` and `java` alone.

The core (android_demo/core) holds the app's logic that needs no Android; these helpers build it
once per test session, the way its Gradle build does (Java 8 release, every lint warning an
error), and run its entry points. Without a JDK the tests that need one skip and name what is
missing, except under CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CORE = REPO / "android_demo" / "core"
PACKAGE = "org.qwenedge.demo.core"
JAVAC_FLAGS = ["--release", "8", "-encoding", "UTF-8", "-Xlint:all,-options", "-Werror"]


def _tool(name: str) -> str:
    """The path of a JDK tool, or skip (fail under CI) naming it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH: install a JDK (17 or newer) to build and test android_demo/core"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.lru_cache(maxsize=1)
def _compile(javac: str) -> tuple[Path | None, str]:
    """(classes directory, "") or (None, javac's output) for the core's main and test sources."""
    out = Path(tempfile.mkdtemp(prefix="qwen-edge-core-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    sources = sorted(str(p) for p in (CORE / "src").rglob("*.java"))
    result = subprocess.run([javac, *JAVAC_FLAGS, "-d", str(out), *sources], capture_output=True, text=True)
    if result.returncode != 0:
        return None, result.stdout + result.stderr
    return out, ""


def classes() -> Path:
    """The compiled core, main and test classes together (compiled once per session)."""
    built, errors = _compile(_tool("javac"))
    if built is None:
        pytest.fail(f"android_demo/core does not compile:\n{errors}")
    return built


def run(main: str, *args: str | os.PathLike) -> subprocess.CompletedProcess:
    """Run `org.qwenedge.demo.core.<main>` with `args`; the finished process, whatever its status."""
    built = classes()  # first: without a JDK, the message names javac
    command = [_tool("java"), "-cp", str(built), f"{PACKAGE}.{main}", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=300)


def run_json(main: str, *args: str | os.PathLike, status: int = 0) -> dict[str, Any]:
    """Run an entry point that prints one JSON object; its exit status must be `status`."""
    result = run(main, *args)
    if result.returncode != status:
        pytest.fail(f"{main} {' '.join(map(str, args))}: exit status {result.returncode}, expected {status}\n"
                    f"{result.stdout}{result.stderr}")
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{main} printed no JSON object:\n{result.stdout}{result.stderr}")
