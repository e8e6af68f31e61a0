"""A MuSE task model exported with `modeling_muse.export_onnx`, run by ONNX Runtime behind the model interface the
pipelines call, as optimum's ``ORTModelFor...`` classes wrap an ``InferenceSession`` with its configuration:

```python
>>> from transformers import pipeline
>>> from modeling_muse import ORTMuSEModel
>>> model = ORTMuSEModel.from_pretrained("path/to/onnx-folder")  # the folder export_onnx wrote
>>> ner = pipeline("multimodal-ner", model=model, processor="path/to/onnx-folder")
>>> ner({"text": "Messi arrives in Paris", "image": "photo.jpg"})
```

The pipelines need no other code path: calling the model returns the `ModelOutput` of the PyTorch model's evaluation
forward (``logits`` and, for NER, ``predicted_tag_ids``), and the NER scores come from the same CRF marginals
(`CRFTaggingHead.tag_confidences`), with the CRF's transition scores read from the exported graph. What the graph
does not compute is refused with a clear error: ``return_exchange`` (the CrossTransformer's masks and attentions),
training, labels, text-only calls (``pixel_values=None``) and ``torch_compile``.

Needs ``onnx`` and ``onnxruntime``: ``pip install "muse-hf[onnx]"``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configuration_muse import MuSEConfig
from .heads import CRFTaggingHead
from .outputs import MuSESequenceClassifierOutput, MuSETokenClassifierOutput

__all__ = ["ORTMuSEForSequenceClassification", "ORTMuSEForTokenClassification", "ORTMuSEModel"]

MODEL_FILE = "model.onnx"
INSTALL_HINT = 'pip install "muse-hf[onnx]"'
# Where export_onnx's graph keeps the CRF's parameters: the traced module holds the task model as "model".
_CRF_INITIALIZERS = ("start_transitions", "transitions", "end_transitions")
_CRF_PREFIX = "model.tagger.crf."


def _import_onnx_runtime() -> tuple[Any, Any]:
    """onnx and onnxruntime, or an ImportError that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"Running an exported MuSE model needs onnx and onnxruntime, which are not installed ({error}): "
            f"{INSTALL_HINT}"
        ) from error
    return onnx, onnxruntime


