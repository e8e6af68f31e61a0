"""Export the evaluation forward of a saved MuSE task model to ONNX, for ONNX Runtime.

    python -m modeling_muse.export_onnx --model path/to/checkpoint --output path/to/onnx-folder

The checkpoint folder holds a `MuSEForTokenClassification` or `MuSEForSequenceClassification` and its
`MuSEProcessor` (``model.save_pretrained(folder)``, ``processor.save_pretrained(folder)``). The output folder gets
``model.onnx``, the processor's files and the model's ``config.json`` (for ``id2label``), so it is all a serving
process needs: the processor prepares the posts, ONNX Runtime runs the model.

The graph is the evaluation forward (`model.eval()`, no labels; docs/design.md, section 4):

- inputs: the processor's tensors ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes
  them), ``word_start_mask`` (NER only) and ``pixel_values``; every text tensor is ``(batch, length)``, int64, with
  ``length`` at most the model's ``max_text_length`` (the processor truncates to it);
- outputs for NER: ``emissions`` ``(batch, length, num_labels)``, the CRF's emission scores, and ``tags``
  ``(batch, length)``, the Viterbi path at each word's first sub-token and -100 elsewhere (the layout of the model's
  ``predicted_tag_ids``); for sentiment: ``logits`` ``(batch, num_labels)``;
- ``batch`` and ``length`` are dynamic axes; the image size is the processor's.

Decoding is in the graph: `viterbi_decode` runs over a static number of steps on tensors, so the exported program
has no Python in it. After writing, the export runs ONNX Runtime on two batches of posts of other sizes and lengths
than the traced one and checks its outputs against PyTorch's (tags equal, scores within 1e-4), unless asked not to.

Needs ``onnx``, ``onnxscript``, ``onnx-ir`` (the exporter's graph, whose axes are named here) and ``onnxruntime``:
``pip install "muse-hf[onnx]"``.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .configuration_muse import MuSEConfig
from .modeling import MuSEForSequenceClassification, MuSEForTokenClassification, MuSEPreTrainedModel
from .processing_muse import MuSEProcessor
from .serving import ONNX_SERVING_REQUIREMENTS

__all__ = ["EvaluationForward", "MODEL_FILE", "export_onnx", "main", "onnx_feed", "onnx_session"]

MODEL_FILE = "model.onnx"
INSTALL_HINT = 'pip install "muse-hf[onnx]"'
# Largest deviation of ONNX Runtime's scores from PyTorch's that the post-export check accepts.
TOLERANCE = 1e-4
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "word_start_mask")
_TASK_MODELS: dict[str, type[MuSEPreTrainedModel]] = {
    model_class.__name__: model_class for model_class in (MuSEForTokenClassification, MuSEForSequenceClassification)
}
# Words of the posts that the export traces and checks with (any words do: only their number matters).
_SAMPLE_WORDS = "the city team wins the final tonight with fans singing in the old stadium".split()


def _require_onnx() -> Any:
    """onnx, onnxscript (torch's exporter) and onnxruntime, or an ImportError that says how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter translates with it)
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime, which are not installed ({error}): "
            f"{INSTALL_HINT}"
        ) from error
    return onnx, onnxruntime


class EvaluationForward(nn.Module):
    """A MuSE task model's evaluation forward on the processor's tensors, returning tensors only (what is traced).

    Returns ``(emissions, tags)`` for `MuSEForTokenClassification` (its ``logits`` and ``predicted_tag_ids``) and
    ``(logits,)`` for `MuSEForSequenceClassification`.
    """

    def __init__(self, model: MuSEPreTrainedModel):
        super().__init__()
        if type(model).__name__ not in _TASK_MODELS:
            raise TypeError(
                f"model: ONNX export takes a MuSE task model ({', '.join(_TASK_MODELS)}), got {type(model).__name__}."
            )
        self.model = model.eval()
        self.is_tagger = type(model).__name__ == MuSEForTokenClassification.__name__

    @property
    def output_names(self) -> list[str]:
        return ["emissions", "tags"] if self.is_tagger else ["logits"]

    def input_names(self, encoded: Mapping[str, Any]) -> list[str]:
        """The processor outputs this model reads, in graph order."""
        names = [name for name in _TEXT_INPUTS if name in encoded]
        if not self.is_tagger:
            names = [name for name in names if name != "word_start_mask"]
        return [*names, "pixel_values"]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        word_start_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        inputs = {"word_start_mask": word_start_mask} if self.is_tagger else {}
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            return_dict=True,
            **inputs,
        )
        return (outputs.logits, outputs.predicted_tag_ids) if self.is_tagger else (outputs.logits,)


