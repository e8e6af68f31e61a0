"""End to end, as a user runs the scripts: fine-tuning the models they save, and a run that diverges.

A model that `run_mner.py` / `run_msa.py` save with their defaults is for serving: it leaves out the training-only
decoders, which training from it builds afresh. The slow tests train a tiny model (tests/tiny_models.py's sizes) on the
picture-coded posts of tests/picture_data.py, fine-tune the saved folder on the same data files, in full and with
LoRA, and check that training really happens: every logged loss term finite, evaluation scores produced, the rebuilt
decoders of sane magnitude, and the one-line notice of what started afresh instead of transformers' per-key report.
A run with a learning rate of 1e6 diverges at its second step: it must stop naming that step, and save nothing
non-finite.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from muse_training.checkpoints import TrainingProgress
from muse_training.divergence import check_validation_loss, check_weights_finite
from tests import picture_data
from tests.tiny_models import tiny_script_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]

# The small run of every test here: 24 training posts in batches of 4, 2 epochs, every step logged.
SMALL_RUN = ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--max_train_samples", "24",
             "--max_eval_samples", "8", "--num_train_epochs", "2", "--logging_steps", "1"]  # fmt: skip
STEPS = 12
# The loss terms of the per-epoch summary line (muse_training.logs.epoch_summary).
SUMMARY_TERMS = ("loss", "task", "L_it", "L_ti", "L_ti_bits_per_dim")


def _run(argv: list[str], env: dict[str, str], succeeds: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if succeeds:
        assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _files(folder: Path, task: str) -> list[str]:
    written = picture_data.write_jsonl(folder, task) if task == "mner" else picture_data.write_csv(folder)
    return [f"--{split}_file={path}" for split, path in written.items()]


def _logged_losses(console: str) -> dict[str, list[str]]:
    """Every loss the run showed, as printed: the progress bar's (every --logging_steps) and each epoch summary's
    terms."""
    logged = {"progress bar": re.findall(r"loss=([^\]\s,]+)", console)}
    for summary in re.findall(r"\] epoch \d+/\d+ \| (.*?) \| validation", console):
        for part in summary.split(" | "):
            name, _, value = part.rpartition(" ")
            if name in SUMMARY_TERMS:
                logged.setdefault(name, []).append(value)
    return logged


def _assert_trained(result: subprocess.CompletedProcess, output_dir: Path, task: str) -> None:
    """Every logged loss finite (and all terms of eq. 14 logged, decoders included), evaluation scores produced."""
    console = result.stdout + result.stderr
    logged = _logged_losses(console)
    assert len(logged["progress bar"]) >= STEPS and set(logged) == {"progress bar", *SUMMARY_TERMS}, logged
    for term, values in logged.items():
        assert len(values) and all(math.isfinite(float(value)) for value in values), (term, values)
    results = json.loads((output_dir / "all_results.json").read_text())
    metrics = ("f1", "precision", "recall") if task == "mner" else ("f1", "accuracy")
    for split in ("eval", "test"):
        for name in (*metrics, "loss"):
            assert math.isfinite(results[f"{split}_{name}"]), f"{split}_{name}"
    assert results["train_steps"] == STEPS


def _assert_notice_instead_of_transformers_report(console: str, served: Path) -> None:
    assert re.search(
        rf"--model_name_or_path {re.escape(str(served))} was saved without its training-only decoders: newly "
        r"initialised caption decoder \(\d+ tensors\), noisy image projection \(4 tensors\), PixelCNN\+\+ decoder "
        r"\(\d+ tensors\), noisy text projection \(4 tensors\) \(save with --keep_regularizers to continue them\)\.",
        console,
    ), console[-3000:]
    assert "LOAD REPORT" not in console and "| MISSING" not in console


@pytest.fixture(scope="module")
def served_models(tiny_text_model, script_env, tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """Per task, a tiny model trained and saved by the script with its defaults (for serving, without the decoders),
    and the data files it was trained on."""
    root = tmp_path_factory.mktemp("served")
    served = {}
    for task in ("mner", "msa"):
        files = _files(root / f"{task}-data", task)
        output_dir = root / task
        _run([f"run_{task}.py", *tiny_script_arguments(tiny_text_model, output_dir, *SMALL_RUN, *files)], script_env)
        assert not any(".regularizers." in name for name in load_file(output_dir / "model.safetensors"))
        served[task] = (output_dir, files)
    return served


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mner", "msa"])
def test_a_served_model_fine_tunes_with_its_decoders_built_afresh(task, served_models, script_env, tmp_path):
    served, files = served_models[task]
    output_dir = tmp_path / "tuned"
    # --keep_regularizers keeps the rebuilt decoders in the saved model, for a look at what they trained into.
    result = _run(
        [f"run_{task}.py", "--model_name_or_path", str(served), *SMALL_RUN, *files, "--learning_rate", "1e-3",
         "--keep_regularizers", "--output_dir", str(output_dir)],
        script_env,
    )  # fmt: skip
    _assert_trained(result, output_dir, task)
    _assert_notice_instead_of_transformers_report(result.stdout + result.stderr, served)
    decoders = {name: value for name, value in load_file(output_dir / "model.safetensors").items()
                if ".regularizers." in name}  # fmt: skip
    assert decoders
    for name, value in decoders.items():
        assert torch.isfinite(value).all() and value.abs().max() < 1e3, name


@pytest.mark.slow
def test_a_served_model_fine_tunes_with_lora(served_models, script_env, tmp_path):
    served, files = served_models["mner"]
    output_dir = tmp_path / "adapter"
    result = _run(
        ["run_mner.py", "--model_name_or_path", str(served), "--use_peft", *SMALL_RUN, *files, "--learning_rate",
         "1e-2", "--output_dir", str(output_dir)],
        script_env,
    )  # fmt: skip
    _assert_trained(result, output_dir, "mner")
    _assert_notice_instead_of_transformers_report(result.stdout + result.stderr, served)
    adapter = load_file(output_dir / "adapter_model.safetensors")
    assert all(torch.isfinite(value).all() for value in adapter.values())


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_step_and_saves_nothing_non_finite(tiny_text_model, script_env, tmp_path):
    """A learning rate of 1e6 from the first step (no warm-up): step 1's loss is finite, its update is not sane,
    and step 2's loss is NaN. A checkpoint every step: step 1's is saved, step 2's must not be, nor any best model."""
    files = _files(tmp_path / "data", "mner")
    output_dir = tmp_path / "diverged"
    argv = tiny_script_arguments(
        tiny_text_model, output_dir, *SMALL_RUN, *files, "--logging_steps", "5", "--checkpointing_steps", "1",
        learning_rate=1e6, head_learning_rate=1e6, num_warmup_steps=0,
    )  # fmt: skip
    result = _run(["run_mner.py", *argv], script_env, succeeds=False)
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"Training stopped at optimizer step 2 \(epoch 1\): the loss is not finite \(task loss (nan|-?inf)"
        r"(, [^)]*)?\)\. "
        r"The training diverged: lower --learning_rate \(now 1e\+06\) and --head_learning_rate \(now 1e\+06\), or "
        r"check the data \(labels or regression targets far outside the usual range\)\. Nothing non-finite was "
        r"saved: no model was kept yet, and every checkpoint is from before it\.",
        message,
    ), message
    assert sorted(path.name for path in output_dir.iterdir()) == ["step_1"]
    for name, value in load_file(output_dir / "step_1" / "model.safetensors").items():
        assert torch.isfinite(value).all(), name


