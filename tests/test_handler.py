"""Saved checkpoints carry an Inference Endpoints handler (`modeling_muse/handler.py`) and a requirements.txt.

The handler is loaded the way Inference Endpoints load a custom handler: ``handler.py`` is imported from the model
folder by its path, ``EndpointHandler(path)`` is built once and called with each request's JSON body.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from isolated_handler import handler_output_without_project
from local_server import serving, serving_files
from PIL import Image
from tiny_models import save_tiny_checkpoints
from transformers import pipeline

from modeling_muse.serving import SERVING_REQUIREMENTS

TEXT = "Lionel Messi arrives in Paris with Neymar"
REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("served"))


def load_handler(folder: Path, **settings):
    """As Inference Endpoints do: import handler.py from the model folder by path and build the handler."""
    spec = importlib.util.spec_from_file_location(f"handler_{folder.name}", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(folder), **settings)


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def photo_server(folders):
    with serving(serving_files(str(folders["photo"].parent))) as url:
        yield url


def test_saved_folders_carry_the_handler_and_the_requirements(folders):
    for task in ("ner", "sentiment"):
        assert (folders[task] / "handler.py").read_text() == (REPOSITORY / "modeling_muse/handler.py").read_text()
        assert (folders[task] / "requirements.txt").read_text().split() == list(SERVING_REQUIREMENTS)
        # The pipelines' code travels too, though the model code does not import it.
        for module in ("pipelines.py", "pipeline_inputs.py", "entities.py", "image_input.py", "reporting.py"):
            assert (folders[task] / module).is_file(), module


def test_requirements_name_the_declared_versions():
    declared = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in SERVING_REQUIREMENTS:
        assert requirement in declared, f"{requirement} is not what pyproject.toml declares"


def test_the_ner_handler_answers_like_the_pipeline(folders, photo_server):
    # The photos are served on the loopback address, which the handler fetches only when its owner allows it.
    handler = load_handler(folders["ner"], allow_private_urls=True)
    ner = pipeline("multimodal-ner", model=str(folders["ner"]))
    expected = ner({"text": TEXT, "image": Image.open(folders["photo"])})
    assert expected, "the fixture model should tag some words"
    assert handler({"inputs": {"text": TEXT, "image": encoded(folders["photo"])}}) == expected
    data_url = "data:image/png;base64," + encoded(folders["photo"])
    url = f"{photo_server}/photo.png"
    answers = handler({"inputs": [{"text": TEXT, "image": data_url}, {"text": TEXT, "image": url}]})
    assert answers == [expected, expected]
    words = handler({"inputs": {"text": TEXT, "image": url}, "parameters": {"aggregation_strategy": "none"}})
    assert words == ner({"text": TEXT, "image": url}, aggregation_strategy="none", allow_private_urls=True)


def test_the_sentiment_handler_answers_like_the_pipeline(folders):
    handler = load_handler(folders["sentiment"])
    sentiment = pipeline("multimodal-sentiment", model=str(folders["sentiment"]))
    post = {"text": TEXT, "image": Image.open(folders["photo"])}
    request = {"inputs": {"text": TEXT, "image": encoded(folders["photo"])}, "parameters": {"top_k": None}}
    assert handler(request) == sentiment(post, top_k=None)


def test_a_request_cannot_name_a_server_file_or_lift_the_limits(folders):
    handler = load_handler(folders["ner"])
    secret = folders["photo"]  # a real image file on the server: must not be read through a request
    with pytest.raises(ValueError, match=r"inputs: image is neither an http\(s\):// URL nor valid base64"):
        handler({"inputs": {"text": TEXT, "image": str(secret)}})
    with pytest.raises(ValueError, match="not a readable image"):
        handler({"inputs": {"text": TEXT, "image": "/etc/passwdx"}})  # valid base64, decoded as data, never opened
    # datasets' storage form, which the pipelines read as a local path, is not a request's image.
    with pytest.raises(ValueError, match=r"inputs: image must be the base64 of an image file .* got dict"):
        handler({"inputs": {"text": TEXT, "image": {"bytes": None, "path": str(secret)}}})
    with pytest.raises(ValueError, match=r"parameters: \['device'\] are not taken by multimodal-ner"):
        handler({"inputs": {"text": TEXT}, "parameters": {"device": "cuda"}})
    with pytest.raises(ValueError, match="timeout=600 is above this endpoint's limit"):
        handler({"inputs": {"text": TEXT}, "parameters": {"timeout": 600}})
    with pytest.raises(ValueError, match=r'The request body must be a JSON object \{"inputs"'):
        handler({"text": TEXT})
    with pytest.raises(ValueError, match=r"inputs\[1\]: expected a post"):
        handler({"inputs": [{"text": TEXT, "image": encoded(secret)}, "text only"]})
    with pytest.raises(ValueError, match="the post has no image"):
        handler({"inputs": {"text": TEXT}})
    assert handler({"inputs": {"text": TEXT}, "parameters": {"allow_missing_image": True}}) is not None


def test_the_handler_serves_where_the_project_is_not_installed(folders):
    request = f"""
image = base64.b64encode(open({str(folders['photo'])!r}, "rb").read()).decode()
print(json.dumps(handler({{"inputs": {{"text": {TEXT!r}, "image": image}}}})))
"""
    remote = json.loads(handler_output_without_project(folders["ner"], request))
    ner = pipeline("multimodal-ner", model=str(folders["ner"]))
    local = ner({"text": TEXT, "image": Image.open(io.BytesIO(folders["photo"].read_bytes()))})
    assert [entity["word"] for entity in remote] == [entity["word"] for entity in local]
    assert np.allclose([entity["score"] for entity in remote], [entity["score"] for entity in local], atol=1e-5)
