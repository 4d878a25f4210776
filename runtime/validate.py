"""Validation: does a bundle's artifact compute what the reference model computes?

For each backend, on the golden prompt: logits at every prompt position (the
artifacts return only the last position's logits, so the prompt is fed one
token per call), logits of every teacher-forced decode step, the last logits of
a normal (chunked) prefill, the carried state after it (where the engine
exposes it), and a free-running greedy continuation; optionally perplexity on
held-out tokens. The reference is the live model (`--model CHECKPOINT`, or a
preset bundle's source + seed) or, failing both, the bundle's `golden.npz`.
Bounds come from `runtime.tolerances`, keyed by the artifact's quantization.

When logits miss and both sides are PyTorch models (the `reference` backend),
the report names the first layer whose hidden state diverges; an artifact does
not return hidden states, so for it the report says a debug export is needed.

Not here: the metrics themselves (`runtime.compare`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import reference
from runtime.bundle import Bundle, open_bundle
from runtime.compare import (
    Check,
    PerplexityMeter,
    first_diverging_layer,
    greedy_check,
    logit_check,
    state_check,
)
from runtime.errors import QwenEdgeError
from runtime.files import write_json
from runtime.session import Session, load
from runtime.tolerances import key as tolerance_key
from runtime.tolerances import tolerance
from runtime.trace import Trace, load_trace

REPORT_SCHEMA = 1
EVAL_PROMPTS, EVAL_PROMPT_LEN, EVAL_GREEDY_STEPS = 8, 16, 32  # greedy checks drawn from --eval-tokens
ARTIFACT_LAYER_NOTE = ("layer attribution needs hidden states, which exported artifacts do not return; "
                       "re-export with a debug export that outputs them to locate the layer")


@dataclass
class Oracle:
    """What the artifacts are measured against."""

    kind: str  # "checkpoint", "preset" or "golden"
    name: str
    trace: Trace
    state: dict[str, np.ndarray] | None = None
    model: Any = None  # the live Qwen35Model, when there is one
    eval_traces: list[Trace] | None = None  # greedy references from the eval prompts, computed once for all backends
    image_trace: ImageTrace | None = None  # multimodal bundles: the reference on the image prompt, computed once

    def image_reference(self, bundle: Bundle) -> ImageTrace:
        if self.image_trace is None:
            ref = reference.get()
            tower = ref.vision_encoder(bundle, self.name)
            session = Session(bundle, ref.backend(bundle, self.model), None, lambda: tower)
            prompt, image = image_prompt(bundle, self.trace)
            logits = [session.prefill_images(prompt, [image])]
            tokens = [int(np.argmax(logits[-1]))]
            for _ in range(self.trace.steps - 1):
                logits.append(session.decode(tokens[-1]))
                tokens.append(int(np.argmax(logits[-1])))
            self.image_trace = ImageTrace(prompt, image, np.stack(logits), np.asarray(tokens))
        return self.image_trace

    def eval_greedy(self, eval_set: EvalSet) -> list[Trace]:
        if self.eval_traces is None:
            prompts = [w[:EVAL_PROMPT_LEN] for w in eval_set.windows[:EVAL_PROMPTS]]
            self.eval_traces = [reference.get().trace(self.model, p, EVAL_GREEDY_STEPS)[0] for p in prompts]
        return self.eval_traces


@dataclass(frozen=True)
class ImageTrace:
    """The reference on the validation image prompt: logits after the prompt and each greedy token."""

    prompt_ids: list[int]
    image: Any  # runtime.image.PixelPatches
    logits: np.ndarray  # [steps, V]: row 0 after the prompt, row i after greedy token i - 1
    greedy_ids: np.ndarray  # [steps]


def validation_image(size: tuple[int, int] = (96, 144), seed: int = 0):
    """A fixed synthetic RGB image (gradients, a disc, noise): deterministic, so every run checks the same input."""
    from PIL import Image

    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((y - h / 2) ** 2 + (x - w / 3) ** 2 < (h / 4) ** 2).astype(np.float32)
    noise = np.random.default_rng(seed).uniform(0, 40, (h, w, 3)).astype(np.float32)
    rgb = np.stack([255 * x / w, 255 * y / h, 200 * disc], axis=-1) + noise
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def image_prompt(bundle: Bundle, trace: Trace):
    """(ids, patches): the validation image, then the golden prompt, as the chat template lays an image out."""
    from runtime.image import preprocess
    from runtime.vision import image_spec

    ids = bundle.manifest["vision"]["token_ids"]
    prompt = [ids["vision_start"], ids["image"], ids["vision_end"], *map(int, trace.prompt_ids)]
    return prompt, preprocess(validation_image(), image_spec(bundle))


@dataclass(frozen=True)
class EvalSet:
    path: str
    windows: list[np.ndarray]


def build_oracle(bundle: Bundle, model: str | Path | None = None, steps: int | None = None) -> Oracle:
    golden = load_trace(bundle.file(bundle.manifest["golden"]["path"]))
    if model is None and bundle.source.get("kind") != "preset":
        if steps not in (None, golden.steps):
            raise QwenEdgeError(f"--steps {steps}: golden.npz holds {golden.steps}; other counts need --model")
        return Oracle("golden", "golden.npz", golden)
    ref = reference.get()
    live = ref.model(bundle, model)
    trace, state = ref.trace(live, golden.prompt_ids, steps or golden.steps)
    if model is not None:
        return Oracle("checkpoint", str(model), trace, state, live)
    return Oracle("preset", f"{bundle.source['name']} (seed {bundle.source.get('seed')})", trace, state, live)


def load_eval_tokens(path: str | Path, vocab: int, window: int, max_tokens: int) -> EvalSet:
    """Held-out token ids (.npy, 1-D integers) cut into windows of `window` tokens, at most `max_tokens` in all."""
    try:
        tokens = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise QwenEdgeError(f"{path}: not a readable .npy file ({err})") from err
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise QwenEdgeError(f"{path}: expected a 1-D array of token ids, got {tokens.dtype} {tokens.shape}")
    if window < 2:
        raise QwenEdgeError(f"--eval-window {window}: needs at least 2 tokens")
    tokens = tokens[:max_tokens].astype(np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise QwenEdgeError(f"{path}: token ids outside the model's vocabulary [0, {vocab})")
    windows = [tokens[i : i + window] for i in range(0, len(tokens) - 1, window)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise QwenEdgeError(f"{path}: fewer than 2 tokens; nothing to evaluate")
    return EvalSet(str(path), windows)


def _stepwise(session: Session, ids: np.ndarray, progress) -> np.ndarray:
    """Logits at every position of `ids`, one token per call from a fresh sequence: [len, V]."""
    session.reset()
    rows = []
    for token in ids:
        rows.append(session.prefill([int(token)]))
        progress.update(1)
    return np.stack(rows)


def _prefill_and_greedy(session: Session, trace: Trace, progress):
    """A normal prefill of the prompt, the state it leaves, and a greedy continuation from it."""
    session.reset()
    last = session.prefill(trace.prompt_ids)
    state = session.backend.state()
    greedy = [int(np.argmax(last))]
    for _ in range(trace.steps - 1):
        greedy.append(int(np.argmax(session.decode(greedy[-1]))))
        progress.update(1)
    return last, state, np.asarray(greedy)


def _perplexity(session: Session, oracle: Oracle, eval_set: EvalSet, tol, progress) -> Check:
    meter = PerplexityMeter()
    for window in eval_set.windows:
        candidate = _stepwise(session, window, progress)
        meter.add(candidate, reference.get().logits(oracle.model, window), window)
    return meter.check(tol)


def _eval_greedy(session: Session, oracle: Oracle, eval_set: EvalSet, tol, progress) -> Check:
    """Greedy agreement from several held-out prompts, 32 tokens each: a lossy scheme's drift shows over a run, not a step."""
    agreements = []
    for expected in oracle.eval_greedy(eval_set):
        _, _, greedy = _prefill_and_greedy(session, expected, progress)
        agreements.append(greedy_check(greedy, expected.greedy_ids, tol).metrics["agreement"])
    mean = float(np.mean(agreements))
    metrics = {"agreement": mean, "worst": min(agreements), "prompts": len(agreements), "steps": EVAL_GREEDY_STEPS}
    return Check(f"greedy decode on {len(agreements)} eval prompts, {EVAL_GREEDY_STEPS} tokens each", metrics,
                 mean >= tol.min_greedy)


