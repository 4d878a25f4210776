"""The reference model against transformers' Qwen3.5 (the independent oracle), fp32, random weights.

Each oracle is saved with `save_pretrained` and loaded back through our loader,
so these tests cover the checkpoint layouts as much as the math.

Tolerance: max |ours - oracle| <= 1e-4 x max |oracle logits|. Both sides run
the same fp32 math through different kernels (chunked delta rule with a
product-form inverse vs triangular solve, SDPA vs eager attention), whose
rounding differs at the 1e-6 relative level per op; 1e-4 of the logit scale
leaves room for that through a handful of layers while any real mistake (a
wrong gate, norm, rotary dim or head grouping) moves logits by far more.
"""

from __future__ import annotations

import pytest
import torch

from exporter import load_model
from tests.exporter.oracle import VARIANTS, build, save

PROMPT_LEN, DECODE_STEPS, REL_TOL = 20, 16, 1e-4


def assert_close_to_scale(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= REL_TOL * scale, f"{what}: max abs error {err:.3g} > {REL_TOL} x logit scale {scale:.3g}"


def oracle_run(hf, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Prompt logits, per-step decode logits, and the greedy tokens the oracle chose."""
    out = hf(input_ids=prompt, use_cache=True)
    cache, logits = out.past_key_values, out.logits
    tokens, step_logits = [], []
    token = logits[:, -1:].argmax(-1)
    for _ in range(steps):
        tokens.append(token)
        out = hf(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        step_logits.append(out.logits)
        token = out.logits[:, -1:].argmax(-1)
    return logits, step_logits, torch.cat(tokens, dim=1)


@pytest.mark.parametrize(
    "kind,variant",
    [("causal", v) for v in VARIANTS] + [("conditional", "grouped-heads"), ("moe", "grouped-heads")],
)
@torch.no_grad()
def test_prompt_and_decode_match_transformers(tmp_path, kind, variant):
    hf = build(kind, variant)
    config, model, _ = load_model(save(hf, tmp_path / "ckpt"))
    prompt = torch.randint(3, config.text.vocab_size, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_steps, tokens = oracle_run(hf, prompt, DECODE_STEPS)

    out = model(prompt)
    assert_close_to_scale(out.logits, ref_logits, "prompt logits")
    state = out.state
    for i in range(DECODE_STEPS):
        out = model(tokens[:, i : i + 1], state)
        state = out.state
        assert_close_to_scale(out.logits, ref_steps[i], f"decode step {i}")


@pytest.mark.parametrize("kind", ["causal", "moe"])
@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(tmp_path, kind):
    _, model, _ = load_model(save(build(kind), tmp_path / "ckpt"))
    tokens = torch.randint(3, 512, (1, PROMPT_LEN + DECODE_STEPS), generator=torch.Generator().manual_seed(2))
    full = model(tokens).logits
    out = model(tokens[:, :PROMPT_LEN])
    pieces, state = [out.logits], out.state
    for i in range(PROMPT_LEN, PROMPT_LEN + DECODE_STEPS):
        out = model(tokens[:, i : i + 1], state)
        pieces.append(out.logits)
        state = out.state
    assert_close_to_scale(torch.cat(pieces, dim=1), full, "prefill+decode vs full forward")


@torch.no_grad()
def test_conditional_checkpoint_keeps_vision_aside(tmp_path):
    _, _, info = load_model(save(build("conditional"), tmp_path / "ckpt"))
    assert info.vision_keys and all(k.startswith("model.visual.") for k in info.vision_keys)
