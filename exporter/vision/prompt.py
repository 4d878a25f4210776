"""Image prompts for the reference decoder: the vision tower's embeddings spliced into the text at their pads.

The host-side part (pads expanded to each image's M tokens, the M-RoPE positions, which after
an image are no longer the cache slots) is the runtime's, in NumPy (`runtime.image_prompt`),
so an app and the reference lay out a prompt with the same code. This module adds what only the
PyTorch reference needs: the embeddings, with the image rows at the pads (`build_image_prompt`),
and the positions of generated tokens (`ImagePrompt.decode_positions`).

Shapes: T prompt tokens (pads expanded), D decoder hidden, M_i tokens of image i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from exporter.model import Qwen35Model, splice_image_embeds
from runtime.config import ModelConfig
from runtime.errors import InputError
from runtime.image_prompt import expand_image_pads, mrope_positions, num_image_tokens


@dataclass(frozen=True)
class ImagePrompt:
    input_ids: Tensor  # [1, T]: the prompt, one `<|image_pad|>` per image token
    inputs_embeds: Tensor  # [1, T, D]: token embeddings, image embeddings at the pads
    positions: Tensor  # [3, 1, T]: (t, h, w) M-RoPE position of every token
    next_position: int  # the position of the first generated token

    def decode_positions(self, start: int, count: int = 1) -> Tensor:
        """[1, count]: positions of generated tokens start .. start+count-1 (0 is the first one generated)."""
        first = self.next_position + start
        return torch.arange(first, first + count).view(1, count)


def build_image_prompt(
    model: Qwen35Model,
    config: ModelConfig,
    ids: Sequence[int],
    image_embeds: Sequence[Tensor],
    grids: Sequence[Sequence[int]],
) -> ImagePrompt:
    """The decoder's inputs for a prompt with images: `model(inputs_embeds=p.inputs_embeds, positions=p.positions)`.

    ids: the prompt with each image as `<|vision_start|><|image_pad|><|vision_end|>`;
    image_embeds: the vision tower's output for each image ([M_i, D], `exporter.vision.tower.encode_images`);
    grids: each image's (t, h, w) patch grid, as the preprocessing returned it.
    """
    expanded = expand_image_pads(ids, grids, config)
    positions, next_position = mrope_positions(expanded, grids, config)
    device = model.embed_tokens.weight.device
    input_ids = torch.tensor([expanded], device=device)  # [1, T]
    embeds = model.embed_tokens(input_ids)  # [1, T, D]
    images = [e.to(device, embeds.dtype) for e in image_embeds]
    expected = [(num_image_tokens(config.vision, grid), embeds.shape[-1]) for grid in grids]
    if [tuple(e.shape) for e in images] != expected:
        raise InputError(
            f"image prompt: image embeddings of shapes {[tuple(e.shape) for e in images]}, expected {expected} "
            "from the grids; pass the vision tower's output for each image, in prompt order"
        )
    embeds = splice_image_embeds(embeds, input_ids, torch.cat(images), config.image_token_id)
    return ImagePrompt(input_ids, embeds, torch.from_numpy(positions)[:, None].to(device), next_position)
