"""The ONNX lowering: the reference decoder as one stateful ONNX model for ONNX Runtime or any ONNX runtime.

This folder is everything that writes a bundle's `model.onnx` (+ `model.onnx.data`) and
`genai_config.json`; the names, shapes and files it writes are `runtime.contract`'s.

- `export`: the driver, `export_onnx`: the decoder wrapper, checks, tracing, conversion;
- `lowering`: each `qwen35::` op's translation or decomposition for the profile, read from the
  op's own table (`ops.LOWERINGS`), and the report of what each became;
- `graph`: clean-up passes on the converted graph; `fusions`: the ort profile's norm fusions;
- `quantize`: the rewrite of quantized schemes into MatMulNBits / GatherBlockQuantized;
- `state`: the proof of which states a runtime may update in place (torch-free);
- `genai`: onnxruntime-genai's `genai_config.json`; `write`: atomic model writing; `details`: the
  artifact's description.

Profiles (`ExportOptions.onnx_profile`):
- `ort`: ONNX Runtime's contrib ops where they exist and are faster (LinearAttention, MoE,
  GroupQueryAttention). Each KV cache is a buffer of the caller's capacity that the model writes
  (`CapacityKV`), with an `attention_mask` input saying how many tokens it holds: onnxruntime-genai
  runs it with every state bound in place (`past_present_share_buffer`);
- `portable`: standard ONNX ops only, opset 18, for runtimes without those contrib ops. Its KV
  caches grow by concatenation: present = past + the call's T entries.

Quantized schemes (`ExportOptions.quant`) trace the fp32 model and then rewrite its matmuls and
embedding (`quantize`), so they need the `ort` profile.

Not here: the op math and lowerings (`ops/`), the vision tower (`exporter.vision.export`), the
scheme policy (`exporter.quantize`), running the model (`runtime/`), the manifest (`exporter.bundle`).
The export driver is imported on first use: it needs torch, and `state` does not.
"""

from importlib import import_module

_LAZY = {
    "CapacityKV": "exporter.onnx.export",
    "OnnxExportError": "exporter.onnx.export",
    "example_state": "exporter.onnx.export",
    "export_onnx": "exporter.onnx.export",
    "save_atomically": "exporter.onnx.write",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'exporter.onnx' has no attribute {name!r}")
