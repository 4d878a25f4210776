"""Benchmark every quantization scheme x format at the 0.8B and 2B shapes, with the field's peers in the same run.

Random weights of each preset, written once as an HF checkpoint that every peer reads
(`bench.common.write_checkpoint`). Then, each step in its own process so that its wall time and
peak RSS are its own (`bench.common.run_step`):

    export   ours: load + quantize + lower one scheme to one format (exporter.onnx / exporter.executorch),
             the text decoder alone (`--text-only`: the peers export no vision path either)
    run      ours: one prefill call of --prompt tokens, then --decode greedy steps (best of --repeats),
             as an app (`bench.common.run_as_an_app`); RSS read before the model loads too
    peers    ONNX Runtime GenAI's model builder (-p int4, -p fp32; run with plain onnxruntime like ours,
             `bench.onnx_run`) and ExecuTorch's own export_llm Qwen3.5 path (fp32 and 8da4w;
             `bench.upstream_executorch`)

For each artifact: size, export time and peak RSS, prefill and decode tok/s, peak RSS while
running (and that minus the RSS before the model loaded: the model's own), and the decode rate
as a fraction of this machine's memory-bandwidth limit: bytes read per decoded token (every
weight byte the token's matmuls read: the artifact's weights minus what only the embedding
lookup reads, a row at a time, plus the DeltaNet states read and written) times tok/s, divided
by a read bandwidth measured in the same run (numpy sum over a 1 GiB array).

This is a measuring tool, not a test: run it alone on the machine (a full run exports ~10
schemes x 2 presets; one 2B ExecuTorch lowering takes 4-5 minutes on a 2-core AVX-512 host).

    .venv/bin/python -m bench.bench_quant                          # 0.8b and 2b, every scheme, peers
    .venv/bin/python -m bench.bench_quant --presets 0.8b --formats onnx --schemes 8da4w,8da4w+emb4
    .venv/bin/python -m bench.bench_quant --presets 0.8b --formats pte --schemes 8da4w --upstream 8da4w
    .venv/bin/python -m bench.bench_quant --presets 0.8b --formats pte,pte-llm --schemes 8da4w+emb4 --builder ""
    .venv/bin/python -m bench.bench_quant --quick                  # tiny shapes: a smoke check
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
    answer_step,
    argument_parser,
    executorch_runtime,
    export_builder,
    export_ours,
    files_bytes,
    hidden_options,
    markdown_table,
    pte_files,
    rss_mb,
    run_as_an_app,
    run_step,
    timings,
    work_dir,
    write_checkpoint,
)

# Scheme names as the tolerance table keys them: "+emb4" is the int4 embedding / LM head.
SCHEMES = ("fp32", "fp16", "8w", "4w", "4w+emb4", "8da4w", "8da4w+emb4")
BUILDER_PRECISIONS = ("int4", "fp32")
UPSTREAM_QUANTS = (None, "8da4w")
# Formats: onnx, pte (kernels "stock"), pte-llm (the .pte with ExecuTorch's LLM custom ops, --pte-kernels llm).
PTE_KERNELS = {"pte": "stock", "pte-llm": "llm"}
ONNX_FILES, PTE_FILES = (".onnx", ".data"), (".pte", ".ptd")


def split_scheme(name: str) -> tuple[str, int | None]:
    quant, _, emb = name.partition("+emb")
    return quant, int(emb) if emb else None


# ---------------------------------------------------------------------------------------------------
# Steps, each in its own process
# ---------------------------------------------------------------------------------------------------


def step_export(args) -> dict:
    """Ours: load the checkpoint, quantize and lower one scheme to one format (load included in the time)."""
    from exporter.artifact import ExportOptions
    from exporter.quantize import SCHEMES as OFFERED

    quant, bits = split_scheme(args.scheme)
    group = int(args.group_size) if OFFERED[quant].grouped else None
    options = ExportOptions(max_seq_len=args.max_seq_len, prefill_chunk=args.prompt, quant=quant, group_size=group,
                            embedding_bits=bits, pte_kernels=PTE_KERNELS.get(args.format, "stock"))
    _, quantization = export_ours(Path(args.checkpoint), Path(args.out), args.format.partition("-")[0], options)
    embedding = quantization.get("embedding") or {}
    return {"lookup_only_bytes": embedding.get("lookup_only_bytes", 0)}


def step_run(args) -> dict:
    """One prefill call of --prompt random ids, then --decode greedy steps; best of --repeats runs (as an app)."""
    run_as_an_app()
    forward, runtime_rss_mb = _onnx_forward(args) if args.format in ("onnx", "builder") else _pte_forward(args)
    ids = np.random.default_rng(0).integers(0, args.vocab, size=args.prompt)
    prefill, decode = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        logits = forward(ids, 0, reset=True)
        prefill.append(time.perf_counter() - start)
        token, start = int(np.argmax(logits)), time.perf_counter()
        for i in range(args.decode):
            token = int(np.argmax(forward(np.array([token]), args.prompt + i)))
        decode.append(time.perf_counter() - start)
    return {"prefill_tok_s": args.prompt / min(prefill), "decode_tok_s": args.decode / min(decode),
            "runtime_rss_mb": runtime_rss_mb}


def _onnx_forward(args):
    """Ours or the builder's model on plain onnxruntime (`bench.onnx_run.GraphRunner`); the RSS before it loads."""
    from bench.onnx_run import GraphRunner, onnx_session

    model = Path(args.out) / "model.onnx"
    import onnxruntime  # noqa: F401  (before the RSS is read: the runtime's bindings are not the model's memory)

    runtime_rss_mb = rss_mb()
    runner = GraphRunner(onnx_session(model, args.threads), model)

    def forward(ids, pos, reset=False):
        if reset:
            runner.reset()
        return runner.forward(ids, pos)

    return forward, runtime_rss_mb


