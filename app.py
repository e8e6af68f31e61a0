"""A Gradio demo of MuSE: entities, sentiment and the CrossTransformer's exchange for a post and its image.

    python app.py [--ner_model FOLDER_OR_HUB_ID] [--sentiment_model FOLDER_OR_HUB_ID] [--port 7860]

Without arguments the demo serves the quick starts' models, ``outputs/muse-twitter2017-sample`` (made by
``accelerate launch run_mner.py``) and ``outputs/muse-mvsa-single-sample`` (``accelerate launch run_msa.py``); a
missing one is named on the page with the command that makes it. Needs the ``demo`` extra:
``pip install -e ".[demo]"``.

Besides the page, the app serves two API endpoints, each taking ``(text, image)``:

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")
client.predict("Kawhi Leonard wins the fan vote", handle_file("photo.jpg"), api_name="/ner")
# [{'entity_group': 'PER', 'score': 0.93, 'word': 'Kawhi Leonard', 'start': 0, 'end': 13}]
client.predict("what a day", handle_file("photo.jpg"), api_name="/sentiment")
# [{'label': 'positive', 'score': 0.71}, {'label': 'neutral', ...}, ...]
```

``/ner`` returns what ``pipeline("multimodal-ner")`` returns (``aggregation_strategy="simple"``), ``/sentiment``
what ``pipeline("multimodal-sentiment", top_k=None)`` returns: every label with its probability, best first.
"""

from __future__ import annotations

import os

# Before gradio is imported: no telemetry, no version check against gradio's servers, no Hub telemetry. The demo
# runs on machines without internet access and sends nothing anywhere.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import html  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from gradio import utils as gradio_utils  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import Pipeline, pipeline  # noqa: E402

import modeling_muse  # noqa: E402,F401  (registers the multimodal-ner and multimodal-sentiment tasks)
from datasets_scripts import SAMPLE_DIR  # noqa: E402
from datasets_scripts.mvsa import read_mvsa_text  # noqa: E402
from datasets_scripts.umt import read_umt_file  # noqa: E402
from modeling_muse.image_input import DEFAULT_MAX_DECODED_BYTES, load_post_image  # noqa: E402
from modeling_muse.entities import WordAggregation  # noqa: E402
from processing_muse import UnreadableImageError  # noqa: E402
from modeling_muse.visualize import exchange_figure  # noqa: E402

REPOSITORY_ROOT = Path(__file__).resolve().parent
DEFAULT_NER_MODEL = REPOSITORY_ROOT / "outputs" / "muse-twitter2017-sample"
DEFAULT_SENTIMENT_MODEL = REPOSITORY_ROOT / "outputs" / "muse-mvsa-single-sample"
DEFAULT_PORT = 7860
EXCHANGE_DPI = 100
# One colour per entity type of the Twitter datasets; other types get gradio's own colours.
ENTITY_COLORS = {"PER": "#f4a261", "LOC": "#2a9d8f", "ORG": "#8ab4f8", "MISC": "#e9c46a"}
NUM_TWITTER_EXAMPLES = 3
NUM_MVSA_EXAMPLES = 2
# What a visitor may send: posts of at most this many characters (a tweet has at most 280; the models read their
# first max_text_length sub-word tokens), uploads of at most MAX_UPLOAD_SIZE, pictures of at most PIL's
# decompression-bomb limit and the pipelines' max_decoded_bytes; uploads are deleted an hour after they arrive.
MAX_TEXT_CHARACTERS = 2000
MAX_UPLOAD_SIZE = "10mb"
UPLOAD_LIFETIME_SECONDS = 3600
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
NOT_AN_UPLOAD = (
    "image: only an image uploaded through the page or the API (gradio_client's handle_file) is accepted; upload, "
    "paste or capture one."
)


class InputError(ValueError):
    """A post the demo cannot analyse; the message says what to change."""


@functools.cache
def _example_files() -> frozenset[str]:
    return frozenset(os.path.realpath(image) for _, image in sample_examples())


