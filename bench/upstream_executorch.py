"""ExecuTorch's own Qwen3.5 path (the peer we benchmark against), driven on an HF-layout checkpoint.

Upstream ships Qwen3.5 in the executorch wheel as part of the Llama example pipeline:
`executorch.examples.models.qwen3_5.convert_weights` renames an HF checkpoint to its "meta" names
(a pickled state dict), and `executorch.extension.llm.export.export_llm` (Hydra) builds the
program from that checkpoint and a params JSON. Its README's recipe for XNNPACK fp32:

    python -m executorch.extension.llm.export.export_llm \\
      --config examples/models/qwen3_5/config/qwen3_5_xnnpack_fp32.yaml \\
      +base.model_class=qwen3_5_0_8b +base.params=0_8b_config.json +export.output_name=...

where the yaml sets use_kv_cache, use_sdpa_with_kv_cache, enable_dynamic_shape=False, fp32,
XNNPACK with extended ops, and metadata with Qwen's special ids. The wheel carries the yaml but
not the params JSONs, so `upstream_params` derives the params from the checkpoint's config.json
(for the published 0.8B/2B configs it reproduces upstream's 0_8b_config.json / 2b_config.json).

Config mapping (HF config.json -> upstream ModelArgs):
    hidden_size -> dim, intermediate_size -> hidden_dim, num_attention_heads -> n_heads,
    num_key_value_heads -> n_kv_heads, head_dim, num_hidden_layers -> n_layers,
    rms_norm_eps -> norm_eps, rope_parameters.{rope_theta, partial_rotary_factor} (HF rope:
    rotates the first head_dim * factor dims, half-split), layer_types (as is), linear_* (as is);
    fixed for Qwen3.5: use_q_gate (q_proj emits [q | gate] per head), use_qk_norm before rope,
    rms_norm_add_unit_offset (x * (1 + w) norms), no qkv bias, attention_type mha.
    tie_word_embeddings needs no field: convert_weights copies the embedding to `output.weight`
    when the checkpoint has no lm_head. M-RoPE sections are not represented: for text, where the
    three position streams coincide, M-RoPE equals the 1-D rope upstream uses. MoE is not this
    path (upstream has a separate qwen3_5_moe example): refused.

The program has one method, `forward(tokens [1, 1] int64, input_pos [1] int64) -> logits [1, V]`
(static shape: upstream prefills a prompt token by token), with the KV caches and DeltaNet states
as mutable buffers; DeltaNet state resets when input_pos is 0. Outside the XNNPACK delegates it
calls `llama::custom_sdpa`, `llama::update_cache` and `llama::gated_delta_rule`, whose ExecuTorch
kernels live in the wheel's `extension/llm/custom_ops/libcustom_ops_aot_lib.so`, and its 8da4w
programs `quantized_decomposed::embedding_byte`: `bench.common.executorch_runtime` registers both
libraries, for every program alike, as an LLM app links them.

The export's two commands (`bench.common.run_module`) and the run (`--step=run`) are each a step in a
fresh interpreter, measured alike: wall time and peak RSS (`bench.common.peak_rss_mb`).

    .venv/bin/python -m bench.upstream_executorch --hf-dir CKPT --out DIR [--quant 8da4w] \\
        [--prompt-len 128 --gen-len 64 --threads 2] [--parity]

prints one JSON line. `--parity` also loads the checkpoint into our reference model
(exporter.checkpoint.load_model) and reports the max |difference| of the last prompt position's
logits (fp32: a check that the weights and the config were carried over faithfully).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    answer_step,
    argument_parser,
    executorch_runtime,
    rss_mb,
    run_as_an_app,
    run_module,
    run_step,
)
from runtime.config import FULL, LINEAR

STATS_FILE = "upstream_export.json"
CONVERT_WEIGHTS = "executorch.examples.models.qwen3_5.convert_weights"
EXPORT_LLM = "executorch.extension.llm.export.export_llm"
QUANT_MODES = (None, "8da4w")


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


def _text_config(raw: dict) -> dict:
    """The text decoder's part of an HF config (multimodal configs nest it under text_config)."""
    return {**raw, **raw["text_config"]} if "text_config" in raw else raw


