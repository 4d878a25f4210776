"""Images into the vision tower's input, with Pillow and numpy: RGB → patch-aligned resize → normalised patches.

Reproduces the image processor Qwen3.5 checkpoints name (transformers'
`Qwen2VLImageProcessor`, whose Pillow backend is `Qwen2VLImageProcessorPil`)
with the settings of their `preprocessor_config.json`:

1. RGB: transparency (an alpha band, or a palette's transparent colour) is
   composited onto white; every other mode is converted with `convert("RGB")`.
2. Resize (`smart_resize`): each side rounded to a multiple of 32 (patch 16 ×
   merge 2), aspect ratio kept, the pixel count brought within
   [min_pixels, max_pixels]; Pillow's bicubic filter on the 8-bit image.
3. Normalise: x / 255, then (x - mean) / std, in float32.
4. Patches: 16 × 16 patches in 2 × 2 merge blocks, blocks row-major, each
   patch flattened as (C, Tp, P, P) with the still image repeated over the
   temporal patch of 2: [N, 3·2·16·16] with grid (t, h, w) = (1, H/16, W/16).

`open_image` applies the EXIF orientation (as transformers' `load_image` does)
but keeps transparency for step 1; `load_image` would drop it with its own
`convert("RGB")`, leaving whatever colour lies under transparent pixels.

Pure numpy + Pillow, no torch: this runs wherever the app runs. Not here: the
vision tower (`runtime.vision`), the prompt around the image
(`runtime.image_prompt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from runtime.errors import ImageError

# The vision tower's patch layout (Qwen3.5 `vision_config`).
PATCH_SIZE = 16
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
# From the `preprocessor_config.json` of the Qwen3.5 checkpoints: `size` {"shortest_edge": 65536,
# "longest_edge": 16777216}, `image_mean` and `image_std` [0.5, 0.5, 0.5]. transformers' class
# defaults are Qwen2-VL's (patch 14, 56² to 28²·1280 px, CLIP mean and std): not these.
MIN_PIXELS = 256 * 256
MAX_PIXELS = 4096 * 4096
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
MAX_ASPECT_RATIO = 200  # smart_resize refuses longer strips
_RESCALE = 1 / 255


@dataclass(frozen=True)
class ImageSpec:
    """How images are cut for one vision tower: its patch layout and the processor's pixel budget."""

    patch_size: int = PATCH_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    merge_size: int = MERGE_SIZE
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD

    def __post_init__(self):
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ImageError(
                f"image spec: min_pixels {self.min_pixels} and max_pixels {self.max_pixels}; "
                "expected 0 < min_pixels <= max_pixels"
            )

    @property
    def factor(self) -> int:
        """Each resized side is a multiple of this: one merge block of patches, in pixels."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class PixelPatches:
    """One image ready for the vision tower."""

    pixel_values: np.ndarray  # [N, C·Tp·P·P] float32, N = t·h·w, in the processor's patch order
    grid_thw: tuple[int, int, int]  # (t, h, w) in patches
    merge_size: int = MERGE_SIZE

    @property
    def num_tokens(self) -> int:
        """The decoder tokens this image becomes (one per merge block)."""
        t, h, w = self.grid_thw
        return t * h * w // self.merge_size**2


def open_image(path: str | Path) -> Image.Image:
    """Read an image file, turned upright by its EXIF orientation; transparency is kept for `to_rgb`."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)  # a loaded copy, rotated if the EXIF says so
    except (OSError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not an image Pillow can read ({err}); give a PNG, JPEG, WebP or similar") from err
    return upright


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white, as transformers' `convert_to_rgb` does."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def smart_resize(height: int, width: int, spec: ImageSpec = ImageSpec()) -> tuple[int, int]:
    """The processor's target size: sides multiples of `spec.factor`, aspect kept, pixels within the budget.

    Rounds each side to the nearest multiple (Python's round: halves to even); if that
    overshoots max_pixels, scales both sides down by one factor and floors; if it undershoots
    min_pixels, scales up and ceils. The same arithmetic as transformers', so the grid agrees.
    """
    if min(height, width) <= 0:
        raise ImageError(f"image of {width} x {height} px: it has no pixels")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image of {width} x {height} px: aspect ratio {max(height, width) / min(height, width):.0f} "
            f"is above {MAX_ASPECT_RATIO}; crop it or pad it nearer to square"
        )
    factor = spec.factor
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > spec.max_pixels:
        beta = math.sqrt((height * width) / spec.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < spec.min_pixels:
        beta = math.sqrt(spec.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def normalize(rgb: np.ndarray, spec: ImageSpec = ImageSpec()) -> np.ndarray:
    """[H, W, 3] uint8 -> [3, H, W] float32: x / 255 (in float64, as transformers does), then (x - mean) / std."""
    x = (rgb.astype(np.float64) * _RESCALE).astype(np.float32)  # [H, W, C]
    x = (x - np.array(spec.mean, dtype=np.float32)) / np.array(spec.std, dtype=np.float32)  # [H, W, C]
    return x.transpose(2, 0, 1)  # [C, H, W]


def patchify(image: np.ndarray, spec: ImageSpec = ImageSpec()) -> tuple[np.ndarray, tuple[int, int, int]]:
    """[C, H, W] -> patches [N, C·Tp·P·P] in merge-block order, and the grid (1, H/P, W/P)."""
    C, H, W = image.shape
    P, m, Tp = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    gh, gw = H // P, W // P
    x = image.reshape(C, gh // m, m, P, gw // m, m, P)  # [C, gh/m, m, P, gw/m, m, P]
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, P, P]: blocks row-major, row-major inside
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], Tp, P, P))  # a still image fills every temporal slot
    return np.ascontiguousarray(x, dtype=np.float32).reshape(gh * gw, C * Tp * P * P), (1, gh, gw)


def preprocess(image: Image.Image | str | Path, spec: ImageSpec = ImageSpec()) -> PixelPatches:
    """An image (or its file) -> the vision tower's input: patches [N, C·Tp·P·P] and the grid (t, h, w)."""
    if not isinstance(image, Image.Image):
        image = open_image(image)
    rgb = to_rgb(image)
    height, width = smart_resize(rgb.height, rgb.width, spec)
    resized = rgb.resize((width, height), resample=Image.Resampling.BICUBIC)
    pixels, grid = patchify(normalize(np.asarray(resized), spec), spec)
    return PixelPatches(pixels, grid, spec.merge_size)


def stack(images: list[PixelPatches]) -> tuple[np.ndarray, np.ndarray]:
    """Several images laid end to end, as the processor batches them: [sum N, F] float32, grid_thw [n, 3] int64."""
    if not images:
        raise ImageError("stack: no images given")
    grids = np.array([image.grid_thw for image in images], dtype=np.int64)
    return np.concatenate([image.pixel_values for image in images]), grids
