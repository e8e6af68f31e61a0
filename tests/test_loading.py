"""What a MuSE model is built and loaded from: every weight initialised, the embeddings resizable, every problem type
of the sentiment head, posts without a picture, and folders whose configuration asks for what they do not hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, ViTImageProcessor

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification, MuSEModel
from modeling_muse.image_input import placeholder_image
from modeling_muse.modeling import ConfigurationWeightsMismatchError
from tiny_models import MINILM_DIR, SENTIMENT_LABELS, TINY_DECODERS, tiny_config

REPO = Path(__file__).resolve().parents[1]


def _inputs(batch: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, 1000, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "word_start_mask": torch.ones(batch, length, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=generator),
    }


def _all_finite_and_sane(model: torch.nn.Module) -> list[str]:
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not (torch.isfinite(tensor).all() and tensor.abs().max() < 1e3)
    ]


# ------------------------------------------------------------------------------------------------ initialisation


def test_a_model_built_on_the_meta_device_initialises_every_parameter_and_buffer():
    config = tiny_config(**TINY_DECODERS)
    with torch.device("meta"):
        model = MuSEForTokenClassification(config)
    model.to_empty(device="cpu")
    model.init_weights()
    assert _all_finite_and_sane(model) == []
    batch_norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert batch_norms and all(
        torch.equal(norm.running_var, torch.ones_like(norm.running_var)) and int(norm.num_batches_tracked) == 0
        for norm in batch_norms
    )
    # The weight-normalised PixelCNN++ convolutions start from weight = v (g = ||v||), as weight_norm starts them.
    decoder = model.muse.regularizers.generation_decoder
    convolution = decoder.output
    direction = convolution.parametrizations.weight.original1
    torch.testing.assert_close(convolution.weight, direction)


def test_decoders_built_afresh_for_a_served_model_are_initialised(tmp_path):
    torch.manual_seed(0)
    served = MuSEForTokenClassification(tiny_config(**TINY_DECODERS))
    served.remove_regularizers()
    served.save_pretrained(tmp_path)
    # As the training scripts do when they train on from a served model: the decoders come back, newly initialised.
    model = MuSEForTokenClassification.from_pretrained(tmp_path, include_regularizers=True)
    assert model.muse.regularizers is not None
    assert _all_finite_and_sane(model) == []
    model.train()
    inputs = _inputs()
    loss = model(**inputs, labels=torch.zeros(2, 7, dtype=torch.long), decoder_pixel_values=torch.rand(2, 3, 32, 32) * 2 - 1).loss
    assert torch.isfinite(loss)


def test_a_folder_without_the_towers_weights_loads_finite(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({name: tensor for name, tensor in weights.items() if ".image_encoder.backbone." not in name},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = MuSEForSequenceClassification.from_pretrained(tmp_path).eval()
    assert _all_finite_and_sane(model) == []
    with torch.no_grad():
        assert torch.isfinite(model(**_inputs()).logits).all()


def test_timm_initial_values_are_built_only_for_a_tower_a_folder_lacks(tmp_path, monkeypatch):
    """timm initialises an architecture as a whole, so its initial values come from a second backbone built for the
    purpose; a folder holding the whole tower (every load of a saved model) needs none, one without it does."""
    from safetensors.torch import load_file, save_file

    from modeling_muse.image_encoder import ImageEncoder

    built = []
    original = ImageEncoder.timm_initial_state
    monkeypatch.setattr(ImageEncoder, "timm_initial_state", lambda self: built.append(1) or original(self))
    MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS)).save_pretrained(tmp_path)
    built.clear()
    loaded = MuSEForSequenceClassification.from_pretrained(tmp_path)
    assert built == []
    weights = load_file(tmp_path / "model.safetensors")
    running_mean = next(name for name in weights if ".image_encoder.backbone." in name and "running_mean" in name)
    del weights[running_mean]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = MuSEForSequenceClassification.from_pretrained(tmp_path)
    assert built == [1]
    # The one missing buffer gets timm's value (zeros), the loaded ones stay as saved.
    assert torch.equal(reloaded.state_dict()[running_mean], torch.zeros_like(loaded.state_dict()[running_mean]))
    for name, value in loaded.state_dict().items():
        if name != running_mean:
            assert torch.equal(reloaded.state_dict()[name], value), name


# ---------------------------------------------------------------------------------------------------- embeddings


def test_added_tokens_resize_the_embeddings_and_the_caption_decoder_train_and_round_trip(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    added = tokenizer.add_tokens(["#worldcup", "🏆", "sku-4711"])
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config(**TINY_DECODERS))
    assert model.get_input_embeddings() is model.muse.text_encoder.backbone.get_input_embeddings()
    model.resize_token_embeddings(len(tokenizer))
    assert added == 3 and model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.text_config.vocab_size == len(tokenizer)
    caption = model.muse.regularizers.caption_decoder
    assert caption.embedding.num_embeddings == caption.fc.out_features == caption.vocab_size == len(tokenizer)

    encoded = tokenizer(["#worldcup 🏆 for sku-4711"] * 2, return_tensors="pt")
    new_ids = encoded["input_ids"]
    assert new_ids.max() >= len(tokenizer) - 3
    inputs = {
        "input_ids": new_ids, "attention_mask": encoded["attention_mask"],
        "word_start_mask": encoded["attention_mask"], "pixel_values": torch.randn(2, 3, 32, 32),
        "labels": torch.zeros_like(new_ids), "decoder_pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1,
    }
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.get_input_embeddings().weight[-3:].detach().clone()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.get_input_embeddings().weight[-3:], before)

    model.save_pretrained(tmp_path)
    reloaded = MuSEForTokenClassification.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


# -------------------------------------------------------------------------------------------------- problem types


@pytest.mark.parametrize(
    "problem_type, num_labels, labels, expected_loss",
    [
        ("single_label_classification", 3, torch.tensor([0, 2]), torch.nn.functional.cross_entropy),
        ("regression", 1, torch.tensor([0.25, -1.5]), lambda logits, labels: torch.nn.functional.mse_loss(logits[:, 0], labels)),
        ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
         torch.nn.functional.binary_cross_entropy_with_logits),
    ],
)
def test_the_sentiment_head_follows_problem_type(problem_type, num_labels, labels, expected_loss):
    torch.manual_seed(0)
    labels_list = [f"label{i}" for i in range(num_labels)]
    model = MuSEForSequenceClassification(tiny_config(labels_list, problem_type=problem_type)).eval()
    inputs = _inputs()
    outputs = model(**inputs, labels=labels)
    assert outputs.logits.shape == (2, num_labels)
    torch.testing.assert_close(outputs.loss, expected_loss(outputs.logits, labels))


def test_problem_type_is_inferred_from_the_first_labels_as_transformers_heads_do():
    torch.manual_seed(0)
    regression = MuSEForSequenceClassification(tiny_config(["score"]))
    regression(**_inputs(), labels=torch.tensor([0.5, 1.0]))
    assert regression.config.problem_type == "regression"
    multi = MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS))
    multi(**_inputs(), labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert multi.config.problem_type == "multi_label_classification"
    with pytest.raises(ValueError, match="multi-hot"):
        multi(**_inputs(), labels=torch.tensor([0, 1]))


# ----------------------------------------------------------------------------------------------- missing picture


def test_a_post_without_a_picture_reads_the_placeholder_picture():
    torch.manual_seed(0)
    model = MuSEModel(tiny_config()).eval()
    encoder = model.image_encoder
    settings = encoder.backbone.pretrained_cfg
    height, width = settings["input_size"][1:]
    processor = ViTImageProcessor(size={"height": height, "width": width}, image_mean=settings["mean"],
                                  image_std=settings["std"])
    placeholder = processor(placeholder_image(), return_tensors="pt")["pixel_values"]
    inputs = _inputs()
    del inputs["pixel_values"]
    with torch.no_grad():
        text_only = model(**inputs)
        with_placeholder = model(**inputs, pixel_values=placeholder.expand(2, -1, -1, -1))
    torch.testing.assert_close(text_only.fusion_embeddings, with_placeholder.fusion_embeddings, atol=1e-4, rtol=1e-4)
    tagger = MuSEForTokenClassification(tiny_config()).eval()
    with torch.no_grad():
        assert tagger(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).predicted_tag_ids.shape == (2, 7)


# ------------------------------------------------------------------------------ configurations against the folder


def _saved_with_config(folder: Path, **changes) -> Path:
    torch.manual_seed(0)
    MuSEForTokenClassification(tiny_config()).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "changes", [{"vision_model_name_or_path": "hf-hub:someone/any-tower"},
                {"vision_model_name_or_path": "local-dir:/etc"},
                {"vision_timm_architecture": "hf-hub:someone/any-tower"}],
)
def test_loading_a_folder_downloads_and_reads_nothing_its_tower_names(tmp_path, monkeypatch, changes):
    import huggingface_hub
    import timm.models._hub

    calls = []
    for module, name in ((huggingface_hub, "hf_hub_download"), (timm.models._hub, "load_model_config_from_hf"),
                         (timm.models._hub, "load_model_config_from_path")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append(args) or {})
    folder = _saved_with_config(tmp_path / "model", **changes)
    with pytest.raises(ValueError, match="not a timm architecture name"):
        MuSEForTokenClassification.from_pretrained(folder)
    assert calls == []


def test_a_tower_configuration_may_not_name_files_to_load(tmp_path):
    folder = _saved_with_config(tmp_path / "model", vision_model_kwargs={"checkpoint_path": "/etc/passwd"})
    with pytest.raises(ValueError, match="checkpoint_path"):
        MuSEForTokenClassification.from_pretrained(folder)


def test_a_config_claiming_sizes_its_weights_lack_is_refused_before_allocating(tmp_path):
    mismatched = _saved_with_config(tmp_path / "wider", intermediate_size=1 << 20)
    # A caption decoder the folder does not hold, of 2 x 30522 x 20000 weights.
    more_layers = _saved_with_config(tmp_path / "deeper", caption_loss_weight=0.1, caption_decoder_dim=20000)
    script = """