def _pte_forward(args):
    """Our program on ExecuTorch's Python runtime; the RSS before it loads."""
    import torch

    runtime = executorch_runtime(args.threads)
    program, data = pte_files(Path(args.out))
    runtime_rss_mb = rss_mb()
    method = runtime.load_program(program, data_path=data).load_method("forward")

    def forward(ids, pos, reset=False):  # input_pos 0 starts a new sequence (runtime.contract)
        tokens = torch.as_tensor(np.asarray(ids, np.int64)).view(1, -1)
        return method.execute([tokens, torch.tensor([pos])])[0].float().numpy()[0]

    return forward, runtime_rss_mb


STEPS = {"export": step_export, "run": step_run}


# ---------------------------------------------------------------------------------------------------
# Bandwidth and bytes per token
# ---------------------------------------------------------------------------------------------------


def read_bandwidth_gbs(gib: float, repeats: int = 5) -> float:
    """Best of `repeats` numpy sums over a `gib` GiB float32 array: this machine's read bandwidth, GB/s."""
    data = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    return data.nbytes / min(timings(data.sum, 0, repeats)) / 1e9


def onnx_read_adjustment(out: Path) -> int:
    """Bytes a decode step reads beyond (or short of) the file's: a model's initializers as ONNX Runtime holds them.

    fp16 initializers whose only use is a Cast to fp32 (our MatMulNBits scales) are folded to fp32 at
    load, so a step reads them twice as large; the builder's RoPE tables (`cos_cache`, `sin_cache`,
    262 144 positions) are read a row per token, not whole.
    """
    import onnx

    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    users = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    adjustment = 0
    for tensor in model.graph.initializer:
        size = int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        uses = users.get(tensor.name, [])
        if tensor.name in ("cos_cache", "sin_cache"):
            adjustment -= size
        elif tensor.data_type == onnx.TensorProto.FLOAT16 and uses and all(
            n.op_type == "Cast" and onnx.helper.get_node_attr_value(n, "to") == onnx.TensorProto.FLOAT for n in uses
        ):
            adjustment += size
    return adjustment


def state_bytes(preset_name: str) -> int:
    """DeltaNet recurrent and conv states read and written per token (fp32)."""
    from exporter.config import preset
    from runtime.contract import state_names, state_shape

    text = preset(preset_name).text
    elements = sum(math.prod(state_shape(text, part)) for _, part in state_names(text) if part in ("conv", "recurrent"))
    return 2 * 4 * elements


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


