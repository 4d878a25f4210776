"""Image prompts on the host: each image's grid, its tokens in the prompt and their M-RoPE positions. NumPy only.

A chat template renders each image as `<|vision_start|><|image_pad|><|vision_end|>`.
The pad stands for the image's M merged tokens (M = t·h·w / m², m the merge
size): `expand_image_pads` repeats it M times, as transformers' processor does,
and `build_image_prompt` puts the vision tower's embeddings at those M places.

Positions follow transformers' `Qwen3_5Model.get_rope_index` for images. Text
tokens count up on all three axes. An image that starts at position p puts its
merged token (i, r, c) at (t, h, w) = (p + i, p + r, p + c) over its (t, h/m,
w/m) grid, and the text after it resumes at p + max(h, w)/m: an image of M
tokens advances the position by the longer side of its merged grid, not by M.
So once an image is in the prompt, a token's position is no longer its index
in the KV cache: generated token k (0 for the first) sits at
`next_position + k` on all three axes (`ImagePrompt.decode_positions`).

Host-side code: it runs once per prompt before the decoder, with Python control
flow over the token ids; only the decoder and the vision tower are exported. The
grid's tables (`grid_tables`: the position-table taps and the 2-D rotary of every
patch) are computed here too and fed to the exported encoder with the patches.
The PyTorch reference splices embeddings with these (`exporter.vision.prompt`).

Shapes: T prompt tokens (pads expanded), D decoder hidden, M_i tokens of image i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.config import ModelConfig, VisionConfig
from runtime.errors import InputError

Grid = tuple[int, int, int]  # (t, h, w) in patches: frames / temporal patches, rows, columns


def check_grid(v: VisionConfig, grid: Sequence[int]) -> Grid:
    """The grid as three Python ints, or an InputError saying what a grid must be."""
    t, h, w = (int(n) for n in grid)
    m = v.spatial_merge_size
    if min(t, h, w) <= 0 or h % m or w % m:
        raise InputError(
            f"image grid (t, h, w) = {tuple(grid)}: each side must be positive and h, w multiples of the "
            f"merge size {m}; preprocess the image with runtime.image so its sides are multiples of "
            f"{v.patch_size * m} px"
        )
    return t, h, w


def num_image_tokens(v: VisionConfig, grid: Sequence[int]) -> int:
    """M: the decoder tokens an image of this grid becomes (one per m × m block of patches)."""
    t, h, w = check_grid(v, grid)
    return t * h * w // v.spatial_merge_size**2


@dataclass(frozen=True)
class GridTables:
    """The encoder's inputs that depend only on an image's grid, per patch in the processor's order (Q = h·w)."""

    pos_index: np.ndarray  # [Q, 4] int64: the four taps of each patch into the S x S position table
    pos_weight: np.ndarray  # [Q, 4] float32: their bilinear weights (corners aligned)
    cos: np.ndarray  # [Q, Dh] float32: rotary of the patch's row, then of its column, the pair repeated
    sin: np.ndarray  # [Q, Dh] float32


