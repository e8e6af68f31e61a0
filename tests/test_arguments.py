"""Tests of the command line (`muse_training.arguments`) as the run uses it: each configuration the checks load is
read once per run (and the model built from it is the one built without it), and the flags of transformers'
`run_ner_no_trainer.py` that fit MuSE (--ignore_mismatched_sizes, --preprocessing_num_workers, --trust_remote_code,
--return_entity_level_metrics) do what they do there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import PreTrainedConfig

import run_mner
import run_msa
from modeling_muse import MuSEForTokenClassification
from muse_training.arguments import parse_args
from muse_training.metrics import entity_level_metrics
from muse_training.models import build_model, load_model
from tests.tiny_models import MINILM_DIR, NER_LABELS, save_tiny_checkpoints, tiny_config, tiny_script_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config_reads(monkeypatch) -> list[Path]:
    """The folders whose config.json transformers reads (every configuration load goes through get_config_dict)."""
    reads: list[Path] = []
    original = PreTrainedConfig.get_config_dict.__func__

    def counting(cls, pretrained_model_name_or_path, **kwargs):
        reads.append(Path(pretrained_model_name_or_path).resolve())
        return original(cls, pretrained_model_name_or_path, **kwargs)

    monkeypatch.setattr(PreTrainedConfig, "get_config_dict", classmethod(counting))
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


# ----------------------------------------------------------------------------------------------------------------
# The flags of run_ner_no_trainer.py that fit MuSE
# ----------------------------------------------------------------------------------------------------------------


def test_ignore_mismatched_sizes_starts_the_mismatched_tensors_afresh(tmp_path, capsys):
    folder = tmp_path / "trained"
    MuSEForTokenClassification(tiny_config()).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 41  # the weights hold 37
    (folder / "config.json").write_text(json.dumps(config))
    argv = ["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out"), "--do_train", "false"]
    args = parse_args(run_mner.TASK, argv)
    with pytest.raises(SystemExit, match=r"intermediate.dense.weight of shape \[41, 32\].*--ignore_mismatched_sizes"):
        load_model(args, MuSEForTokenClassification, NER_LABELS, run_mner.TASK.head_modules)
    args = parse_args(run_mner.TASK, [*argv, "--ignore_mismatched_sizes"])
    model = load_model(args, MuSEForTokenClassification, NER_LABELS, run_mner.TASK.head_modules)
    layer = model.muse.text_encoder.backbone.encoder.layer[0]
    assert layer.intermediate.dense.weight.shape == (41, 32)
    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, ["--ignore_mismatched_sizes"])
    assert "--ignore_mismatched_sizes applies to the model of --model_name_or_path" in capsys.readouterr().err


def test_preprocessing_num_workers_is_the_num_proc_of_the_data_preparation(tmp_path, monkeypatch, capsys):
    from accelerate import Accelerator

    from muse_training.data import load_splits
    from muse_training.models import align_labels
    from tests import picture_data

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    files = picture_data.write_jsonl(tmp_path / "data")
    argv = [f"--{split}_file={path}" for split, path in files.items()]
    accelerator = Accelerator(cpu=True)
    one_process = load_splits(parse_args(run_mner.TASK, argv), accelerator)
    num_procs = []
    original_map = datasets.Dataset.map

    def recording_map(self, *args, **kwargs):
        num_procs.append(kwargs.get("num_proc"))
        return original_map(self, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", recording_map)
    args = parse_args(run_mner.TASK, [*argv, "--preprocessing_num_workers", "2", "--dataset_cache_dir",
                                      str(tmp_path / "other-cache")])  # fmt: skip
    two_processes = load_splits(args, accelerator)
    assert num_procs == [2, 2, 2]  # each split's conversion
    for split in one_process:
        assert one_process[split]["tokens"] == two_processes[split]["tokens"]
        assert one_process[split]["ner_tags"] == two_processes[split]["ner_tags"]
    names = two_processes["train"].features["ner_tags"].feature.names
    aligned = align_labels(two_processes, "ner_tags", names[::-1], args.preprocessing_num_workers)
    assert num_procs[3:] == [2, 2, 2]
    assert [names[::-1][tag] for tag in aligned["test"][0]["ner_tags"]] == [
        names[tag] for tag in two_processes["test"][0]["ner_tags"]
    ]
    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, [*argv, "--preprocessing_num_workers", "0"])
    assert "--preprocessing_num_workers must be a positive integer" in capsys.readouterr().err


_POST_TOKENIZER = '''from transformers import BertTokenizer


class PostTokenizer(BertTokenizer):
    """A text encoder's tokenizer of its own (BERT's, under another name)."""
'''


def test_trust_remote_code_loads_the_text_encoders_own_tokenizer(tmp_path, tiny_text_model, script_env):
    folder = tmp_path / "encoder"
    shutil.copytree(tiny_text_model, folder)
    (folder / "tokenization_post.py").write_text(_POST_TOKENIZER)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    # A tokenizer class transformers does not have, whose code the folder holds.
    auto_map = {"AutoTokenizer": ["tokenization_post.PostTokenizer", None]}
    tokenizer_config.update(tokenizer_class="PostTokenizer", auto_map=auto_map)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    script = (
        "import sys, types\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "import run_mner\n"
        "from muse_training.arguments import parse_args\n"
        "from muse_training.data import build_processor\n"
        "args = parse_args(run_mner.TASK, sys.argv[1:])\n"
        "processor = build_processor(args, types.SimpleNamespace(max_text_length=16), None)\n"
        "print(type(processor.tokenizer).__name__)\n"
    )
    env = {**script_env, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    argv = tiny_script_arguments(folder, tmp_path / "out")

    def tokenizer_class(*extra: str) -> str:
        result = subprocess.run([sys.executable, "-c", script, *argv, *extra], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.strip().splitlines()[-1]

    # Without the flag the folder's code does not run (transformers falls back to its own tokenizer class).
    assert tokenizer_class() != "PostTokenizer"
    assert tokenizer_class("--trust_remote_code") == "PostTokenizer"


def test_entity_level_metrics_are_seqeval_s_per_type_scores(capsys):
    from seqeval.metrics import classification_report

    from muse_training.evaluation import EvaluationOutput

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = np.array([[1, 2, 0, 3, -100], [3, 4, 0, -100, -100]])
    predicted = np.array([[1, 2, 0, 0, 0], [3, 4, 1, 0, 0]])
    evaluation = EvaluationOutput(predictions=predicted, labels=gold, loss=0.5)
    metrics = entity_level_metrics(evaluation, labels)
    expected = classification_report([["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]],
                                     [["B-PER", "I-PER", "O", "O"], ["B-LOC", "I-LOC", "B-PER"]],
                                     output_dict=True, zero_division=0)  # fmt: skip
    assert metrics == {
        "PER_precision": expected["PER"]["precision"], "PER_recall": expected["PER"]["recall"], "PER_number": 1,
        "LOC_precision": expected["LOC"]["precision"], "LOC_recall": expected["LOC"]["recall"], "LOC_number": 2,
    }  # fmt: skip
    assert (metrics["PER_precision"], metrics["LOC_recall"]) == (0.5, 0.5)
    with pytest.raises(SystemExit):
        parse_args(run_msa.TASK, ["--return_entity_level_metrics"])
    assert "error: --return_entity_level_metrics reports NER's entity types" in capsys.readouterr().err


def test_run_mner_adds_the_entity_level_metrics_only_when_asked(tmp_path, monkeypatch):
    from tests import picture_data

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    files = picture_data.write_jsonl(tmp_path / "data")
    model = save_tiny_checkpoints(tmp_path / "models")["ner"]
    argv = ["--model_name_or_path", str(model), "--do_train", "false", "--max_eval_samples", "16",
            *[f"--{split}_file={path}" for split, path in files.items() if split != "train"]]  # fmt: skip
    plain = run_mner.main([*argv, "--output_dir", str(tmp_path / "plain")])
    detailed = run_mner.main([*argv, "--output_dir", str(tmp_path / "detailed"), "--return_entity_level_metrics"])
    added = sorted(detailed.keys() - plain.keys())
    assert added and all(key.endswith(("_precision", "_recall", "_number")) for key in added)
    assert {key: detailed[key] for key in plain if key != "wall_time_seconds"} == {
        key: value for key, value in plain.items() if key != "wall_time_seconds"
    }
    entity_types = {key.removeprefix("test_").removesuffix("_f1") for key in plain if key.startswith("test_")
                    and key.endswith("_f1") and key != "test_f1" and "image_effect" not in key}  # fmt: skip
    assert entity_types and all(f"test_{kind}_number" in detailed for kind in entity_types)
    gold_entities = sum(detailed[f"test_{kind}_number"] for kind in entity_types)
    rows = [json.loads(line) for line in files["test"].read_text().splitlines()][:16]
    assert gold_entities == sum(tag.startswith("B-") for row in rows for tag in row["ner_tags"])
