"""transformers' own common model and configuration tests (``ModelTesterMixin``, ``ConfigTester``), loaded for MuSE.

Every model in transformers is held to ``tests/test_modeling_common.py`` and ``tests/test_configuration_common.py``
of the transformers source tree; `test_modeling_muse_common.py` holds MuSE to the same files, unmodified, from the
source distribution of the installed transformers version. They are not part of the transformers wheel, so this
module fetches that source distribution from the package index once (``python tests/transformers_common_tests.py``;
`.ci/run` does it before the tests) into ``~/.cache/muse-hf/`` and keeps its top-level ``tests/*.py``.
``TRANSFORMERS_TESTS_DIR`` names another copy of transformers' ``tests`` folder instead (a git checkout of the
matching tag, say).

The source distribution leaves out three sub-packages that those two files import. Where the copy lacks them, this
module supplies stand-ins, each with the reason:

- ``exporters.test_export.ExportTesterMixin`` (the base of ``ModelTesterMixin``): an empty mixin here, so the
  exporter tests do not run through it; `tests/test_export_onnx.py` exports MuSE with ``torch.export`` and
  ``torch.onnx.export`` itself.
- ``generation.test_utils.GenerationTesterMixin``: only named in an ``issubclass`` check; MuSE does not generate.
- ``utils.test_configuration_utils.config_common_kwargs``: every argument of `PreTrainedConfig` with a value other
  than its default, built below from `PreTrainedConfig` itself.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests_package"
TRANSFORMERS_VERSION = transformers.__version__
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "muse-hf" / f"transformers-{TRANSFORMERS_VERSION}-tests"
REQUIRED_FILES = ("__init__.py", "test_modeling_common.py", "test_configuration_common.py")


def tests_folder() -> Path | None:
    """The folder holding transformers' common test files, or None if there is none yet."""
    configured = os.environ.get("TRANSFORMERS_TESTS_DIR")
    folder = Path(configured) if configured else CACHE
    return folder if all((folder / name).is_file() for name in REQUIRED_FILES) else None


def fetch() -> Path:
    """Download the source distribution of the installed transformers version from the package index (pip, which
    follows this machine's index settings) and keep its top-level ``tests/*.py`` in the cache folder."""
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--dest", download, f"transformers=={TRANSFORMERS_VERSION}"],
            check=True,
        )
        (archive,) = Path(download).glob("transformers-*.tar.gz")
        staging = CACHE.with_name(CACHE.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as source:
            for member in source.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                    (staging / parts[2]).write_bytes(source.extractfile(member).read())
        # The folder is a package in the source tree (test_configuration_common imports its __init__.py).
        (staging / "__init__.py").touch()
        shutil.rmtree(CACHE, ignore_errors=True)  # an incomplete copy from an interrupted fetch
        staging.replace(CACHE)
    return CACHE


def _stand_in(name: str, **attributes: object) -> None:
    module = types.ModuleType(f"{PACKAGE}.{name}")
    module.__dict__.update(attributes)
    sys.modules[module.__name__] = module


def _config_common_kwargs() -> dict[str, object]:
    return {
        "return_dict": False,
        "output_hidden_states": True,
        "output_attentions": True,
        "dtype": "float16",
        "tie_word_embeddings": False,
        "chunk_size_feed_forward": 5,
        "architectures": ["BertModel"],
        "finetuning_task": "translation",
        "id2label": {0: "label"},
        "label2id": {"label": "0"},
        "problem_type": "regression",
        "tokenizer_class": "BertTokenizerFast",
        "prefix": "prefix",
        "bos_token_id": 6,
        "pad_token_id": 7,
        "eos_token_id": 8,
        "sep_token_id": 9,
        "decoder_start_token_id": 10,
        "is_encoder_decoder": True,
    }


def load(module: str) -> types.ModuleType:
    """Import transformers' common test file ``module`` (e.g. ``"test_modeling_common"``) as part of a package."""
    folder = tests_folder()
    if folder is None:
        raise FileNotFoundError(
            f"transformers' common test files for {TRANSFORMERS_VERSION} are not in {CACHE}: run "
            f"`python tests/transformers_common_tests.py` to fetch them, or set TRANSFORMERS_TESTS_DIR to a "
            f"transformers checkout's tests folder."
        )
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
        missing = {
            "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
            "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
            "utils.test_configuration_utils": {"config_common_kwargs": _config_common_kwargs()},
        }
        for name, attributes in missing.items():
            parent, _, _ = name.rpartition(".")
            if not (folder / parent).is_dir():
                _stand_in(parent, __path__=[])
                _stand_in(name, **attributes)
    spec = importlib.util.find_spec(f"{PACKAGE}.{module}")
    return importlib.import_module(spec.name)


if __name__ == "__main__":
    print(tests_folder() or fetch())
