"""Writing a bundle: one directory an app can ship as is, written whole or not at all.

`export_bundle` runs plain stages, each taking what the previous one made:
resolve the model (checkpoint directory or preset: a frozen `Source`, no weights
yet) -> golden trace -> export each format into a staging directory beside the
destination -> tokenizer files -> golden.npz -> selfcheck.json -> manifest.json ->
validation (written into the bundle as validation.json) -> rename into place.

Each stage that needs weights loads its own model from the `Source` and drops it
when done: a lowering may quantize the model it is given, and no other stage ever
sees that, so the formats export in the order asked and the peak holds one model.
A checkpoint load reads the files again (seconds, from the page cache); a preset
regenerates its weights from the seed. Any failure or interrupt removes the
staging directory; an existing bundle is replaced only with `force`, and then
atomically (old renamed aside, new renamed in, old deleted).

The manifest schema (fields, file entries) is defined with its reader in
`runtime.bundle`; `selfcheck.json` is documented in `selfcheck`.

Not here: the lowerings themselves (`exporter.executorch`, `exporter.onnx`,
looked up by name so a build without one still writes the other).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from exporter.artifact import Artifact, ExportOptions
from exporter.config import PRESETS, preset
from exporter.tokenizer import TokenizerInfo, copy_tokenizer, encode, tokenizer_info
from runtime.bundle import file_entry
from runtime.config import ModelConfig, load_config, text_only, to_hf
from runtime.contract import (
    GOLDEN,
    MANIFEST,
    SCHEMA_VERSION,
    SELFCHECK,
    SELFCHECK_SCHEMA,
)
from runtime.errors import BundleError, CheckpointError, QwenEdgeError, ValidationFailed
from runtime.files import place_dir, write_json
from runtime.trace import save_trace

log = logging.getLogger("qwen_edge")

# format -> (module, function) of its lowering: `fn(model, config, out_dir, options) -> Artifact`.
EXPORTERS: dict[str, tuple[str, str]] = {
    "pte": ("exporter.executorch", "export_executorch"),
    "onnx": ("exporter.onnx", "export_onnx"),
}
GOLDEN_PROMPT = "import os\nimport sys\n\n\ndef main():\n    "  # code: the trained fixture predicts it with confidence
GOLDEN_STEPS = 16
PRESET_SEED = 0  # a preset's weights are drawn with this seed (`Source.load`); the manifest records it
TOOLCHAIN = ("torch", "executorch", "torchao", "onnx", "onnxscript", "onnxruntime", "tokenizers", "qwen-edge")


@dataclass(frozen=True)
class Source:
    """The resolved model: where it came from and its config. `load()` gives a fresh fp32 reference."""

    kind: str  # "checkpoint" or "preset"
    name: str
    checkpoint: Path | None
    config: ModelConfig

    def manifest(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "seed": PRESET_SEED if self.kind == "preset" else None}

    def load(self):
        """A new `Qwen35Model` of this source, the caller's own to change (a lowering quantizes it)."""
        from exporter.checkpoint import load_model, random_model

        if self.checkpoint is None:
            return random_model(self.config, seed=PRESET_SEED)
        return load_model(self.checkpoint)[1]

    def load_vision(self):
        """A new vision tower of this source's checkpoint, the caller's own to change."""
        from exporter.checkpoint import load_vision

        if self.checkpoint is None:
            raise QwenEdgeError(f"{self.name}: a vision tower is exported from a checkpoint, not a preset")
        return load_vision(self.checkpoint)


def resolve_model(spec: str, *, text_only_export: bool = False) -> Source:
    """A checkpoint directory or a preset name -> `Source` (malformed checkpoints raise, exit 2)."""
    from exporter.checkpoint import checkpoint_files

    if spec in PRESETS and not Path(spec).exists():
        source = Source("preset", spec, None, preset(spec))
    elif not Path(spec).exists():
        raise CheckpointError(f"{spec}: neither a checkpoint directory nor a preset; presets are {', '.join(PRESETS)}")
    elif not Path(spec).is_dir():
        raise CheckpointError(f"{spec}: not a directory; give a checkpoint directory with config.json and safetensors")
    else:
        path = Path(spec).resolve()
        checkpoint_files(path)  # no weights, or pickled ones only: refused now, before any stage runs
        source = Source("checkpoint", path.name, path, load_config(path))
    return dataclasses.replace(source, config=text_only(source.config)) if text_only_export else source


def exporter_for(fmt: str) -> Callable[..., Artifact]:
    """The lowering of `fmt`, imported by name."""
    if fmt not in EXPORTERS:
        raise QwenEdgeError(f"--format {fmt}: unknown; choose from {', '.join(EXPORTERS)}")
    module, function = EXPORTERS[fmt]
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise QwenEdgeError(f"--format {fmt}: {module} is not available in this build; export the other formats") from err