def test_non_finite_weights_or_validation_loss_stop_before_saving(tmp_path):
    from accelerate import Accelerator

    from modeling_muse import MuSEForTokenClassification
    from tests.tiny_models import tiny_config

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(MuSEForTokenClassification(tiny_config()))
    progress = TrainingProgress(completed_steps=7, epoch=1, best={"epoch": 1, "step": 4, "metrics": {"f1": 0.5}})
    args = argparse.Namespace(learning_rate=0.5, head_learning_rate=2.0, output_dir=str(tmp_path))
    check_weights_finite(accelerator, model, progress, args)
    with torch.no_grad():
        model.muse.fusion.weight[0, 0] = float("inf")
    with pytest.raises(SystemExit) as stopped:
        check_weights_finite(accelerator, model, progress, args)
    assert str(stopped.value).startswith(
        "Training stopped after optimizer step 7 (epoch 2): weights are no longer finite (muse.fusion.weight). The "
        "training diverged: lower --learning_rate (now 0.5) and --head_learning_rate (now 2)"
    )
    assert str(stopped.value).endswith(
        f"Nothing non-finite was saved: the best model so far (epoch 1, step 4) in {tmp_path}, and every checkpoint "
        f"is from before it."
    )
    check_validation_loss({"loss": 1.5}, 2, progress, args)
    with pytest.raises(SystemExit, match=r"after epoch 2 \(optimizer step 7\): the validation loss is not finite"):
        check_validation_loss({"loss": float("nan")}, 2, progress, args)
