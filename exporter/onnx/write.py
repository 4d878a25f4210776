"""Writing an ONNX model so that a reader never sees half of it: the model file and its external data.

Built on `runtime.files` (one atomic writer for the whole project). Weights above
`EXTERNAL_DATA_THRESHOLD` go to a data file beside the model, page-aligned.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from runtime.contract import ONNX_MODEL
from runtime.files import move_files, staging_dir

# Weights above this go to model.onnx.data: ONNX Runtime memory-maps an external data file, where
# weights inside the protobuf are parsed into a copy first (0.8B 8da4w, prefill and decode: 1.26 GB
# peak RSS in one file, 1.14 GB with the data beside it). One protobuf file holds at most 2 GiB anyway.
EXTERNAL_DATA_THRESHOLD = 2**26
DATA_ALIGNMENT = 4096  # page-aligned tensor offsets in the data file, so that any runtime can map them


def weight_bytes(model: ir.Model) -> int:
    return sum(value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value is not None)


def save_atomically(model: ir.Model, out_dir: Path, name: str = ONNX_MODEL, data: str | None = None) -> None:
    """Write `name` (and its external `data` file, if given) through a temporary directory beside the target.

    Readers never see half a model: the data file is moved first, so an `name` that exists always
    has its weights beside it; a stale data file from an earlier external export is removed.
    """
    out_dir = Path(out_dir)
    with staging_dir(out_dir, ".onnx-export-") as tmp:
        ir.save(model, tmp / name, external_data=data, alignment=DATA_ALIGNMENT if data else None)
        move_files(tmp, out_dir, [data, name] if data else [name])
    if not data:
        (out_dir / f"{name}.data").unlink(missing_ok=True)
