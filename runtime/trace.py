"""Golden outputs: what the reference model does on one prompt, kept so any runtime can check itself.

A `Trace` is the prompt, the reference logits at every prompt position, a
greedy continuation of N tokens (EOS not honoured, so every runtime compares
the same N), and the logits of each decode step of that continuation. The
exporter saves one as `golden.npz`; validation measures an artifact against a
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


def reference_trace(model, prompt_ids, steps: int, *, hidden_states: bool = False):
    """The trace of the reference model (and, with `hidden_states`, its per-layer outputs on the prompt).

    Returns (trace, final state after the prompt as {"{layer}.{part}": array}, hidden states or None).
    """
    import torch

    from exporter.artifact import state_names

    if steps < 1:
        raise BundleError(f"golden steps {steps}: need at least one greedy token")
    tokens = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64)).view(1, -1)  # [1, T]
    with torch.no_grad():
        out = model(tokens, output_hidden_states=hidden_states)
        prompt_logits = out.logits[0].float().numpy()  # [T, V]
        names = state_names(model.config)
        flat = [t for layer in out.state for t in layer]
        final_state = {f"{i}.{p}": t.float().numpy() for (i, p), t in zip(names, flat, strict=True)}
        hidden = [h[0].float().numpy() for h in out.hidden_states] if hidden_states else None
        greedy = [int(prompt_logits[-1].argmax())]
        decode_logits, state = [], out.state
        for _ in range(steps - 1):
            step = model(torch.tensor([[greedy[-1]]]), state)
            state = step.state
            decode_logits.append(step.logits[0, -1].float().numpy())
            greedy.append(int(decode_logits[-1].argmax()))
    vocab = prompt_logits.shape[-1]
    trace = Trace(
        prompt_ids=np.asarray(prompt_ids, dtype=np.int64),
        prompt_logits=prompt_logits.astype(np.float32),
        greedy_ids=np.asarray(greedy, dtype=np.int64),
        decode_logits=np.asarray(decode_logits, dtype=np.float32).reshape(steps - 1, vocab),
    )
    return trace, final_state, hidden


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
