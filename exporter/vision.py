"""The reference Qwen3.5 vision tower in PyTorch: pixel patches in, image embeddings in the decoder's hidden size out.

patch embed (16 px, temporal patch 2) + learned position embeddings resampled
bilinearly to the image's grid → ViT blocks (LayerNorm, bidirectional attention
within a frame with 2-D rotary, GELU MLP) → 2×2 patch merger into the text
hidden size. Parameter names follow `model.visual.*` of the HF checkpoints.

One image (or clip) per call, its grid (t, h, w) given as Python ints. Every
table that depends on the grid (the resampling of the position table, the
rotary angles) is built from those ints, and forward has no data-dependent
control flow: one grid traces to one static graph, an image-size bucket.

Patch order is the processor's (`runtime.image`): frame-major, then 2×2 merge
blocks row-major over the grid, then row-major inside a block. Four consecutive
patches are one merged token, and merged tokens come out row-major over the
(h/2, w/2) grid: the order of the decoder's image positions.

Not here: decoding and resizing images (`runtime.image`), splicing embeddings
into a prompt (`exporter.image_prompt`), loading weights (`exporter.checkpoint`).

Shapes: N patches (t·h·w), Q patches per frame (h·w), M merged tokens (N/m²),
F features per patch (C·Tp·P·P), D hidden, H heads of size Dh, I MLP width,
E out hidden (the decoder's hidden size), S side of the learned position table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exporter.config import VisionConfig
from exporter.errors import InputError
from exporter.model import apply_rotary

Grid = tuple[int, int, int]  # (t, h, w) in patches: frames / temporal patches, rows, columns

_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}
_LAYER_NORM_EPS = 1e-6


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


def _block_order(x: Tensor, merge: int) -> Tensor:
    """[h, w, ...] row-major grid -> [h*w, ...] in merge-block order (the processor's patch order)."""
    h, w, *rest = x.shape
    x = x.reshape(h // merge, merge, w // merge, merge, *rest).transpose(1, 2)  # [h/m, w/m, m, m, ...]
    return x.reshape(h * w, *rest)


def _resample_matrix(size: int, side: int) -> Tensor:
    """[size, side]: bilinear resampling of a length-`side` axis onto `size` points, corners aligned.

    Row i holds the two taps of `F.interpolate(..., mode="bilinear", align_corners=True)`: the
    point i maps to src = i (side-1)/(size-1) of the table. Built from Python numbers, so it
    traces as a graph constant.
    """
    rows = [[0.0] * side for _ in range(size)]
    for i in range(size):
        src = i * (side - 1) / max(size - 1, 1)
        low = math.floor(src)
        frac = src - low
        rows[i][low] += 1.0 - frac
        rows[i][min(low + 1, side - 1)] += frac  # at the last point frac is 0: no tap past the edge
    return torch.tensor(rows, dtype=torch.float32)


class PatchEmbed(nn.Module):
    """A Conv3d whose stride is its kernel, applied to pre-cut patches: a matmul over each flat patch."""

    def __init__(self, v: VisionConfig):
        super().__init__()
        kernel = (v.temporal_patch_size, v.patch_size, v.patch_size)
        self.proj = nn.Conv3d(v.in_channels, v.hidden_size, kernel, stride=kernel, bias=True)  # [D, C, Tp, P, P]

    def forward(self, patches: Tensor) -> Tensor:
        # Written as a linear layer (the weight flattened in the patch's (C, Tp, P, P) order): same
        # product as the conv, and one matmul in both lowerings instead of a 3-D convolution.
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)  # [N, D]


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention over the patches of one frame, with 2-D rotary on q and k."""

    def __init__(self, v: VisionConfig):
        super().__init__()
        self.h, self.dh = v.num_heads, v.head_dim
        self.qkv = nn.Linear(v.hidden_size, 3 * v.hidden_size, bias=True)
        self.proj = nn.Linear(v.hidden_size, v.hidden_size, bias=True)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, frames: int) -> Tensor:
        N, D = x.shape
        qkv = self.qkv(x).view(frames, N // frames, 3, self.h, self.dh)  # [t, Q, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [t, H, Q, Dh] each
        # Rotation in fp32, as the checkpoints were trained, then back to the working dtype.
        q = apply_rotary(q.float(), cos, sin).to(x.dtype)  # [t, H, Q, Dh]
        k = apply_rotary(k.float(), cos, sin).to(x.dtype)  # [t, H, Q, Dh]
        out = F.scaled_dot_product_attention(q, k, v, scale=self.dh**-0.5)  # [t, H, Q, Dh]
        return self.proj(out.transpose(1, 2).reshape(N, D))  # [N, D]


class VisionMLP(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(v.hidden_size, v.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(v.intermediate_size, v.hidden_size, bias=True)
        self.act = _ACTIVATIONS[v.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(x)))  # [N, D]


class VisionBlock(nn.Module):
    """Pre-norm ViT block: LayerNorm → attention, LayerNorm → MLP, each with a residual."""

    def __init__(self, v: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(v.hidden_size, eps=_LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(v.hidden_size, eps=_LAYER_NORM_EPS)
        self.attn = VisionAttention(v)
        self.mlp = VisionMLP(v)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, frames: int) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, frames)  # [N, D]
        return x + self.mlp(self.norm2(x))  # [N, D]


class PatchMerger(nn.Module):
    """LayerNorm per patch, then each 2×2 block of patches (four consecutive rows) → one decoder token."""

    def __init__(self, v: VisionConfig):
        super().__init__()
        self.dim = v.hidden_size * v.spatial_merge_size**2
        self.norm = nn.LayerNorm(v.hidden_size, eps=_LAYER_NORM_EPS)
        self.linear_fc1 = nn.Linear(self.dim, self.dim, bias=True)
        self.linear_fc2 = nn.Linear(self.dim, v.out_hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x).reshape(-1, self.dim)  # [M, m²·D]
        # The merger's GELU is the exact (erf) one, whatever `hidden_act` says for the blocks.
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))  # [M, E]


class VisionTower(nn.Module):
    """The Qwen3.5 vision encoder. Parameter names follow the checkpoint's `model.visual.*` minus the prefix."""

    def __init__(self, v: VisionConfig):
        super().__init__()
        self.config = v
        self.side = math.isqrt(v.num_position_embeddings)  # S: the learned table is an S × S grid
        self.patch_embed = PatchEmbed(v)
        self.pos_embed = nn.Embedding(v.num_position_embeddings, v.hidden_size)  # [S*S, D]
        self.blocks = nn.ModuleList(VisionBlock(v) for _ in range(v.depth))
        self.merger = PatchMerger(v)
        # 2-D rotary: Dh/4 frequencies, turned by the patch's row in one quarter of each head's
        # rotation half and by its column in the other (rotate-half layout, the whole head rotates).
        quarter = v.head_dim // 4
        self.inv_freq = [1.0 / v.rope_theta ** (2 * i / (v.head_dim // 2)) for i in range(quarter)]

    @property
    def patch_features(self) -> int:
        """F: values per flattened patch (C · Tp · P · P)."""
        v = self.config
        return v.in_channels * v.temporal_patch_size * v.patch_size**2

    def position_embeddings(self, h: int, w: int) -> Tensor:
        """The learned S × S table resampled bilinearly (corners aligned) to the h × w grid: [h*w, D]."""
        S = self.side
        table = self.pos_embed.weight.float().view(S, S, -1)  # [S, S, D]
        device = table.device
        rows = _resample_matrix(h, S).to(device) @ table.reshape(S, -1)  # [h, S*D]: resampled along rows
        grid = _resample_matrix(w, S).to(device) @ rows.view(h, S, -1)  # [h, w, D]: then along columns
        return _block_order(grid, self.config.spatial_merge_size)  # [h*w, D]

    def rotary(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        """cos, sin [1, h*w, Dh] (fp32): angles of the patch's row, then of its column, the pair repeated."""
        device = self.pos_embed.weight.device
        m = self.config.spatial_merge_size
        rows = _block_order(torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w), m)  # [Q]
        cols = _block_order(torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w), m)  # [Q]
        inv_freq = torch.tensor(self.inv_freq, dtype=torch.float32, device=device)  # [Dh/4]
        angles = torch.cat((rows[:, None] * inv_freq, cols[:, None] * inv_freq), dim=-1)  # [Q, Dh/2]
        angles = torch.cat((angles, angles), dim=-1)[None]  # [1, Q, Dh]: apply_rotary's [B, T, R]
        return angles.cos(), angles.sin()

    def forward(self, patches: Tensor, grid: Sequence[int]) -> Tensor:
        """patches [N, F] of one image (N = t·h·w, in the processor's order) -> embeddings [M, E]."""
        t, h, w = check_grid(self.config, grid)
        if tuple(patches.shape) != (t * h * w, self.patch_features):
            raise InputError(
                f"pixel patches: shape {tuple(patches.shape)}, expected ({t * h * w}, {self.patch_features}) "
                f"for grid {(t, h, w)}; give the patches runtime.image made for this grid"
            )
        x = self.patch_embed(patches.to(self.patch_embed.proj.weight.dtype))  # [N, D]
        x = x + self.position_embeddings(h, w).to(x.dtype).repeat(t, 1)  # [N, D]: the same table every frame
        cos, sin = self.rotary(h, w)  # [1, Q, Dh] each
        for block in self.blocks:
            x = block(x, cos, sin, t)  # [N, D]
        return self.merger(x)  # [M, E]


def encode_images(tower: VisionTower, pixel_values: Tensor, grids: Sequence[Sequence[int]]) -> list[Tensor]:
    """Embeddings [M_i, E] of each image, from the patches of several images laid end to end (a processor's batch)."""
    sizes = [math.prod(check_grid(tower.config, grid)) for grid in grids]
    if pixel_values.shape[0] != sum(sizes):
        raise InputError(
            f"pixel patches: {pixel_values.shape[0]} rows, but the grids {list(map(tuple, grids))} "
            f"need {sum(sizes)}; give one grid per image, in the order of the patches"
        )
    return [tower(patches, grid) for patches, grid in zip(pixel_values.split(sizes), grids, strict=True)]
