"""Tests of the command line's resolution (`muse_training.arguments`) as the model is built from it: each
configuration the checks load is read once per run, and the model built from it is the one built without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import PretrainedConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# The training scripts are files at the repository root, not package modules.
sys.path.insert(0, str(REPO_ROOT))

import run_mner  # noqa: E402
from modeling_muse import MuSEForTokenClassification  # noqa: E402
from muse_training.arguments import parse_args  # noqa: E402
from muse_training.models import build_model, load_model  # noqa: E402
from tests.tiny_models import MINILM_DIR, NER_LABELS, tiny_config, tiny_script_arguments  # noqa: E402


@pytest.fixture
def config_reads(monkeypatch) -> list[Path]:
    """The folders whose config.json transformers reads (every configuration load goes through get_config_dict)."""
    reads: list[Path] = []
    original = PretrainedConfig.get_config_dict.__func__

    def counting(cls, pretrained_model_name_or_path, **kwargs):
        reads.append(Path(pretrained_model_name_or_path).resolve())
        return original(cls, pretrained_model_name_or_path, **kwargs)

    monkeypatch.setattr(PretrainedConfig, "get_config_dict", classmethod(counting))
    return reads


def test_a_fresh_model_reads_the_text_encoders_configuration_once(tmp_path, config_reads):
    args = parse_args(run_mner.TASK, tiny_script_arguments(MINILM_DIR, tmp_path / "out"))
    torch.manual_seed(0)
    model = load_model(args, MuSEForTokenClassification, NER_LABELS, run_mner.TASK.head_modules)
    assert config_reads.count(MINILM_DIR.resolve()) == 1
    # The same model as one whose text encoder loads its own configuration.
    torch.manual_seed(0)
    reloaded = build_model(args, MuSEForTokenClassification, NER_LABELS, run_mner.TASK.head_modules)
    assert config_reads.count(MINILM_DIR.resolve()) == 2
    assert model.config.to_dict() == reloaded.config.to_dict()
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_trained_model_reads_its_configuration_once(tmp_path, config_reads):
    trained = tmp_path / "trained"
    MuSEForTokenClassification(tiny_config()).save_pretrained(trained)
    argv = ["--model_name_or_path", str(trained), "--output_dir", str(tmp_path / "out")]
    args = parse_args(run_mner.TASK, argv)
    model = load_model(args, MuSEForTokenClassification, NER_LABELS, run_mner.TASK.head_modules)
    assert config_reads.count(trained.resolve()) == 1
    # Training turns the decoders on in the model's configuration, not in the one the arguments were checked with.
    assert model.config.include_regularizers
    assert args.loaded_configs.model_config is not model.config