def _sample_posts(processor: MuSEProcessor, lengths: Sequence[int], seed: int) -> dict[str, torch.Tensor]:
    """Processor outputs of posts with ``lengths`` words and random images: the real input format."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in lengths]
    words = [[_SAMPLE_WORDS[i % len(_SAMPLE_WORDS)] for i in range(length)] for length in lengths]
    return dict(processor(images=images, text=words, return_tensors="pt", warn=False))


def _name_dynamic_axes(onnx_program: Any, input_names: Sequence[str]) -> None:
    """Call the traced symbols of the first text input's axes ``batch`` and ``length`` throughout the graph."""
    from onnx_ir import SymbolicDim

    first = next(value for value in onnx_program.model.graph.inputs if value.name == input_names[0])
    renames = {str(first.shape[0]): "batch"}
    if len(first.shape) > 1 and isinstance(first.shape[1], SymbolicDim):
        renames[str(first.shape[1])] = "length"
    graph = onnx_program.model.graph
    values = [*graph.inputs, *graph.outputs, *(output for node in graph.all_nodes() for output in node.outputs)]
    for value in values:
        if value.shape is None:
            continue
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, SymbolicDim) and str(dim) in renames:
                value.shape[axis] = renames[str(dim)]


def onnx_session(folder: str | os.PathLike, providers: Sequence[str] | None = None) -> Any:
    """An ONNX Runtime ``InferenceSession`` on ``folder/model.onnx`` (CPU unless ``providers`` says otherwise)."""
    _, onnxruntime = _require_onnx()
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"folder: {path} does not exist; write it with python -m modeling_muse.export_onnx.")
    return onnxruntime.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))


