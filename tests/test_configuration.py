import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, BertConfig, PreTrainedConfig

import modeling_muse  # noqa: F401  registers MuSE with the Auto classes
from configuration_muse import ABLATION_VARIANTS, MuSEConfig
from muse_training.arguments import MUSE_ARGUMENTS, MuSEArguments
from tiny_models import tiny_config

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def test_defaults_follow_the_spec():
    config = MuSEConfig()
    assert isinstance(config.text_config, BertConfig)
    assert config.text_config.vocab_size == 30522 and config.text_config.hidden_size == 768
    assert config.hidden_size == 768 and config.intermediate_size == 4 * 768
    assert config.vision_model_name == "resnet152"
    assert (config.num_cross_layers, config.num_attention_heads) == (6, 12)
    assert list(config.exchange_layers) == [2, 3, 4]
    assert (config.exchange_ratio, config.exchange_mode) == (0.1, "residual")
    assert (config.image_grid_size, config.max_text_length) == (8, 64)
    assert (config.caption_loss_weight, config.generation_loss_weight, config.noise_std) == (1e-4, 1e-4, 1.0)


def test_fusion_width_follows_a_non_bert_text_config_and_can_be_overridden():
    config = MuSEConfig(text_config={"model_type": "roberta", "hidden_size": 48, "num_attention_heads": 4})
    assert config.text_config.model_type == "roberta" and config.hidden_size == 48
    assert MuSEConfig(hidden_size=96, num_attention_heads=8).hidden_size == 96


def test_round_trip_through_dict_and_disk(tmp_path):
    config = tiny_config(exchange_mode="replace", vision_model_kwargs={"layers": [1, 1, 1, 1]})
    restored = MuSEConfig.from_dict(config.to_dict())
    assert restored.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "muse" and saved["text_config"]["hidden_size"] == 32
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MuSEConfig) and isinstance(loaded.text_config, PreTrainedConfig)
    assert {**loaded.to_dict(), "_name_or_path": ""} == config.to_dict()
    assert loaded.id2label == {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


@pytest.mark.parametrize(
    "overrides, fields",
    [
        ({"max_text_length": 60}, ["image_grid_size", "max_text_length"]),
        ({"image_grid_size": 0}, ["image_grid_size"]),
        ({"exchange_start_layer": 4, "exchange_end_layer": 3}, ["exchange_start_layer", "exchange_end_layer"]),
        ({"exchange_end_layer": 7}, ["exchange_end_layer", "num_cross_layers"]),
        ({"exchange_start_layer": 0}, ["exchange_start_layer"]),
        ({"num_cross_layers": 0, "exchange_start_layer": 1, "exchange_end_layer": 1}, ["num_cross_layers"]),
        ({"exchange_ratio": 1.5}, ["exchange_ratio"]),
        ({"exchange_ratio": -0.1}, ["exchange_ratio"]),
        ({"num_attention_heads": 7}, ["hidden_size", "num_attention_heads"]),
        ({"cross_dropout": 1.0}, ["cross_dropout"]),
        ({"token_classifier_dropout": -0.5}, ["token_classifier_dropout"]),
        ({"vision_trainable_stages": -1}, ["vision_trainable_stages"]),
        ({"use_text": False, "use_image": False}, ["use_text", "use_image"]),
        ({"caption_loss_weight": -1.0}, ["caption_loss_weight"]),
        ({"decoder_image_size": 30}, ["decoder_image_size"]),
        (
            {"image_grid_size": 16, "max_text_length": 256, "text_config": {"max_position_embeddings": 128}},
            ["max_text_length", "max_position_embeddings"],
        ),
    ],
)
def test_invalid_combinations_fail_at_construction_naming_the_fields(overrides, fields):
    with pytest.raises(Exception) as raised:
        MuSEConfig(**overrides)
    for field in fields:
        assert field in str(raised.value)


def test_exchange_mode_is_checked():
    with pytest.raises(Exception, match="exchange_mode"):
        MuSEConfig(exchange_mode="swap")


def test_ablation_variants_are_valid_configurations():
    decoders = {
        name: (MuSEConfig(**overrides).has_caption_decoder, MuSEConfig(**overrides).has_generation_decoder)
        for name, overrides in ABLATION_VARIANTS.items()
    }
    assert decoders == {
        "full": (True, True),
        "only_t": (False, False),
        "only_i": (False, False),
        "wo_ct": (True, True),
        "only_l_task": (False, False),
        "wo_l_it": (False, True),
        "wo_l_ti": (True, False),
    }


# ------------------------------------------------------------------------------------------- command-line help


def documented_fields(config_class: type) -> dict[str, str]:
    """The entries of a configuration docstring's ``Args:`` block, field name -> its description on one line."""
    block = config_class.__doc__.split("Args:", 1)[1].split("Example:", 1)[0]
    # re.split with a group gives [text before the first entry, names, description, names, description, ...].
    parts = re.split(r"^ {8}(\w+(?:, \w+)*) \(`[^\n]*\):\n", block, flags=re.MULTILINE)
    return {
        name: " ".join(description.split())
        for names, description in zip(parts[1::2], parts[2::2], strict=True)
        for name in names.split(", ")
    }


def test_every_field_is_documented_and_the_command_line_help_says_what_the_docstring_says():
    documented = documented_fields(MuSEConfig)
    # MuSE's own fields; those inherited from PreTrainedConfig are documented by transformers.
    own = vars(MuSEConfig)["__annotations__"]
    fields = {field.name: field for field in dataclasses.fields(MuSEConfig) if field.name in own}
    assert set(documented) == set(fields)
    with_help = {name for name, field in fields.items() if "help" in field.metadata}
    assert with_help == set(MUSE_ARGUMENTS)
    for name in with_help:
        assert fields[name].metadata["help"] == documented[name], name
    for argument in dataclasses.fields(MuSEArguments):
        assert argument.metadata["help"].startswith(fields[argument.name].metadata["help"] + " Default: ")


def test_the_command_line_help_does_not_read_the_configuration_docstring(script_env):
    # In a fresh process (the argument module builds its dataclasses at import): a configuration without a docstring
    # gives the same help, so rewording or reformatting the docstring cannot break the command line.
    program = (
        "import dataclasses, json\n"
        "from configuration_muse import MuSEConfig\n"
        "MuSEConfig.__doc__ = None\n"
        "from muse_training.arguments import MuSEArguments\n"
        "print(json.dumps({f.name: f.metadata['help'] for f in dataclasses.fields(MuSEArguments)}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], cwd=REPOSITORY_ROOT, env=script_env, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {f.name: f.metadata["help"] for f in dataclasses.fields(MuSEArguments)}
