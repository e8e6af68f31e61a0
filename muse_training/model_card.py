"""The model card (``output_dir/README.md``) through `huggingface_hub.ModelCard`: metadata the Hub reads (model-index
evaluation results, datasets, base model, license, no inference widget), the scores, the data, the hyperparameters and
how to load the model. Its metadata names Hub ids and the paper's dataset names only, never a file or folder of the
machine that trained the model.

Every value that comes from the data, the arguments or a loaded configuration (labels in the test report, dataset,
folder and model names) is written as code (`muse_training.markdown`), in the loading snippets as a Python string
literal, and in the metadata by the YAML writer: none of it can become Markdown, HTML or code of the card.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedModel

from modeling_muse.hub import is_hub_id, is_vision_model_id

from .arguments import DATASET_TITLES, MUSE_ARGUMENTS, TaskInfo, text_encoder_hub_id
from .checkpoints import MODEL_CARD_FILE, TrainingProgress, regularizer_weights_prefix
from .image_effect import effect_table_rows
from .lora import adapter_card_section, is_adapter_model
from .markdown import code_block, code_span, table_cell

__all__ = ["LICENSE", "write_model_card"]

# The project's license (pyproject.toml); the pretrained towers it starts from (BERT, MiniLM, timm's ResNets) are
# Apache-2.0 too.
LICENSE = "apache-2.0"
_METRIC_TITLES = {
    "precision": "Test precision (entity-level micro, seqeval)",
    "recall": "Test recall (entity-level micro, seqeval)",
    "f1": "Test F1",
    "accuracy": "Test accuracy",
    "micro_f1": "Test micro F1 (over every post's labels)",
    "macro_f1": "Test macro F1 (mean over labels)",
    "exact_match": "Test exact-match accuracy (every label of a post right)",
    "mse": "Test mean squared error",
    "mae": "Test mean absolute error",
}
_AUTO_CLASSES = {"mner": "AutoModelForTokenClassification", "msa": "AutoModelForSequenceClassification"}
_EXAMPLE_TEXT = {"mner": "Kevin Durant joins the Warriors", "msa": "What a wonderful day at the beach"}
_HYPERPARAMETERS = (
    "variant",
    "pretrained_vision",
    "image_size",
    "learning_rate",
    "head_learning_rate",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_train_steps",
    "lr_scheduler_type",
    "num_warmup_steps",
    "warmup_ratio",
    "seed",
)


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], named_rows: bool = False) -> str:
    """A table under the card's own ``header``; a value that is not a number is written as code (`table_cell`), except
    the first cell of ``named_rows``, the card's own name of the row."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, (bool, int)) or value is None:
            return str(value)
        return table_cell(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join([str(row[0]) if named_rows else cell(row[0]), *(cell(value) for value in row[1:])]) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def base_model_id(args: argparse.Namespace) -> str | None:
    """What the model card's text names as the base model: the trained MuSE it started from (its Hub id, or the name
    of its folder), else the text encoder's Hub id; None for a text encoder from an unknown folder."""
    source = _trained_model_source(args)
    if source is not None:
        if is_hub_id(source):
            return source
        return Path(source).resolve().name
    return text_encoder_hub_id(args.text_model_name_or_path)


def hub_base_model(args: argparse.Namespace) -> str | None:
    """The ``base_model`` of the card's metadata, which the Hub reads as a model id and links: `base_model_id` when it
    is a Hub id, None when the run started from a local folder (its name would link to another repository, or none)."""
    source = _trained_model_source(args)
    return None if source is not None and not is_hub_id(source) else base_model_id(args)


def _trained_model_source(args: argparse.Namespace) -> str | None:
    """The trained MuSE the run started from; a LoRA adapter's is the model it loads onto, also when the run
    continued an adapter."""
    return getattr(args, "peft_base_model", None) or args.model_name_or_path


def dataset_id(args: argparse.Namespace) -> str:
    """The data as the card names it: a paper dataset's or Hub dataset's name, a folder's or a file's base name."""
    if args.data_source == "files":
        return Path(args.train_file or args.validation_file or args.test_file).name
    if args.data_source == "dataset" and not is_hub_id(args.dataset_name):
        return Path(args.dataset_name).resolve().name
    return args.dataset_name


def _card_data(args: argparse.Namespace, task: TaskInfo, results: dict[str, Any], model_name: str) -> ModelCardData:
    split = "test" if f"test_{task.best_metric}" in results else "validation"
    prefix = "test" if split == "test" else "eval"
    title = "Test" if split == "test" else "Validation"
    f1_title = f"{title} F1 (entity-level micro, seqeval)" if task.name == "mner" else f"{title} F1 (support-weighted)"
    name = dataset_id(args)
    # The Hub reads a dataset named in the metadata as a dataset id: `datasets` lists Hub datasets only, and the
    # evaluation results name a Hub dataset or one of the paper's, never a local file or folder. Without a dataset an
    # evaluation result is incomplete and transformers leaves it out of the model-index
    # (`TrainingSummary.create_model_index`): so is it here, and the scores stay in the card's text.
    local_data = args.data_source == "files" or (args.data_source == "dataset" and not is_hub_id(args.dataset_name))
    on_hub = args.data_source == "dataset" and is_hub_id(args.dataset_name)
    eval_results = None if local_data else [
        EvalResult(
            task_type=task.pipeline_tag,
            task_name=task.title,
            dataset_type=name,
            dataset_name=DATASET_TITLES.get(args.dataset_name, name),
            dataset_split=split,
            metric_type=metric,
            metric_value=results[f"{prefix}_{metric}"],
            metric_name=f1_title if metric == "f1" else _METRIC_TITLES[metric].replace("Test", title),
        )
        for metric in task.metric_names
    ]
    return ModelCardData(
        model_name=model_name,
        base_model=hub_base_model(args),
        datasets=[name] if on_hub else None,
        license=LICENSE,
        library_name="peft" if getattr(args, "use_peft", False) else "transformers",
        # No pipeline_tag, and no inference widget: every widget the Hub has sends text alone or an image alone (the
        # image-text ones ask a question or chat), while MuSE's pipelines need a post's text and its image. Without
        # `inference: false` the Hub would still infer token-classification or text-classification from the model's
        # architecture and offer a text box that fails; the card's text shows the custom pipeline instead.
        inference=False,
        tags=["muse", "multimodal", task.custom_pipeline, task.name],
        eval_results=eval_results,
    )


def _image_effect_section(task: TaskInfo, results: dict[str, Any], has_test: bool) -> list[str]:
    """What the picture adds (`muse_training.image_effect`): the scores of the test split (else validation) with the
    pictures and with the placeholder picture instead, overall and per entity type or class."""
    split, prefix = ("test", "test") if has_test else ("validation", "eval")
    rows = effect_table_rows(results, prefix, task.metric_names)
    if not rows:
        return []
    return [
        "### What the picture adds",
        "",
        f"The {split} posts scored with their pictures and again with the picture withheld (the grey placeholder "
        "picture as the processor prepares it); the difference is what the pictures add (for an error, a negative one "
        "means they help). `all_results.json` has the same as `<split>_<score>_without_image` and "
        "`<split>_image_effect_<score>`, and `predictions.jsonl` marks the posts whose prediction the picture "
        "changed (`image_changed_prediction`).",
        "",
        _markdown_table(["score", "with the picture", "without", "difference"], rows),
        "",
    ]


def _decoders_note(kept: bool) -> list[str]:
    if kept:
        return [
            "This checkpoint also holds the training-only decoders (image captioning and PixelCNN++ text-to-image, "
            "saved with `--keep_regularizers`): training from it continues them.",
            "",
        ]
    return [
        "This checkpoint holds what predictions need: the training-only decoders (image captioning and PixelCNN++ "
        "text-to-image) were left out (`include_regularizers: false` in its configuration). Training from it again "
        "starts them newly initialised; train with `--keep_regularizers` to keep them.",
        "",
    ]


def _how_to_load(task: TaskInfo, location: str, on_hub: bool) -> list[str]:
    auto_class = _AUTO_CLASSES[task.name]
    where = "the Hub repository" if on_hub else "this folder (or its Hub id once uploaded)"
    snippet = [
        f"from transformers import AutoProcessor, {auto_class}, pipeline",
        "",
        # A JSON string is a Python string literal: quotes, backslashes and line breaks in the name stay inside it.
        f"model_id = {json.dumps(location)}  # {where}",
        f'classifier = pipeline("{task.custom_pipeline}", model=model_id, trust_remote_code=True)',
        f'print(classifier({{"text": "{_EXAMPLE_TEXT[task.name]}", "image": "photo.jpg"}}))',
        "",
        "processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)",
        f"model = {auto_class}.from_pretrained(model_id, trust_remote_code=True)",
    ]
    return [
        "## How to load",
        "",
        "The model carries its code: `transformers` loads it with `trust_remote_code=True` (the machine needs torch, "
        "torchvision, transformers, timm, pytorch-crf, safetensors and Pillow; pin a `revision` when loading from "
        "the Hub). With the MuSE repository installed, `import modeling_muse` instead and leave `trust_remote_code` "
        "out.",
        "",
        *code_block("\n".join(snippet), "python"),
        "",
    ]


def write_model_card(
    args: argparse.Namespace,
    task: TaskInfo,
    model: PreTrainedModel,
    progress: TrainingProgress,
    results: dict[str, Any],
    test_report: str | None,
    data_description: str,
    num_processes: int,
) -> Path:
    """Write ``output_dir/README.md``: the model, its scores, the data, every hyperparameter, and how to load it."""
    on_hub = bool(args.push_to_hub)
    location = args.hub_model_id if on_hub else Path(args.output_dir).resolve().name
    model_name = location.split("/")[-1]
    adapter = model if is_adapter_model(model) else None
    if adapter is not None:
        model = adapter.get_base_model()
    config = model.config
    text_model = (
        text_encoder_hub_id(args.text_model_name_or_path or "")
        or (config.text_config._name_or_path if is_hub_id(config.text_config._name_or_path) else None)
        or "a text encoder from a local folder"
    )
    vision_model = (
        config.vision_model_name_or_path
        if is_vision_model_id(config.vision_model_name_or_path)
        else f"a {config.vision_timm_architecture or config.vision_config.model_type} tower from a local folder"
    )
    library = "transformers" if config.vision_config is not None else "timm"
    has_test = f"test_{task.best_metric}" in results
    headline = [
        (name, results[f"eval_{name}"], *([results[f"test_{name}"]] if has_test else [])) for name in task.metric_names
    ]
    start = (
        [f"Fine-tuned from the MuSE model {code_span(base_model_id(args))}.", ""]
        if args.model_name_or_path is not None
        else []
    )
    hyperparameters = [
        ("model_name_or_path", base_model_id(args) or "-"),
        ("text_model_name_or_path", text_model),
        ("vision_model_name_or_path", vision_model),
        *((name, getattr(args, name)) for name in _HYPERPARAMETERS),
        ("processes", num_processes),
    ]
    muse_fields = [
        (name, getattr(model.config, name))
        for name in (*MUSE_ARGUMENTS, "use_text", "use_image", "use_cross_transformer")
    ]
    data_title = DATASET_TITLES.get(args.dataset_name) or code_span(dataset_id(args))
    lines = [
        f"# MuSE ({task.name.upper()}) trained on {data_title}",
        "",
        f"{task.description} MuSE (Zhu et al., *Exchanging-based Multimodal Fusion with Transformer*) fuses a text "
        f"encoder ({code_span(text_model)}) and a {library} image encoder ({code_span(vision_model)}) with a "
        f"CrossTransformer that exchanges tokens between the two streams. Model class `{type(model).__name__}`, "
        f"variant {code_span(args.variant)}"
        + (f", problem type {code_span(config.problem_type)}." if getattr(config, "problem_type", None) else "."),
        "",
        *start,
        *(_decoders_note(args.keep_regularizers) if adapter is None and regularizer_weights_prefix(model) else []),
        "## Results",
        "",
        f"This is the model of the best validation {task.best_metric}: epoch {results['best_epoch']} (step "
        f"{results['best_step']}).",
        "",
        _markdown_table(["metric", "validation", *(["test"] if has_test else [])], headline, named_rows=True),
        "",
    ]
    if not has_test:
        # A test split without labels (new posts) was tagged into predictions.jsonl, not scored.
        lines += ["The test split had no labels: its posts were tagged, not scored." if args.do_predict
                  else "The data had no test split.", ""]
    lines += _image_effect_section(task, results, has_test)
    if test_report:
        lines += ["Test report:", "", *code_block(test_report.rstrip()), ""]
    lines += [
        "Validation after each epoch:",
        "",
        _markdown_table(
            ["epoch", "step", *task.metric_names],
            (
                [entry["epoch"], entry["step"], *(entry[name] for name in task.metric_names)]
                for entry in progress.history
            ),
        ),
        "",
        "## Data",
        "",
        f"Trained on {data_description}",
        "",
        "## Training hyperparameters",
        "",
        _markdown_table(["argument", "value"], hyperparameters, named_rows=True),
        "",
        "MuSE configuration:",
        "",
        _markdown_table(["field", "value"], muse_fields, named_rows=True),
        "",
        f"Training with validation took {results['train_runtime_seconds']:.0f} s "
        f"({results['train_samples_per_second']:.1f} training samples/s), "
        f"the whole run {results['wall_time_seconds']:.0f} s.",
        "",
        *(adapter_card_section(adapter, task, location, base_model_id(args)) if adapter is not None else []),
        *_how_to_load(task, location, on_hub),
    ]
    card_data = _card_data(args, task, results, model_name)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = Path(args.output_dir, MODEL_CARD_FILE)
    card.save(path)
    return path
