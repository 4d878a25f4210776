"""Reading a bundle: the manifest schema, its file entries, and the checks made before anything runs.

A bundle is a directory holding `manifest.json` and the files it lists. Every
file the manifest names appears as a *file entry* `{"path", "sha256",
"size_bytes"}`; `open_bundle` checks the schema version and shape of the
manifest, that no path leaves the bundle (absolute, `..`, symlinks) and that
every file's size and sha256 match. The exporter (`exporter.bundle`) writes
bundles with `file_entry` and `SCHEMA_VERSION` from here, so the reader and the
writer share one definition of the format.

Not here: what the files mean (tokenizer, golden outputs, artifacts): see
`runtime.tokenizer`, `runtime.trace` and `runtime.backends`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.config import ModelConfig, parse_config
from runtime.contract import MANIFEST, SCHEMA_VERSION
from runtime.errors import BundleError, ChecksumError, ConfigError
from runtime.files import read_json

# Top-level fields of a schema-1 manifest and their JSON types.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "model": dict,
    "source": dict,
    "export": dict,
    "tokenizer": dict,
    "artifacts": list,
    "golden": dict,
    "selfcheck": dict,
    "toolchain": dict,
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(root: Path, relative: str) -> dict[str, Any]:
    """The manifest entry of the file `root/relative`: path, sha256, size."""
    path = root / relative
    return {"path": relative, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def file_entries(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where in the manifest, entry) for every file entry a schema-1 manifest holds."""
    for i, artifact in enumerate(manifest.get("artifacts", [])):
        for j, entry in enumerate(artifact.get("files", []) if isinstance(artifact, dict) else []):
            yield f"artifacts[{i}].files[{j}]", entry
    vision = manifest.get("vision") or {}
    for i, artifact in enumerate(vision.get("artifacts", []) if isinstance(vision, dict) else []):
        for j, entry in enumerate(artifact.get("files", []) if isinstance(artifact, dict) else []):
            yield f"vision.artifacts[{i}].files[{j}]", entry
    for j, entry in enumerate(manifest.get("tokenizer", {}).get("files", [])):
        yield f"tokenizer.files[{j}]", entry
    for section in ("golden", "selfcheck", "validation"):
        if manifest.get(section) is not None:
            yield section, manifest[section]


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory, manifest and model config."""

    root: Path
    manifest: dict[str, Any]
    config: ModelConfig

    @property
    def formats(self) -> list[str]:
        return [a["format"] for a in self.manifest["artifacts"]]

    @property
    def export(self) -> dict[str, Any]:
        return self.manifest["export"]

    @property
    def source(self) -> dict[str, Any]:
        return self.manifest["source"]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self.manifest["tokenizer"].get("eos_token_ids") or ())

    @property
    def has_tokenizer(self) -> bool:
        return bool(self.manifest["tokenizer"].get("files"))

    def artifact(self, fmt: str) -> dict[str, Any]:
        """The manifest entry of the artifact in format `fmt` ("pte" or "onnx")."""
        for artifact in self.manifest["artifacts"]:
            if artifact["format"] == fmt:
                return artifact
        have = ", ".join(self.formats) or "none"
        raise BundleError(f"{self.root}: holds no {fmt!r} artifact (it has: {have}); export with --format {fmt}")

    def vision_artifact(self, fmt: str) -> dict[str, Any]:
        """The manifest entry of the vision encoder in format `fmt`: bundles of multimodal checkpoints only."""
        vision = self.manifest.get("vision")
        if not vision:
            raise BundleError(f"{self.root}: has no vision encoder; image prompts need a bundle exported from a "
                              "multimodal (Qwen3_5ForConditionalGeneration) checkpoint")
        for artifact in vision["artifacts"]:
            if artifact["format"] == fmt:
                return artifact
        have = ", ".join(a["format"] for a in vision["artifacts"]) or "none"
        raise BundleError(f"{self.root}: holds no {fmt!r} vision encoder (it has: {have}); export with --format {fmt}")

    def file(self, relative: str) -> Path:
        return self.root / relative

    def size_bytes(self, fmt: str) -> int:
        return sum(entry["size_bytes"] for entry in self.artifact(fmt)["files"])


def open_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check a bundle; with `verify`, every file's size and sha256 too."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory; give a bundle directory written by `qwen-edge export`")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: not found; is {root} a bundle written by `qwen-edge export`?")
    manifest = read_json(manifest_path, BundleError, "re-export the bundle")
    _check_schema(manifest, manifest_path)
    for where, entry in file_entries(manifest):
        _check_entry(root, entry, where, manifest_path, verify)
    try:
        config = parse_config(manifest["model"])
    except ConfigError as err:
        raise BundleError(f"{manifest_path}: model: {err}") from err
    return Bundle(root, manifest, config)


def _check_schema(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: expected a JSON object at the top level")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        hint = "upgrade qwen-edge" if isinstance(version, int) and version > SCHEMA_VERSION else "re-export the bundle"
        raise BundleError(f"{where}: schema_version {version!r}, this qwen-edge reads {SCHEMA_VERSION}; {hint}")
    for name, kind in _FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            raise BundleError(f"{where}: field {name!r} is missing or not a JSON {kind.__name__}; re-export the bundle")
    for i, artifact in enumerate(manifest["artifacts"]):
        if not isinstance(artifact, dict) or not isinstance(artifact.get("format"), str) \
                or not isinstance(artifact.get("files"), list) or not artifact["files"]:
            raise BundleError(f"{where}: artifacts[{i}] needs a 'format' and a non-empty 'files' list")
    if not isinstance(manifest["tokenizer"].get("files", []), list):
        raise BundleError(f"{where}: tokenizer.files must be a list of file entries")


def _check_entry(root: Path, entry: Any, where: str, manifest_path: Path, verify: bool) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
            or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("size_bytes"), int):
        raise BundleError(f"{manifest_path}: {where} must be a file entry {{path, sha256, size_bytes}}")
    relative = entry["path"]
    file = _inside(root, relative, f"{manifest_path}: {where}")
    size = file.stat().st_size
    if size != entry["size_bytes"]:
        raise ChecksumError(
            f"{file}: size {size} bytes, manifest says {entry['size_bytes']}: the file changed after export; "
            "re-export the bundle or restore the file"
        )
    if verify:
        actual = sha256_file(file)
        if actual != entry["sha256"]:
            raise ChecksumError(
                f"{file}: sha256 {actual[:12]}… does not match the manifest's {entry['sha256'][:12]}…: "
                "the file changed after export; re-export the bundle or restore the file"
            )


def _inside(root: Path, relative: str, where: str) -> Path:
    """`root/relative`, refusing any path that could leave the bundle."""
    pure = PurePosixPath(relative)
    problem = None
    if not relative or "\\" in relative or "\x00" in relative:
        problem = "is empty or has a backslash or NUL"
    elif pure.is_absolute() or os.path.isabs(relative):
        problem = "is absolute"
    elif any(part == ".." for part in pure.parts):
        problem = "contains '..'"
    if problem:
        raise BundleError(f"{where}: path {relative!r} {problem}; bundle paths must be relative and stay inside it")
    current = root
    for part in pure.parts:
        current = current / part
        if current.is_symlink():
            raise BundleError(f"{where}: path {relative!r} goes through a symlink ({current}); bundles hold plain files")
    if not current.is_file():
        raise BundleError(f"{where}: {current} is missing or not a file; re-export the bundle")
    return current