class ORTMuSEModel:
    """A MuSE task model on ONNX Runtime: the session on ``model.onnx`` and the model's `MuSEConfig`.

    Build it with `from_pretrained`, which picks `ORTMuSEForTokenClassification` or
    `ORTMuSEForSequenceClassification` by the architecture in the folder's ``config.json``. Inputs are the
    processor's tensors (torch tensors or numpy arrays); outputs are torch tensors on the CPU. Where the session runs
    is its ``providers``' choice (``["CPUExecutionProvider"]`` by default), so `to` leaves it as it is.
    """

    architecture = ""
    output_names: tuple[str, ...] = ()
    training = False
    main_input_name = "input_ids"

    def __init__(self, session: Any, config: MuSEConfig, folder: str | os.PathLike | None = None):
        self.session = session
        self.config = config
        self.folder = None if folder is None else Path(folder)
        self.name_or_path = "" if folder is None else str(folder)
        self.input_names = [node.name for node in session.get_inputs()]
        produced = [node.name for node in session.get_outputs()]
        if produced != list(self.output_names):
            raise ValueError(
                f"model: the ONNX graph outputs {produced}, not the {list(self.output_names)} that export_onnx writes "
                f"for a {self.architecture}; export the model with python -m modeling_muse.export_onnx."
            )

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        session_options: Any = None,
    ) -> ORTMuSEModel:
        """The model in ``folder`` (written by `export_onnx`: ``model.onnx`` and ``config.json``).

        Args:
            folder: the exported folder.
            providers: ONNX Runtime's execution providers, in order of preference (default: the CPU).
            session_options: an ``onnxruntime.SessionOptions`` (threads, graph optimisation level).
        """
        _, onnxruntime = _import_onnx_runtime()
        folder = Path(folder)
        path = folder / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"folder: {path} does not exist; write it with python -m modeling_muse.export_onnx --model "
                f"<checkpoint> --output {folder}."
            )
        config = MuSEConfig.from_pretrained(folder)
        architecture = (config.architectures or [None])[0]
        model_class = _ORT_CLASSES.get(architecture)
        if model_class is None:
            raise ValueError(
                f"folder: {folder}/config.json names the architecture {architecture}; an exported MuSE folder holds "
                f"one of {sorted(_ORT_CLASSES)}."
            )
        if cls is not ORTMuSEModel and model_class is not cls:
            raise ValueError(f"folder: {folder} holds a {architecture}, not a {cls.architecture}.")
        session = onnxruntime.InferenceSession(
            str(path), sess_options=session_options, providers=list(providers or ["CPUExecutionProvider"])
        )
        return model_class(session, config, folder)

    @property
    def device(self) -> torch.device:
        """Where the outputs are: the CPU (ONNX Runtime returns numpy arrays)."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the graph's floating-point inputs: export_onnx traces the model in float32."""
        return torch.float32

    def to(self, *args: Any, **kwargs: Any) -> ORTMuSEModel:
        """Kept as it is: the session's providers decide where it runs (see `from_pretrained`)."""
        return self

    def eval(self) -> ORTMuSEModel:
        return self

    def can_generate(self) -> bool:
        return False

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Copy ``model.onnx`` (with any external data files beside it) and write ``config.json``."""
        if self.folder is None:
            raise ValueError("save_pretrained: this model was built from a session, not a folder; copy its model.onnx.")
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        for file in self.folder.glob(f"{MODEL_FILE}*"):
            if file.resolve() != (target / file.name).resolve():
                shutil.copy(file, target / file.name)
        self.config.save_pretrained(target)

    def _run(self, inputs: dict[str, Any]) -> list[torch.Tensor]:
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None and name == "token_type_ids":
                value = torch.zeros_like(torch.as_tensor(inputs["input_ids"]))
            if value is None:
                raise ValueError(f"{type(self).__name__}: the ONNX graph reads {name!r}, which was not given.")
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                value = value.float() if value.is_floating_point() else value.long()
                value = value.numpy()
            feed[name] = np.asarray(value)
        outputs = self.session.run(list(self.output_names), feed)
        return [torch.from_numpy(np.ascontiguousarray(array)) for array in outputs]

    def _check_call(self, pixel_values: Any, labels: Any, extras: dict[str, Any]) -> None:
        if pixel_values is None:
            raise ValueError(
                f"{type(self).__name__}: pixel_values=None (the model's own placeholder picture) is not in the "
                f"exported graph; pass the processor's pixel values of the placeholder image instead."
            )
        if labels is not None:
            raise ValueError(
                f"{type(self).__name__}: the exported graph is the evaluation forward; it takes no labels."
            )
        asked = sorted(name for name, value in extras.items() if value)
        if asked:
            raise ValueError(
                f"{type(self).__name__}: {asked} are not computed by the exported graph (return_exchange needs the "
                f"PyTorch model); load the checkpoint with from_pretrained for them."
            )

    def __repr__(self) -> str:
        providers = self.session.get_providers()
        return f"{type(self).__name__}(folder={self.name_or_path!r}, providers={providers})"


class ORTMuSEForTokenClassification(ORTMuSEModel):
    """`MuSEForTokenClassification`'s evaluation forward on ONNX Runtime; `tagger` holds the exported CRF, for the
    pipeline's scores (`CRFTaggingHead.tag_confidences`)."""

    architecture = "MuSEForTokenClassification"
    output_names = ("emissions", "tags")

    def __init__(self, session: Any, config: MuSEConfig, folder: str | os.PathLike | None = None):
        super().__init__(session, config, folder)
        if folder is None:
            raise ValueError(f"{type(self).__name__}: build it with from_pretrained(folder), which reads its CRF.")
        self.tagger = CRFTaggingHead(config.hidden_size, config.num_labels, dropout=0.0).eval()
        self.tagger.crf.load_state_dict(_crf_parameters(Path(folder) / MODEL_FILE))

    def __call__(
        self,
        input_ids: Any,
        pixel_values: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        word_start_mask: Any = None,
        labels: Any = None,
        **extras: Any,
    ) -> MuSETokenClassifierOutput:
        """The emissions (``logits``) and Viterbi tags (``predicted_tag_ids``) of `MuSEForTokenClassification`."""
        self._check_call(pixel_values, labels, extras)
        if attention_mask is None:
            attention_mask = torch.ones_like(torch.as_tensor(input_ids))
        if word_start_mask is None:
            # As the PyTorch model does without word boundaries: every real token is tagged.
            word_start_mask = attention_mask
        emissions, tags = self._run(
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
             "word_start_mask": word_start_mask, "pixel_values": pixel_values}
        )
        return MuSETokenClassifierOutput(logits=emissions, predicted_tag_ids=tags)

    forward = __call__


class ORTMuSEForSequenceClassification(ORTMuSEModel):
    """`MuSEForSequenceClassification`'s evaluation forward on ONNX Runtime."""

    architecture = "MuSEForSequenceClassification"
    output_names = ("logits",)

    def __call__(
        self,
        input_ids: Any = None,
        pixel_values: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        word_start_mask: Any = None,
        labels: Any = None,
        **extras: Any,
    ) -> MuSESequenceClassifierOutput:
        """The ``logits`` of `MuSEForSequenceClassification`."""
        self._check_call(pixel_values, labels, extras)
        if attention_mask is None:
            attention_mask = torch.ones_like(torch.as_tensor(input_ids))
        (logits,) = self._run(
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
             "pixel_values": pixel_values}
        )
        return MuSESequenceClassifierOutput(logits=logits)

    forward = __call__


_ORT_CLASSES: dict[str, type[ORTMuSEModel]] = {
    model_class.architecture: model_class
    for model_class in (ORTMuSEForTokenClassification, ORTMuSEForSequenceClassification)
}


def _crf_parameters(path: Path) -> dict[str, torch.Tensor]:
    """The CRF's transition scores as export_onnx stored them in the graph."""
    onnx, _ = _import_onnx_runtime()
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    stored = {initializer.name: initializer for initializer in graph.initializer}
    missing = [name for name in _CRF_INITIALIZERS if _CRF_PREFIX + name not in stored]
    if missing:
        raise ValueError(
            f"model: {path} holds no CRF parameters {[_CRF_PREFIX + name for name in missing]}; export the model with "
            f"python -m modeling_muse.export_onnx, which keeps them."
        )
    return {
        name: torch.from_numpy(numpy_helper.to_array(stored[_CRF_PREFIX + name], base_dir=str(path.parent)).copy())
        for name in _CRF_INITIALIZERS
    }