def _checks(session: Session, oracle: Oracle, tol, eval_set: EvalSet | None, progress) -> list[Check]:
    trace = oracle.trace
    T, chunk = len(trace.prompt_ids), session.backend.max_chunk
    fed = np.concatenate([trace.prompt_ids, trace.greedy_ids[:-1]])
    stepped = _stepwise(session, fed, progress)
    last, state, greedy = _prefill_and_greedy(session, trace, progress)
    checks = [logit_check(f"logits at each of {T} prompt positions (one token per call)",
                          stepped[:T], trace.prompt_logits, tol)]
    if trace.steps > 1:
        checks.append(logit_check(f"logits of {trace.steps - 1} teacher-forced decode steps",
                                  stepped[T:], trace.decode_logits, tol))
    calls = math.ceil(T / chunk)
    checks.append(logit_check(f"last logits of a {T}-token prefill in {calls} call(s)",
                              last[None], trace.prompt_logits[-1:], tol))
    checks.append(state_check(state, oracle.state, tol))
    checks.append(golden_greedy_check(greedy, trace, tol))
    if eval_set is not None:
        checks.append(_perplexity(session, oracle, eval_set, tol, progress))
        checks.append(_eval_greedy(session, oracle, eval_set, tol, progress))
    if session.bundle.manifest.get("vision"):
        checks += _image_checks(session, oracle, tol)
    return checks