def _taps(size: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """low [size], high [size], frac [size]: points 0..size-1 mapped onto 0..side-1, corners aligned.

    transformers computes these with an fp32 `torch.linspace`; fp64 here then fp32 weights
    differ from it by at most an ulp of the weights.
    """
    src = np.arange(size, dtype=np.float64) * ((side - 1) / max(size - 1, 1))
    low = np.floor(src).astype(np.int64)
    return low, np.minimum(low + 1, side - 1), src - low


def grid_tables(v: VisionConfig, grid: Sequence[int]) -> GridTables:
    """The position taps and rotary tables of one frame of this grid (frames share them)."""
    _, h, w = check_grid(v, grid)
    side = math.isqrt(v.num_position_embeddings)
    row_low, row_high, row_frac = _taps(h, side)
    col_low, col_high, col_frac = _taps(w, side)
    rows = np.stack([row_low, row_low, row_high, row_high], axis=-1)[:, None, :]  # [h, 1, 4]
    cols = np.stack([col_low, col_high, col_low, col_high], axis=-1)[None, :, :]  # [1, w, 4]
    row_w = np.stack([1 - row_frac, 1 - row_frac, row_frac, row_frac], axis=-1)[:, None, :]  # [h, 1, 4]
    col_w = np.stack([1 - col_frac, col_frac, 1 - col_frac, col_frac], axis=-1)[None, :, :]  # [1, w, 4]
    index = _block_order_np(rows * side + cols, v.spatial_merge_size)  # [Q, 4]
    weight = _block_order_np(row_w * col_w, v.spatial_merge_size).astype(np.float32)  # [Q, 4]
    # 2-D rotary: Dh/4 frequencies, turned by the patch's row in one quarter of each head's
    # rotation half and by its column in the other (rotate-half layout, the whole head rotates).
    quarter = v.head_dim // 4
    inv_freq = np.array([1.0 / v.rope_theta ** (2 * i / (v.head_dim // 2)) for i in range(quarter)], np.float32)
    grid_rows = _block_order_np(np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)), v.spatial_merge_size)
    grid_cols = _block_order_np(np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w)), v.spatial_merge_size)
    angles = np.concatenate([grid_rows[:, None] * inv_freq, grid_cols[:, None] * inv_freq], axis=-1)  # [Q, Dh/2]
    angles = np.concatenate([angles, angles], axis=-1)  # [Q, Dh]
    return GridTables(index, weight, np.cos(angles), np.sin(angles))


def _block_order_np(x: np.ndarray, merge: int) -> np.ndarray:
    """_block_order for numpy arrays."""
    h, w, *rest = x.shape
    x = x.reshape(h // merge, merge, w // merge, merge, *rest).swapaxes(1, 2)  # [h/m, w/m, m, m, ...]
    return x.reshape(h * w, *rest)


def _special_ids(config: ModelConfig) -> tuple[int, int, int]:
    ids = (config.vision_start_token_id, config.image_token_id, config.vision_end_token_id)
    if config.vision is None or None in ids:
        raise InputError(
            "image prompt: the config has no vision tower or lacks vision_start/image/vision_end token ids; "
            "use a multimodal (Qwen3_5ForConditionalGeneration) checkpoint"
        )
    return ids


def _image_runs(ids: Sequence[int], pad: int, images: int) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive `pad` ids: one run per image."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] != pad:
            i += 1
            continue
        start = i
        while i < len(ids) and ids[i] == pad:
            i += 1
        runs.append((start, i))
    if len(runs) != images:
        raise InputError(
            f"image prompt: {len(runs)} runs of <|image_pad|> but {images} images; give one grid per image"
        )
    return runs


def expand_image_pads(ids: Sequence[int], grids: Sequence[Sequence[int]], config: ModelConfig) -> list[int]:
    """The prompt with image i's `<|image_pad|>` repeated M_i times.

    Each image must appear as one pad (a rendered chat template) or as M_i pads
    (already expanded), wrapped in `<|vision_start|>` ... `<|vision_end|>`.
    """
    start_id, pad, end_id = _special_ids(config)
    if config.video_token_id is not None and config.video_token_id in ids:
        raise InputError("image prompt: it holds a video token (<|video_pad|>); only images are supported")
    out, done = [], 0
    for (start, end), grid in zip(_image_runs(ids, pad, len(grids)), grids):
        tokens = num_image_tokens(config.vision, grid)
        if end - start not in (1, tokens):
            raise InputError(
                f"image prompt: an image of grid {tuple(grid)} takes {tokens} tokens, but its run of "
                f"<|image_pad|> at {start} has {end - start}; give one pad per image (or exactly {tokens})"
            )
        if start == 0 or ids[start - 1] != start_id or end == len(ids) or ids[end] != end_id:
            raise InputError(
                f"image prompt: the <|image_pad|> run at {start} is not wrapped in <|vision_start|> ... "
                "<|vision_end|>; render the prompt with the model's chat template"
            )
        out += [*ids[done:start], *[pad] * tokens]
        done = end
    return out + list(ids[done:])


def mrope_positions(
    ids: Sequence[int], grids: Sequence[Sequence[int]], config: ModelConfig
) -> tuple[np.ndarray, int]:
    """positions [3, T] (t, h, w) of an expanded prompt, and the position of the token after it."""
    _, pad, _ = _special_ids(config)
    m = config.vision.spatial_merge_size
    pieces, position, done = [], 0, 0
    for (start, end), grid in zip(_image_runs(ids, pad, len(grids)), grids):
        t, h, w = check_grid(config.vision, grid)
        h, w = h // m, w // m  # the merged grid: one decoder token per cell
        if end - start != t * h * w:
            raise InputError(
                f"image prompt: the run of <|image_pad|> at {start} is not expanded; call expand_image_pads first"
            )
        pieces.append(np.broadcast_to(np.arange(start - done), (3, start - done)) + position)  # [3, text]: before the image
        position += start - done
        cells = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"))  # [3, t, h, w]
        pieces.append(cells.reshape(3, -1) + position)  # [3, M]: row-major over (t, h, w), the merger's order
        position += max(h, w)
        done = end
    tail = len(ids) - done
    pieces.append(np.broadcast_to(np.arange(tail), (3, tail)) + position)  # [3, text]: the text after the last image
    return np.concatenate(pieces, axis=1).astype(np.int64), position + tail  # [3, T]
