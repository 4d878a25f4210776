"""Running one benchmark step in a fresh interpreter, so that its peak RSS and imports are its own.

A bench script re-invokes itself with `--step=NAME` and its options as flags; the step prints one
JSON line last, which `run_step` returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Driver options a step never needs (they steer the driver: output, work directory, what to measure).
DRIVER_ONLY = ("step", "json", "quick", "work")


def run_step(script: str, name: str, args, driver_only: tuple[str, ...] = DRIVER_ONLY, **extra) -> dict:
    """Run `script --step=name` with args (and extra) as flags; exit with the step's stderr if it fails."""
    flags = []
    for key, value in {**vars(args), **extra}.items():
        if value in (None, False) or key in driver_only:
            continue
        flag = f"--{key.replace('_', '-')}"
        flags.append(flag if value is True else f"{flag}={value}")
    command = [sys.executable, script, f"--step={name}", *flags]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, errors="replace")  # runners print raw bytes
    if done.returncode != 0:
        sys.exit(f"step {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