def golden_greedy_check(greedy: np.ndarray, trace: Trace, tol) -> Check:
    """The greedy continuation of the one golden prompt: it gates exact (fp32) artifacts only.

    For a lossy scheme, one prompt's matching prefix cannot gate: each token agrees with the
    reference with probability p (its top-1 agreement), so the first difference falls at step
    k with probability p^k (1 - p), and at p = 0.86 a correct artifact differs within three
    tokens 36 % of the time. Lossy artifacts are gated by top-1 agreement over the teacher-forced
    positions above and, with --eval-tokens, by the mean greedy agreement over several prompts.
    """
    check = greedy_check(greedy, trace.greedy_ids, tol, trace.greedy_logits)
    if tol.min_greedy >= 1.0 or check.passed:
        return check
    note = f"{check.note}; one prompt does not gate a lossy scheme (its greedy prefix is geometric in the top-1 rate)"
    return dataclasses.replace(check, passed=None, note=note)


def _image_checks(session: Session, oracle: Oracle, tol) -> list[Check]:
    """The image prompt: vision encoder + decoder on this backend against the reference tower + decoder."""
    if oracle.kind != "checkpoint":
        return [Check("image prompt", {}, None, "needs the live reference vision tower: pass --model CHECKPOINT")]
    reference = oracle.image_reference(session.bundle)
    session.reset()
    logits = [session.prefill_images(reference.prompt_ids, [reference.image])]
    for token in reference.greedy_ids[:-1]:  # teacher-forced on the reference's greedy tokens
        logits.append(session.decode(int(token)))
    image_tokens = reference.image.num_tokens
    steps = len(reference.greedy_ids) - 1
    return [
        logit_check(f"image prompt ({image_tokens} image tokens): last logits of the prefill",
                    logits[0][None], reference.logits[:1], tol),
        logit_check(f"image prompt: logits of {steps} teacher-forced decode steps", np.stack(logits[1:]),
                    reference.logits[1:], tol),
    ]


def _attribution(backend: str, session: Session, oracle: Oracle, tol, checks: list[Check]) -> tuple[str | None, str | None]:
    logit_misses = [c for c in checks if c.passed is False and c.name.startswith(("logits", "last logits"))]
    if not logit_misses:
        return None, None
    if backend != "reference":
        return None, ARTIFACT_LAYER_NOTE
    if oracle.model is None:
        return None, "layer attribution needs the live reference model: pass --model CHECKPOINT"
    ref, prompt = reference.get(), oracle.trace.prompt_ids
    return first_diverging_layer(ref.hidden_states(session.backend.model, prompt),
                                 ref.hidden_states(oracle.model, prompt), tol), None


def validate_backend(bundle: Bundle, backend: str, oracle: Oracle, *, model=None, eval_set: EvalSet | None = None,
                     threads: int | None = None) -> dict[str, Any]:
    """Run every check of one backend; its entry of the report."""
    from tqdm import tqdm

    if backend == "reference":
        # The candidate: the bundle's own source model; the same object as the oracle unless --model differs.
        same = oracle.model is not None and (model is None or bundle.source.get("kind") != "preset")
        session = load(bundle, "reference", model=oracle.model if same else None, threads=threads)
        quant, size, quantization = "fp32", None, {}
    else:
        session = load(bundle, backend, threads=threads)
        artifact = bundle.artifact(backend)
        quant, size = artifact["quant"], bundle.size_bytes(backend)
        quantization = artifact.get("details", {}).get("quantization") or {}
    tol = tolerance(quant, quantization.get("embedding_bits"))
    trace = oracle.trace
    total = len(trace.prompt_ids) + 2 * trace.steps - 2
    if eval_set is not None:
        total += sum(len(w) for w in eval_set.windows) + EVAL_GREEDY_STEPS * min(EVAL_PROMPTS, len(eval_set.windows))
    with tqdm(total=total, desc=f"validate {backend}", unit="call", disable=None, leave=False) as progress:
        checks = _checks(session, oracle, tol, eval_set, progress)
    layer, layer_note = _attribution(backend, session, oracle, tol, checks)
    ppl = next((c.metrics for c in checks if c.name.startswith("perplexity")), {})
    greedy = [c.metrics["agreement"] for c in checks if c.name.startswith("greedy")]
    return {
        "format": backend, "backend": backend, "quant": quant, "size_bytes": size,
        "group_size": quantization.get("group_size"), "embedding_bits": quantization.get("embedding_bits"),
        "tolerance_key": tolerance_key(quant, quantization.get("embedding_bits")),
        "tolerance": tol.as_json(),
        "checks": [c.as_json() for c in checks],
        "top1_agreement": ppl.get("top1", checks[0].metrics["top1"]),
        "greedy_agreement": greedy[-1],  # from the eval prompts when given, else the golden prompt
        "perplexity": ppl.get("perplexity"),
        "reference_perplexity": ppl.get("reference_perplexity"),
        "kl_divergence": ppl.get("kl_divergence"),
        "first_diverging_layer": layer,
        "layer_note": layer_note,
        "passed": all(c.passed is not False for c in checks),
    }


