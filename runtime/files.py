"""Writing files so that a reader never sees half of one: every file and directory qwen-edge writes goes through here.

Each write lands in a temporary name beside its target and is renamed into place, which
is atomic on one filesystem; a failed write leaves nothing behind (the temporary is removed)
and never touches what was already at the target.

- `write_atomically` / `write_json`: one file;
- `staging_dir` + `move_files`: several files written together (a model and its data file),
  moved into a directory in a given order;
- `place_dir`: a whole directory (a bundle, a checkpoint) renamed into place, optionally
  swapped with the one already there.

And the one reader of the JSON files a user hands us (`read_json`), which names the file and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write `path` through a temporary file beside it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if the write or the rename failed


def read_json(path: Path, error: type[Exception], fix: str) -> Any:
    """The parsed JSON of `path`, or `error` naming the file, what is wrong with it and `fix`."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err}); {fix}") from err


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented UTF-8 JSON, written atomically."""
    write_atomically(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staging_dir(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A fresh temporary directory in `parent` (same filesystem as the target), removed on exit whatever happened."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when place_dir renamed it


def move_files(src: Path, dst: Path, names: Iterable[str]) -> None:
    """Rename `names` from `src` into `dst`, in the given order (put a file's dependencies first)."""
    for name in names:
        os.replace(src / name, dst / name)


def place_dir(staging: Path, out: Path, *, replace: bool = False) -> None:
    """Rename the directory `staging` to `out`; with `replace`, swap it with the one at `out` and delete that.

    The old directory is moved aside first and put back if the rename fails, so `out` is
    either the old directory or the new one, never a mix.
    """
    if not out.exists():
        os.rename(staging, out)
        return
    if not replace:
        raise FileExistsError(f"{out}: already exists")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old / out.name, out)  # put the good directory back before reporting
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
