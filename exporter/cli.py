"""The `qwen-edge` command line: export, validate, run, bench, inspect, demo.

Every command prints one line per failure and no traceback unless `--debug`, and
none of the libraries' known noise (`exporter.quiet`) unless `--verbose` or `--debug`;
exit codes: 0 ok, 1 a validation miss (or a bundle file whose checksum no
longer matches), 2 bad input. Each command is a pair of functions: `_add_*`
declares its arguments, `_run_*` calls the library and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from exporter.quiet import silenced
from runtime.errors import QwenEdgeError

log = logging.getLogger("qwen_edge")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="load a model and prove the reference decoder against transformers")
    p.add_argument("model", nargs="?", default="tiny", help="checkpoint directory or preset (default: tiny)")
    p.add_argument("--prompt-len", type=int, default=20)
    p.add_argument("--decode-steps", type=int, default=16)
    p.set_defaults(run=_run_demo)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="what a bundle, checkpoint or preset holds: config, parameters, artifacts")
    p.add_argument("model", help="bundle directory, checkpoint directory or preset name")
    p.set_defaults(run=_run_inspect)


def _formats(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint or preset to a bundle (artifacts, tokenizer, golden outputs)")
    p.add_argument("model", help="checkpoint directory or preset name (tiny, tiny-moe, 0.8b, 2b)")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--format", type=_formats, default=["pte", "onnx"], help="comma-separated: pte,onnx (default both)")
    p.add_argument("--quant", default="fp32", help="quantization scheme: fp32, fp16, 8w, 4w, 8da4w (default fp32)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size of 4w / 8da4w: 32 (default), 64, 128")
    p.add_argument("--embedding-bits", type=int, default=None,
                   help="embedding / tied LM head of 4w / 8da4w: 8 (int8 per row, default) or 4 (int4 grouped)")
    p.add_argument("--max-seq-len", type=int, default=2048, help="KV-cache capacity, prompt + generated tokens")
    p.add_argument("--prefill-chunk", type=int, default=128, help="most tokens one call takes (a power of two)")
    p.add_argument("--vision-max-tokens", type=int, default=1024,
                   help="multimodal checkpoints: most tokens one image becomes (1024: about 1 Mpx)")
    p.add_argument("--text-only", action="store_true",
                   help="multimodal checkpoints: export the text decoder alone (no vision encoder, no image inputs)")
    p.add_argument("--onnx-profile", choices=("ort", "portable"), default="ort")
    p.add_argument("--pte-kernels", choices=("stock", "llm"), default="stock",
                   help="kernels the .pte calls: stock (portable + XNNPACK, runs on any ExecuTorch runtime) or llm "
                        "(also ExecuTorch's LLM custom-ops library, as its LLM runners link: faster decode)")
    p.add_argument("--golden-steps", type=int, default=16, help="greedy tokens kept in golden.npz")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip validation against the reference")
    p.set_defaults(run=_run_export)


def _add_threads(p) -> None:
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="compare a bundle's artifacts with the reference model")
    p.add_argument("bundle")
    p.add_argument("--backend", default="all", help="onnx, pte, reference or all (default: every artifact)")
    p.add_argument("--model", default=None, help="checkpoint the bundle came from (default: preset source or golden.npz)")
    p.add_argument("--json", default=None, help="write the JSON report here")
    p.add_argument("--eval-tokens", default=None, help=".npy of held-out token ids: perplexity, top-1 agreement, KL")
    p.add_argument("--eval-window", type=int, default=128, help="tokens per perplexity window")
    p.add_argument("--eval-max-tokens", type=int, default=2048, help="tokens of --eval-tokens used at most")
    p.add_argument("--steps", type=int, default=None, help="greedy tokens to compare (needs the live reference)")
    _add_threads(p)
    p.set_defaults(run=_run_validate)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="generate text with a bundle")
    p.add_argument("bundle")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids (bundles without a tokenizer)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message with the chat template")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image for the prompt (repeatable; bundles of multimodal checkpoints); it goes where the "
                        "prompt has <|vision_start|><|image_pad|><|vision_end|>, else in front of the text")
    p.add_argument("--backend", default=None, help="onnx, pte or reference (default: onnx if present)")
    p.add_argument("--model", default=None, help="checkpoint for the reference backend")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    _add_threads(p)
    p.set_defaults(run=_run_run)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="prefill and decode throughput and peak RSS of a bundle's backends")
    p.add_argument("bundle")
    p.add_argument("--backend", default="all", help="onnx, pte, reference or all (default: every artifact)")
    p.add_argument("--model", default=None, help="checkpoint for the reference backend")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", default=None, help="write the results here")
    _add_threads(p)
    p.set_defaults(run=_run_bench)


def _run_demo(args) -> int:
    from exporter.demo import run_demo

    return run_demo(args.model, prompt_len=args.prompt_len, decode_steps=args.decode_steps)


def _run_inspect(args) -> int:
    from exporter.inspect import inspect_any

    print(inspect_any(args.model))
    return 0


def _run_export(args) -> int:
    from exporter.artifact import ExportOptions
    from exporter.bundle import export_bundle
    from runtime.bundle import open_bundle

    options = ExportOptions(max_seq_len=args.max_seq_len, prefill_chunk=args.prefill_chunk, quant=args.quant,
                            group_size=args.group_size, embedding_bits=args.embedding_bits,
                            onnx_profile=args.onnx_profile, pte_kernels=args.pte_kernels,
                            vision_max_tokens=args.vision_max_tokens, text_only=args.text_only)
    out = export_bundle(args.model, args.out, formats=args.format, options=options, force=args.force,
                        validate=args.validate, golden_steps=args.golden_steps)
    bundle = open_bundle(out, verify=False)
    sizes = ", ".join(f"{fmt} {bundle.size_bytes(fmt) / 1e6:.1f} MB" for fmt in bundle.formats)
    checked = "validated against the reference" if args.validate else "not validated (--no-validate)"
    print(f"wrote {out} ({sizes}); {checked}")
    return 0


def _backends(bundle, choice: str) -> list[str]:
    return bundle.formats if choice == "all" else [choice]


def _run_validate(args) -> int:
    from runtime.bundle import open_bundle
    from runtime.validate import format_report, validate_bundle, write_report

    bundle = open_bundle(args.bundle)
    report = validate_bundle(bundle, _backends(bundle, args.backend), model=args.model, eval_tokens=args.eval_tokens,
                             eval_window=args.eval_window, eval_max_tokens=args.eval_max_tokens, steps=args.steps,
                             threads=args.threads)
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
    return 0 if report["passed"] else 1


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError as err:
        raise QwenEdgeError(f"--prompt-ids {text!r}: expected comma-separated integers") from err


def _run_run(args) -> int:
    import runtime
    from runtime.bundle import open_bundle

    bundle = open_bundle(args.bundle)
    backend = args.backend or ("onnx" if "onnx" in bundle.formats else (bundle.formats or ["reference"])[0])
    session = runtime.load(bundle, backend, model=args.model, threads=args.threads)
    sampling = runtime.Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    prompt = args.prompt if args.prompt is not None else _parse_ids(args.prompt_ids)
    result = session.generate(prompt, args.max_new_tokens, sampling, chat=args.chat, on_text=_print_piece,
                              images=args.image)
    print("" if result.text is not None else ",".join(map(str, result.ids)))
    new = len(result.ids)
    decode_rate = f"{(new - 1) / result.decode_s:.1f}" if new > 1 and result.decode_s > 0 else "-"
    print(f"[{backend}: {len(result.prompt_ids)} prompt tokens at {len(result.prompt_ids) / result.prefill_s:.1f} tok/s, "
          f"{new} new at {decode_rate} tok/s, stop: {result.stop_reason}]", file=sys.stderr)
    return 0


def _print_piece(piece: str) -> None:
    print(piece, end="", flush=True)


def _run_bench(args) -> int:
    from runtime.bench import bench_bundle, format_bench
    from runtime.bundle import open_bundle
    from runtime.validate import write_report

    bundle = open_bundle(args.bundle)
    report = bench_bundle(bundle, _backends(bundle, args.backend), prompt_len=args.prompt_len, gen_len=args.gen_len,
                          runs=args.runs, threads=args.threads, model=args.model)
    print(format_bench(report))
    if args.json:
        write_report(report, args.json)
    return 0


COMMANDS: tuple[Callable, ...] = (_add_export, _add_validate, _add_run, _add_bench, _add_inspect, _add_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--verbose", action="store_true", help="also show the libraries' warnings and notes")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # also accepted after the command: `qwen-edge export ... --debug`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="also show the libraries' warnings and notes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug)
    in_main = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C, so a killed export still removes its staging directory.
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        with contextlib.nullcontext() if args.verbose or args.debug else silenced():
            return args.run(args)
    except QwenEdgeError as err:
        if args.debug:
            traceback.print_exc()
        print(f"qwen-edge {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # disk full, permission denied: the user's environment, not a bug
        if args.debug:
            traceback.print_exc()
        print(f"qwen-edge {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qwen-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


_OURS = ("qwen_edge", "exporter", "runtime")


class _OursOrWarnings(logging.Filter):
    """Our INFO messages; other libraries' (onnxscript, partitioners, torch.export) only from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in _OURS


def _configure_logging(debug: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        if not debug:
            # A filter on the handler, not a level on the loggers: libraries that raise their own
            # logger to DEBUG (to collect notes) still propagate here.
            handler.addFilter(_OursOrWarnings())
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in _OURS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
