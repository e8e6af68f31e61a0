"""Inference Endpoints handler for a saved MuSE model: `save_pretrained` copies this file into every checkpoint as
``handler.py``, beside a ``requirements.txt``.

Hugging Face Inference Endpoints (custom handler) build ``EndpointHandler(path)`` once with the model folder and call
it per request with the request's JSON body:

```json
{"inputs": {"text": "Messi arrives in Paris", "image": "<base64 of the image file>"},
 "parameters": {"aggregation_strategy": "simple"}}
```

``inputs`` is one post or a list of posts. A post's ``image`` is the base64 of an image file (a ``data:image/...;base64,``
prefix is allowed) or an ``http(s)://`` URL, which the pipeline fetches within its time and size limits; a request
can never name a file on the server. ``parameters`` are the pipeline's call arguments (``aggregation_strategy``,
``top_k``, ``allow_missing_image``, ``return_exchange``; ``timeout`` and ``max_image_bytes`` only at or below the
handler's own limits). The response is what the pipeline returns: the entities (``multimodal-ner``) or the labels
with scores (``multimodal-sentiment``) of each post.

The handler loads the model with the code saved beside it (``trust_remote_code=True``), so the endpoint needs only the
packages of ``requirements.txt``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from transformers import AutoConfig, pipeline

# The pipeline's defaults: a request may ask for less, never for more.
MAX_IMAGE_BYTES = 20 * 2**20
TIMEOUT = 10.0
TASKS = {"MuSEForTokenClassification": "multimodal-ner", "MuSEForSequenceClassification": "multimodal-sentiment"}
PARAMETERS = {
    "multimodal-ner": {"aggregation_strategy", "allow_missing_image", "return_exchange", "timeout", "max_image_bytes"},
    "multimodal-sentiment": {"top_k", "allow_missing_image", "return_exchange", "timeout", "max_image_bytes"},
}
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_HTTP_URL = re.compile(r"^https?://", re.IGNORECASE)


class EndpointHandler:
    """Serve the MuSE model in ``path`` through its pipeline, reading images as base64 or http(s) URLs."""

    def __init__(self, path: str = "") -> None:
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        architectures = [name for name in config.architectures or [] if name in TASKS]
        if not architectures:
            raise ValueError(
                f"{path!r}: config.json names the architectures {config.architectures}, none of which a MuSE pipeline "
                f"serves ({sorted(TASKS)}); save a MuSEForTokenClassification or MuSEForSequenceClassification."
            )
        self.task = TASKS[architectures[0]]
        self.pipeline = pipeline(self.task, model=path, trust_remote_code=True)

    def __call__(self, data: dict[str, Any]) -> Any:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('The request body must be a JSON object {"inputs": post or [posts], "parameters": {...}}.')
        parameters = self._parameters(data.get("parameters") or {})
        inputs = data["inputs"]
        if isinstance(inputs, list):
            posts = [self._post(post, f"inputs[{position}]") for position, post in enumerate(inputs)]
        else:
            posts = self._post(inputs, "inputs")
        return self.pipeline(posts, **parameters)

    def _parameters(self, parameters: Any) -> dict[str, Any]:
        if not isinstance(parameters, dict):
            raise ValueError(f"parameters: expected a JSON object, got {type(parameters).__name__}.")
        unknown = sorted(set(parameters) - PARAMETERS[self.task])
        if unknown:
            raise ValueError(f"parameters: {unknown} are not taken by {self.task}; it takes {sorted(PARAMETERS[self.task])}.")
        parameters = dict(parameters)
        for name, limit in (("timeout", TIMEOUT), ("max_image_bytes", MAX_IMAGE_BYTES)):
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