import resource, sys
from modeling_muse import MuSEForTokenClassification
from modeling_muse.modeling import ConfigurationWeightsMismatchError
for folder in sys.argv[1:]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        MuSEForTokenClassification.from_pretrained(folder)
    except ConfigurationWeightsMismatchError as error:
        print("refused", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, str(error)[:200])
"""
    result = subprocess.run([sys.executable, "-c", script, str(mismatched), str(more_layers)], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                  "PYTHONPATH": str(REPO)})
    lines = [line for line in result.stdout.splitlines() if line.startswith("refused")]
    assert len(lines) == 2, result.stdout + result.stderr
    # Either configuration would take gigabytes; refused, the process grew by a few megabytes at most.
    assert all(int(line.split()[1]) < 64 for line in lines), lines
    assert "intermediate.weight of shape [1048576, 32]" in lines[0] and "MiB of weights" in lines[1]


def test_a_config_that_matches_its_weights_still_loads_with_mismatched_sizes_allowed(tmp_path):
    folder = _saved_with_config(tmp_path / "model")
    with pytest.raises(ConfigurationWeightsMismatchError, match="num_labels|classifier"):
        MuSEForTokenClassification.from_pretrained(folder, num_labels=7, id2label={i: str(i) for i in range(7)},
                                                   label2id={str(i): i for i in range(7)})
    model = MuSEForTokenClassification.from_pretrained(folder, num_labels=7, ignore_mismatched_sizes=True,
                                                       id2label={i: str(i) for i in range(7)},
                                                       label2id={str(i): i for i in range(7)})
    assert model.tagger.classifier.out_features == 7
