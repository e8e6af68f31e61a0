"""Tests of `python -m modeling_muse.export_onnx`: ONNX Runtime against PyTorch on real-format posts, both tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification, MuSEModel, MuSEProcessor
from modeling_muse.export_onnx import MODEL_FILE, export_onnx, onnx_feed, onnx_session
from tiny_models import NER_LABELS, SENTIMENT_LABELS, TINY_LENGTH, save_tiny_checkpoints, tiny_config, tiny_processor

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


# timm's test_resnet turns 64 px into a 2 x 2 feature map, which the 4 x 4 grid repeats: the image tokens come in groups
# of four exact copies, which tie in the cls attention, and theta = 0.1 (k = 2 of 16) takes part of a group.
TIE_IMAGE_SIZE = 64
TIE_COPY_GROUPS = torch.tensor([row // 2 * 2 + column // 2 for row in range(4) for column in range(4)])


def tie_prone_model(model_class: type) -> torch.nn.Module:
    labels = NER_LABELS if model_class is MuSEForTokenClassification else SENTIMENT_LABELS
    torch.manual_seed(0)
    model = model_class(tiny_config(labels, exchange_ratio=0.1)).eval()
    head = model.tagger if model_class is MuSEForTokenClassification else model.classifier
    torch.nn.init.normal_(head.classifier.weight, std=1.0)
    return model


def tie_prone_posts(model_class: type) -> dict[str, torch.Tensor]:
    processor = tiny_processor(
        NER_LABELS if model_class is MuSEForTokenClassification else None, image_size=TIE_IMAGE_SIZE
    )
    return dict(processor(images=images(len(POSTS), seed=0), text=POSTS, return_tensors="pt"))


def assert_the_exchange_cuts_tied_copies(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """The posts exercise the tie rule: some exchange takes part of a group of tied copies."""
    with torch.no_grad():
        masks = model(**inputs, output_exchange_masks=True).image_exchange_masks
    counts = torch.stack([mask.long() @ F.one_hot(TIE_COPY_GROUPS).long() for mask in masks])
    assert ((counts > 0) & (counts < 4)).any()


@pytest.mark.parametrize("model_class", [MuSEForTokenClassification, MuSEForSequenceClassification])
def test_torch_export_of_the_evaluation_forward_gives_eager_outputs_without_a_sort(model_class):
    model, inputs = tie_prone_model(model_class), tie_prone_posts(model_class)
    assert_the_exchange_cuts_tied_copies(model, inputs)
    with torch.no_grad():
        program = torch.export.export(model, (), kwargs=inputs)
        expected, produced = model(**inputs), program.module()(**inputs)
    # ONNX has no stable sort, and other exporters lack one too: the exchange must not need it.
    assert not [node.target for node in program.graph.nodes if "sort" in str(node.target)]
    assert list(produced.keys()) == list(expected.keys())
    for name in expected.keys():
        torch.testing.assert_close(produced[name], expected[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("strict", [False, True])
def test_one_exported_program_serves_any_batch_and_length_up_to_max_text_length(strict):
    # Traced on 12 sub-words, it must serve posts of max_text_length (as long as the image grid) too.
    model = tie_prone_model(MuSEForTokenClassification)
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=2, max=TINY_LENGTH)
    text = {0: batch, 1: length}
    shapes = {"input_ids": text, "attention_mask": text, "word_start_mask": text, "pixel_values": {0: batch}}

    def posts(count: int, tokens: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(tokens)
        mask = torch.ones(count, tokens, dtype=torch.long)
        mask[0, tokens // 2 :] = 0
        return {"input_ids": torch.randint(5, 1000, (count, tokens), generator=generator), "attention_mask": mask,
                "word_start_mask": mask.clone(), "pixel_values": torch.randn(count, 3, 32, 32, generator=generator)}

    with torch.no_grad():
        program = torch.export.export(model, (), kwargs=posts(2, 12), dynamic_shapes=shapes, strict=strict)
        for count, tokens in ((3, TINY_LENGTH), (1, 5)):
            inputs = posts(count, tokens)
            expected, produced = model(**inputs), program.module()(**inputs)
            torch.testing.assert_close(produced["logits"], expected.logits, atol=1e-5, rtol=0)
            assert torch.equal(produced["predicted_tag_ids"], expected.predicted_tag_ids)


@pytest.mark.slow
@pytest.mark.parametrize("model_class", [MuSEForTokenClassification, MuSEForSequenceClassification])
def test_torch_onnx_export_with_dynamo_runs_in_onnx_runtime_like_pytorch(model_class, tmp_path):
    import onnxruntime

    model, inputs = tie_prone_model(model_class), tie_prone_posts(model_class)
    assert_the_exchange_cuts_tied_copies(model, inputs)
    with torch.no_grad():
        expected = model(**inputs)
    onnx_program = torch.onnx.export(model, (), kwargs=inputs, dynamo=True)
    onnx_program.save(str(tmp_path / MODEL_FILE))
    session = onnxruntime.InferenceSession(str(tmp_path / MODEL_FILE), providers=["CPUExecutionProvider"])
    produced = session.run(None, onnx_feed(session, inputs))
    assert len(produced) == len(expected)
    for name, got in zip(expected.keys(), produced):
        want = expected[name].numpy()
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.slow
def test_export_onnx_passes_its_check_when_the_grid_repeats_feature_cells(tmp_path):
    model = tie_prone_model(MuSEForTokenClassification)
    model.save_pretrained(tmp_path / "ner")
    tiny_processor(image_size=TIE_IMAGE_SIZE).save_pretrained(tmp_path / "ner")
    assert_the_exchange_cuts_tied_copies(model, tie_prone_posts(MuSEForTokenClassification))
    export_onnx(tmp_path / "ner", tmp_path / "onnx")  # its own check: ONNX Runtime against PyTorch, tags equal
    assert_onnx_runtime_matches_pytorch(tmp_path / "onnx", model, is_tagger=True)


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


def test_missing_onnx_packages_name_the_extra(onnxruntime_missing, checkpoints, tmp_path):
    with pytest.raises(ImportError, match=r'pip install "muse-hf\[onnx\]"'):
        export_onnx(checkpoints["ner"], tmp_path / "out")
