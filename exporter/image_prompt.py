"""Image prompts for the reference decoder: image embeddings spliced into the text, M-RoPE positions for every token.

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
flow over the token ids; only the decoder (which takes `inputs_embeds` and
`positions`) and the vision tower are exported.

Shapes: T prompt tokens (pads expanded), D decoder hidden, M_i tokens of image i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from exporter.config import ModelConfig
from exporter.errors import InputError
from exporter.model import Qwen35Model, splice_image_embeds
from exporter.vision import check_grid, num_image_tokens


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
) -> tuple[Tensor, int]:
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
        pieces.append(torch.arange(start - done).expand(3, -1) + position)  # [3, text]: the text before the image
        position += start - done
        axes = torch.arange(t), torch.arange(h), torch.arange(w)
        cells = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # [3, t, h, w]
        pieces.append(cells.reshape(3, -1) + position)  # [3, M]: row-major over (t, h, w), the merger's order
        position += max(h, w)
        done = end
    pieces.append(torch.arange(len(ids) - done).expand(3, -1) + position)  # [3, text]: the text after the last image
    return torch.cat(pieces, dim=1), position + len(ids) - done  # [3, T]


def build_image_prompt(
    model: Qwen35Model,
    config: ModelConfig,
    ids: Sequence[int],
    image_embeds: Sequence[Tensor],
    grids: Sequence[Sequence[int]],
) -> ImagePrompt:
    """The decoder's inputs for a prompt with images: `model(inputs_embeds=p.inputs_embeds, positions=p.positions)`.

    ids: the prompt with each image as `<|vision_start|><|image_pad|><|vision_end|>`;
    image_embeds: the vision tower's output for each image ([M_i, D], `exporter.vision.encode_images`);
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
    return ImagePrompt(input_ids, embeds, positions[:, None].to(device), next_position)
