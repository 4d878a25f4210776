"""Benchmark our ONNX export against ONNX Runtime GenAI's model builder on the same weights.

Writes a random-weight checkpoint of a preset (default: the 0.8B shape) in the multimodal HF
layout the builder accepts (`Qwen3_5ForConditionalGeneration`, decoder under
`model.language_model.*`, a minimal vision config; the builder rejects text-only checkpoints),
then, each step in its own subprocess so that its peak RSS is its own:

    export-ours   exporter.onnx.export_onnx on the checkpoint (load included), ort profile
    export-peer   python -m onnxruntime_genai.models.builder -m CKPT -o OUT -p fp32 -e cpu
    run-ours      plain onnxruntime: one prefill call of --prompt tokens, then --decode steps
    run-peer      the same for the builder's model (its I/O: attention_mask, past.*, all-position logits)

and prints export time and peak RSS, model size, prefill and decode tok/s, peak RSS while
running, and the ratios ours/peer. Both models run on plain onnxruntime, CPU, fp32, with
--threads intra-op threads (the builder writes no thread count into its genai_config.json).
The last prompt position's logits of the two models are compared as a sanity check.

This is a measuring tool, not a test. `--quick` runs the tiny preset as a smoke check.

    .venv/bin/python bench/bench_onnx.py                      # 0.8B, prompt 128, decode 64
    .venv/bin/python bench/bench_onnx.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import runpy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import steps  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in (".onnx", ".data")) / 2**20


# ---------------------------------------------------------------------------------------------------
# Steps (each runs in a subprocess and prints one JSON line)
# ---------------------------------------------------------------------------------------------------


def step_checkpoint(args) -> dict:
    """The preset's random weights as a multimodal-layout HF checkpoint (what the builder accepts)."""
    from safetensors.torch import save_file

    from exporter.checkpoint import random_model
    from exporter.config import VisionConfig, preset, to_hf

    config = preset(args.preset)
    model = random_model(config)
    text = config.text
    vision = VisionConfig(  # never used: the builder exports the text decoder only, but requires the layout
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text.hidden_size,
        num_position_embeddings=16,
    )
    special = range(text.vocab_size - 4, text.vocab_size)
    ids = dict(zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"), special))
    hf = to_hf(dataclasses.replace(config, vision=vision, **ids))
    hf["architectures"] = ["Qwen3_5ForConditionalGeneration"]
    out = Path(args.out)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(hf, indent=1) + "\n")
    tensors = {
        name if name == "lm_head.weight" else f"model.language_model.{name}": tensor.contiguous()
        for name, tensor in model.state_dict().items()
        if not (name == "lm_head.weight" and text.tie_word_embeddings)
    }
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return {"peak_rss_mb": peak_rss_mb()}


def step_export_ours(args) -> dict:
    from exporter.artifact import ExportOptions
    from exporter.checkpoint import load_model
    from exporter.onnx import export_onnx

    start = time.perf_counter()
    config, model, _ = load_model(args.checkpoint)
    options = ExportOptions(max_seq_len=args.max_seq_len, prefill_chunk=args.prompt, onnx_profile=args.profile)
    artifact = export_onnx(model, config, Path(args.out), options)
    return {
        "export_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        "size_mb": dir_mb(Path(args.out)),
        "op_counts": artifact.details["op_counts"],
    }


