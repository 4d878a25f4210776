"""Golden outputs: what the reference model does on one prompt, kept so any runtime can check itself.

A `Trace` is the prompt, the reference logits at every prompt position, a
greedy continuation of N tokens (EOS not honoured, so every runtime compares
the same N), and the logits of each decode step of that continuation. The
exporter saves one as `golden.npz` (`runtime.reference` computes a live one); validation measures an artifact against a
trace from the live reference model or from that file.

golden.npz (NumPy, no pickles):
  prompt_ids     int64   [T]
  prompt_logits  float32 [T, V]    logits at every prompt position; the last row chose greedy_ids[0]
  greedy_ids     int64   [N]
  decode_logits  float32 [N-1, V]  logits after feeding greedy_ids[i]; row i chose greedy_ids[i+1]
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import BundleError

_KEYS = {"prompt_ids": 1, "prompt_logits": 2, "greedy_ids": 1, "decode_logits": 2}


@dataclass
class Trace:
    prompt_ids: np.ndarray  # int64 [T]
    prompt_logits: np.ndarray  # float32 [T, V]
    greedy_ids: np.ndarray  # int64 [N]
    decode_logits: np.ndarray  # float32 [N-1, V]

    @property
    def steps(self) -> int:
        return len(self.greedy_ids)

    @property
    def greedy_logits(self) -> np.ndarray:
        """The logits that chose each greedy token: [N, V] (row i chose greedy_ids[i])."""
        return np.concatenate([self.prompt_logits[-1:], self.decode_logits])


def save_trace(trace: Trace, path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, **{key: getattr(trace, key) for key in _KEYS})


def load_trace(path: Path) -> Trace:
    """Read golden.npz, checking its keys and shapes; a malformed file names what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in _KEYS if key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise BundleError(f"{path}: not a readable .npz ({err}); re-export the bundle") from err
    missing = [key for key in _KEYS if key not in arrays]
    if missing:
        raise BundleError(f"{path}: missing arrays {', '.join(missing)}; re-export the bundle")
    for key, ndim in _KEYS.items():
        if arrays[key].ndim != ndim:
            raise BundleError(f"{path}: {key} has {arrays[key].ndim} dimensions, expected {ndim}")
    trace = Trace(**arrays)
    T, N = len(trace.prompt_ids), len(trace.greedy_ids)
    if trace.prompt_logits.shape[0] != T or trace.decode_logits.shape[0] != max(N - 1, 0) or N < 1:
        raise BundleError(f"{path}: array lengths disagree (prompt {T}, greedy {N}); re-export the bundle")
    return trace
