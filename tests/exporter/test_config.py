"""Config parsing: every accepted layout, and a named, actionable error for each bad input."""

from __future__ import annotations

import json

import pytest

from exporter.config import preset
from runtime.config import FULL, LINEAR, load_config, parse_config, to_hf
from runtime.errors import ConfigError


def text_fields(**overrides):
    fields = to_hf(preset("tiny"))
    fields.update(overrides)
    return fields


def test_flat_text_config_round_trips():
    config = preset("tiny")
    assert parse_config(to_hf(config)) == config


def test_nested_text_config_with_vision():
    raw = {
        "model_type": "qwen3_5",
        "text_config": text_fields(),
        "vision_config": {
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": 64, "num_position_embeddings": 64,
        },
        "image_token_id": 248056,
    }
    config = parse_config(raw)
    assert config.vision is not None and config.vision.patch_size == 16
    assert config.text == preset("tiny").text
    assert parse_config(to_hf(config)) == config


def test_moe_fields():
    config = preset("tiny-moe")
    assert config.is_moe and config.text.moe.num_experts == 4
    assert parse_config(to_hf(config)) == config


def test_layer_types_default_from_interval():
    raw = text_fields()
    del raw["layer_types"]
    raw["num_hidden_layers"] = 8
    assert parse_config(raw).text.layer_types == (LINEAR, LINEAR, LINEAR, FULL) * 2


def test_older_rope_keys_are_read():
    raw = text_fields()
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope["rope_theta"]
    raw["partial_rotary_factor"] = rope["partial_rotary_factor"]
    raw["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    assert parse_config(raw).text == preset("tiny").text


@pytest.mark.parametrize("name", ["0.8b", "2b"])
def test_presets_equal_the_published_configs(real_configs, name):
    file = real_configs / f"qwen3_5_{name.replace('.', '_')}_text.json"
    assert load_config(file) == preset(name)


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"model_type": "llama"}, "model_type"),
        (text_fields(linear_num_value_heads=3), "linear_num_value_heads"),
        (text_fields(layer_types=[LINEAR] * 3), "layer_types"),
        (text_fields(layer_types=[LINEAR, LINEAR, "mamba", FULL]), "layer_types"),
        (text_fields(num_key_value_heads=3), "num_attention_heads"),
        (text_fields(hidden_size=None), "hidden_size"),
        (text_fields(vocab_size="big"), "vocab_size"),
        (text_fields(hidden_act="gelu"), "hidden_act"),
        ({**text_fields(), "rope_parameters": {"rope_type": "yarn"}}, "rope_type"),
        ({**text_fields(), "model_type": "qwen3_5_moe_text"}, "num_experts"),
    ],
)
def test_bad_config_names_the_field(raw, field):
    with pytest.raises(ConfigError, match=field) as err:
        parse_config(raw)
    assert len(str(err.value)) > len(field) + 20  # says what was expected, not just the name


def test_missing_and_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="tiny-moe"):
        preset("7b")


def test_trained_fixture_config(trained_checkpoint):
    config = load_config(trained_checkpoint)
    raw = json.loads((trained_checkpoint / "config.json").read_text())
    assert config.text.num_hidden_layers == raw["num_hidden_layers"]
    assert config.text.linear_num_value_heads == 2 * config.text.linear_num_key_heads
    assert config.text.tie_word_embeddings and config.text.eos_token_ids == (248046,)