def run_and_record(entry: dict, out: Path, work: Path, args, fmt: str, vocab: int) -> dict:
    run = run_step(__spec__.name, "run", log=work / f"{out.name}.run.log", out=out, format=fmt, prompt=args.prompt,
                   decode=args.decode, repeats=args.repeats, threads=args.threads, vocab=vocab)
    entry.update(prefill_tok_s=run["prefill_tok_s"], decode_tok_s=run["decode_tok_s"],
                 run_peak_rss_mb=run["peak_rss_mb"], runtime_rss_mb=run["runtime_rss_mb"])
    print(json.dumps(entry), file=sys.stderr, flush=True)  # progress: a full run takes an hour
    return entry


def bench_ours(preset: str, checkpoint: Path, work: Path, args, vocab: int) -> list[dict]:
    from exporter.quantize import SCHEMES as OFFERED

    entries = []
    for scheme in args.schemes:
        for fmt in args.formats:
            if fmt.partition("-")[0] not in OFFERED[split_scheme(scheme)[0]].runs:
                continue
            out = work / f"{preset}-{scheme}-{fmt}"
            exported = run_step(__spec__.name, "export", log=work / f"{out.name}.export.log", checkpoint=checkpoint,
                                out=out, format=fmt, scheme=scheme, prompt=args.prompt, max_seq_len=args.max_seq_len,
                                group_size=args.group_size)
            size = files_bytes(out, ONNX_FILES + PTE_FILES)
            entry = {"preset": preset, "who": "ours", "format": fmt, "scheme": scheme, "size_mb": size / 1e6,
                     "export_s": exported["wall_s"], "export_peak_rss_mb": exported["peak_rss_mb"],
                     "bytes_per_token": size - exported["lookup_only_bytes"] + state_bytes(preset)
                     + (onnx_read_adjustment(out) if fmt == "onnx" else 0)}
            entries.append(run_and_record(entry, out, work, args, fmt, vocab))
    return entries


def bench_peers(preset: str, checkpoint: Path, work: Path, args, vocab: int, hidden: int) -> list[dict]:
    from bench.upstream_executorch import (
        export_stats,
        export_upstream,
        program_bytes,
        run_upstream,
    )

    entries = []
    for precision in args.builder if "onnx" in args.formats else ():
        out = work / f"{preset}-builder-{precision}"
        exported = export_builder(checkpoint, out, precision, log=work / f"{out.name}.log")
        size = files_bytes(out, ONNX_FILES)
        entry = {"preset": preset, "who": "ORT GenAI builder", "format": "onnx", "scheme": f"-p {precision}",
                 "size_mb": size / 1e6, "export_s": exported["wall_s"], "export_peak_rss_mb": exported["peak_rss_mb"],
                 "bytes_per_token": size + state_bytes(preset) + onnx_read_adjustment(out)}  # one tied copy
        entries.append(run_and_record(entry, out, work, args, "builder", vocab))
    for quant in args.upstream if "pte" in args.formats else ():
        out = work / f"{preset}-export_llm-{quant or 'fp32'}"
        pte = export_upstream(checkpoint, out, quant=quant, max_seq_len=args.max_seq_len, group_size=args.group_size)
        stats, size = export_stats(out), program_bytes(pte)
        run = run_upstream(pte, prompt_len=args.prompt, gen_len=args.decode, threads=args.threads,
                           repeats=max(2, args.repeats))
        lookup = vocab * hidden * (1 if quant else 4)  # its embedding table is a copy beside the (tied) output layer
        entries.append({"preset": preset, "who": "ExecuTorch export_llm", "format": "pte",
                        "scheme": f"{quant} g{args.group_size}" if quant else "fp32",
                        "size_mb": size / 1e6, "export_s": stats["export_seconds"],
                        "export_peak_rss_mb": stats["export_peak_rss_mb"],
                        "bytes_per_token": size - lookup + state_bytes(preset),
                        "prefill_tok_s": run["prefill_tok_s"], "decode_tok_s": run["decode_tok_s"],
                        "run_peak_rss_mb": run["peak_rss_mb"], "runtime_rss_mb": run["runtime_rss_mb"],
                        "note": "prefill token by token (its forward takes [1, 1])"})
    return entries