def upstream_params(hf_config: dict) -> dict:
    """Upstream's params JSON (ModelArgs fields) for a Qwen3.5 text config.json dict."""
    t = _text_config(hf_config)
    if "moe" in str(t.get("model_type", "")) or t.get("num_experts"):
        raise ValueError("MoE Qwen3.5 is not the qwen3_5 Llama-pipeline path upstream; use a dense checkpoint")
    rope = {**(t.get("rope_scaling") or {}), **(t.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"rope_type {rope_type!r}: upstream's Qwen3.5 path implements the default rope only")
    n_layers = t["num_hidden_layers"]
    layer_types = t.get("layer_types")
    if layer_types is None:
        interval = t.get("full_attention_interval", 4)
        layer_types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n_layers)]
    if len(layer_types) != n_layers or set(layer_types) - {LINEAR, FULL}:
        raise ValueError(f"layer_types {layer_types!r}: need {n_layers} entries of {LINEAR!r} / {FULL!r}")
    if t.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {t['hidden_act']!r}: upstream uses SiLU")
    return {
        "dim": t["hidden_size"],
        "hidden_dim": t["intermediate_size"],
        "n_heads": t["num_attention_heads"],
        "head_dim": t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
        "n_kv_heads": t["num_key_value_heads"],
        "n_layers": n_layers,
        "norm_eps": float(t.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(rope.get("rope_theta", t.get("rope_theta", 1e7))),
        "use_scaled_rope": False,
        "vocab_size": t["vocab_size"],
        "use_hf_rope": True,
        "partial_rotary_factor": float(rope.get("partial_rotary_factor", t.get("partial_rotary_factor", 0.25))),
        "attention_qkv_bias": False,
        "use_qk_norm": True,
        "qk_norm_before_rope": True,
        "attention_type": "mha",
        "use_q_gate": True,
        "rms_norm_add_unit_offset": True,
        "linear_conv_kernel_dim": t.get("linear_conv_kernel_dim", 4),
        "linear_key_head_dim": t["linear_key_head_dim"],
        "linear_value_head_dim": t["linear_value_head_dim"],
        "linear_num_key_heads": t["linear_num_key_heads"],
        "linear_num_value_heads": t["linear_num_value_heads"],
        "layer_types": list(layer_types),
    }


def _model_class(params: dict) -> str:
    """Upstream's model_class label; with a checkpoint given it only names the model (all sizes share a class)."""
    return {2048: "qwen3_5_2b", 2560: "qwen3_5_4b"}.get(params["dim"], "qwen3_5_0_8b")


def _group_size(params: dict) -> int:
    """8da4w group: upstream's default 128 where it divides the linears' inputs, else 32 (tiny shapes)."""
    inputs = (params["dim"], params["hidden_dim"], params["n_heads"] * params["head_dim"],
              params["linear_num_value_heads"] * params["linear_value_head_dim"])
    return 128 if all(n % 128 == 0 for n in inputs) else 32


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{module}: not installed; the upstream path needs the executorch wheel")
    return Path(next(iter(spec.submodule_search_locations)))


def upstream_yaml() -> Path:
    return _package_dir("executorch.examples.models.qwen3_5") / "config" / "qwen3_5_xnnpack_fp32.yaml"


# ---------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------


def export_arguments(params_json: Path, checkpoint: Path, out_dir: Path, name: str, *, quant: str | None,
                     max_seq_len: int, group_size: int, model_class: str = "qwen3_5_0_8b") -> list[str]:
    """`python -m EXPORT_LLM`'s arguments: upstream's README recipe plus checkpoint, output and KV capacity."""
    command = [
        "--config", str(upstream_yaml()),
        f"+base.model_class={model_class}",
        f"+base.params={params_json}",
        f"+base.checkpoint={checkpoint}",
        f"+export.output_name={name}",  # no .pte suffix: a name ending in .pte would bypass output_dir
        f"+export.output_dir={out_dir}",
        f"export.max_seq_length={max_seq_len}",
        f"export.max_context_length={max_seq_len}",
    ]
    if quant == "8da4w":
        # upstream's q8da4w recipe (qwen3_xnnpack_q8da4w.yaml): 8-bit dynamic activations, 4-bit grouped
        # weights (torchao, HQQ scales), 8-bit per-row embedding.
        command += ["+quantization.qmode=8da4w", f"+quantization.group_size={group_size}",
                    "+quantization.embedding_quantize='8,0'"]
    return command + ["hydra.output_subdir=null", "hydra.run.dir=."]  # Hydra's log goes to cwd, no .hydra/


def export_upstream(hf_dir: Path, out_dir: Path, *, quant: str | None = None, max_seq_len: int = 256,
                    group_size: int | None = None, keep_intermediates: bool = False) -> Path:
    """Convert `hf_dir` with upstream's convert_weights, export it with export_llm; the .pte's path.

    Both commands run in their own process; their wall time and peak RSS go to
    `out_dir/upstream_export.json` (see `export_stats`): export_seconds (both steps),
    export_peak_rss_mb (the larger), and each step's own figures.
    """
    if quant not in QUANT_MODES:
        raise ValueError(f"quant {quant!r}: choose one of {QUANT_MODES}")
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    params = upstream_params(json.loads((hf_dir / "config.json").read_text()))
    group_size = group_size or _group_size(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"qwen3_5_upstream_{quant or 'fp32'}"
    for stale in (out_dir / f"{name}.pte", out_dir / STATS_FILE):
        stale.unlink(missing_ok=True)
    # Upstream takes a checkpoint whose path contains "int8" or "8da4w" for a pre-quantized one: keep
    # the converted checkpoint in a neutral temporary directory.
    work = Path(tempfile.mkdtemp(prefix="qwen35-upstream-"))
    if "int8" in str(work) or "8da4w" in str(work):
        raise RuntimeError(f"{work}: upstream reads a checkpoint path with 'int8' or '8da4w' as pre-quantized")
    try:
        params_json, checkpoint = work / "params.json", work / "checkpoint.pth"
        params_json.write_text(json.dumps(params, indent=1) + "\n")
        shutil.copy(params_json, out_dir / "upstream_params.json")
        convert = run_module(CONVERT_WEIGHTS, [hf_dir, checkpoint], cwd=work, log=out_dir / "upstream_convert.log")
        arguments = export_arguments(params_json, checkpoint, out_dir, name, quant=quant, max_seq_len=max_seq_len,
                                     group_size=group_size, model_class=_model_class(params))
        export = run_module(EXPORT_LLM, arguments, cwd=work, log=out_dir / "upstream_export.log")
    finally:
        if keep_intermediates:
            print(f"upstream intermediates kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    pte = out_dir / f"{name}.pte"
    if not pte.is_file():
        raise RuntimeError(f"export_llm finished but wrote no {pte}; see {out_dir / 'upstream_export.log'}")
    stats = {
        "quant": quant or "fp32",
        "group_size": group_size if quant else None,
        "max_seq_len": max_seq_len,
        "export_seconds": convert["wall_s"] + export["wall_s"],
        "export_peak_rss_mb": max(convert["peak_rss_mb"], export["peak_rss_mb"]),
        "convert_seconds": convert["wall_s"],
        "convert_peak_rss_mb": convert["peak_rss_mb"],
        "export_llm_seconds": export["wall_s"],
        "export_llm_peak_rss_mb": export["peak_rss_mb"],
        "pte_bytes": program_bytes(pte),
        "command": ["python", "-m", EXPORT_LLM, *arguments],
    }
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
    return pte


def export_stats(out_dir: Path) -> dict:
    """The figures `export_upstream` measured for the program in `out_dir`."""
    return json.loads((Path(out_dir) / STATS_FILE).read_text())


def program_bytes(pte: Path) -> int:
    """Bytes of every file the program needs: the .pte and any .ptd beside it (upstream writes none by default)."""
    pte = Path(pte)
    return pte.stat().st_size + sum(f.stat().st_size for f in pte.parent.glob("*.ptd"))


# ---------------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------------


def prompt_ids(n: int, vocab: int, seed: int = 0):
    """The benchmark prompt: `n` ids drawn uniformly from the vocabulary (numpy, seeded)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, vocab, size=n, dtype=np.int64)


def run_upstream(pte: Path, *, prompt_len: int = 128, gen_len: int = 64, threads: int = 2, repeats: int = 2,
                 seed: int = 0, logits_path: Path | None = None) -> dict:
    """Prefill `prompt_len` random ids and decode `gen_len` greedy tokens with upstream's program, in a step.

    The sequence runs `repeats` (>= 2) times from position 0; tok/s are the best run's. Returns
    prefill_tok_s, decode_tok_s, peak_rss_mb (the step's, run as an app), runtime_rss_mb (before the
    program loads), load_seconds, the runs' times, finite (all logits finite) and deterministic
    (every run gave identical logits and tokens). With `logits_path`, the last prompt position's
    logits are saved there (.npy).
    """
    if repeats < 2:
        raise ValueError("repeats: at least 2 (the second run checks determinism)")
    logits = Path(logits_path).resolve() if logits_path else None
    return run_step(__spec__.name, "run", pte=Path(pte).resolve(), prompt_len=prompt_len, gen_len=gen_len,
                    threads=threads, repeats=repeats, seed=seed, logits=logits)


def step_run(args) -> dict:
    """Load, prefill token by token (upstream's forward is a static [1, 1]), decode greedily; as an app."""
    import numpy as np
    import torch

    run_as_an_app()
    runtime = executorch_runtime(args.threads)
    runtime_rss_mb = rss_mb()
    start = time.perf_counter()
    program = runtime.load_program(Path(args.pte))
    method = program.load_method("forward")
    load_seconds = time.perf_counter() - start
    meta = method.metadata
    token_shape = list(meta.input_tensor_meta(0).sizes())
    vocab = list(meta.output_tensor_meta(0).sizes())[-1]
    if token_shape != [1, 1]:
        raise RuntimeError(f"forward takes tokens {token_shape}; this driver handles upstream's static [1, 1] export")
    capacity = program.load_method("get_max_seq_len").execute([])[0]
    if args.prompt_len + args.gen_len > capacity:
        raise RuntimeError(f"prompt {args.prompt_len} + decode {args.gen_len} exceed max_seq_len {capacity}")

    def step(token: int, pos: int) -> np.ndarray:
        out = method.execute([torch.tensor([[token]], dtype=torch.long), torch.tensor([pos], dtype=torch.long)])[0]
        return out.float().numpy().reshape(-1).copy()

    ids = prompt_ids(args.prompt_len, vocab, args.seed)
    runs = []
    for _ in range(args.repeats):
        logits, start = [], time.perf_counter()
        for pos, token in enumerate(ids):
            last = step(int(token), pos)
        prefill_s = time.perf_counter() - start
        logits.append(last)
        tokens = [int(last.argmax())]
        start = time.perf_counter()
        for i in range(args.gen_len):
            logits.append(step(tokens[-1], args.prompt_len + i))
            tokens.append(int(logits[-1].argmax()))
        decode_s = time.perf_counter() - start
        runs.append({"prefill_s": prefill_s, "decode_s": decode_s, "logits": np.stack(logits), "tokens": tokens})
    first = runs[0]
    if args.logits:
        np.save(args.logits, first["logits"][0])
    return {
        **{key: getattr(args, key) for key in ("prompt_len", "gen_len", "threads")},
        "vocab": vocab,
        "load_seconds": load_seconds,
        "prefill_tok_s": args.prompt_len / min(r["prefill_s"] for r in runs),
        "decode_tok_s": args.gen_len / min(r["decode_s"] for r in runs) if args.gen_len else None,
        "prefill_s_runs": [r["prefill_s"] for r in runs],
        "decode_s_runs": [r["decode_s"] for r in runs],
        "finite": bool(all(np.isfinite(r["logits"]).all() for r in runs)),
        "deterministic": all(np.array_equal(r["logits"], first["logits"]) and r["tokens"] == first["tokens"]
                             for r in runs[1:]),
        "generated": first["tokens"][:16],
        "runtime_rss_mb": runtime_rss_mb,
    }


# ---------------------------------------------------------------------------------------------------
# Parity with our reference model
# ---------------------------------------------------------------------------------------------------


def reference_logits(hf_dir: Path, ids):
    """Last-position fp32 logits (numpy) of our reference model (exporter.model.Qwen35Model) on `ids`."""
    import torch

    from exporter.checkpoint import load_model

    _, model, _ = load_model(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        out = model(torch.as_tensor(ids, dtype=torch.long).view(1, -1), last_only=True)
    return out.logits[0, -1].float().numpy()


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--hf-dir", type=Path, help="HF-layout checkpoint: config.json + safetensors (required)")
    parser.add_argument("--out", type=Path, help="output directory for the .pte and logs (required)")
    parser.add_argument("--quant", choices=["8da4w"], help="upstream's 8da4w linears + int8 embedding (default: fp32)")
    parser.add_argument("--group-size", type=int, help="8da4w group size (default: 128 where it divides, else 32)")
    parser.add_argument("--max-seq-len", type=int, default=256, help="KV capacity of the program")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of the whole sequence (>= 2); best is reported")
    parser.add_argument("--skip-export", action="store_true", help="reuse the .pte already in --out")
    parser.add_argument("--parity", action="store_true",
                        help="also compare the last prompt logits with our reference model on the same ids")
    for name, kind in (("step", str), ("pte", str), ("seed", int), ("logits", str)):
        parser.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if answer_step(args, {"run": step_run}):
        return
    if not (args.hf_dir and args.out):
        parser.error("--hf-dir and --out are required")
    name = f"qwen3_5_upstream_{args.quant or 'fp32'}.pte"
    if args.skip_export:
        pte = args.out / name
    else:
        pte = export_upstream(args.hf_dir, args.out, quant=args.quant, max_seq_len=args.max_seq_len,
                              group_size=args.group_size)
    stats = export_stats(args.out)
    logits_path = args.out / "upstream_prompt_logits.npy"
    run = run_upstream(pte, prompt_len=args.prompt_len, gen_len=args.gen_len, threads=args.threads,
                       repeats=args.repeats, logits_path=logits_path)
    report = {
        **{key: stats[key] for key in ("quant", "export_seconds", "export_peak_rss_mb", "convert_seconds",
                                       "export_llm_seconds")},
        "pte_bytes": program_bytes(pte),
        **{key: run[key] for key in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb", "load_seconds", "finite",
                                     "deterministic", "prompt_len", "gen_len", "threads")},
    }
    if args.parity:
        import numpy as np

        ours = reference_logits(args.hf_dir, prompt_ids(args.prompt_len, run["vocab"]))
        theirs = np.load(logits_path)
        report["parity_max_abs_diff"] = float(np.abs(ours - theirs).max())
        report["parity_ref_max_abs"] = float(np.abs(ours).max())
        report["parity_argmax_equal"] = bool(ours.argmax() == theirs.argmax())
    print(json.dumps(report))
    if not (run["finite"] and run["deterministic"]):
        sys.exit("upstream program gave non-finite or non-deterministic logits")


if __name__ == "__main__":
    main()
