"""The vision tower and image prompts against transformers' Qwen3.5 (the independent oracle), fp32, random weights.

The oracle is a tiny `Qwen3_5ForConditionalGeneration` saved with
`save_pretrained` and loaded back through our loader, so the checkpoint
layout of `model.visual.*` is covered as much as the math.

Tolerances: merged image embeddings (O(1)) max abs <= 1e-5, measured 1.3e-6 at most:
the two sides differ only in summation order (a matmul instead of a Conv3d, batched frames
instead of split sequences), while the smallest real mistake tried (the tanh GELU in the merger
instead of the exact one) moves them by 1.5e-4. Logits as in test_parity,
1e-4 x the logit scale (measured <= 1e-5).
"""

from __future__ import annotations

import pytest
import torch

from exporter.checkpoint import load_model, load_vision, random_vision
from exporter.vision.prompt import build_image_prompt
from exporter.vision.tower import encode_images
from runtime.errors import CheckpointError, InputError
from runtime.image_prompt import expand_image_pads, mrope_positions
from tests.exporter.oracle import MULTIMODAL_IDS, build, save
from tests.exporter.test_parity import assert_close_to_scale

EMBED_TOL = 1e-5
START, END, PAD = (MULTIMODAL_IDS[k] for k in ("vision_start_token_id", "vision_end_token_id", "image_token_id"))
# (t, h, w) patch grids: smaller and larger than the 8 x 8 position table, non-square both ways,
# the smallest (one merged token), and two frames (a clip: attention stays within each frame).
GRIDS = [(1, 4, 6), (1, 8, 8), (1, 2, 2), (1, 12, 4), (1, 16, 10), (2, 4, 4)]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(transformers model, its checkpoint directory)."""
    hf = build("conditional")
    with torch.no_grad():
        # Sharper attention: with the oracle's small random weights it is near uniform, and a
        # wrong rotary (rows for columns, or none) would move the embeddings by only 5e-4.
        for block in hf.model.visual.blocks:
            block.attn.qkv.weight.mul_(8)
    return hf, save(hf, tmp_path_factory.mktemp("vision") / "ckpt")


def _patches(grid, seed: int) -> torch.Tensor:
    t, h, w = grid
    return torch.randn(t * h * w, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(seed))  # [N, F]


@pytest.mark.parametrize("grid", GRIDS)
@torch.no_grad()
def test_vision_tower_matches_transformers(oracle, grid):
    hf, path = oracle
    tower = load_vision(path)
    patches = _patches(grid, seed=sum(grid))
    ref = hf.model.visual(patches, grid_thw=torch.tensor([grid])).pooler_output
    ours = tower(patches, grid)
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err <= EMBED_TOL, f"grid {grid}: merged embeddings max abs error {err:.3g} > {EMBED_TOL}"


@torch.no_grad()
def test_encode_images_splits_a_batch(oracle):
    _, path = oracle
    tower = load_vision(path)
    grids = [(1, 4, 6), (1, 2, 2)]
    pixels = torch.cat([_patches(g, seed=i) for i, g in enumerate(grids)])
    embeds = encode_images(tower, pixels, grids)
    assert [tuple(e.shape) for e in embeds] == [(6, 64), (1, 64)]
    torch.testing.assert_close(embeds[1], tower(_patches(grids[1], seed=1), grids[1]), rtol=0, atol=0)
    with pytest.raises(InputError, match="need 28"):
        encode_images(tower, pixels[:-1], grids)


@torch.no_grad()
def test_vision_tower_exports_for_a_fixed_grid(oracle):
    """One grid (an image-size bucket) traces to a static graph with the same output."""
    _, path = oracle
    tower = load_vision(path)
    grid = (1, 4, 6)

    class Bucket(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = tower

        def forward(self, patches):
            return self.tower(patches, grid)

    patches = _patches(grid, seed=3)
    program = torch.export.export(Bucket(), (patches,), strict=False)
    torch.testing.assert_close(program.module()(patches), tower(patches, grid), rtol=0, atol=1e-6)


def test_vision_tower_rejects_bad_grids_and_patches(oracle):
    _, path = oracle
    tower = load_vision(path)
    with pytest.raises(InputError, match="multiples of the merge size 2"):
        tower(_patches((1, 3, 4), seed=0), (1, 3, 4))
    with pytest.raises(InputError, match=r"expected \(24, 1536\)"):
        tower(_patches((1, 4, 4), seed=0), (1, 4, 6))


def test_load_vision_needs_a_multimodal_checkpoint(tmp_path):
    path = save(build("causal"), tmp_path / "text-only")
    with pytest.raises(CheckpointError, match="no vision_config"):
        load_vision(path)
    load_model(path)  # the decoder of a text-only checkpoint still loads


def test_load_vision_reports_missing_and_misshaped_tensors(tmp_path):
    hf = build("conditional")
    hf.model.visual.blocks[1].attn.proj = torch.nn.Linear(32, 32, bias=False)  # drops blocks.1.attn.proj.bias
    hf.model.visual.merger.linear_fc2 = torch.nn.Linear(128, 48)  # out 48 instead of 64
    with pytest.raises(CheckpointError, match=r"1 missing: model\.visual\.blocks\.1\.attn\.proj\.bias.*mis-shaped"):
        load_vision(save(hf, tmp_path / "ckpt"))


def test_random_vision_has_the_checkpoint_layout(oracle):
    _, path = oracle
    config, _, _ = load_model(path)
    loaded, random = load_vision(path), random_vision(config, seed=1)
    assert {n: p.shape for n, p in loaded.named_parameters()} == {n: p.shape for n, p in random.named_parameters()}
    assert random.blocks[0].norm1.weight.mean().item() == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------------------
# Image prompts
# ---------------------------------------------------------------------------


def _text(n: int, seed: int) -> list[int]:
    return torch.randint(3, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _prompt(grids) -> list[int]:
    """Text, then each image as the chat template renders it (one pad), text between and after."""
    ids = _text(5, seed=0)
    for i, _ in enumerate(grids):
        ids += [START, PAD, END] + _text(3 + i, seed=i + 1)
    return ids


@torch.no_grad()
def test_positions_match_transformers_get_rope_index(oracle):
    hf, path = oracle
    config, _, _ = load_model(path)
    grids = [(1, 4, 6), (1, 12, 4), (1, 2, 2)]
    ids = expand_image_pads(_prompt(grids), grids, config)
    input_ids = torch.tensor([ids])
    ref, delta = hf.model.get_rope_index(
        input_ids, mm_token_type_ids=(input_ids == PAD).int(), image_grid_thw=torch.tensor(grids)
    )
    positions, next_position = mrope_positions(ids, grids, config)
    assert torch.equal(torch.from_numpy(positions), ref[:, 0])
    assert next_position == len(ids) + delta.item()


@pytest.mark.parametrize("grids", [[(1, 4, 6)], [(1, 6, 4), (1, 2, 2), (1, 8, 8)]], ids=["one-image", "three-images"])
@torch.no_grad()
def test_image_prompt_logits_match_transformers(oracle, grids):
    hf, path = oracle
    config, model, _ = load_model(path)
    tower = load_vision(path)
    pixels = torch.cat([_patches(g, seed=10 + i) for i, g in enumerate(grids)])  # [sum N, F]
    prompt = build_image_prompt(model, config, _prompt(grids), encode_images(tower, pixels, grids), grids)

    ids = prompt.input_ids
    out = hf(
        input_ids=ids,
        pixel_values=pixels,
        image_grid_thw=torch.tensor(grids),
        mm_token_type_ids=(ids == PAD).int(),
        use_cache=True,
    )
    ours = model(inputs_embeds=prompt.inputs_embeds, positions=prompt.positions)
    assert_close_to_scale(ours.logits, out.logits, "image prompt logits")

    # Decode continues from next_position, not from the cache length (transformers keeps a rope delta).
    cache, state = out.past_key_values, ours.state
    token = out.logits[:, -1:].argmax(-1)
    for step in range(4):
        out = hf(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        ours = model(token, state, positions=prompt.decode_positions(step))
        state = ours.state
        assert_close_to_scale(ours.logits, out.logits, f"decode step {step} after the image prompt")
        token = out.logits[:, -1:].argmax(-1)


def test_image_prompt_errors_name_the_problem(oracle):
    _, path = oracle
    config, model, _ = load_model(path)
    grid = (1, 4, 6)
    with pytest.raises(InputError, match="1 runs of <|image_pad|> but 2 images"):
        expand_image_pads([1, START, PAD, END], [grid, grid], config)
    with pytest.raises(InputError, match="not wrapped"):
        expand_image_pads([1, PAD, END], [grid], config)
    with pytest.raises(InputError, match="takes 6 tokens, but its run .* has 3"):
        expand_image_pads([START, PAD, PAD, PAD, END], [grid], config)
    assert expand_image_pads([START, *[PAD] * 6, END], [grid], config) == [START, *[PAD] * 6, END]
    with pytest.raises(InputError, match="expected \\[\\(6, 64\\)\\]"):
        build_image_prompt(model, config, [START, PAD, END], [torch.zeros(5, 64)], [grid])


@torch.no_grad()
def test_runtime_preprocessing_feeds_the_tower(oracle):
    """The patches and grid runtime.image makes are what the tower (and transformers' tower) take."""
    from PIL import Image

    from runtime.image import ImageSpec, preprocess

    hf, path = oracle
    tower = load_vision(path)
    pixels = torch.randint(0, 256, (70, 100, 3), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    image = preprocess(Image.fromarray(pixels.numpy()), ImageSpec(min_pixels=64 * 64, max_pixels=128 * 96))
    patches = torch.from_numpy(image.pixel_values)
    ours = tower(patches, image.grid_thw)
    assert ours.shape[0] == image.num_tokens
    ref = hf.model.visual(patches, grid_thw=torch.tensor([image.grid_thw])).pooler_output
    assert (ours - ref).abs().max().item() <= EMBED_TOL