def onnx_feed(session: Any, encoded: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The session's inputs taken from processor outputs (tensors or arrays), as numpy arrays."""
    feed = {}
    for node in session.get_inputs():
        if node.name not in encoded:
            raise KeyError(f"encoded: the ONNX model reads {node.name!r}, which the processor outputs lack.")
        value = encoded[node.name]
        feed[node.name] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return feed


def _check_against_pytorch(
    session: Any, forward: EvaluationForward, processor: MuSEProcessor, max_words: int
) -> None:
    """ONNX Runtime against PyTorch on batches of other sizes and lengths than the traced one."""
    for seed, lengths in enumerate(([3, max_words, 1], [max(max_words // 2, 1)])):
        encoded = _sample_posts(processor, lengths, seed=seed + 1)
        with torch.no_grad():
            expected = forward(**{name: encoded[name] for name in forward.input_names(encoded)})
        produced = session.run(forward.output_names, onnx_feed(session, encoded))
        for name, want, got in zip(forward.output_names, expected, produced):
            want = want.numpy()
            if got.shape != want.shape:
                raise RuntimeError(
                    f"ONNX Runtime returned {name} of shape {got.shape} for a batch where PyTorch returns "
                    f"{want.shape}: the dynamic axes did not survive the export."
                )
            if name == "tags" and not np.array_equal(got, want):
                raise RuntimeError(f"ONNX Runtime's Viterbi tags differ from PyTorch's at {np.argwhere(got != want)}.")
            if name != "tags" and not np.allclose(got, want, atol=TOLERANCE, rtol=0):
                raise RuntimeError(
                    f"ONNX Runtime's {name} differ from PyTorch's by up to {np.abs(got - want).max():.3g} "
                    f"(tolerance {TOLERANCE})."
                )


def _add_serving_requirements(requirements: Path) -> None:
    """Name onnx and onnxruntime in a checkpoint's ``requirements.txt`` (an endpoint installs it), when the export
    goes into a checkpoint folder, whose handler then serves the export (`modeling_muse/handler.py`)."""
    if not requirements.is_file():
        return
    lines = requirements.read_text().splitlines()
    added = [line for line in ONNX_SERVING_REQUIREMENTS if line not in lines]
    if added:
        requirements.write_text("\n".join([*lines, *added]) + "\n")


def export_onnx(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    opset_version: int | None = None,
    check: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``output/model.onnx`` (the evaluation forward, see the module docs) with the processor's files.

    Args:
        model: folder of a saved `MuSEForTokenClassification` or `MuSEForSequenceClassification` and its
            `MuSEProcessor`.
        output: folder to write; created if needed.
        opset_version: ONNX opset (torch's exporter's default when None).
        check: run ONNX Runtime on new batches after writing and compare with PyTorch (tags equal, scores within
            1e-4); a mismatch raises RuntimeError.
        overwrite: replace an existing ``output/model.onnx``.

    Returns:
        The path of the written ``model.onnx``.
    """
    _require_onnx()
    folder, output = Path(model), Path(output)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model: {folder} holds no config.json; give the folder of a saved MuSE model (model.save_pretrained)."
        )
    config = MuSEConfig.from_pretrained(folder)
    architecture = (config.architectures or [None])[0]
    if architecture not in _TASK_MODELS:
        raise ValueError(
            f"model: {folder} holds a {architecture}; ONNX export takes a task model: {', '.join(_TASK_MODELS)}."
        )
    try:
        processor = MuSEProcessor.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"model: {folder} has no loadable MuSEProcessor ({error}); save it beside the model with "
            f"processor.save_pretrained(folder), so that the exported folder can prepare posts."
        ) from error
    target = output / MODEL_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"output: {target} exists; pass --overwrite (overwrite=True) to replace it.")

    task_model = _TASK_MODELS[architecture].from_pretrained(folder, dtype=torch.float32)
    forward = EvaluationForward(task_model).eval()
    max_words = config.max_text_length - 2
    # Traced on two posts of different lengths, neither the longest nor a single post, so that no size is special.
    encoded = _sample_posts(processor, [max(max_words // 3, 1), max(max_words * 2 // 3, 1)], seed=0)
    input_names = forward.input_names(encoded)
    inputs = {name: encoded[name] for name in input_names}
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=config.max_text_length)
    dynamic_shapes = {name: ({0: batch} if name == "pixel_values" else {0: batch, 1: length}) for name in input_names}
    # Strict (TorchDynamo) tracing keeps the batch axis symbolic where the code takes len() of a tensor.
    with torch.no_grad(), warnings.catch_warnings():
        # transformers' output recorder is module state that tracing reports but that does not enter the graph.
        warnings.filterwarnings("ignore", message="While compiling, we found certain side effects")
        program = torch.export.export(forward, (), kwargs=inputs, dynamic_shapes=dynamic_shapes, strict=True)
    onnx_program = torch.onnx.export(
        program,
        kwargs=inputs,
        input_names=input_names,
        output_names=forward.output_names,
        opset_version=opset_version,
        dynamo=True,
    )
    _name_dynamic_axes(onnx_program, input_names)
    output.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(target))
    processor.save_pretrained(output)
    config.save_pretrained(output)
    _add_serving_requirements(output / "requirements.txt")
    if check:
        _check_against_pytorch(onnx_session(output), forward, processor, max_words)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_muse.export_onnx", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="folder of a saved MuSE task model and its processor")
    parser.add_argument("--output", required=True, help="folder to write model.onnx and the processor's files to")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: torch's exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT/model.onnx")
    parser.add_argument(
        "--no_check", action="store_true", help="skip running ONNX Runtime against PyTorch after the export"
    )
    args = parser.parse_args(argv)
    try:
        path = export_onnx(
            args.model, args.output, opset_version=args.opset, check=not args.no_check, overwrite=args.overwrite
        )
    except (FileNotFoundError, FileExistsError, ValueError, TypeError, ImportError, RuntimeError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
