"""Image preprocessing against transformers' Pillow image processor for Qwen3.5 (the independent oracle).

The oracle is `Qwen2VLImageProcessorPil` (what `AutoImageProcessor` picks for
`qwen3_5` without torchvision) with the settings of the Qwen3.5 checkpoints'
`preprocessor_config.json`. Grids must agree exactly; values within 1e-5
(both sides run the same float32 arithmetic, so they agree to the bit).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessorPil
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

from runtime import image as rimage
from runtime.errors import ImageError
from runtime.image import ImageSpec, open_image, preprocess, smart_resize, stack

VALUE_TOL = 1e-5


def oracle(spec: ImageSpec = ImageSpec()) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.merge_size,
        size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
        image_mean=list(spec.mean),
        image_std=list(spec.std),
    )


def noise(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """Random pixels: every resampling tap and rounding step shows up in the values."""
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    return Image.fromarray(data[..., 0] if bands == 1 else data, mode)


def palette_with_transparency() -> Image.Image:
    image = noise("RGB", 97, 131, seed=7).quantize(colors=16)
    image.info["transparency"] = 3  # palette entry 3 is transparent
    return image


IMAGES = {
    "odd-sizes": lambda: noise("RGB", 517, 333, seed=1),
    "grayscale": lambda: noise("L", 199, 301, seed=2),
    "rgba": lambda: noise("RGBA", 260, 240, seed=3),
    "gray-alpha": lambda: noise("LA", 150, 170, seed=4),
    "palette-transparent": palette_with_transparency,
    "tiny": lambda: noise("RGB", 5, 3, seed=5),  # scaled up to min_pixels
    "very-wide": lambda: noise("RGB", 2000, 24, seed=6),
    "very-tall": lambda: noise("RGB", 30, 1500, seed=8),
    "on-the-grid": lambda: noise("RGB", 256, 320, seed=9),  # already a multiple of 32: no resize
}


@pytest.mark.parametrize("name", IMAGES)
def test_patches_match_transformers(name):
    image = IMAGES[name]()
    ours = preprocess(image)
    ref = oracle()(images=[image], return_tensors="np")
    assert ours.grid_thw == tuple(ref["image_grid_thw"][0])
    assert ours.pixel_values.shape == ref["pixel_values"].shape and ours.pixel_values.dtype == np.float32
    err = np.abs(ours.pixel_values - ref["pixel_values"]).max()
    assert err <= VALUE_TOL, f"{name}: max abs error {err:.3g} > {VALUE_TOL}"


def test_large_image_is_scaled_into_a_smaller_budget():
    spec = ImageSpec(min_pixels=32 * 32, max_pixels=160 * 160)
    image = noise("RGB", 900, 700, seed=10)
    ours, ref = preprocess(image, spec), oracle(spec)(images=[image], return_tensors="np")
    assert ours.grid_thw == tuple(ref["image_grid_thw"][0])
    assert np.abs(ours.pixel_values - ref["pixel_values"]).max() <= VALUE_TOL
    t, h, w = ours.grid_thw
    assert h * w * 16 * 16 <= spec.max_pixels and ours.num_tokens == h * w // 4


def test_stack_lays_images_end_to_end_like_the_processor():
    images = [IMAGES["odd-sizes"](), IMAGES["tiny"]()]
    pixels, grids = stack([preprocess(image) for image in images])
    ref = oracle()(images=images, return_tensors="np")
    np.testing.assert_array_equal(grids, ref["image_grid_thw"])
    assert np.abs(pixels - ref["pixel_values"]).max() <= VALUE_TOL


def test_the_patch_order_is_merge_blocks_then_rows():
    """A 64 x 64 image: 4 x 4 patches, the second patch is the one right of the first, the third the one below it."""
    ramp = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % 251
    image = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    spec = ImageSpec(min_pixels=64 * 64, max_pixels=64 * 64)
    patches = preprocess(image, spec).pixel_values.reshape(16, 3, 2, 16, 16)
    expected = (ramp / 255 - 0.5) / 0.5
    for index, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]):
        block = expected[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]
        np.testing.assert_allclose(patches[index, 0, 1], block, atol=1e-6)  # channel 0, second temporal slot


def test_qwen3_5_uses_the_qwen2_vl_image_processor():
    """If transformers ever gives Qwen3.5 another image processor, this module's oracle is the wrong one."""
    for model_type in ("qwen3_5", "qwen3_5_moe"):
        assert IMAGE_PROCESSOR_MAPPING_NAMES[model_type]["pil"] == "Qwen2VLImageProcessorPil"


def test_files_are_read_upright_with_transparency_kept(tmp_path):
    png = tmp_path / "alpha.png"
    IMAGES["rgba"]().save(png)
    np.testing.assert_array_equal(preprocess(png).pixel_values, preprocess(Image.open(png)).pixel_values)

    jpeg = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    noise("RGB", 400, 100, seed=11).save(jpeg, exif=exif)
    assert open_image(jpeg).size == (100, 400)
    assert preprocess(jpeg).grid_thw[1:] == tuple(n // 16 for n in smart_resize(400, 100))


def test_smart_resize_matches_transformers_on_edge_sizes():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        smart_resize as reference,
    )

    for height, width in [(1, 1), (16, 48), (47, 49), (1000, 5), (4095, 4097), (8000, 6000), (80, 16000)]:
        assert smart_resize(height, width) == reference(height, width, 32, rimage.MIN_PIXELS, rimage.MAX_PIXELS)


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ImageError, match="aspect ratio 201 is above 200"):
        preprocess(Image.new("RGB", (201, 1)))
    garbage = tmp_path / "not-an-image.png"
    garbage.write_bytes(b"hello")
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        preprocess(garbage)
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="min_pixels <= max_pixels"):
        ImageSpec(min_pixels=100, max_pixels=10)


def test_preprocessing_needs_neither_torch_nor_transformers():
    source = Path(rimage.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "math", "dataclasses", "pathlib", "numpy", "PIL", "runtime"}, imported
