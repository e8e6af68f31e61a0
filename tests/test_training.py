"""Tests of the training scripts (`run_mner.py`, `run_msa.py`) and their shared package `muse_training`.

Fast tests check arguments, optimizer groups, checkpoint discovery, metrics and the Hub upload list. The slow ones
train a tiny MuSE (a tiny random BERT saved to a temporary folder, timm's `test_resnet`, n = 16 = 4 x 4) in
subprocesses, exactly as a user runs the scripts: end to end for both tasks, an interrupted-and-resumed run
against an uninterrupted one, and a two-process (gloo) run.

FSDP (accelerate_configs/fsdp.yaml) has no two-process test: accelerate 1.15 turns FSDP on only over a process group
of GPUs or similar accelerators (AcceleratorState picks FSDP for MULTI_GPU, MULTI_XPU, ... but not MULTI_CPU), so
`accelerate launch` with that config on CPU processes trains with plain DDP, which the two-process test covers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import run_mner
import run_msa
from datasets_scripts import SAMPLE_DIR
from muse_training import hub_upload
from muse_training.arguments import offline_text_model_path, parse_args
from muse_training.checkpoints import BEST_MODEL_MARKER, TrainingProgress, find_latest_checkpoint
from muse_training.checkpoints import prepare_output_dir, save_checkpoint
from muse_training.data import report_splits
from muse_training.evaluation import EvaluationOutput
from muse_training.hub_upload import files_to_upload, push_to_hub
from muse_training.model_card import write_model_card
from muse_training.optimization import create_optimizer, optimizer_parameter_groups
from tests.tiny_models import tiny_script_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]

# Time-derived entries differ between two runs of the same training.
TIMING_KEYS = ("train_runtime_seconds", "train_samples_per_second", "wall_time_seconds")


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "sample_files"),
    [
        (run_mner, ["twitter2017/train.txt", "twitter2017/valid.txt", "twitter2017/test.txt"]),
        (run_msa, ["mvsa_single/labelResultAll.txt", "mvsa_single/data"]),
    ],
)
def test_quickstart_defaults_parse_and_point_at_bundled_files(script, sample_files):
    args = parse_args(script.TASK, [])
    assert args.dataset_name == script.TASK.datasets[0] and args.dataset_name.endswith("_sample")
    assert args.is_quickstart and args.data_dir is None
    for relative in sample_files:
        assert (SAMPLE_DIR / relative).exists(), relative
    text_model = Path(args.text_model_name_or_path)
    assert (text_model / "config.json").is_file() and (text_model / "model.safetensors").is_file()
    assert args.output_dir == f"outputs/muse-{args.dataset_name.replace('_', '-')}"
    # The small, offline configuration: no pretrained download, fast backbone, fused text length = P * P.
    assert (args.vision_model_name_or_path, args.pretrained_vision, args.image_size) == ("resnet18", False, 96)
    assert args.muse_config["max_text_length"] == args.muse_config["image_grid_size"] ** 2
    assert args.muse_config["num_cross_layers"] == 2
    assert (args.learning_rate, args.head_learning_rate, args.weight_decay, args.seed) == (1e-4, 1e-4, 0.01, 42)
    assert args.checkpointing_steps is None and args.resume_from_checkpoint is None and not args.push_to_hub


def _umt_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "umt"
    folder.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (folder / name).write_text("IMGID:1\nObama\tB-PER\n")
    return folder


def test_full_datasets_take_the_paper_defaults(tmp_path):
    args = parse_args(run_mner.TASK, ["--dataset_name", "twitter2017", "--data_dir", str(_umt_folder(tmp_path))])
    assert not args.is_quickstart
    assert (args.vision_model_name_or_path, args.pretrained_vision, args.image_size) == ("resnet152", True, 224)
    assert (args.learning_rate, args.per_device_train_batch_size, args.num_train_epochs) == (5e-5, 40, 10)
    # Only the variant's overrides: every MuSE hyperparameter keeps MuSEConfig's (the paper's) default.
    assert args.muse_config == {}


def test_explicit_arguments_win_over_defaults_and_variants_apply():
    args = parse_args(
        run_mner.TASK,
        ["--num_cross_layers", "3", "--exchange_end_layer", "3", "--learning_rate", "3e-5", "--variant", "wo_l_ti"],
    )
    assert args.muse_config["num_cross_layers"] == 3 and args.muse_config["exchange_end_layer"] == 3
    assert args.muse_config["generation_loss_weight"] == 0.0
    assert args.learning_rate == 3e-5


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--dataset_name", "conll2003"], "--dataset_name"),
        (["--checkpointing_steps", "often"], "--checkpointing_steps"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps"),
        (["--dataset_name", "twitter2015"], "needs --data_dir"),
        (["--dataset_name", "twitter2015", "--data_dir", "/nonexistent/twitter2015"], "--data_dir /nonexistent"),
        (["--data_dir", "somewhere"], "takes no --data_dir"),
        (["--variant", "only_i"], "--variant"),
        (["--variant", "only_l_task", "--caption_loss_weight", "0.1"], "contradicts --variant only_l_task"),
        (["--max_text_length", "50"], "max_text_length=49"),
        (["--warmup_ratio", "2"], "--warmup_ratio"),
        (["--text_model_name_or_path", "/nonexistent/encoder"], "--text_model_name_or_path"),
        # Your own data's arguments.
        (["--dataset_name", "my_posts"], "is none of the paper's datasets"),
        (["--dataset_name", "mvsa_single"], "is a sentiment dataset"),
        (["--dataset_name", "user/posts", "--train_file", "t.jsonl"], "both name the data"),
        (["--train_file", "absent.jsonl"], "--train_file absent.jsonl: no such file"),
        (["--dataset_name", "user/posts", "--data_dir", "x"], "--data_dir is for the paper's datasets"),
        (["--do_train", "false"], "--do_train false needs --model_name_or_path"),
    ],
)
def test_bad_arguments_are_reported_with_the_argument_and_the_fix(argv, expected, capsys):
    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, argv)
    assert expected in capsys.readouterr().err


def test_a_data_dir_without_the_dataset_files_names_them(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, ["--dataset_name", "twitter2015", "--data_dir", str(tmp_path)])
    message = capsys.readouterr().err
    assert "--data_dir" in message and "train.txt" in message and "test.txt" in message
    with pytest.raises(SystemExit):
        parse_args(run_msa.TASK, ["--dataset_name", "mvsa_single", "--data_dir", str(tmp_path)])
    assert "labelResultAll.txt" in capsys.readouterr().err


def test_an_argument_file_gives_every_argument_and_the_command_line_overrides_it(tmp_path, capsys):
    recipe = tmp_path / "run.yaml"
    # YAML reads 5e-5 as a string and 1.0e-4 as a number: both must arrive as floats, as on the command line.
    recipe.write_text("learning_rate: 5e-5\nhead_learning_rate: 1.0e-4\nnum_cross_layers: 3\nexchange_end_layer: 3\n"
                      "pretrained_vision: false\nvariant: wo_l_ti\nseed: 1\n")
    args = parse_args(run_mner.TASK, [str(recipe), "--seed", "7"])
    assert (args.learning_rate, args.head_learning_rate, args.seed, args.pretrained_vision) == (5e-5, 1e-4, 7, False)
    assert args.muse_config["num_cross_layers"] == 3 and args.muse_config["generation_loss_weight"] == 0.0
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"learning_rate": 3e-5, "overwrite_output_dir": True}))
    args = parse_args(run_mner.TASK, [str(as_json)])
    assert args.learning_rate == 3e-5 and args.overwrite_output_dir is True
    for text, expected in (
        ("learning_rte: 1e-4\n", "unknown argument(s) learning_rte"),
        ("variant: only_i\n", "--variant 'only_i'"),
        ("- a list\n", "must hold a mapping"),
        ("seed: [1, 2]\n", "seed must be a single value"),
    ):
        recipe.write_text(text)
        with pytest.raises(SystemExit):
            parse_args(run_mner.TASK, [str(recipe)])
        message = capsys.readouterr().err
        assert expected in message and (str(recipe) in message or "--variant" in expected), message


def test_mt_product_defaults_to_a_chinese_text_encoder(tmp_path, capsys):
    data_dir = str(_umt_folder(tmp_path))
    argv = ["--dataset_name", "mt_product", "--data_dir", data_dir]
    try:
        args = parse_args(run_mner.TASK, argv)
    except SystemExit:
        # Without the Hub and without a cached copy, the run stops before loading anything, naming the default.
        message = capsys.readouterr().err
        assert "--text_model_name_or_path bert-base-chinese (the default for --dataset_name mt_product)" in message
        assert "pass a local copy" in message
    else:
        assert args.text_model_name_or_path == "bert-base-chinese"
        assert args.defaults_used["text_model_name_or_path"] == "bert-base-chinese"
    args = parse_args(run_mner.TASK, ["--dataset_name", "twitter2017", "--data_dir", data_dir])
    assert args.text_model_name_or_path == offline_text_model_path()


# ----------------------------------------------------------------------------------------------------------------
# Optimizer, checkpoints, metrics
# ----------------------------------------------------------------------------------------------------------------


class _ToyTagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.muse = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 4))
        self.tagger = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
        self.muse[2].weight.requires_grad = False


def test_optimizer_groups_split_head_and_decay():
    model = _ToyTagger()
    groups = optimizer_parameter_groups(
        model, ["tagger"], learning_rate=1e-5, head_learning_rate=1e-3, weight_decay=0.01
    )
    placed = {id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    assert sum(len(group["params"]) for group in groups) == len(placed)  # no parameter twice
    assert placed == {
        id(model.muse[0].weight): (1e-5, 0.01),
        id(model.muse[0].bias): (1e-5, 0.0),
        id(model.muse[1].weight): (1e-5, 0.0),  # LayerNorm
        id(model.muse[1].bias): (1e-5, 0.0),
        id(model.muse[2].bias): (1e-5, 0.0),  # the frozen weight is left out
        id(model.tagger[0].weight): (1e-3, 0.01),
        id(model.tagger[0].bias): (1e-3, 0.0),
        id(model.tagger[1].weight): (1e-3, 0.0),
        id(model.tagger[1].bias): (1e-3, 0.0),
    }
    with pytest.raises(ValueError, match="classifier"):
        optimizer_parameter_groups(model, ["classifier"], 1e-5, 1e-3, 0.01)


def test_optimizer_is_fused_adamw_with_the_groups_updates():
    """The training optimizer runs torch's fused AdamW kernel and updates exactly as the per-parameter AdamW would."""
    torch.manual_seed(0)
    fused_model, reference_model = _ToyTagger(), _ToyTagger()
    reference_model.load_state_dict(fused_model.state_dict())
    initial_weight = fused_model.tagger[0].weight.detach().clone()
    args = argparse.Namespace(learning_rate=1e-2, head_learning_rate=1e-1, weight_decay=0.1)
    optimizer = create_optimizer(fused_model, ["tagger"], args)
    assert all(group["fused"] for group in optimizer.param_groups)
    reference = torch.optim.AdamW(
        optimizer_parameter_groups(reference_model, ["tagger"], 1e-2, 1e-1, 0.1), lr=1e-2, foreach=False
    )
    inputs = torch.randn(8, 4)
    for _ in range(3):
        for model, step in ((fused_model, optimizer), (reference_model, reference)):
            model.tagger(model.muse(inputs)).pow(2).sum().backward()
            step.step()
            step.zero_grad()
    for (name, fused_parameter), reference_parameter in zip(
        fused_model.named_parameters(), reference_model.parameters()
    ):
        torch.testing.assert_close(fused_parameter, reference_parameter, msg=name)
    assert not torch.equal(fused_model.tagger[0].weight, initial_weight)