def step_export_peer(args) -> dict:
    start = time.perf_counter()
    sys.argv = ["builder", "-m", args.checkpoint, "-o", args.out, "-p", "fp32", "-e", "cpu"]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
    return {"export_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "size_mb": dir_mb(Path(args.out))}


def step_run(args) -> dict:
    """Prefill --prompt tokens in one call (best of --repeats), then decode --decode tokens greedily."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    start = time.perf_counter()
    session = ort.InferenceSession(str(Path(args.out) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - start
    from exporter.config import preset

    runner = Runner(session, head_dim=preset(args.preset).text.head_dim, model=Path(args.out) / "model.onnx")
    ids = np.random.default_rng(0).integers(0, runner.vocab, size=(1, args.prompt), dtype=np.int64)
    prefill = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        logits, state = runner.call(ids, runner.empty_state())
        prefill.append(time.perf_counter() - start)
    np.save(Path(args.out) / "prefill_logits.npy", logits)
    token = logits.argmax(-1)[:, None]
    start = time.perf_counter()
    for _ in range(args.decode):
        logits, state = runner.call(token, state)
        token = logits.argmax(-1)[:, None]
    decode_s = time.perf_counter() - start
    return {
        "load_s": load_s,
        "prefill_tok_s": args.prompt / min(prefill),
        "prefill_s_all": prefill,
        "decode_tok_s": args.decode / decode_s,
        "peak_rss_mb": peak_rss_mb(),
    }


class Runner:
    """Feeds either model by its input names: ours (artifact.py's contract) or the builder's.

    The state stays in ONNX Runtime's own tensors from call to call, as an app and
    `runtime.backends` keep it: `run` with numpy would copy every state out and back in, at the
    0.8B shape ~20 MB a decoded token, a cost neither model has in an app. The states that
    `exporter.onnx_state` proves may be updated in place (both models' conv and recurrent states,
    and their KV caches, written by GroupQueryAttention into buffers of `capacity` slots) are
    bound as their own output, as `runtime.backends` binds ours and onnxruntime-genai both;
    `in_place=False` gives every present a fresh buffer instead, the KV caches growing.
    """

    def __init__(self, session, head_dim: int, model: Path, in_place: bool = True, capacity: int = 2048):
        import onnx
        import onnxruntime as ort

        from exporter.onnx_state import in_place_states

        self.session, self.head_dim, self.ort_value = session, head_dim, ort.OrtValue.ortvalue_from_numpy
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]
        self.vocab = session.get_outputs()[0].shape[-1]
        # present.X feeds the input with the same suffix: past_key_values.X (ours, keys) or past.X (builder's states)
        by_suffix = {name.split(".", 1)[1]: name for name in self.inputs if name.startswith("past")}
        self.feeds_back = {out: by_suffix[out.split(".", 1)[1]] for out in self.outputs[1:]}
        graph = onnx.load(str(model), load_external_data=False).graph
        pairs = {past: present for present, past in self.feeds_back.items()}
        self.in_place = set(in_place_states(graph, pairs)) if in_place else set()
        self.capacity, self.past = capacity, 0

    def empty_state(self) -> dict:
        """A fresh state (a call updates the in-place parts of the state it is given)."""
        self.past = 0
        state = {}
        for name, info in self.inputs.items():
            if name.startswith("past"):
                state[name] = self.ort_value(np.zeros([self._dim(name, i, d) for i, d in enumerate(info.shape)], np.float32))
        return state

    def _dim(self, name: str, index: int, dim) -> int:
        """Batch 1; a KV cache empty, or of `capacity` slots when in place; the builder leaves the head size symbolic."""
        if index == 0 or isinstance(dim, int):
            return 1 if index == 0 else dim
        if index == 2 and name.endswith((".key", ".value")):
            return self.capacity if name in self.in_place else 0
        return self.head_dim

    def call(self, ids: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        steps, binding = ids.shape[1], self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", self.ort_value(np.ascontiguousarray(ids, np.int64)))
        positions = np.arange(self.past, self.past + steps, dtype=np.int64)
        binding.bind_ortvalue_input("position_ids", self.ort_value(np.broadcast_to(positions, (3, 1, steps)).copy()))  # [3, B, T]
        if "attention_mask" in self.inputs:
            binding.bind_ortvalue_input("attention_mask", self.ort_value(np.ones((1, self.past + steps), np.int64)))
        binding.bind_output(self.outputs[0], "cpu")
        for present, past in self.feeds_back.items():
            binding.bind_ortvalue_input(past, state[past])
            if past in self.in_place:
                binding.bind_ortvalue_output(present, state[past])
            else:
                binding.bind_output(present, "cpu")
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()  # in binding order
        self.past += steps
        logits = logits.numpy()
        logits = logits[:, -1] if logits.ndim == 3 else logits  # the builder returns every position's logits
        return logits, {past: state[past] if past in self.in_place else value
                        for past, value in zip(self.feeds_back.values(), present)}


STEPS = {"checkpoint": step_checkpoint, "export-ours": step_export_ours, "export-peer": step_export_peer, "run": step_run}


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


def run_step(name: str, args, **extra) -> dict:
    return steps.run_step(__file__, name, args, steps.DRIVER_ONLY, **extra)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="0.8b")
    parser.add_argument("--prompt", type=int, default=128, help="prefill tokens in one call (a power of two)")
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="prefill runs; the best is reported")
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--profile", default="ort", choices=("ort", "portable"))
    parser.add_argument("--work", help="working directory (default: a temporary one, removed after)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short prompt: a smoke check")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
        return
    if args.quick:
        args.preset, args.prompt, args.decode, args.repeats = "tiny", 16, 8, 1
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    try:
        report = measure(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1) if args.json else format_report(report, args))


def measure(args, work: Path) -> dict:
    checkpoint, ours, peer = work / "checkpoint", work / "ours", work / "peer"
    if not checkpoint.exists():
        run_step("checkpoint", args, out=checkpoint)
    report = {
        "ours": {**run_step("export-ours", args, checkpoint=checkpoint, out=ours)},
        "peer": {**run_step("export-peer", args, checkpoint=checkpoint, out=peer)},
    }
    report["ours"].update({f"run_{k}": v for k, v in run_step("run", args, out=ours).items()})
    report["peer"].update({f"run_{k}": v for k, v in run_step("run", args, out=peer).items()})
    difference = np.load(ours / "prefill_logits.npy") - np.load(peer / "prefill_logits.npy")
    report["prefill_logits_max_abs_diff"] = float(np.abs(difference).max())
    return report


def format_report(report: dict, args) -> str:
    rows = [
        ("export time, s (load included)", "export_s", False),
        ("export peak RSS, MB", "peak_rss_mb", False),
        ("model size, MB", "size_mb", False),
        ("session load, s", "run_load_s", False),
        (f"prefill, tok/s ({args.prompt} tokens, one call)", "run_prefill_tok_s", True),
        (f"decode, tok/s ({args.decode} tokens)", "run_decode_tok_s", True),
        ("peak RSS while running, MB", "run_peak_rss_mb", False),
    ]
    ours, peer = report["ours"], report["peer"]
    lines = [f"{args.preset} fp32, CPU, {args.threads} intra-op threads, profile {args.profile}", ""]
    lines.append(f"{'':44s} {'ours':>10s} {'peer':>10s} {'ours/peer':>10s}")
    for label, key, _ in rows:
        lines.append(f"{label:44s} {ours[key]:10.2f} {peer[key]:10.2f} {ours[key] / peer[key]:10.2f}")
    lines.append("")
    lines.append(f"prefill runs, s: ours {fmt(ours['run_prefill_s_all'])}, peer {fmt(peer['run_prefill_s_all'])}")
    lines.append(f"last prompt position logits, max |ours - peer|: {report['prefill_logits_max_abs_diff']:.2e}")
    return "\n".join(lines)


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} of {', '.join(f'{v:.3f}' for v in values)}"


if __name__ == "__main__":
    main()
