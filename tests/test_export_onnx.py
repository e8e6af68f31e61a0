"""Tests of `python -m modeling_muse.export_onnx`: ONNX Runtime against PyTorch on real-format posts, both tasks."""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification, MuSEModel, MuSEProcessor
from modeling_muse.export_onnx import MODEL_FILE, export_onnx, onnx_feed, onnx_session
from tiny_models import save_tiny_checkpoints, tiny_config

REPO = Path(__file__).resolve().parents[1]
POSTS = [
    "Lionel Messi arrives in Paris tonight",
    "rain",
    "the mayor of London meets fans of the new team at the stadium",
]
OTHER_POSTS = ["Obama visits New York with friends and family", "great game"]


def images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (64, 48), (28, 50)]
    return [
        Image.fromarray(rng.integers(0, 256, (sizes[i % 3][1], sizes[i % 3][0], 3), dtype=np.uint8))
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def assert_onnx_runtime_matches_pytorch(onnx_folder: Path, model: torch.nn.Module, is_tagger: bool) -> None:
    # The processor comes from the exported folder, which must be usable on its own.
    processor = MuSEProcessor.from_pretrained(onnx_folder)
    session = onnx_session(onnx_folder)
    lengths = set()
    for posts, seed in ((POSTS, 0), (OTHER_POSTS, 1)):
        encoded = processor(images=images(len(posts), seed), text=posts, return_tensors="pt")
        lengths.add(encoded["input_ids"].shape)
        with torch.no_grad():
            expected = model(**encoded)
        produced = dict(zip([output.name for output in session.get_outputs()], session.run(None, onnx_feed(session, encoded))))
        if is_tagger:
            assert set(produced) == {"emissions", "tags"}
            np.testing.assert_allclose(produced["emissions"], expected.logits.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_array_equal(produced["tags"], expected.predicted_tag_ids.numpy())
            assert ((produced["tags"] != -100) == encoded["word_start_mask"].numpy().astype(bool)).all()
        else:
            assert set(produced) == {"logits"}
            np.testing.assert_allclose(produced["logits"], expected.logits.numpy(), atol=1e-4, rtol=0)
    # Two batch sizes and two text lengths ran through the one graph.
    assert len({shape[0] for shape in lengths}) == 2 and len({shape[1] for shape in lengths}) == 2


@pytest.mark.slow
def test_command_line_export_of_a_ner_model_runs_in_onnx_runtime_like_pytorch(checkpoints, tmp_path):
    output = tmp_path / "onnx"
    completed = subprocess.run(
        [sys.executable, "-m", "modeling_muse.export_onnx", "--model", str(checkpoints["ner"]), "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (output / MODEL_FILE).is_file() and (output / "config.json").is_file()
    session = onnx_session(output)
    assert [(node.name, node.shape) for node in session.get_inputs()] == [
        ("input_ids", ["batch", "length"]),
        ("attention_mask", ["batch", "length"]),
        ("token_type_ids", ["batch", "length"]),
        ("word_start_mask", ["batch", "length"]),
        ("pixel_values", ["batch", 3, 32, 32]),
    ]
    model = MuSEForTokenClassification.from_pretrained(checkpoints["ner"]).eval()
    assert_onnx_runtime_matches_pytorch(output, model, is_tagger=True)


@pytest.mark.slow
def test_exported_sentiment_model_runs_in_onnx_runtime_like_pytorch(checkpoints, tmp_path):
    path = export_onnx(checkpoints["sentiment"], tmp_path / "onnx")
    assert path == tmp_path / "onnx" / MODEL_FILE
    session = onnx_session(path.parent)
    assert "word_start_mask" not in [node.name for node in session.get_inputs()]
    assert session.get_outputs()[0].shape == ["batch", 3]
    model = MuSEForSequenceClassification.from_pretrained(checkpoints["sentiment"]).eval()
    assert_onnx_runtime_matches_pytorch(path.parent, model, is_tagger=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(checkpoints["sentiment"], tmp_path / "onnx")


def test_bad_folders_are_refused_before_any_export(checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_onnx(tmp_path / "missing", tmp_path / "out")
    MuSEModel(tiny_config()).save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="MuSEModel.*task model"):
        export_onnx(tmp_path / "bare", tmp_path / "out")
    MuSEForTokenClassification(tiny_config()).save_pretrained(tmp_path / "no-processor")
    with pytest.raises(FileNotFoundError, match="processor.save_pretrained"):
        export_onnx(tmp_path / "no-processor", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / MODEL_FILE).write_bytes(b"")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(checkpoints["ner"], tmp_path / "taken")
    assert not (tmp_path / "out").exists()


def test_command_line_reports_errors_with_exit_status_1(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "modeling_muse.export_onnx", "--model", str(tmp_path), "--output", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 1
    assert "error: model:" in completed.stderr and "config.json" in completed.stderr


def test_missing_onnx_packages_name_the_extra(monkeypatch, checkpoints, tmp_path):
    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    with pytest.raises(ImportError, match=r'pip install "muse-hf\[onnx\]"'):
        export_onnx(checkpoints["ner"], tmp_path / "out")