def _fake_checkpoint(folder: Path, steps: int) -> None:
    folder.mkdir(parents=True)
    TrainingProgress(completed_steps=steps).save(folder)


def test_latest_checkpoint_is_the_one_with_most_steps(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    _fake_checkpoint(tmp_path / "step_2", 2)
    _fake_checkpoint(tmp_path / "step_10", 10)  # more steps, although "step_2" sorts after it as text
    _fake_checkpoint(tmp_path / "epoch_1", 5)
    _fake_checkpoint(tmp_path / "step_12.incomplete", 12)  # being written when the run died
    (tmp_path / "step_14").mkdir()  # no progress file: not a checkpoint of ours
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step_10"
    _fake_checkpoint(tmp_path / "epoch_2", 10)  # saved after the validation that follows step 10
    assert find_latest_checkpoint(tmp_path) == tmp_path / "epoch_2"


def test_trackers_get_the_scalar_arguments_but_not_the_hub_token():
    from muse_training.loop import _tracker_config

    args = parse_args(run_mner.TASK, ["--hub_token", "hf_secret", "--seed", "3"])
    config = _tracker_config(args)
    assert config["seed"] == 3 and config["dataset_name"] == "twitter2017_sample"
    assert "hub_token" not in config and "hf_secret" not in map(str, config.values())
    assert "muse_config" not in config  # a dict: trackers take scalars only


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_a_fresh_run_replaces_an_earlier_run_only_when_told_and_keeps_other_files(accelerator, tmp_path, caplog):
    from argparse import Namespace

    earlier = tmp_path / "out"
    (earlier / "step_2").mkdir(parents=True)
    TrainingProgress(completed_steps=2).save(earlier / "step_2")
    for name in ("all_results.json", "README.md", "config.json", "model.safetensors", "vocab.txt", "args.yaml",
                 "predictions.jsonl.partial"):  # fmt: skip
        (earlier / name).write_text("{}")
    (earlier / BEST_MODEL_MARKER).write_text(json.dumps({"files": ["config.json", "vocab.txt", "../outside.txt"]}))
    (tmp_path / "outside.txt").write_text("not the run's")
    args = Namespace(output_dir=str(earlier), resume_from_checkpoint=None, overwrite_output_dir=False, do_train=True,
                     task="mner")  # fmt: skip
    with pytest.raises(SystemExit, match=r"already holds an earlier run \(README.md, all_results.json, .*--overwrite_"):
        prepare_output_dir(accelerator, args)
    args.overwrite_output_dir = True
    with caplog.at_level("WARNING"):
        assert prepare_output_dir(accelerator, args) is None
    assert "holds an earlier run: deleting its" in caplog.text
    # The marker's list names files of the folder only; reproduce.py's argument file stays.
    assert sorted(path.name for path in earlier.iterdir()) == ["args.yaml"]
    assert (tmp_path / "outside.txt").is_file()


def test_overwriting_a_folder_no_run_used_deletes_none_of_its_files(accelerator, tmp_path, caplog):
    from argparse import Namespace

    folder = tmp_path / "project"
    folder.mkdir()
    files = {"README.md": "my project", "predictions.jsonl": "mine", "config.json": "{}", "notes.txt": "notes"}
    for name, text in files.items():
        (folder / name).write_text(text)
    args = Namespace(output_dir=str(folder), resume_from_checkpoint=None, overwrite_output_dir=True, do_train=True,
                     task="mner")  # fmt: skip
    # Without an earlier run's marker or checkpoints, files named as a run's are the user's: none is deleted at the
    # start, and the warning names those the run will write over.
    with caplog.at_level("WARNING"):
        assert prepare_output_dir(accelerator, args) is None
    assert {path.name: path.read_text() for path in folder.iterdir()} == files
    assert "holds README.md, config.json, predictions.jsonl, which no earlier run" in caplog.text
    assert "deleting" not in caplog.text


def test_save_total_limit_keeps_the_newest_checkpoints(accelerator, tmp_path):
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    assert model is not None
    for steps in (2, 4, 6):
        save_checkpoint(accelerator, str(tmp_path), f"step_{steps}", TrainingProgress(completed_steps=steps), 2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_4", "step_6"]
    save_checkpoint(accelerator, str(tmp_path), "epoch_2", TrainingProgress(completed_steps=6), 1)
    assert [path.name for path in tmp_path.iterdir()] == ["epoch_2"]


def _regularizer_weight_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:
        return [name for name in weights.keys() if ".regularizers." in f".{name}"]


@pytest.mark.parametrize("keep_regularizers", [False, True])
def test_the_kept_model_leaves_out_the_decoders_unless_asked_and_reloads_into_training(
    accelerator, tmp_path, keep_regularizers
):
    from transformers import AutoModelForTokenClassification

    from modeling_muse import MuSEForTokenClassification
    from muse_training.checkpoints import load_best_weights, save_model
    from tests.tiny_models import TINY_DECODERS, tiny_config, tiny_processor

    torch.manual_seed(0)
    model = accelerator.prepare(MuSEForTokenClassification(tiny_config(**TINY_DECODERS)))
    trained = {name: value.clone() for name, value in model.state_dict().items()}
    save_model(accelerator, model, tiny_processor(), str(tmp_path), {"epoch": 1}, keep_regularizers)
    # The training model keeps its decoders and its configuration; the folder has them only when asked for.
    assert model.config.include_regularizers and model.muse.regularizers is not None
    assert bool(_regularizer_weight_names(tmp_path)) == keep_regularizers
    served = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert served.config.include_regularizers == keep_regularizers
    assert (served.muse.regularizers is not None) == keep_regularizers
    for name, value in served.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)

    # The end of training puts the kept weights back; decoders not in the folder stay as the training left them.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    moved = {name: value.clone() for name, value in model.state_dict().items()}
    load_best_weights(accelerator, model, str(tmp_path))
    for name, value in model.state_dict().items():
        from_folder = keep_regularizers or not name.startswith("muse.regularizers.")
        torch.testing.assert_close(value, trained[name] if from_folder else moved[name], rtol=0, atol=0, msg=name)


def test_a_kept_model_that_does_not_match_the_training_model_is_an_error(accelerator, tmp_path):
    from modeling_muse import MuSEForTokenClassification
    from muse_training.checkpoints import load_best_weights, save_model
    from tests.tiny_models import TINY_DECODERS, tiny_config, tiny_processor

    served = MuSEForTokenClassification(tiny_config(**TINY_DECODERS))
    save_model(accelerator, served, tiny_processor(), str(tmp_path), {"epoch": 1})
    model = accelerator.prepare(MuSEForTokenClassification(tiny_config(num_cross_layers=4, **TINY_DECODERS)))
    with pytest.raises(RuntimeError, match=r"does not match the trained model: missing \['muse.cross_transformer"):
        load_best_weights(accelerator, model, str(tmp_path))


def test_training_from_a_served_model_starts_its_decoders_afresh(accelerator, tmp_path, caplog, capfd):
    from torch.nn.utils import parametrize

    from modeling_muse import MuSEForTokenClassification
    from muse_training.models import build_model
    from tests.tiny_models import NER_LABELS, TINY_DECODERS, tiny_config

    torch.manual_seed(0)
    served = MuSEForTokenClassification(tiny_config(**TINY_DECODERS))
    served.remove_regularizers()
    served.save_pretrained(tmp_path)
    capfd.readouterr()
    args = argparse.Namespace(model_name_or_path=str(tmp_path), do_train=True)
    with caplog.at_level("WARNING"):
        model = build_model(args, MuSEForTokenClassification, NER_LABELS, ["tagger"])
    assert model.muse.regularizers is not None and model.config.include_regularizers
    for name, value in served.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    # The rebuilt decoders start from a defined initialisation: every tensor finite and of a sane size (uninitialised
    # memory gave NaN in the PixelCNN++ weight-norm parametrizations and values up to 1e38 elsewhere), and so is every
    # weight the weight-norm parametrizations compute from them.
    rebuilt = {name: value for name, value in model.state_dict().items() if name.startswith("muse.regularizers.")}
    assert rebuilt and all(name not in served.state_dict() for name in rebuilt)
    for name, value in rebuilt.items():
        assert torch.isfinite(value).all() and value.abs().max() < 1e3, name
    for name, module in model.muse.regularizers.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            assert torch.isfinite(module.weight).all() and module.weight.abs().max() < 1e3, name
    # One line says what starts afresh, counted per part; transformers' per-key report of the same is not shown.
    counts = {
        part: sum(name.startswith(f"muse.regularizers.{part}.") for name in rebuilt)
        for part in ("caption_decoder", "image_projection", "generation_decoder", "text_projection")
    }
    assert sum(counts.values()) == len(rebuilt)
    notices = [record.getMessage() for record in caplog.records if "training-only decoders" in record.getMessage()]
    assert notices == [
        f"[RANK 0] --model_name_or_path {tmp_path} was saved without its training-only decoders: newly initialised "
        f"caption decoder ({counts['caption_decoder']} tensors), noisy image projection ({counts['image_projection']} "
        f"tensors), PixelCNN++ decoder ({counts['generation_decoder']} tensors), noisy text projection "
        f"({counts['text_projection']} tensors) (save with --keep_regularizers to continue them)."
    ]
    console = capfd.readouterr()
    assert "LOAD REPORT" not in console.err + console.out and "MISSING" not in console.err + console.out
    # Evaluating it needs no decoders.
    args.do_train = False
    assert build_model(args, MuSEForTokenClassification, NER_LABELS, ["tagger"]).muse.regularizers is None


def test_each_split_is_reported_in_one_line_with_what_needs_acting_on(accelerator, caplog, tmp_path):
    import datasets
    from PIL import Image

    from processing_muse import placeholder_image

    from tests.tiny_models import NER_LABELS, tiny_processor

    processor = tiny_processor(max_length=8)
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=NER_LABELS)),
            "image": datasets.Image(),
        }
    )
    picture = tmp_path / "1.jpg"
    Image.new("RGB", (8, 8), (10, 200, 10)).save(picture)
    real = {"path": str(picture), "bytes": None}
    english = {"tokens": [["Obama", "visits", "Paris"]], "ner_tags": [[1, 0, 3]], "image": [real]}
    long_post = {"tokens": [["a"] * 10 + ["Kawhi", "Leonard"]], "ner_tags": [[0] * 10 + [1, 2]], "image": [real]}
    # A placeholder is stored as image bytes without a path (datasets_scripts.images).
    chinese = {"tokens": [list("苹果手机壳")], "ner_tags": [[1, 2, 2, 2, 2]], "image": [placeholder_image()]}
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(english, features=features),
            "validation": datasets.Dataset.from_dict(long_post, features=features),
            "test": datasets.Dataset.from_dict(chinese, features=features),
        }
    )
    args = argparse.Namespace(text_model_name_or_path="MiniLM", is_quickstart=False)
    with caplog.at_level("INFO"):
        reports = report_splits(args, splits, processor, text_column="tokens", label_column="ner_tags")
    lines = [record.getMessage() for record in caplog.records if record.levelname == "INFO"]
    assert len(lines) == 3
    assert "train: 1 posts | 0 images replaced by the grey placeholder | 0 words cut at max_length 8" in lines[0]
    # [CLS] and [SEP] leave 6 of the 8 positions: the last 6 words are cut, and with them the PER entity.
    assert reports["validation"].cut_words == 6 and reports["validation"].cut_entities == 1
    assert "validation: 1 posts | 0 images replaced by the grey placeholder | 6 words cut at max_length 8 " \
        "(1 entities)" in lines[1]
    unknown = reports["test"].unknown_words
    assert unknown >= 4  # Chinese characters the English tokenizer does not know
    assert "test: 1 posts | 1 images replaced by the grey placeholder" in lines[2]
    assert f"{100 * unknown / 5:.1f}% of 5 words became [UNK]" in lines[2]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2
    assert f"{unknown} of 20 words" in warnings[0] and "bert-base-chinese" in warnings[0]
    assert "] 1 of 3 images are the grey placeholder" in warnings[1]


