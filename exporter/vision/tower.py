"""The reference Qwen3.5 vision tower in PyTorch: pixel patches in, image embeddings in the decoder's hidden size out.

patch embed (16 px, temporal patch 2) + learned position embeddings resampled
bilinearly to the image's grid → ViT blocks (LayerNorm, bidirectional attention
within a frame with 2-D rotary, GELU MLP) → 2×2 patch merger into the text
hidden size. Parameter names follow `model.visual.*` of the HF checkpoints.

One image (or clip) per call, its grid (t, h, w) given as Python ints. Every
table that depends on the grid is built on the host from those ints
(`grid_tables`: the four bilinear taps of each patch into the learned position
table, and the rotary cos/sin), so `VisionTower.encode` takes them as inputs
and is the same graph for every image size: the exported encoder has one
dynamic patch dimension instead of one graph per image-size bucket.

Patch order is the processor's (`runtime.image`): frame-major, then 2×2 merge
blocks row-major over the grid, then row-major inside a block. Four consecutive
patches are one merged token, and merged tokens come out row-major over the
(h/2, w/2) grid: the order of the decoder's image positions.

Not here: decoding and resizing images (`runtime.image`), splicing embeddings
into a prompt (`exporter.vision.prompt`), loading weights (`exporter.checkpoint`).

Shapes: N patches (t·h·w), Q patches per frame (h·w), M merged tokens (N/m²),
F features per patch (C·Tp·P·P), D hidden, H heads of size Dh, I MLP width,
E out hidden (the decoder's hidden size), S side of the learned position table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exporter.model import apply_rotary, mean_last, mean_square
from runtime.config import VisionConfig
from runtime.errors import InputError
from runtime.image_prompt import check_grid, grid_tables

Grid = tuple[int, int, int]  # (t, h, w) in patches: frames / temporal patches, rows, columns

_ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}
_LAYER_NORM_EPS = 1e-6


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) with its two means in `mean_last`'s form, which XNNPACK delegates.

    ExecuTorch's XNNPACK partitioner takes no layer_norm: as one op, each of the tower's norms
    would be a portable kernel between two delegate calls.
    """

    def forward(self, x: Tensor) -> Tensor:
        centred = x - mean_last(x)
        return centred * torch.rsqrt(mean_square(centred) + self.eps) * self.weight + self.bias


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
        # Attention written out (no mask: every patch sees its frame): aten's own math form of
        # scaled_dot_product_attention adds NaN guards that XNNPACK does not take.
        scores = (q * self.dh**-0.5) @ k.transpose(-1, -2)  # [t, H, Q, Q]
        out = scores.softmax(dim=-1) @ v  # [t, H, Q, Dh]
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
        self.norm1 = LayerNorm(v.hidden_size, eps=_LAYER_NORM_EPS)
        self.norm2 = LayerNorm(v.hidden_size, eps=_LAYER_NORM_EPS)
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
        self.norm = LayerNorm(v.hidden_size, eps=_LAYER_NORM_EPS)
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
        self.patch_embed = PatchEmbed(v)
        self.pos_embed = nn.Embedding(v.num_position_embeddings, v.hidden_size)  # [S*S, D]
        self.blocks = nn.ModuleList(VisionBlock(v) for _ in range(v.depth))
        self.merger = PatchMerger(v)

    @property
    def patch_features(self) -> int:
        """F: values per flattened patch (C · Tp · P · P)."""
        v = self.config
        return v.in_channels * v.temporal_patch_size * v.patch_size**2

    def tables(self, grid: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`grid_tables` for every patch of every frame, as tensors on the tower's device: encode's inputs."""
        t = check_grid(self.config, grid)[0]
        device = self.pos_embed.weight.device
        tables = grid_tables(self.config, grid)
        return tuple(
            torch.from_numpy(np.tile(table, (t, 1))).to(device)
            for table in (tables.pos_index, tables.pos_weight, tables.cos, tables.sin)
        )

    def encode(self, patches: Tensor, pos_index: Tensor, pos_weight: Tensor, cos: Tensor, sin: Tensor, frames: int = 1) -> Tensor:
        """patches [N, F], the grid's tables [N, 4] / [N, Dh] -> embeddings [M, E]; attention within each frame.

        The graph the lowerings export (frames = 1: an image): nothing in it depends on the
        grid but N, so one exported encoder takes any image size.
        """
        x = self.patch_embed(patches.to(self.patch_embed.proj.weight.dtype))  # [N, D]
        taps = self.pos_embed(pos_index).float()  # [N, 4, D]: the four corners of each patch's cell
        position = (taps * pos_weight[..., None]).sum(dim=1)  # [N, D]: bilinear, as transformers sums them
        x = x + position.to(x.dtype)  # [N, D]
        cos, sin = cos[None], sin[None]  # [1, N/frames·frames, Dh]: apply_rotary's [B, T, R]
        if frames > 1:
            cos, sin = cos[:, : x.shape[0] // frames], sin[:, : x.shape[0] // frames]  # frames share one table
        for block in self.blocks:
            x = block(x, cos, sin, frames)  # [N, D]
        return self.merger(x)  # [M, E]

    def forward(self, patches: Tensor, grid: Sequence[int]) -> Tensor:
        """patches [N, F] of one image (N = t·h·w, in the processor's order) -> embeddings [M, E]."""
        t, h, w = check_grid(self.config, grid)
        if tuple(patches.shape) != (t * h * w, self.patch_features):
            raise InputError(
                f"pixel patches: shape {tuple(patches.shape)}, expected ({t * h * w}, {self.patch_features}) "
                f"for grid {(t, h, w)}; give the patches runtime.image made for this grid"
            )
        return self.encode(patches, *self.tables(grid), frames=t)  # [M, E]


def encode_images(tower: VisionTower, pixel_values: Tensor, grids: Sequence[Sequence[int]]) -> list[Tensor]:
    """Embeddings [M_i, E] of each image, from the patches of several images laid end to end (a processor's batch)."""
    sizes = [math.prod(check_grid(tower.config, grid)) for grid in grids]
    if pixel_values.shape[0] != sum(sizes):
        raise InputError(
            f"pixel patches: {pixel_values.shape[0]} rows, but the grids {list(map(tuple, grids))} "
            f"need {sum(sizes)}; give one grid per image, in the order of the patches"
        )
    return [tower(patches, grid) for patches, grid in zip(pixel_values.split(sizes), grids, strict=True)]
