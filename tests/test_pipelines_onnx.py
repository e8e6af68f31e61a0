"""The pipelines and the endpoint handler on an ONNX Runtime session of an `export_onnx` folder (`ORTMuSEModel`):
the eager pipelines' answers, both tasks."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil

import datasets
import numpy as np
import pytest
from isolated_handler import handler_output_without_project
from PIL import Image
from tiny_models import save_tiny_checkpoints
from transformers import pipeline

from modeling_muse import (
    MultimodalNERPipeline,
    MultimodalSentimentPipeline,
    MuSEProcessor,
    ORTMuSEForSequenceClassification,
    ORTMuSEForTokenClassification,
    ORTMuSEModel,
)
from modeling_muse.export_onnx import export_onnx
from modeling_muse.serving import ONNX_SERVING_REQUIREMENTS, SERVING_REQUIREMENTS

pytestmark = pytest.mark.slow  # each module exports two models (about 20 s each on a CPU)

TEXTS = [
    "Lionel Messi arrives in Paris tonight",
    "rain",
    "the mayor of London meets fans of the new team at the stadium with friends and family today",  # cut at 16
    "Obama visits New York",
]
TOLERANCE = 1e-4


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30 + 7 * seed, 44, 3), dtype=np.uint8))


def posts() -> list[dict]:
    return [{"text": text, "image": picture(seed)} for seed, text in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The NER export written into (a copy of) its checkpoint folder, as the handler serves it; the sentiment export
    into a folder of its own, as export_onnx writes it by default."""
    root = tmp_path_factory.mktemp("onnx")
    checkpoints = save_tiny_checkpoints(root / "checkpoints")
    served = root / "ner-served"
    shutil.copytree(checkpoints["ner"], served)
    export_onnx(served, served)
    export_onnx(checkpoints["sentiment"], root / "sentiment-onnx")
    return {**checkpoints, "ner-served": served, "sentiment-onnx": root / "sentiment-onnx"}


def assert_close(onnx_results, eager_results) -> None:
    """The same answers; every score within TOLERANCE."""
    if isinstance(eager_results, float):
        assert onnx_results == pytest.approx(eager_results, abs=TOLERANCE)
    elif isinstance(eager_results, dict):
        assert set(onnx_results) == set(eager_results)
        for key, value in eager_results.items():
            if key == "score" or isinstance(value, (dict, list, float)):
                assert_close(onnx_results[key], value)
            else:
                assert onnx_results[key] == value, key
    elif isinstance(eager_results, list):
        assert len(onnx_results) == len(eager_results)
        for got, want in zip(onnx_results, eager_results):
            assert_close(got, want)
    else:
        assert onnx_results == eager_results


def test_the_ner_pipeline_on_onnx_runtime_gives_the_eager_entities(folders):
    model = ORTMuSEModel.from_pretrained(folders["ner-served"])
    assert isinstance(model, ORTMuSEForTokenClassification)
    onnx_ner = pipeline("multimodal-ner", model=model, processor=str(folders["ner-served"]))
    assert isinstance(onnx_ner, MultimodalNERPipeline) and onnx_ner.model is model
    eager = pipeline("multimodal-ner", model=str(folders["ner"]), device="cpu")
    for options in ({"aggregation_strategy": "none"}, {"aggregation_strategy": "simple", "return_image_effect": True}):
        expected = eager(posts(), **options)
        assert any(result for result in expected), "the fixture model should tag some words"
        for batch_size in (1, 3):
            assert_close(onnx_ner(posts(), batch_size=batch_size, **options), expected)
    # A dataset streams through the session as through the PyTorch model.
    dataset = datasets.Dataset.from_dict({"text": TEXTS, "image": [picture(seed) for seed in range(len(TEXTS))]})
    assert_close(list(onnx_ner(dataset, batch_size=2)), eager(posts()))