def test_ner_metrics_are_entity_level():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = np.array([[-100, 1, 2, -100, 0, 3, -100], [-100, 3, 4, 0, -100, -100, -100]])
    # Post 1: PER right, LOC missed; post 2: LOC cut short (B-LOC O instead of B-LOC I-LOC) is wrong.
    predicted = np.array([[-100, 1, 2, -100, 0, 0, -100], [-100, 3, 0, 0, -100, -100, -100]])
    metrics = run_mner.ner_metrics(EvaluationOutput(predicted, gold, loss=1.5), labels)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert metrics["PER_f1"] == 1.0 and metrics["LOC_f1"] == 0.0 and metrics["loss"] == 1.5
    assert "PER" in metrics["report"] and "LOC" in metrics["report"]


def test_sentiment_metrics_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=50)
    predictions = np.where(rng.random(50) < 0.6, labels, rng.integers(0, 2, size=50))  # class 2 rarely predicted
    metrics = run_msa.sentiment_metrics(
        EvaluationOutput(predictions, labels, loss=0.7), ["positive", "neutral", "negative"]
    )
    assert metrics["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))
    assert metrics["f1"] == pytest.approx(
        sklearn_metrics.f1_score(labels, predictions, average="weighted", zero_division=0)
    )
    per_class = sklearn_metrics.f1_score(labels, predictions, average=None, zero_division=0)
    assert [metrics["positive_f1"], metrics["neutral_f1"], metrics["negative_f1"]] == pytest.approx(list(per_class))


@pytest.mark.parametrize(
    ("text_model", "base_model"),
    [
        (offline_text_model_path(), "sentence-transformers/all-MiniLM-L6-v2"),  # the offline copy of a Hub model
        ("bert-base-uncased", "bert-base-uncased"),
        ("a-local-folder", None),  # made to exist below: a folder is no Hub id
    ],
)
def test_model_card_metadata_names_hub_ids_and_datasets_only(tmp_path, monkeypatch, text_model, base_model):
    from huggingface_hub import ModelCard

    from modeling_muse import MuSEForTokenClassification
    from tests.tiny_models import TINY_DECODERS, tiny_config

    monkeypatch.chdir(tmp_path)
    if text_model == "a-local-folder":
        (tmp_path / text_model).mkdir()
    output_dir = tmp_path / "runs" / "muse-twitter17"
    output_dir.mkdir(parents=True)
    args = parse_args(run_mner.TASK, ["--output_dir", str(output_dir)])
    args.text_model_name_or_path = text_model
    args.dataset_name, args.is_quickstart = "twitter2017", False
    results = {"best_epoch": 2, "best_step": 20, "train_runtime_seconds": 10.0, "train_samples_per_second": 3.0,
               "wall_time_seconds": 12.0}
    for split in ("eval", "test"):
        results.update({f"{split}_precision": 0.5, f"{split}_recall": 0.25, f"{split}_f1": 1 / 3})
    progress = TrainingProgress(history=[{"epoch": 1, "step": 10, "precision": 0.1, "recall": 0.1, "f1": 0.1}])
    model = MuSEForTokenClassification(tiny_config(**TINY_DECODERS))
    path = write_model_card(args, run_mner.TASK, model, progress, results, "report", "`twitter2017`: 3 posts.", 1)
    card = ModelCard.load(path)
    assert card.data.base_model == base_model
    # The paper's dataset names the evaluation results; `datasets` lists Hub dataset ids only, which it is not.
    assert card.data.datasets is None and card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag is None
    assert {"multimodal-ner", "muse"} <= set(card.data.tags)
    scores = {(result.metric_type, result.dataset_name, result.dataset_split): result.metric_value
              for result in card.data.eval_results}
    assert scores == {("precision", "Twitter-2017", "test"): 0.5, ("recall", "Twitter-2017", "test"): 0.25,
                      ("f1", "Twitter-2017", "test"): 1 / 3}
    assert card.data.eval_results[0].task_type == "token-classification"
    # Loading code for the folder as users will have it, never a path of this machine.
    assert 'model_id = "muse-twitter17"' in card.text and "trust_remote_code=True" in card.text
    text = path.read_text()
    for local in (str(tmp_path), offline_text_model_path()):
        assert local not in text
    assert "the training-only decoders (image captioning and PixelCNN++ text-to-image) were left out" in card.text
    args.keep_regularizers = True
    kept = ModelCard.load(write_model_card(args, run_mner.TASK, model, progress, results, None, "x.", 1))
    assert "also holds the training-only decoders" in kept.text and "left out" not in kept.text
    args.push_to_hub, args.hub_model_id = True, "someone/muse-twitter17"
    card = ModelCard.load(write_model_card(args, run_mner.TASK, model, progress, results, None, "x.", 1))
    assert 'model_id = "someone/muse-twitter17"' in card.text and card.data.model_name == "muse-twitter17"


def _card_metadata(args, tmp_path) -> dict:
    """The YAML front matter of the card `write_model_card` writes for ``args`` (a tiny NER model, made-up scores)."""
    import yaml

    from modeling_muse import MuSEForTokenClassification
    from tests.tiny_models import tiny_config

    results = {"best_epoch": 1, "best_step": 5, "train_runtime_seconds": 1.0, "train_samples_per_second": 1.0,
               "wall_time_seconds": 2.0, "eval_precision": 0.5, "eval_recall": 0.5, "eval_f1": 0.5}  # fmt: skip
    progress = TrainingProgress(history=[{"epoch": 1, "step": 5, "precision": 0.5, "recall": 0.5, "f1": 0.5}])
    model = MuSEForTokenClassification(tiny_config())
    path = write_model_card(args, run_mner.TASK, model, progress, results, None, "posts.", 1)
    return yaml.safe_load(path.read_text().split("\n---\n")[0].removeprefix("---\n"))


def test_model_card_metadata_names_no_local_data_no_local_base_and_offers_no_widget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_file = tmp_path / "my_posts_train.jsonl"
    train_file.write_text("")
    args = parse_args(run_mner.TASK, ["--output_dir", str(tmp_path / "out")])
    args.data_source, args.dataset_name, args.train_file = "files", None, str(train_file)
    metadata = _card_metadata(args, tmp_path)
    # No widget: the Hub's widgets send text or an image alone, and would infer one from the architecture otherwise.
    assert metadata["inference"] is False and "pipeline_tag" not in metadata
    # A local data file is no dataset of the Hub: neither listed nor the model-index's dataset.
    assert "datasets" not in metadata and "model-index" not in metadata and "my_posts" not in str(metadata)
    args.data_source, args.dataset_name, args.train_file = "dataset", "someone/posts", None
    metadata = _card_metadata(args, tmp_path)
    assert metadata["datasets"] == ["someone/posts"]
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "someone/posts"
    # base_model is a Hub id or absent: a trained MuSE (or the base of a LoRA adapter) from a folder is not named.
    base = tmp_path / "my_local_muse"
    base.mkdir()
    args.model_name_or_path = str(base)
    assert "base_model" not in _card_metadata(args, tmp_path)
    args.model_name_or_path, args.peft_base_model, args.use_peft = str(tmp_path / "adapter"), str(base), True
    metadata = _card_metadata(args, tmp_path)
    assert metadata["library_name"] == "peft" and "base_model" not in metadata and "my_local_muse" not in str(metadata)
    args.peft_base_model = "someone/muse-twitter17"
    assert _card_metadata(args, tmp_path)["base_model"] == "someone/muse-twitter17"


# ----------------------------------------------------------------------------------------------------------------
# Hub upload (no network: HfApi is replaced by a recorder)
# ----------------------------------------------------------------------------------------------------------------


class _RecordingHfApi:
    calls: list[tuple[str, dict]] = []
    private = False

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}))
        return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}"})()

    def repo_info(self, repo_id, **kwargs):
        return type("ModelInfo", (), {"private": self.private})()

    def create_commit(self, **kwargs):
        self.calls.append(("create_commit", kwargs))


