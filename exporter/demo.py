"""`qwen-edge demo`: load a model, run it as a decoder, and prove it against transformers.

Until the lowerings land this is the main job on the built-in default: it shows
the reference decoder is self-consistent (a prompt prefilled, then decoded
token by token, equals one full forward) and, when transformers is installed,
equal to transformers' Qwen3.5 on the same weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from exporter.checkpoint import open_model, save_checkpoint
from exporter.model import Qwen35Model

REL_TOL = 1e-4  # of the logit scale: see tests/exporter/test_parity.py for why


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (ours - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)


@torch.no_grad()
def _prefill_decode(model: Qwen35Model, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    out = model(tokens[:, :prompt_len])
    logits, state = [out.logits], out.state
    for i in range(prompt_len, tokens.shape[1]):
        out = model(tokens[:, i : i + 1], state)
        logits.append(out.logits)
        state = out.state
    return torch.cat(logits, dim=1)


@torch.no_grad()
def _oracle_logits(config, model: Qwen35Model, tokens: torch.Tensor) -> torch.Tensor | None:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("transformers is not installed: oracle comparison skipped (pip install 'qwen-edge[test]')")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(config, model, Path(tmp) / "ckpt")
        oracle = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return oracle(input_ids=tokens).logits


def run_demo(spec: str, *, prompt_len: int = 20, decode_steps: int = 16) -> int:
    config, model, _ = open_model(spec)
    total = prompt_len + decode_steps
    tokens = torch.randint(0, config.text.vocab_size, (1, total), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens).logits
    stepped = _prefill_decode(model, tokens, prompt_len)
    rows = [("prefill + decode vs one forward", _relative_error(stepped, full))]
    oracle = _oracle_logits(config, model, tokens)
    if oracle is not None:
        rows.append(("reference vs transformers", _relative_error(full, oracle)))
    print(f"model: {spec}  ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    print(f"tokens: {prompt_len} prompt + {decode_steps} decode, fp32; bound {REL_TOL:g} of the logit scale")
    for name, err in rows:
        print(f"  {name:<34} max error {err:.2e} of scale  {'ok' if err <= REL_TOL else 'MISS'}")
    return 0 if all(err <= REL_TOL for _, err in rows) else 1