@dataclass
class Models:
    """The loaded pipelines, and for each task without one, a note saying how to get it."""

    ner: Pipeline | None = None
    sentiment: Pipeline | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    """One post through the loaded pipelines."""

    image: Image.Image
    entities: list[dict[str, Any]] | None = None
    ner_exchange: dict[str, Any] | None = None
    sentiment: list[dict[str, Any]] | None = None
    sentiment_exchange: dict[str, Any] | None = None


def _shown_path(model: str | Path) -> str:
    """A model folder as the page shows it: relative to the repository when inside it (the quick starts' outputs)."""
    path = Path(model)
    if path.is_absolute() and path.is_relative_to(REPOSITORY_ROOT):
        return str(path.relative_to(REPOSITORY_ROOT))
    return str(model)


def _missing_model_note(task: str, folder: Path, command: str, flag: str) -> str:
    return (
        f"No {task} model: `{_shown_path(folder)}` does not exist yet. `{command}` makes it (a few "
        f"minutes on a CPU), or start the demo with `python app.py {flag} FOLDER_OR_HUB_ID`."
    )


def _load_pipeline(task: str, model: str, expected_architecture: str, device: str) -> Pipeline:
    """Load a MuSE pipeline; errors (a missing folder, a checkpoint of the other task) raise `ValueError`."""
    try:
        loaded = pipeline(task, model=model, device=device)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"could not load {model!r} for {task}: {error}") from error
    architectures = loaded.model.config.architectures or []
    if expected_architecture not in architectures:
        raise ValueError(
            f"{model!r} holds a {', '.join(architectures) or 'model of unknown architecture'}, not a "
            f"{expected_architecture}; pass NER checkpoints (run_mner.py) as --ner_model and sentiment checkpoints "
            f"(run_msa.py) as --sentiment_model."
        )
    return loaded


def load_models(
    ner_model: str | None,
    sentiment_model: str | None,
    device: str = "cpu",
    default_ner_model: Path = DEFAULT_NER_MODEL,
    default_sentiment_model: Path = DEFAULT_SENTIMENT_MODEL,
) -> Models:
    """Load the pipelines for the demo.

    A model given explicitly must load (`ValueError` otherwise: the command line names the argument). A model
    left out is the quick start's folder if it exists; if it does not, or does not load, the task gets a note.
    """
    models = Models()
    tasks = [
        ("ner", "multimodal-ner", "MuSEForTokenClassification", ner_model, default_ner_model,
         "accelerate launch run_mner.py", "--ner_model"),
        ("sentiment", "multimodal-sentiment", "MuSEForSequenceClassification", sentiment_model,
         default_sentiment_model, "accelerate launch run_msa.py", "--sentiment_model"),
    ]
    for attribute, task, architecture, given, default, command, flag in tasks:
        name = "NER" if attribute == "ner" else "sentiment"
        if given is not None:
            try:
                setattr(models, attribute, _load_pipeline(task, given, architecture, device))
            except ValueError as error:
                raise ValueError(f"{flag}: {error}") from error
        elif not default.is_dir():
            models.notes.append(_missing_model_note(name, default, command, flag))
        else:
            try:
                setattr(models, attribute, _load_pipeline(task, str(default), architecture, device))
            except ValueError as error:
                models.notes.append(f"No {name} model: {error} `{command}` makes it afresh.")
    return models


def _received_file(image: Any) -> str:
    """The server's copy of an image that arrived through gradio's upload (the page or the API), or a bundled
    example; anything else (a bare string, a path or URL of the visitor's choosing) is refused alike, naming nothing.

    With ``preprocess=False`` gradio hands the payload over as sent, so a dict naming any server file would
    otherwise be read: only files inside gradio's upload folder (``GRADIO_TEMP_DIR``) or the examples are accepted.
    """
    path = image.get("path") if isinstance(image, dict) else getattr(image, "path", None)
    if isinstance(image, (dict, FileData)) and isinstance(path, str) and path and "\x00" not in path:
        real = os.path.realpath(path)
        uploads = os.path.realpath(gradio_utils.get_upload_folder())
        if real in _example_files() or (real != uploads and os.path.commonpath([real, uploads]) == uploads):
            return real
    raise InputError(NOT_AN_UPLOAD)


