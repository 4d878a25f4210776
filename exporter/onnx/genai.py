"""onnxruntime-genai's description of an exported decoder: the `genai_config.json` beside `model.onnx`.

With it an app runs the bundle through onnxruntime-genai's `Model` and `Generator`. Every name
in it comes from the bundle contract (`runtime.contract`). Not here: the model itself
(`exporter.onnx.export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.artifact import ExportOptions
from runtime.config import ModelConfig
from runtime.contract import (
    ATTENTION_MASK,
    GENAI_CONFIG,
    INPUT_IDS,
    LOGITS,
    ONNX_MODEL,
    POSITION_IDS,
    capacity_kv,
    past_name,
    present_name,
)
from runtime.files import write_json

# onnxruntime-genai's key for each state part's names (its `present_*` keys mirror the `past_*` ones).
_STATE_KEYS = {"key": "past_key_names", "value": "past_value_names", "conv": "past_conv_names",
               "recurrent": "past_recurrent_names"}
_LAYER = "%d"  # a name pattern for onnxruntime-genai: it puts the layer index there


def write_genai_config(config: ModelConfig, options: ExportOptions, out_dir: Path) -> None:
    write_json(Path(out_dir) / GENAI_CONFIG, genai_config(config, options))


def genai_config(config: ModelConfig, options: ExportOptions) -> dict[str, Any]:
    """onnxruntime-genai's description of the model: an app can run the artifact with its `Model` and `Generator`.

    Its keys are onnxruntime-genai's, its values our names (the contract's, which onnxruntime-genai's
    `qwen3_5_text` type reads when told them). With capacity KV caches (the ort profile) it turns on
    past/present buffer sharing: onnxruntime-genai then allocates each KV cache once, at
    `max_length`, and binds every state (KV, conv, recurrent) as its own output. A growing cache
    (portable) cannot share its buffer, and onnxruntime-genai then double-buffers the other states
    too. Threads are left to the app (`session_options`).
    """
    t = config.text
    specials = {"bos_token_id": t.bos_token_id, "eos_token_id": list(t.eos_token_ids), "pad_token_id": t.pad_token_id}
    shared = capacity_kv(options.onnx_profile)
    mask = {"attention_mask": ATTENTION_MASK} if shared else {}
    return {
        "model": {
            "type": "qwen3_5_text",
            **{key: value for key, value in specials.items() if value not in (None, [])},  # it rejects nulls
            "vocab_size": t.vocab_size,
            "context_length": options.max_seq_len,
            "decoder": {
                "filename": ONNX_MODEL,
                "session_options": {"log_id": "qwen-edge", "provider_options": []},
                "head_size": t.head_dim,
                "hidden_size": t.hidden_size,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "num_hidden_layers": t.num_hidden_layers,
                "inputs": {"input_ids": INPUT_IDS, "position_ids": POSITION_IDS, **mask,
                           **{key: past_name(_LAYER, part) for part, key in _STATE_KEYS.items()}},
                "outputs": {"logits": LOGITS,
                            **{key.replace("past_", "present_"): present_name(_LAYER, part)
                               for part, key in _STATE_KEYS.items()}},
            },
        },
        "search": {"do_sample": False, "max_length": options.max_seq_len, "num_beams": 1,
                   "past_present_share_buffer": shared},
    }