def validate_bundle(bundle: str | Path | Bundle, backends: str | list[str] = "all", *, model=None,
                    eval_tokens: str | Path | None = None, eval_window: int = 128, eval_max_tokens: int = 2048,
                    steps: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Validate each requested backend of a bundle; the JSON report (its `passed` says whether all met bounds)."""
    if not isinstance(bundle, Bundle):
        bundle = open_bundle(bundle)
    names = bundle.formats if backends == "all" else ([backends] if isinstance(backends, str) else list(backends))
    if not names:
        raise QwenEdgeError(f"{bundle.root}: holds no artifacts to validate; use --backend reference")
    oracle = build_oracle(bundle, model, steps)
    eval_set = None
    if eval_tokens is not None:
        if oracle.model is None:
            raise QwenEdgeError("--eval-tokens: the reference perplexity needs the reference model; pass --model CHECKPOINT")
        window = min(eval_window, int(bundle.export["max_seq_len"]))
        eval_set = load_eval_tokens(eval_tokens, bundle.config.text.vocab_size, window, eval_max_tokens)
    entries = [validate_backend(bundle, name, oracle, model=model, eval_set=eval_set, threads=threads) for name in names]
    return {
        "schema_version": REPORT_SCHEMA,
        "bundle": str(bundle.root),
        "reference": {"kind": oracle.kind, "name": oracle.name},
        "prompt_len": len(oracle.trace.prompt_ids),
        "greedy_steps": oracle.trace.steps,
        "eval": None if eval_set is None else {
            "file": eval_set.path, "windows": len(eval_set.windows), "tokens": sum(len(w) for w in eval_set.windows)},
        "passed": all(entry["passed"] for entry in entries),
        "artifacts": entries,
    }


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write the JSON report atomically (a reader never sees half a file)."""
    write_json(path, report)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return "-" if value is None else str(value)


def format_report(report: dict[str, Any]) -> str:
    """The report as a readable table, one block per backend."""
    ref = report["reference"]
    lines = [f"reference: {ref['kind']} {ref['name']}; prompt {report['prompt_len']} tokens, "
             f"greedy {report['greedy_steps']} tokens"]
    for entry in report["artifacts"]:
        size = f", {entry['size_bytes'] / 1e6:.1f} MB" if entry["size_bytes"] else ""
        lines.append(f"\n{entry['backend']} ({entry.get('tolerance_key', entry['quant'])}{size}): "
                     f"{'ok' if entry['passed'] else 'MISS'}")
        for check in entry["checks"]:
            verdict = {True: "ok", False: "MISS", None: "n/a"}[check["passed"]]
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in check["metrics"].items())
            note = f"  ({check['note']})" if check["note"] else ""
            lines.append(f"  {verdict:<4} {check['name']:<52} {shown}{note}")
        bounds = {k: v for k, v in entry["tolerance"].items() if k != "reason" and v is not None}
        lines.append(f"  bounds: {', '.join(f'{k} {_fmt(v)}' for k, v in bounds.items())}")
        lines.append(f"          ({entry['tolerance']['reason']})")
        if entry["first_diverging_layer"]:
            lines.append(f"  first diverging layer: {entry['first_diverging_layer']}")
        if entry["layer_note"]:
            lines.append(f"  note: {entry['layer_note']}")
    lines.append(f"\n{'PASSED' if report['passed'] else 'FAILED'}")
    return "\n".join(lines)
