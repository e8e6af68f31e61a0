"""Inference Endpoints handler for a saved MuSE model: `save_pretrained` copies this file into every checkpoint as
``handler.py``, beside a ``requirements.txt``.

Hugging Face Inference Endpoints (custom handler) build ``EndpointHandler(path)`` once with the model folder and call
it per request with the request's JSON body:

```json
{"inputs": {"text": "Messi arrives in Paris", "image": "<base64 of the image file>"},
 "parameters": {"aggregation_strategy": "simple"}}
```

``inputs`` is one post or a list of at most ``max_posts`` posts. A post's ``image`` is the base64 of an image file (a
``data:image/...;base64,`` prefix is allowed) or an ``http(s)://`` URL, which the pipeline fetches within its size
limit from public addresses only; a request can never name a file on the server. All the URL images of one request
share one deadline of ``request_timeout`` seconds, whatever their number, and nothing a request starts outlives it.
``parameters`` are the pipeline's call arguments (``aggregation_strategy``, ``top_k``, ``allow_missing_image``,
``return_exchange``, ``return_image_effect``; ``timeout``, the request's deadline for its downloads, and
``max_image_bytes`` only at or below the handler's own limits). The response is what the pipeline returns: the
entities (``multimodal-ner``) or the labels with scores (``multimodal-sentiment``) of each post.

The endpoint's owner sets the limits by environment variables (Inference Endpoints build ``EndpointHandler(path)``
only) or by the handler's keyword arguments, which take precedence:

- ``MUSE_MAX_POSTS_PER_REQUEST`` / ``max_posts``: the most posts a request may hold (default 64);
- ``MUSE_REQUEST_TIMEOUT`` / ``request_timeout``: seconds all the URL images of a request may take together
  (default 10);
- ``MUSE_ALLOW_PRIVATE_URLS=1`` / ``allow_private_urls=True``: also fetch image URLs of private, loopback and
  link-local addresses (default off). Only for an endpoint whose callers are trusted: it lets them reach the
  endpoint's own network, a cloud's metadata service (169.254.169.254) included.

The handler loads the model with the code saved beside it (``trust_remote_code=True``), so the endpoint needs only the
packages of ``requirements.txt``. When the folder also holds an ONNX export (``model.onnx``, written there by
``python -m modeling_muse.export_onnx --model <folder> --output <folder>``, which adds onnx and onnxruntime to
``requirements.txt``), the handler runs the pipeline on ONNX Runtime instead (`ORTMuSEModel`): the same answers
(within floating-point rounding), without ``return_exchange``.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoProcessor, pipeline
from transformers.dynamic_module_utils import get_class_from_dynamic_module

# The limits' defaults (see the module docs); a request may ask for less time or fewer bytes, never for more.
MAX_IMAGE_BYTES = 20 * 2**20
TIMEOUT = 10.0
MAX_POSTS = 64
MAX_POSTS_VARIABLE = "MUSE_MAX_POSTS_PER_REQUEST"
TIMEOUT_VARIABLE = "MUSE_REQUEST_TIMEOUT"
ALLOW_PRIVATE_URLS_VARIABLE = "MUSE_ALLOW_PRIVATE_URLS"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
TASKS = {"MuSEForTokenClassification": "multimodal-ner", "MuSEForSequenceClassification": "multimodal-sentiment"}
PIPELINE_CLASSES = {"multimodal-ner": "MultimodalNERPipeline", "multimodal-sentiment": "MultimodalSentimentPipeline"}
_SHARED_PARAMETERS = {"allow_missing_image", "return_exchange", "return_image_effect", "timeout", "max_image_bytes"}
PARAMETERS = {
    "multimodal-ner": {"aggregation_strategy", *_SHARED_PARAMETERS},
    "multimodal-sentiment": {"top_k", *_SHARED_PARAMETERS},
}
# An ONNX export in the model folder, and the module saved beside the model code that runs it.
ONNX_MODEL_FILE = "model.onnx"
ONNX_MODULE = "onnx_runtime"
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_HTTP_URL = re.compile(r"^https?://", re.IGNORECASE)


def _setting(name: str, given: Any, variable: str, default: Any) -> tuple[Any, str]:
    """A limit of the handler and where it came from: ``given`` if not None, else the environment variable
    ``variable`` as text, else ``default``."""
    if given is not None:
        return given, f"{name}={given!r}"
    text = os.environ.get(variable)
    if text is None:
        return default, f"{name}={default!r}"
    return text.strip(), f"{variable}={text!r}"


def _count_setting(name: str, given: int | None, variable: str, default: int) -> int:
    value, source = _setting(name, given, variable, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: expected a positive whole number.")
    return value


def _seconds_setting(name: str, given: float | None, variable: str, default: float) -> float:
    value, source = _setting(name, given, variable, default)
    try:
        seconds = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{source}: expected a positive number of seconds.")
    return seconds


def _flag_setting(name: str, given: bool | None, variable: str) -> bool:
    value, source = _setting(name, given, variable, False)
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        value = value.lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError(f"{source}: expected True or False (1 or 0 in the environment variable).")
    return value


class EndpointHandler:
    """Serve the MuSE model in ``path`` through its pipeline, reading images as base64 or http(s) URLs.

    Args:
        path: the model folder.
        max_posts: the most posts a request may hold (default: ``MUSE_MAX_POSTS_PER_REQUEST``, else 64).
        request_timeout: seconds all the URL images of a request may take together (default: ``MUSE_REQUEST_TIMEOUT``,
            else 10).
        allow_private_urls: also fetch image URLs of private, loopback and link-local addresses (default:
            ``MUSE_ALLOW_PRIVATE_URLS``, else False); see the module docs.
    """

    def __init__(
        self,
        path: str = "",
        *,
        max_posts: int | None = None,
        request_timeout: float | None = None,
        allow_private_urls: bool | None = None,
    ) -> None:
        self.max_posts = _count_setting("max_posts", max_posts, MAX_POSTS_VARIABLE, MAX_POSTS)
        self.request_timeout = _seconds_setting("request_timeout", request_timeout, TIMEOUT_VARIABLE, TIMEOUT)
        self.allow_private_urls = _flag_setting("allow_private_urls", allow_private_urls, ALLOW_PRIVATE_URLS_VARIABLE)
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        architectures = [name for name in config.architectures or [] if name in TASKS]
        if not architectures:
            raise ValueError(
                f"{path!r}: config.json names the architectures {config.architectures}, none of which a MuSE pipeline "
                f"serves ({sorted(TASKS)}); save a MuSEForTokenClassification or MuSEForSequenceClassification."
            )
        self.task = TASKS[architectures[0]]
        self.runtime = "onnxruntime" if (Path(path) / ONNX_MODEL_FILE).is_file() else "pytorch"
        if self.runtime == "pytorch":
            self.pipeline = pipeline(self.task, model=path, trust_remote_code=True)
            return
        if not (Path(path) / f"{ONNX_MODULE}.py").is_file():
            raise FileNotFoundError(
                f"{path!r}: the folder holds {ONNX_MODEL_FILE} but not {ONNX_MODULE}.py, which serves it; save the "
                f"model again with this version of MuSE (model.save_pretrained) and export into the folder again."
            )
        # The classes of the code saved beside the model, as trust_remote_code loads them.
        model_class = get_class_from_dynamic_module(f"{ONNX_MODULE}.ORTMuSEModel", path)
        pipeline_class = get_class_from_dynamic_module(f"pipelines.{PIPELINE_CLASSES[self.task]}", path)
        self.pipeline = pipeline_class(
            model=model_class.from_pretrained(path),
            processor=AutoProcessor.from_pretrained(path, trust_remote_code=True),
            task=self.task,
        )

    def __call__(self, data: dict[str, Any]) -> Any:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('The request body must be a JSON object {"inputs": post or [posts], "parameters": {...}}.')
        parameters = self._parameters(data.get("parameters") or {})
        inputs = data["inputs"]
        if isinstance(inputs, list):
            if len(inputs) > self.max_posts:
                raise ValueError(
                    f"inputs: {len(inputs)} posts, more than this endpoint's limit of {self.max_posts} per request; "
                    f"send them in several requests."
                )
            posts = [self._post(post, f"inputs[{position}]") for position, post in enumerate(inputs)]
        else:
            posts = self._post(inputs, "inputs")
        # One deadline for all the downloads of the request, however many posts name a URL; one download may use all
        # of it.
        deadline = parameters.setdefault("timeout", self.request_timeout)
        return self.pipeline(posts, **parameters, total_timeout=deadline, allow_private_urls=self.allow_private_urls)

    def _parameters(self, parameters: Any) -> dict[str, Any]:
        if not isinstance(parameters, dict):
            raise ValueError(f"parameters: expected a JSON object, got {type(parameters).__name__}.")
        unknown = sorted(set(parameters) - PARAMETERS[self.task])
        if unknown:
            raise ValueError(f"parameters: {unknown} are not taken by {self.task}; it takes {sorted(PARAMETERS[self.task])}.")
        parameters = dict(parameters)
        for name, limit in (("timeout", self.request_timeout), ("max_image_bytes", MAX_IMAGE_BYTES)):
            value = parameters.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
                raise ValueError(f"parameters: {name}={value} is above this endpoint's limit of {limit}.")
        return parameters

    @staticmethod
    def _post(post: Any, argument: str) -> dict[str, Any]:
        if not isinstance(post, dict):
            raise ValueError(f'{argument}: expected a post {{"text": ..., "image": ...}}, got {type(post).__name__}.')
        image = post.get("image")
        if image is None or (isinstance(image, str) and _HTTP_URL.match(image)):
            return post
        if not isinstance(image, str):
            raise ValueError(
                f"{argument}: image must be the base64 of an image file or an http(s):// URL, got {type(image).__name__}."
            )
        encoded = _DATA_URL.sub("", image, count=1)
        if len(encoded) > 4 * (MAX_IMAGE_BYTES // 3 + 1):
            raise ValueError(f"{argument}: the image is larger than this endpoint's limit of {MAX_IMAGE_BYTES} bytes.")
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"{argument}: image is neither an http(s):// URL nor valid base64 ({image[:40]!r}...); send the image "
                f"file's bytes base64-encoded. Paths on the server are not accepted."
            ) from None
        return {**post, "image": decoded}
