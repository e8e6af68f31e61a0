"""What a saved MuSE checkpoint carries for serving, beside its weights and model code.

`MuSEPreTrainedModel.save_pretrained` lists the pipeline tasks registered with this code in the config
(``custom_pipelines``) and copies their modules (the model code does not import its pipelines), an Inference
Endpoints handler (``handler.py``, see `modeling_muse/handler.py`) and a ``requirements.txt``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "ONNX_SERVING_MODULE",
    "ONNX_SERVING_REQUIREMENTS",
    "SERVING_REQUIREMENTS",
    "custom_pipeline_entries",
    "pipelines_registered_by",
    "save_serving_files",
]

# What the saved code imports beyond the standard library (torch, transformers and huggingface_hub come with any
# transformers environment but are listed for completeness), with the versions this package declares.
SERVING_REQUIREMENTS = (
    "torch>=2.14.1",
    "transformers>=5.0",
    "huggingface_hub>=1.0",
    "timm>=1.0",
    "pytorch-crf>=0.7.2",
    "pillow>=10",
    "numpy",
)


# The module that runs an ONNX export behind the model interface (modeling_muse/onnx_runtime.py), and what serving
# it needs beyond SERVING_REQUIREMENTS (the versions of pyproject.toml's onnx extra).
ONNX_SERVING_MODULE = "onnx_runtime.py"
ONNX_SERVING_REQUIREMENTS = ("onnx>=1.17", "onnxruntime>=1.20")


def pipelines_registered_by(package: str) -> dict[str, dict[str, Any]]:
    """The pipeline tasks that the code of ``package`` has registered with transformers: task -> its registry entry
    (``impl``: the pipeline class, ``pt``: the Auto classes of its models).

    With MuSE installed these are the ``multimodal-*`` tasks (`modeling_muse/__init__.py` registers them); code
    loaded with ``trust_remote_code`` registers none.
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    return {
        task: entry
        for task, entry in PIPELINE_REGISTRY.supported_tasks.items()
        # Entries of tasks registered as module paths hold a string there.
        if getattr(entry.get("impl"), "__module__", "").rpartition(".")[0] == package
    }


def custom_pipeline_entries(package: str) -> dict[str, dict[str, Any]]:
    """The ``custom_pipelines`` config entries of the tasks that ``package`` registered (empty if none)."""
    return {
        task: {
            "impl": f"{entry['impl'].__module__.rpartition('.')[2]}.{entry['impl'].__name__}",
            "pt": [auto_class.__name__ for auto_class in entry["pt"]],
            "type": "multimodal",
        }
        for task, entry in pipelines_registered_by(package).items()
    }


def save_serving_files(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """Copy the pipelines' code named in ``model.config``'s ``custom_pipelines`` (with every file it imports
    relatively), ``handler.py`` and ``requirements.txt`` into ``save_directory``."""
    from transformers.dynamic_module_utils import get_relative_import_files

    folder = Path(save_directory)
    code_folder = Path(sys.modules[type(model).__module__].__file__).parent
    # config.custom_pipelines hides itself while the installed package serves the tasks; config.json keeps it.
    tasks = model.config.__dict__.get("custom_pipelines", {})
    for module in sorted({entry["impl"].rpartition(".")[0] for entry in tasks.values()}):
        source = _code_file(f"{module}.py", code_folder, model)
        for file in [source, *map(Path, get_relative_import_files(source))]:
            shutil.copy(file, folder / file.name)
    shutil.copy(_code_file("handler.py", code_folder, model), folder / "handler.py")
    # The handler serves an ONNX export placed in the folder through this module (and what it imports).
    try:
        onnx_serving = _code_file(ONNX_SERVING_MODULE, code_folder, model)
    except FileNotFoundError:
        # A checkpoint saved before the module existed: the handler then names the module when asked for ONNX.
        onnx_serving = None
    if onnx_serving is not None:
        for file in [onnx_serving, *map(Path, get_relative_import_files(onnx_serving))]:
            if not (folder / file.name).is_file():
                shutil.copy(file, folder / file.name)
    (folder / "requirements.txt").write_text("\n".join(SERVING_REQUIREMENTS) + "\n")


def _code_file(name: str, code_folder: Path, model: nn.Module) -> Path:
    """The file ``name`` of MuSE's code: beside the model's module (the installed package), else in the checkpoint the
    model was loaded from. A model loaded with ``trust_remote_code`` runs from transformers' module cache, which holds
    only the files the model code imports; its pipelines and handler stay in the checkpoint (a folder, or the Hub
    repository, whose file comes from the local cache or is downloaded as the rest of it was)."""
    beside = code_folder / name
    if beside.is_file():
        return beside
    from transformers.utils import cached_file

    checkpoint = getattr(model.config, "_name_or_path", "")
    found = cached_file(checkpoint, name, _raise_exceptions_for_missing_entries=False) if checkpoint else None
    if found is None:
        raise FileNotFoundError(
            f"{name} of MuSE's code is neither beside {code_folder} nor in the checkpoint this model was loaded from "
            f"({checkpoint or 'none'}): save from a model loaded from a complete MuSE checkpoint, or with the "
            f"modeling_muse package installed (import modeling_muse)."
        )
    return Path(found)