def check_destination(out: Path, force: bool) -> None:
    """Refuse early what would be refused at the end: an existing bundle without force, or a non-bundle."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise QwenEdgeError(f"{out}: already exists; pass --force to replace it, or choose another --out")
    if out.is_symlink() or not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
        raise QwenEdgeError(f"{out}: exists and is not a bundle (no {MANIFEST}); refusing to replace it, even with --force")


def export_format(source: Source, staging: Path, fmt: str, options: ExportOptions) -> Artifact:
    """One lowering, on a model of its own (it may quantize it), checked to have written what it describes."""
    artifact = exporter_for(fmt)(source.load(), source.config, staging, options)
    _check_artifact(artifact, fmt, staging)
    return artifact


def _check_artifact(artifact: Artifact, fmt: str, staging: Path) -> None:
    """An exporter's result must describe files it wrote inside the bundle (a bug in it otherwise)."""
    if artifact.format != fmt or not artifact.files:
        raise BundleError(f"exporter for {fmt!r} returned format {artifact.format!r} with files {artifact.files}")
    for name in artifact.files:
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or not (staging / name).is_file():
            raise BundleError(f"exporter for {fmt!r}: artifact file {name!r} is not a file inside the bundle")


def golden_trace(source: Source, tokenizer: TokenizerInfo, steps: int):
    """The reference trace on the golden prompt (text with a tokenizer, fixed seeded ids without)."""
    from exporter.reference import reference_trace

    if tokenizer.files:
        ids = encode(tokenizer, GOLDEN_PROMPT)
    else:
        ids = np.random.default_rng(PRESET_SEED).integers(0, source.config.text.vocab_size, size=12).tolist()
    trace, _ = reference_trace(source.load(), ids, steps)
    return trace


def selfcheck(trace, tokenizer: TokenizerInfo, options: ExportOptions) -> dict[str, Any]:
    """`selfcheck.json`, what an app checks on first launch.

    prompt_ids: feed these; expected_ids: the fp32 reference's greedy tokens, cut
    after the first EOS id (a runner that stops at EOS produces exactly these);
    pass when at least `min_matching_prefix` leading tokens match.
    """
    from runtime.tolerances import tolerance

    expected = [int(t) for t in trace.greedy_ids]
    eos = set(tokenizer.eos_token_ids)
    cut = next((i + 1 for i, t in enumerate(expected) if t in eos), len(expected))
    tol = tolerance(options.quant, options.embedding_bits)
    return {
        "schema_version": SELFCHECK_SCHEMA,
        "prompt_text": GOLDEN_PROMPT if tokenizer.files else None,
        "prompt_ids": [int(t) for t in trace.prompt_ids],
        "expected_ids": expected[:cut],
        "eos_token_ids": list(tokenizer.eos_token_ids),
        "max_new_tokens": len(expected),
        "sampling": "greedy",
        "quant": options.quant,
        "tolerance": {"min_matching_prefix": math.ceil(tol.min_greedy * cut), "reason": tol.reason},
    }


def toolchain() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in TOOLCHAIN:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def build_manifest(source: Source, options: ExportOptions, artifacts: list[Artifact], tokenizer: TokenizerInfo,
                   staging: Path, golden_meta: dict[str, Any]) -> dict[str, Any]:
    entries = [file_entry(staging, file.name) for file in tokenizer.files]
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": to_hf(source.config),
        "source": source.manifest(),
        "export": dataclasses.asdict(options),
        "tokenizer": tokenizer.manifest(entries),
        "artifacts": [_artifact_entry(a, staging) for a in artifacts],
        "golden": {**file_entry(staging, GOLDEN), **golden_meta},
        "selfcheck": file_entry(staging, SELFCHECK),
        "validation": None,
        "toolchain": toolchain(),
    }


def _artifact_entry(artifact: Artifact, staging: Path) -> dict[str, Any]:
    return {"format": artifact.format, "files": [file_entry(staging, f) for f in artifact.files],
            "quant": artifact.quant, "details": artifact.details}


def export_vision(source: Source, staging: Path, formats: Sequence[str], options: ExportOptions) -> dict[str, Any]:
    """The vision encoder in each format, with the image processor settings and token ids an app needs.

    The manifest's `vision` section: `artifacts` (vision.onnx / vision.pte, the decoder's scheme),
    `image_processor` (what `runtime.image.ImageSpec` takes) and the multimodal `token_ids`.
    """
    from exporter.vision.export import (
        export_vision_executorch,
        export_vision_onnx,
        image_processor,
    )

    written = {}
    for fmt in formats:  # each lowering on a tower of its own: the ExecuTorch one quantizes it in place
        export = export_vision_onnx if fmt == "onnx" else export_vision_executorch
        written[fmt] = export(source.load_vision(), staging, options, options.vision_max_tokens)
        _check_artifact(written[fmt], fmt, staging)
    config = source.config
    max_pixels = min(a.details["max_pixels"] for a in written.values())
    return {
        "artifacts": [written[fmt] for fmt in formats],
        "image_processor": image_processor(source.checkpoint, config.vision, max_pixels),
        "token_ids": {"image": config.image_token_id, "vision_start": config.vision_start_token_id,
                      "vision_end": config.vision_end_token_id},
        "prompt": "each image as <|vision_start|><|image_pad|><|vision_end|>; the pad is repeated once per image token",
    }


