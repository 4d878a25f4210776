"""What an ONNX export records about itself: `Artifact.details` of the decoder, for the manifest.

Profile, opsets, I/O with symbolic shapes, op counts by domain, what each `qwen35::` op became
(the lowering report) and the toolchain. Not here: the state-in-place proof (`exporter.onnx.state`),
the quantization record (`exporter.onnx.quantize`), both added by `exporter.onnx.export`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx_ir as ir
import torch

from exporter.artifact import ExportOptions
from exporter.onnx.lowering import lowering_report
from exporter.onnx.write import weight_bytes
from runtime.config import ModelConfig
from runtime.contract import IMAGE_EMBEDS, capacity_kv


def describe(model: ir.Model, config: ModelConfig, options: ExportOptions, external: bool) -> dict[str, Any]:
    """Artifact.details: profile, opsets, I/O with symbolic shapes, op counts by domain, lowering report."""
    from onnx_ir.traversal import RecursiveGraphIterator

    counts: dict[str, Counter] = {}
    for node in RecursiveGraphIterator(model.graph):
        counts.setdefault(node.domain or "ai.onnx", Counter())[node.op_type] += 1
    return {
        "profile": options.onnx_profile,
        "opset_imports": {domain or "ai.onnx": version for domain, version in sorted(model.opset_imports.items())},
        "inputs": _io(model.graph.inputs),
        "outputs": _io(model.graph.outputs),
        "logits": "last position only",
        "prefill_chunk": options.prefill_chunk,
        "max_seq_len": options.max_seq_len,
        "kv_cache": _kv_cache(options),
        "dims": {"batch": "B", "sequence": f"T, 1..{options.prefill_chunk} per call",
                 **({"kv_capacity": "C, the KV buffers' slots (the caller's choice, e.g. max_seq_len)",
                     "total_sequence": "P + T, the tokens cached after the call"}
                    if capacity_kv(options.onnx_profile) else {"past_sequence": "P, cached tokens"}),
                 **({"image_tokens": "N, image tokens in this call"} if config.vision is not None else {})},
        "op_counts": {domain: dict(sorted(c.items())) for domain, c in sorted(counts.items())},
        "ops": lowering_report(options.onnx_profile, options.prefill_chunk),
        "external_data": external,
        "weight_bytes": weight_bytes(model),
        "image_embeds": (f"optional input {IMAGE_EMBEDS} [N, D] (default: no rows): row k replaces the k-th "
                         f"image token (id {config.image_token_id}) of input_ids" if config.vision is not None else None),
        "toolchain": _toolchain(),
    }


def _io(values) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "dtype": str(v.dtype.numpy()), "shape": [d if isinstance(d, int) else str(d) for d in v.shape]}
        for v in values
    ]


def _kv_cache(options: ExportOptions) -> dict[str, str]:
    if capacity_kv(options.onnx_profile):
        return {"layout": "capacity",
                "how": "past_key_values.{i}.key/value [B, Hkv, C, Dh] are buffers the caller allocates once (C >= the "
                       "tokens a sequence will hold) and binds as present.{i}.key/value too; the call writes its T "
                       "entries at slots P..P+T-1, where attention_mask [B, P+T] (ones) says P. Several tokens after "
                       "a cache need B = 1 (ONNX Runtime's GroupQueryAttention)"}
    return {"layout": "grows", "how": "present.{i}.key/value = past_key_values.{i}.key/value + the call's T entries"}


def _toolchain() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    # onnxruntime: the contrib-op schemas of the ort profile come from this version
    modules = (torch, onnx, onnxscript, onnxruntime)
    return {module.__name__: module.__version__ for module in modules}
