"""Layers point one way: `runtime/` owns the bundle contract and never imports `exporter/`; `ops/` knows neither.

The check parses every module's imports (top-level and inside functions), so a lazy import
cannot slip through, and it names each offending line. torch may appear in the runtime only
inside a function (ExecuTorch's Python runtime takes torch tensors); that the ONNX path never
reaches one is tested by running it (`tests/runtime/test_image_session.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "runtime": ("exporter", "ops", "bench", "tests"),
    "ops": ("exporter", "runtime", "bench", "tests"),
    "exporter": ("bench", "tests"),
}
TOP_LEVEL_FORBIDDEN = {"runtime": ("torch", "executorch", "torchao")}


def imported_modules(path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import statement in one file (or of those at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, forbidden: tuple[str, ...], top_level_only: bool = False) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path, top_level_only):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_point_one_way(package):
    assert violations(package, FORBIDDEN[package]) == []


def test_the_runtime_imports_torch_only_where_executorch_needs_it():
    assert violations("runtime", TOP_LEVEL_FORBIDDEN["runtime"], top_level_only=True) == []


def test_the_check_sees_lazy_imports(tmp_path):
    """A function-level import counts as much as a top-level one (the check can fail)."""
    module = tmp_path / "m.py"
    module.write_text("import numpy\n\ndef f():\n    from exporter.model import Qwen35Model\n    import torch.nn\n")
    assert [m for _, m in imported_modules(module)] == ["numpy", "exporter.model", "torch.nn"]
    assert [m for _, m in imported_modules(module, top_level_only=True)] == ["numpy"]