def measure(args, work: Path) -> dict:
    from exporter.config import preset as preset_config

    report = {"bandwidth_gbs": read_bandwidth_gbs(args.bandwidth_gib), "threads": args.threads,
              "prompt": args.prompt, "decode": args.decode, "entries": []}
    for name in args.presets:
        text = preset_config(name).text
        checkpoint = write_checkpoint(preset_config(name), work / f"{name}-checkpoint")
        report["entries"] += bench_ours(name, checkpoint, work, args, text.vocab_size)
        if not args.skip_peers:
            report["entries"] += bench_peers(name, checkpoint, work, args, text.vocab_size, text.hidden_size)
    for entry in report["entries"]:
        entry["bandwidth_fraction"] = entry["bytes_per_token"] * entry["decode_tok_s"] / (report["bandwidth_gbs"] * 1e9)
        entry["model_rss_mb"] = entry["run_peak_rss_mb"] - entry["runtime_rss_mb"]
    return report


COLUMNS = [("preset", "preset", "{}"), ("who", "who", "{}"), ("format", "format", "{}"), ("scheme", "scheme", "{}"),
           ("size MB", "size_mb", "{:.1f}"), ("export s", "export_s", "{:.1f}"),
           ("export RSS MB", "export_peak_rss_mb", "{:.0f}"), ("prefill tok/s", "prefill_tok_s", "{:.1f}"),
           ("decode tok/s", "decode_tok_s", "{:.2f}"), ("run RSS MB", "run_peak_rss_mb", "{:.0f}"),
           ("model RSS MB", "model_rss_mb", "{:.0f}"),
           ("MB/token", "bytes_per_token", "{:.1f}"), ("of bandwidth", "bandwidth_fraction", "{:.0%}")]


def format_report(report: dict) -> str:
    rows = []
    for e in report["entries"]:
        values = {**e, "bytes_per_token": e["bytes_per_token"] / 1e6}
        rows.append([fmt.format(values[key]) for _, key, fmt in COLUMNS])
    head = (f"read bandwidth {report['bandwidth_gbs']:.1f} GB/s (numpy sum); {report['threads']} threads; "
            f"prefill {report['prompt']} tokens in one call, decode {report['decode']} tokens")
    return head + "\n\n" + markdown_table([title for title, _, _ in COLUMNS], rows)


def main(argv=None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="0.8b,2b")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--formats", default="onnx,pte")
    parser.add_argument("--prompt", type=int, default=128, help="prefill tokens in one call (a power of two)")
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs of prefill + decode; the best is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size, ours and export_llm's 8da4w")
    parser.add_argument("--bandwidth-gib", type=float, default=1.0)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--builder", default=",".join(BUILDER_PRECISIONS),
                        help="the builder's precisions to run (onnx)")
    parser.add_argument("--upstream", default="fp32,8da4w", help="export_llm's schemes to run (pte): fp32, 8da4w")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short prompt: a smoke check")
    parser.add_argument("--work", help="working directory, kept (default: a temporary one, removed after)")
    parser.add_argument("--json", help="also write the report here")
    hidden_options(parser, "checkpoint", "out", "format", "scheme")
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if answer_step(args, STEPS):
        return
    if args.quick:
        args.presets, args.prompt, args.decode, args.repeats, args.bandwidth_gib = "tiny", 16, 8, 1, 0.25
    args.presets, args.schemes, args.formats = (args.presets.split(","), args.schemes.split(","),
                                                args.formats.split(","))
    args.builder = [p for p in args.builder.split(",") if p]
    args.upstream = [None if q == "fp32" else q for q in args.upstream.split(",") if q]
    unknown = set(args.builder) - set(BUILDER_PRECISIONS) | set(args.upstream) - set(UPSTREAM_QUANTS)
    if unknown:
        parser.error(f"unknown peer scheme(s) {sorted(map(str, unknown))}: --builder takes int4, fp32; "
                     "--upstream takes fp32, 8da4w")
    with work_dir(args.work, "bench-quant-") as work:
        report = measure(args, work)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