def _read_image(image: Any) -> Image.Image:
    """The post's picture; errors say what to do without naming a server file or the reason's details of where."""
    file = _received_file(image)
    try:
        return load_post_image(file)
    except FileNotFoundError as error:
        raise InputError("image: the upload is no longer on the server; upload the image again.") from error
    except UnreadableImageError as error:
        raise InputError(
            f"image: the uploaded file is not a readable image ({error.reason}); upload a JPEG, PNG, GIF or WebP "
            f"picture of at most {MAX_IMAGE_PIXELS} pixels and {DEFAULT_MAX_DECODED_BYTES // 2**20} MiB decoded."
        ) from error
    except (ValueError, TypeError, OSError) as error:
        raise InputError("image: the uploaded file is not a readable image; upload another picture.") from error


def analyse_post(models: Models, text: str | None, image: Any, aggregation_strategy: str = "simple") -> Analysis:
    """Run every loaded pipeline on one post, with the exchange. Bad input raises `InputError`.

    ``image`` must be an upload that gradio received (or a bundled example), see `_received_file`.
    """
    if models.ner is None and models.sentiment is None:
        raise InputError("No model is loaded. " + " ".join(models.notes))
    if not isinstance(text, str) or not text.strip():
        raise InputError("text: the post is empty; type or paste the post's text.")
    if len(text) > MAX_TEXT_CHARACTERS:
        raise InputError(
            f"text: the post has {len(text)} characters; the demo takes at most {MAX_TEXT_CHARACTERS} (the models "
            f"read its first sub-word tokens only). Shorten it."
        )
    if image is None:
        raise InputError(
            "image: the post has no image; MuSE fuses the text with an image. Upload, paste or capture one."
        )
    picture = _read_image(image)
    analysis = Analysis(image=picture)
    post = {"text": text, "image": picture}
    try:
        if models.ner is not None:
            result = models.ner(post, aggregation_strategy=aggregation_strategy, return_exchange=True)
            analysis.entities, analysis.ner_exchange = result["entities"], result["exchange"]
        if models.sentiment is not None:
            result = models.sentiment(post, top_k=None, return_exchange=True)
            analysis.sentiment, analysis.sentiment_exchange = result["prediction"], result["exchange"]
    # The pipelines raise these for posts they cannot read, with a message naming the field and the fix.
    except (ValueError, TypeError) as error:
        raise InputError(str(error)) from error
    return analysis