def _fake_output_dir(root: Path) -> Path:
    for relative in (
        "model.safetensors",
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "all_results.json",
        "predictions.jsonl",
        "step_4/model.safetensors",
        "epoch_1/optimizer.bin",
        "step_6.incomplete/model.safetensors",
        ".cache/huggingface/x",
        "run_mner/events.log",
        "args.yaml",
        "train.log",
        "notes.txt",
        "data.json",
    ):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relative)
    # What save_model wrote with the kept model; notes.txt and data.json are the user's.
    marker = {"files": ["config.json", "model.safetensors", "processor_config.json", "tokenizer.json"]}
    (root / BEST_MODEL_MARKER).write_text(json.dumps(marker))
    return root


def test_push_to_hub_uploads_the_run_s_own_files_and_predictions_only_when_asked(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(hub_upload, "HfApi", _RecordingHfApi)
    _RecordingHfApi.calls = []
    output_dir = _fake_output_dir(tmp_path / "muse-out")
    with caplog.at_level("INFO"):
        assert hub_upload.create_hub_repo("muse-out", token="secret") == ("someone/muse-out", False)
    assert "https://huggingface.co/someone/muse-out, a public repository (anyone can read" in caplog.text
    uploaded = push_to_hub(output_dir, "someone/muse-out", token="secret")
    expected = ["README.md", "all_results.json", "config.json", "model.safetensors", "processor_config.json",
                "tokenizer.json"]  # fmt: skip
    assert uploaded == expected == files_to_upload(output_dir)
    assert push_to_hub(output_dir, "someone/muse-out", "secret", include_predictions=True) == sorted(
        [*expected, "predictions.jsonl"]
    )
    (_, create), (_, commit), _ = [call for call in _RecordingHfApi.calls if call[0] != "init"]
    assert create == {"repo_id": "muse-out", "private": None, "exist_ok": True}
    assert commit["repo_id"] == "someone/muse-out"
    assert [operation.path_in_repo for operation in commit["operations"]] == expected
    assert all(call[1]["token"] == "secret" for call in _RecordingHfApi.calls if call[0] == "init")
    # An existing public repository is not used for a run that asked for a private one.
    with pytest.raises(SystemExit, match=r"--hub_private_repo true: the Hub repository someone/muse-out exists and is "
                                         r"public"):  # fmt: skip
        hub_upload.create_hub_repo("muse-out", token=None, private=True)


# ----------------------------------------------------------------------------------------------------------------
# Slow: the scripts in subprocesses
# ----------------------------------------------------------------------------------------------------------------


def _tiny_args(text_model: Path, output_dir: Path, *extra: str) -> list[str]:
    return tiny_script_arguments(
        text_model, output_dir, *extra, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_train_samples=24, max_eval_samples=10, num_train_epochs=2, logging_steps=2, learning_rate=1e-3,
        head_learning_rate=1e-2,
    )  # fmt: skip


def _run(argv: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _results(output_dir: Path) -> dict:
    return json.loads((output_dir / "all_results.json").read_text())


def _rescore_saved_mner_model(output_dir: Path) -> dict[str, float]:
    """Test F1 and loss of the model saved in output_dir, loaded with the Auto classes and run here in one batch."""
    from transformers import AutoModelForTokenClassification, AutoProcessor

    import modeling_muse  # noqa: F401
    from datasets_scripts import load_muse_dataset

    model = AutoModelForTokenClassification.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    test = load_muse_dataset("twitter2017_sample")["test"].select(range(10))
    assert all(row["tokens"] for row in test)  # the loss is then a plain mean over posts, whatever the batching
    batch = run_mner.MNERCollator(processor)(list(test))
    with torch.no_grad():
        outputs = model(**batch)
    evaluation = EvaluationOutput(outputs.predicted_tag_ids.numpy(), batch["labels"].numpy(), float(outputs.loss))
    return run_mner.ner_metrics(evaluation, [model.config.id2label[i] for i in range(model.config.num_labels)])


def _assert_rescored_like_reported(output_dir: Path) -> None:
    rescored, reported = _rescore_saved_mner_model(output_dir), _results(output_dir)
    for name in ("f1", "precision", "recall", "loss"):
        assert rescored[name] == pytest.approx(reported[f"test_{name}"], rel=1e-4, abs=1e-6), name


# What a quiet run never shows: accelerate's launcher defaults, transformers' loading/saving bars and its load report,
# the reminder to train a model that the script is training, per-epoch reports and best-model notes.
NOISE = (
    "were not passed to `accelerate launch`",
    "Loading weights",
    "Writing model shards",
    "LOAD REPORT",
    "train the model before using it",
    "New best validation",
    "validation report",
    " - WARNING - ",
)


def _assert_no_local_paths(output_dir: Path, *local: Path) -> None:
    """No saved text file names a folder of this machine (the text encoder's, the run's, the repository's)."""
    for path in output_dir.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".md", ".py", ".txt", ".jinja"}:
            text = path.read_text()
            for folder in local:
                assert str(folder) not in text, f"{path.relative_to(output_dir)} names {folder}"


def _run_card_snippet(output_dir: Path, image: Path, monkeypatch, capsys) -> str:
    """Run the model card's "How to load" code as written, from the folder that holds the output folder."""
    card = (output_dir / "README.md").read_text()
    code = card.split("```python\n")[-1].split("```")[0].replace('"photo.jpg"', repr(str(image)))
    monkeypatch.chdir(output_dir.parent)
    capsys.readouterr()
    exec(compile(code, "model card", "exec"), {})
    return capsys.readouterr().out


@pytest.mark.slow
def test_run_mner_end_to_end(tiny_text_model, script_env, tmp_path, monkeypatch, capsys):
    """The script as the README launches it: results, a card that loads the model as it says, and a quiet console."""
    output_dir = tmp_path / "out"
    launch = ["accelerate", "launch", "--config_file", "accelerate_configs/single_process.yaml", "run_mner.py"]
    result = _run([*launch, *_tiny_args(tiny_text_model, output_dir)], script_env)
    from transformers import AutoModel

    import modeling_muse  # noqa: F401

    assert type(AutoModel.from_pretrained(output_dir)).__name__ == "MuSEModel"
    # The model kept for serving has no decoders; the training had them (its L_it and L_ti are on the console).
    assert not _regularizer_weight_names(output_dir)
    assert json.loads((output_dir / "config.json").read_text())["include_regularizers"] is False
    results = _results(output_dir)
    for key in (
        "test_f1",
        "test_precision",
        "test_recall",
        "eval_f1",
        "eval_precision",
        "eval_recall",
        "best_epoch",
        "wall_time_seconds",
        "train_samples_per_second",
    ):
        assert key in results, key
    assert (results["num_train_samples"], results["num_test_samples"], results["train_steps"]) == (24, 10, 12)
    # The kept model is the one tested: scoring it again from disk gives the reported test scores.
    _assert_rescored_like_reported(output_dir)
    card = (output_dir / "README.md").read_text()
    assert "library_name: transformers" in card and "inference: false" in card and "pipeline_tag" not in card
    assert "- multimodal-ner" in card and "license: apache-2.0" in card and "base_model" not in card
    assert "model-index:" in card and f"value: {results['test_f1']}" in card and "twitter2017_sample" in card
    assert "AutoModelForTokenClassification.from_pretrained(model_id, trust_remote_code=True)" in card
    assert "exchange_ratio" in card
    assert {"model.safetensors", "config.json", "processor_config.json", "README.md", "all_results.json"} <= set(
        files_to_upload(output_dir)
    )
    _assert_no_local_paths(output_dir, tiny_text_model, tmp_path, REPO_ROOT)
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.jpg")
    # The pipeline's answer: a list of entities (the tiny model may find none).
    assert _run_card_snippet(output_dir, tmp_path / "photo.jpg", monkeypatch, capsys).startswith("[")

    # The console: one line per split, one summary line per epoch with each loss term and the throughput, the test
    # report once, where the results are, and none of the noise.
    console = result.stdout + result.stderr
    # The tiny run gives test_resnet 32-pixel images, a 1x1 feature map under the 4x4 grid: that warning is due.
    console = "\n".join(line for line in console.splitlines() if "is finer than the image tower's" not in line)
    for noise in NOISE:
        assert noise not in console, noise
    for split, posts in (("train", 24), ("validation", 10), ("test", 10)):
        assert f"] {split}: {posts} posts | {posts} images replaced by the grey placeholder | " in console, split
    for epoch in (1, 2):
        assert console.count(f"] epoch {epoch}/2 | ") == 1, epoch
    for term in ("| task ", "| L_it ", "| L_ti ", "L_ti_bits_per_dim", "samples/s", "| validation precision "):
        assert term in console, term
    assert console.count("micro avg") == 1  # the seqeval report, at the end only
    assert f"Test (twitter2017_sample, best epoch {results['best_epoch']})" in result.stdout
    assert f"model and results in {output_dir}" in result.stdout


@pytest.mark.slow
def test_run_msa_end_to_end(tiny_text_model, script_env, tmp_path):
    output_dir = tmp_path / "out"
    result = _run(
        [sys.executable, "run_msa.py", *_tiny_args(tiny_text_model, output_dir, "--keep_regularizers")], script_env
    )
    from transformers import AutoModel, AutoModelForSequenceClassification

    import modeling_muse  # noqa: F401

    assert type(AutoModel.from_pretrained(output_dir)).__name__ == "MuSEModel"
    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert model.config.id2label == {0: "positive", 1: "neutral", 2: "negative"}
    results = _results(output_dir)
    assert {"test_accuracy", "test_f1", "eval_accuracy", "eval_f1"} <= set(results)
    assert 0.0 <= results["test_accuracy"] <= 1.0 and 0.0 <= results["test_f1"] <= 1.0
    card = (output_dir / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card and "also holds the training-only decoders" in card
    assert _regularizer_weight_names(output_dir) and model.muse.regularizers is not None
    assert "Test (mvsa_single_sample, best epoch" in result.stdout


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def _assert_same_weights(first: Path, second: Path) -> None:
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"{name} differs")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_text_model, script_env, tmp_path):
    """Kill a run in its second epoch, resume it with 'latest', and compare it with an uninterrupted run.

    The kill is real (SIGKILL once step_6 exists). 32 posts in batches of 4, two batches per optimizer step: 4 steps
    per epoch, 12 in 3 epochs, a checkpoint every 3 steps (step_6 is in the middle of epoch 2, step_12 the last).
    Weights, optimizer, schedule, RNG, the place in the epoch and the best-model bookkeeping must all be restored
    for the two runs to end identical.
    """
    extra = [
        "--checkpointing_steps",
        "3",
        "--num_train_epochs",
        "3",
        "--max_train_samples",
        "32",
        "--gradient_accumulation_steps",
        "2",
    ]
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    _run([sys.executable, "run_mner.py", *_tiny_args(tiny_text_model, uninterrupted, *extra)], script_env)

    command = [sys.executable, "run_mner.py", *_tiny_args(tiny_text_model, interrupted, *extra)]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=script_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 600
        while not (interrupted / "step_6").is_dir():
            assert process.poll() is None, "the run ended before its second checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.02)
        process.kill()
    finally:
        process.wait()
    assert not (interrupted / "all_results.json").exists(), "the run finished before it could be killed"
    killed_at = find_latest_checkpoint(interrupted)
    assert killed_at is not None and killed_at.name != "step_12"

    resumed = _run(
        [
            sys.executable,
            "run_mner.py",
            *_tiny_args(tiny_text_model, interrupted, *extra),
            "--resume_from_checkpoint",
            "latest",
        ],
        script_env,
    )
    assert f"Resumed from {killed_at}" in resumed.stderr

    _assert_same_weights(uninterrupted / "step_12" / "model.safetensors", interrupted / "step_12" / "model.safetensors")
    _assert_same_weights(uninterrupted / "model.safetensors", interrupted / "model.safetensors")
    # A checkpoint holds everything the run trains, decoders included; the kept model leaves them out.
    assert _regularizer_weight_names(interrupted / "step_12") and not _regularizer_weight_names(interrupted)
    expected, actual = _results(uninterrupted), _results(interrupted)
    for key in TIMING_KEYS:
        expected.pop(key), actual.pop(key)
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_two_processes_train_and_score_every_test_post_once(tiny_text_model, script_env, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: one gloo group, metrics without duplicates."""
    output_dir = tmp_path / "two"
    # 10 test posts over 2 processes x 4 per batch: the last round is padded with repeats that must be dropped.
    result = _run(
        [
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "run_mner.py",
            *_tiny_args(tiny_text_model, output_dir),
        ],
        {**script_env, "MASTER_PORT": "29517"},
    )
    assert "DistributedType.MULTI_CPU  Backend: gloo" in result.stderr and "Num processes: 2" in result.stderr
    results = _results(output_dir)
    # Each process sees half of the 24 training posts per epoch: 3 steps of 4 posts, 2 epochs.
    assert results["train_steps"] == 6
    assert result.stdout.count("Test (twitter2017_sample") == 1  # printed by the main process only
    # The reported test scores are the saved model's over exactly the 10 test posts, scored in one process: a
    # duplicate post would change the mean loss.
    _assert_rescored_like_reported(output_dir)
