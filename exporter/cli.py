"""The `qwen-edge` command line.

Every command prints one line per failure and no traceback unless `--debug`;
exit codes: 0 ok, 1 a validation miss, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from exporter.errors import QwenEdgeError

log = logging.getLogger("qwen_edge")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="load a model and prove the reference decoder against transformers")
    p.add_argument("model", nargs="?", default="tiny", help="checkpoint directory or preset (default: tiny)")
    p.add_argument("--prompt-len", type=int, default=20)
    p.add_argument("--decode-steps", type=int, default=16)
    p.set_defaults(run=_run_demo)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="config, parameter counts and checkpoint contents of a model")
    p.add_argument("model", help="checkpoint directory or preset name")
    p.set_defaults(run=_run_inspect)


def _run_demo(args) -> int:
    from exporter.demo import run_demo

    return run_demo(args.model, prompt_len=args.prompt_len, decode_steps=args.decode_steps)


def _run_inspect(args) -> int:
    from exporter.inspect import inspect_model

    print(inspect_model(args.model))
    return 0


COMMANDS: tuple[Callable, ...] = (_add_demo, _add_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except QwenEdgeError as err:
        if args.debug:
            traceback.print_exc()
        print(f"qwen-edge {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"qwen-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