def validate_staged(staging: Path, source: Source, formats: Sequence[str], manifest: dict[str, Any]) -> None:
    """Validate the staged bundle against the reference rebuilt from its source; record the report in it."""
    from runtime.validate import format_report, validate_bundle

    report = validate_bundle(staging, list(formats), model=source.checkpoint)
    log.info(format_report(report))
    if not report["passed"]:
        missed = [a["backend"] for a in report["artifacts"] if not a["passed"]]
        raise ValidationFailed(
            f"validation failed for {', '.join(missed)} (table above); no bundle written. "
            "Pass --no-validate to keep the bundle for inspection"
        )
    report["bundle"] = "."  # the staging path means nothing once the bundle is in place
    write_json(staging / "validation.json", report)
    manifest["validation"] = {**file_entry(staging, "validation.json"), "passed": True}
    write_json(staging / MANIFEST, manifest)


def place(staging: Path, out: Path, force: bool) -> None:
    """Rename the staged bundle into place; with force, swap atomically and delete the old one."""
    if out.exists():
        check_destination(out, force)  # still ours to replace: checked again, the export took a while
    place_dir(staging, out, replace=force)


def _build(spec: str, staging: Path, formats: Sequence[str], options: ExportOptions, steps: int,
           validate: bool, progress) -> None:
    """Every stage that writes into `staging`, in order."""
    progress.stage("load model")
    source = resolve_model(spec, text_only_export=options.text_only)
    tokenizer = tokenizer_info(source.checkpoint, source.config)
    progress.stage("golden outputs")
    trace = golden_trace(source, tokenizer, steps)
    artifacts = []
    for fmt in formats:
        progress.stage(f"export {fmt}")
        artifacts.append(export_format(source, staging, fmt, options))
    vision = None
    if source.config.vision is not None:
        progress.stage("export vision encoder")
        vision = export_vision(source, staging, formats, options)
    progress.stage("tokenizer, golden, selfcheck, manifest")
    copy_tokenizer(tokenizer, staging)
    save_trace(trace, staging / GOLDEN)
    write_json(staging / SELFCHECK, selfcheck(trace, tokenizer, options))
    golden_meta = {"prompt_text": GOLDEN_PROMPT if tokenizer.files else None,
                   "prompt_len": len(trace.prompt_ids), "steps": trace.steps}
    manifest = build_manifest(source, options, artifacts, tokenizer, staging, golden_meta)
    if vision is not None:
        manifest["vision"] = {**vision, "artifacts": [_artifact_entry(a, staging) for a in vision["artifacts"]]}
    write_json(staging / MANIFEST, manifest)
    if validate:
        progress.stage("validate")
        validate_staged(staging, source, formats, manifest)
    progress.stage("done")


class _Progress:
    """One tqdm bar over the export stages (silent when stderr is not a terminal)."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="export", unit="stage", disable=None, leave=False)
        self._started = False

    def stage(self, name: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_description(f"export: {name}")
        log.debug("export stage: %s", name)

    def close(self) -> None:
        self._bar.close()


def _check_formats(formats: Sequence[str], options: ExportOptions) -> list[str]:
    from exporter.quantize import check_format

    chosen = list(dict.fromkeys(formats))
    if not chosen:
        raise QwenEdgeError("--format: give at least one of " + ", ".join(EXPORTERS))
    for fmt in chosen:
        exporter_for(fmt)  # fail now, before loading the model, if a lowering is missing
        check_format(options.recipe, fmt)  # or if it does not offer the scheme
    return chosen


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def export_bundle(model_spec: str, out: str | Path, *, formats: Sequence[str] = ("pte", "onnx"),
                  options: ExportOptions = ExportOptions(), force: bool = False, validate: bool = True,
                  golden_steps: int = GOLDEN_STEPS) -> Path:
    """Export `model_spec` (checkpoint directory or preset) into the bundle directory `out`; returns `out`.

    Nothing is left behind on failure; an existing bundle is replaced only with `force`.
    """
    out = Path(out)
    chosen = _check_formats(formats, options)
    check_destination(out, force)
    created = [p for p in out.parents if not p.exists()]  # removed again if the export fails
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; a bundle is as readable as any new directory
    progress = _Progress(total=4 + len(chosen) + int(validate))
    placed = False
    try:
        _build(model_spec, staging, chosen, options, golden_steps, validate, progress)
        progress.close()
        place(staging, out, force)
        placed = True
    finally:
        progress.close()
        shutil.rmtree(staging, ignore_errors=True)
        if not placed:
            for parent in created:  # innermost first; each is empty unless someone else wrote there meanwhile
                with contextlib.suppress(OSError):
                    parent.rmdir()
    return out
