"""The vision side of a multimodal checkpoint: the PyTorch tower, image prompts for the reference, and the encoder's export.

- `tower`: the reference vision tower (`VisionTower`, `encode_images`);
- `prompt`: image prompts for the reference decoder (`build_image_prompt`);
- `export`: the vision encoder as `vision.onnx` / `vision.pte`, one graph for any image size.

The host-side parts an app needs too (grids, pad expansion, M-RoPE positions, the grid's
tables) are torch-free and live in the runtime (`runtime.image_prompt`).
"""

from exporter.vision.tower import VisionTower, encode_images

__all__ = ["VisionTower", "encode_images"]