def highlighted_entities(text: str, entities: Sequence[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """``(piece, label)`` pairs covering ``text`` for `gr.HighlightedText`; entity labels read "TYPE score"."""
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for entity in sorted(entities, key=lambda item: item["start"]):
        if entity["start"] > position:
            pieces.append((text[position : entity["start"]], None))
        entity_type = entity.get("entity_group", entity.get("entity"))
        pieces.append((text[entity["start"] : entity["end"]], f"{entity_type} {entity['score']:.2f}"))
        position = entity["end"]
    if position < len(text):
        pieces.append((text[position:], None))
    return pieces


def _entity_color(label: str) -> str | None:
    entity_type = label.rsplit(" ", 1)[0]
    return ENTITY_COLORS.get(entity_type.split("-", 1)[-1])


def _exchange_picture(image: Image.Image, exchange: dict[str, Any]) -> Image.Image:
    figure = exchange_figure(image, exchange["tokens"], exchange, dpi=EXCHANGE_DPI)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=EXCHANGE_DPI)
    buffer.seek(0)
    return Image.open(buffer)


def sample_examples() -> list[list[str]]:
    """Examples from the bundled samples: Twitter-2017 test posts with entities, and MVSA posts with their images.

    The Twitter sample ships without its images, so its posts are paired with MVSA sample images.
    """
    mvsa_folder = SAMPLE_DIR / "mvsa_single" / "data"
    mvsa_ids = sorted(int(path.stem) for path in mvsa_folder.glob("*.jpg"))
    twitter_posts = [
        post for post in read_umt_file(SAMPLE_DIR / "twitter2017" / "test.txt")
        if sum(tag.startswith("B-") for tag in post.tags) >= 2 and len(post.tokens) <= 25
    ]
    examples = [
        [" ".join(post.tokens), str(mvsa_folder / f"{image_id}.jpg")]
        for post, image_id in zip(twitter_posts[:NUM_TWITTER_EXAMPLES], mvsa_ids)
    ]
    for image_id in mvsa_ids[NUM_TWITTER_EXAMPLES : NUM_TWITTER_EXAMPLES + NUM_MVSA_EXAMPLES]:
        examples.append([read_mvsa_text(mvsa_folder / f"{image_id}.txt"), str(mvsa_folder / f"{image_id}.jpg")])
    return examples


def _model_summary(models: Models) -> str:
    lines = []
    for name, loaded in (("NER", models.ner), ("sentiment", models.sentiment)):
        if loaded is not None:
            config = loaded.model.config
            lines.append(
                f"- {name}: `{_shown_path(loaded.model.name_or_path)}` (exchange in CrossTransformer layers "
                f"{config.exchange_start_layer}-{config.exchange_end_layer}, {config.image_grid_size}x"
                f"{config.image_grid_size} image patches)"
            )
    lines.extend(f"- {note}" for note in models.notes)
    return "\n".join(lines)


def build_demo(models: Models) -> gr.Blocks:
    """The page and the ``/ner`` and ``/sentiment`` API endpoints for the given models."""

    def analyse(text: str | None, image: Any, aggregation_strategy: str) -> tuple[Any, ...]:
        try:
            analysis = analyse_post(models, text, image, aggregation_strategy)
        except InputError as error:
            message = f"**Cannot analyse this post.** {html.escape(str(error))}"
            return message, None, None, None, None, None
        entities = None
        if analysis.entities is not None:
            pieces = highlighted_entities(text, analysis.entities)
            colors = {label: color for _, label in pieces if label and (color := _entity_color(label))}
            entities = gr.HighlightedText(value=pieces, color_map=colors)
        found = "no entity" if not analysis.entities else f"{len(analysis.entities)} entities"
        status = f"Done: {found}." if analysis.entities is not None else "Done."
        return (
            status,
            entities,
            None if analysis.sentiment is None
            else {entry["label"]: entry["score"] for entry in analysis.sentiment},
            None if analysis.ner_exchange is None else _exchange_picture(analysis.image, analysis.ner_exchange),
            None if analysis.sentiment_exchange is None
            else _exchange_picture(analysis.image, analysis.sentiment_exchange),
            {"entities": analysis.entities, "sentiment": analysis.sentiment},
        )

    def analyse_with(task: str, title: str, text: str, image: FileData) -> Analysis:
        """One task's pipeline on a post, bad input and a missing model as `gr.Error` (the API's error reply)."""
        model = getattr(models, task)
        if model is None:
            raise gr.Error(f"No {title} model is loaded. " + " ".join(models.notes), print_exception=False)
        try:
            return analyse_post(Models(**{task: model}), text, image)
        except InputError as error:
            raise gr.Error(str(error), print_exception=False) from error

    def ner(text: str, image: FileData) -> list[dict]:
        """The entities of a post (text, image file), as pipeline("multimodal-ner") returns them."""
        return analyse_with("ner", "NER", text, image).entities

    def sentiment(text: str, image: FileData) -> list[dict]:
        """Every sentiment label of a post (text, image file) with its probability, best first."""
        return analyse_with("sentiment", "sentiment", text, image).sentiment

    with gr.Blocks(
        title="MuSE demo", analytics_enabled=False, delete_cache=(UPLOAD_LIFETIME_SECONDS, UPLOAD_LIFETIME_SECONDS)
    ) as demo:
        gr.Markdown(
            "# MuSE: multimodal NER and sentiment with an exchanging CrossTransformer\n"
            "Type a post, give it an image, and see the entities, the sentiment, and which text tokens and image "
            "patches the CrossTransformer exchanged (moved towards the other modality's mean token) in each "
            "exchange layer.\n\n" + _model_summary(models)
        )
        with gr.Row():
            with gr.Column(scale=2):
                text_input = gr.Textbox(label="Post", lines=3, placeholder="Kawhi Leonard wins the fan vote",
                                        elem_id="post-text", max_length=MAX_TEXT_CHARACTERS)
                strategy_input = gr.Radio(
                    [member.value for member in WordAggregation], value=WordAggregation.SIMPLE.value,
                    label="Aggregation strategy",
                    info="simple: BIO runs of one type; first: a run takes its first word's type; none: every word",
                    visible=models.ner is not None,
                )
                analyse_button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            image_input = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard", "webcam"],
                                   height=260, scale=1, elem_id="post-image")
        gr.Examples(sample_examples(), inputs=[text_input, image_input], elem_id="examples",
                    label="Examples: Twitter-2017 sample posts (paired with MVSA sample images) and MVSA sample posts")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            entities_output = gr.HighlightedText(label="Entities (type and CRF confidence)", elem_id="entities",
                                                 visible=models.ner is not None, show_legend=False, scale=2)
            sentiment_output = gr.Label(label="Sentiment", elem_id="sentiment", visible=models.sentiment is not None,
                                        scale=1)
        exchange_outputs = []
        for name, loaded, elem_id in (("NER", models.ner, "ner-exchange"),
                                      ("sentiment", models.sentiment, "sentiment-exchange")):
            # The picture's legend sits in its top-left corner, where gradio would put the label: a heading instead.
            with gr.Column(visible=loaded is not None):
                gr.Markdown(f"### What the CrossTransformer of the {name} model exchanged")
                exchange_outputs.append(gr.Image(show_label=False, format="png", type="pil", elem_id=elem_id,
                                                 interactive=False, buttons=["download", "fullscreen"]))
        with gr.Accordion("Pipeline output", open=False):
            raw_output = gr.JSON(elem_id="raw-output", show_label=False)

        # preprocess=False: the image arrives as gradio's file payload and is read by the pipelines' own loader,
        # whose errors say what is wrong with the file (gradio's preprocessing would fail with a traceback); which
        # payloads name a file the demo may read is decided by _received_file.
        gr.on(
            [analyse_button.click, text_input.submit],
            analyse,
            inputs=[text_input, image_input, strategy_input],
            outputs=[status, entities_output, sentiment_output, *exchange_outputs, raw_output],
            preprocess=False,
            api_visibility="private",
        )
        gr.api(ner, api_name="ner")
        gr.api(sentiment, api_name="sentiment")
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ner_model", help=f"MuSE NER checkpoint folder or Hub id (default: {DEFAULT_NER_MODEL})")
    parser.add_argument(
        "--sentiment_model", help=f"MuSE sentiment checkpoint folder or Hub id (default: {DEFAULT_SENTIMENT_MODEL})"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default: {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--device", default="cpu", help="torch device for the models (default: cpu)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        models = load_models(args.ner_model, args.sentiment_model, args.device)
    except ValueError as error:
        sys.exit(f"app.py: {error}")
    for note in models.notes:
        print(note)
    # share=False and ssr_mode=False: no tunnel to gradio's share servers, no Node server. show_error=False: a visitor
    # sees the demo's own messages (gr.Error) only, never gradio's internal errors, which can name server paths.
    build_demo(models).launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False,
                              show_error=False, max_file_size=MAX_UPLOAD_SIZE)


if __name__ == "__main__":
    main()