def test_the_sentiment_pipeline_on_onnx_runtime_gives_the_eager_labels(folders):
    model = ORTMuSEForSequenceClassification.from_pretrained(folders["sentiment-onnx"])
    processor = MuSEProcessor.from_pretrained(folders["sentiment-onnx"])
    onnx_sentiment = MultimodalSentimentPipeline(model=model, processor=processor)
    eager = pipeline("multimodal-sentiment", model=str(folders["sentiment"]), device="cpu")
    for options in ({}, {"top_k": None, "return_image_effect": True}):
        assert_close(onnx_sentiment(posts(), batch_size=3, **options), eager(posts(), **options))
    assert_close(onnx_sentiment(text=TEXTS[0], image=picture(0)), eager(posts()[0]))


def test_what_the_exported_graph_does_not_compute_is_refused(folders, tmp_path):
    model = ORTMuSEModel.from_pretrained(folders["sentiment-onnx"])
    sentiment = pipeline("multimodal-sentiment", model=model, processor=str(folders["sentiment-onnx"]))
    with pytest.raises(ValueError, match="return_exchange needs the PyTorch model"):
        sentiment(posts()[0], return_exchange=True)
    with pytest.raises(ValueError, match="torch_compile: compiles a PyTorch model, and this pipeline runs a ORTMuSE"):
        MultimodalSentimentPipeline(model=model, processor=sentiment.processor, torch_compile=True)
    with pytest.raises(ValueError, match="holds a MuSEForSequenceClassification, not a MuSEForTokenClassification"):
        ORTMuSEForTokenClassification.from_pretrained(folders["sentiment-onnx"])
    with pytest.raises(FileNotFoundError, match=r"model.onnx does not exist; write it with python -m modeling_muse"):
        ORTMuSEModel.from_pretrained(folders["ner"])
    # A model saved from the pipeline loads again.
    sentiment.save_pretrained(tmp_path / "saved")
    saved = tmp_path / "saved"
    again = pipeline("multimodal-sentiment", model=ORTMuSEModel.from_pretrained(saved), processor=str(saved))
    assert again(posts()[1], top_k=None) == sentiment(posts()[1], top_k=None)


def test_missing_onnxruntime_names_the_extra(folders, onnxruntime_missing):
    with pytest.raises(ImportError, match=r'needs onnx and onnxruntime.*pip install "muse-hf\[onnx\]"'):
        ORTMuSEModel.from_pretrained(folders["sentiment-onnx"])


def load_handler(folder):
    """As Inference Endpoints do: import handler.py from the model folder by its path and build the handler."""
    spec = importlib.util.spec_from_file_location(f"handler_{folder.name}", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(folder))


def test_the_handler_serves_the_onnx_export_in_its_folder(folders):
    served = folders["ner-served"]
    assert (served / "requirements.txt").read_text().split() == [*SERVING_REQUIREMENTS, *ONNX_SERVING_REQUIREMENTS]
    handler = load_handler(served)
    assert handler.runtime == "onnxruntime"
    assert type(handler.pipeline.model).__name__ == "ORTMuSEForTokenClassification"
    eager = pipeline("multimodal-ner", model=str(folders["ner"]), device="cpu")
    image = base64.b64encode(folders["photo"].read_bytes()).decode()
    post = {"text": TEXTS[0], "image": Image.open(folders["photo"])}
    answer = handler({"inputs": {"text": TEXTS[0], "image": image}, "parameters": {"return_image_effect": True}})
    assert_close(answer, eager(post, return_image_effect=True))
    # The folder without its export is served by PyTorch, as before.
    assert load_handler(folders["ner"]).runtime == "pytorch"


def test_the_onnx_handler_serves_where_the_project_is_not_installed(folders):
    served = folders["ner-served"]
    request = f"""
image = base64.b64encode(open({str(folders['photo'])!r}, "rb").read()).decode()
print(json.dumps([handler.runtime, handler({{"inputs": {{"text": {TEXTS[0]!r}, "image": image}}}})]))
"""
    runtime, answer = json.loads(handler_output_without_project(served, request))
    assert runtime == "onnxruntime"
    eager = pipeline("multimodal-ner", model=str(folders["ner"]), device="cpu")
    assert_close(answer, eager({"text": TEXTS[0], "image": Image.open(folders["photo"])}))
