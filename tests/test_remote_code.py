"""Checkpoints carry their code: they load and predict with `transformers` alone (``trust_remote_code=True``).

The main test saves tiny NER and sentiment models with their processor, then runs `remote_code_client.py` in a
subprocess that blocks every module of this project, and compares what it loads and predicts with this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_models import MINILM_DIR, NER_LABELS, SENTIMENT_LABELS, save_tiny_checkpoints
from transformers import pipeline

import configuration_muse
import processing_muse
from modeling_muse import MuSEConfig, MuSEForSequenceClassification, MuSEForTokenClassification, MuSEProcessor
from modeling_muse.hub import is_hub_id

CLIENT = Path(__file__).with_name("remote_code_client.py")
AUTO_CLASS_NAMES = (
    "AutoConfig",
    "AutoModel",
    "AutoModelForTokenClassification",
    "AutoModelForSequenceClassification",
    "AutoProcessor",
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    save_tiny_checkpoints(root)
    return root


def test_the_documented_modules_are_the_package_objects():
    assert configuration_muse.MuSEConfig is MuSEConfig
    assert processing_muse.MuSEProcessor is MuSEProcessor


def test_a_saved_folder_holds_the_code_the_auto_map_and_the_pipelines(checkpoints):
    folder = checkpoints / "ner"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_muse.MuSEConfig",
        "AutoModel": "modeling.MuSEModel",
        "AutoModelForTokenClassification": "modeling.MuSEForTokenClassification",
        "AutoModelForSequenceClassification": "modeling.MuSEForSequenceClassification",
    }
    assert config["custom_pipelines"]["multimodal-ner"]["impl"] == "pipelines.MultimodalNERPipeline"
    assert config["custom_pipelines"]["multimodal-sentiment"]["pt"] == ["AutoModelForSequenceClassification"]
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_muse.MuSEProcessor"}
    package = Path(configuration_muse.__file__).parent / "modeling_muse"
    needed = {
        "configuration_muse.py",
        "processing_muse.py",
        "modeling.py",
        "pipelines.py",
        "pipeline_inputs.py",
        "heads.py",
    }
    for name in needed:
        assert (folder / name).read_bytes() == (package / name).read_bytes(), name


def _run_client(ner: Path, sentiment: Path, image: Path, tmp_path: Path) -> dict:
    """What remote_code_client.py loads and predicts from these folders in a process that cannot import the project."""
    output = tmp_path / "report.json"
    environment = {
        **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    subprocess.run(
        [sys.executable, "-I", str(CLIENT), str(ner), str(sentiment), str(image), str(output)],
        check=True, cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL, timeout=600,
    )
    return json.loads(output.read_text())


@pytest.mark.slow
def test_a_machine_without_the_project_loads_and_predicts_identically(checkpoints, tmp_path):
    report = _run_client(checkpoints / "ner", checkpoints / "sentiment", checkpoints / "photo.png", tmp_path)
    assert report["project_importable"] is False

    # Without trust_remote_code, nothing loads as something else: each entry point asks for it.
    for name in (*AUTO_CLASS_NAMES, "multimodal-ner", "multimodal-sentiment"):
        assert "trust_remote_code=True" in report["refused"][name], (name, report["refused"][name])
    assert report["loaded"] == {
        "AutoConfig": "MuSEConfig",
        "AutoModel": "MuSEModel",
        "AutoModelForTokenClassification": "MuSEForTokenClassification",
        "AutoModelForSequenceClassification": "MuSEForSequenceClassification",
        "AutoProcessor": "MuSEProcessor",
    }
    assert all(module.startswith("transformers_modules.") for module in report["pipeline_classes"])

    # The same outputs as this process, which uses the installed package.
    torch.set_num_threads(1)
    ner_folder, sentiment_folder = str(checkpoints / "ner"), str(checkpoints / "sentiment")
    ner_model = MuSEForTokenClassification.from_pretrained(ner_folder).eval()
    processor = MuSEProcessor.from_pretrained(ner_folder)
    image = Image.open(checkpoints / "photo.png")
    inputs = processor(images=[image], text=[["Lionel", "Messi", "visits", "Paris"]], return_tensors="pt")
    with torch.no_grad():
        tagged = ner_model(**inputs)
        fusion = ner_model.muse(**{k: v for k, v in inputs.items() if k != "word_start_mask"}).fusion_embeddings
    assert torch.equal(torch.tensor(report["ner_logits"]), tagged.logits)
    assert report["ner_tags"] == tagged.predicted_tag_ids.tolist()
    assert torch.equal(torch.tensor(report["fusion_embeddings"]), fusion)

    post = {"text": "Lionel Messi visits Paris", "image": str(checkpoints / "photo.png")}
    ner = pipeline("multimodal-ner", model=ner_folder)
    sentiment = pipeline("multimodal-sentiment", model=sentiment_folder)
    assert type(ner).__module__ == "modeling_muse.pipelines"
    assert report["ner_pipeline"] == ner(post, aggregation_strategy="none")
    assert report["ner_pipeline_exchange"] == json.loads(json.dumps(ner(post, return_exchange=True)["exchange"]["layers"]))
    assert report["sentiment_pipeline"] == sentiment([post, post], top_k=None)
    assert [entry["label"] for entry in report["sentiment_pipeline"][0]] != []


def _string_values(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _string_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _string_values(item)


def test_saved_files_name_no_local_path(tmp_path):
    model = MuSEForTokenClassification.from_text_vision_pretrained(
        str(MINILM_DIR), "test_resnet", pretrained_vision=False, num_cross_layers=1, num_attention_heads=6,
        exchange_start_layer=1, exchange_end_layer=1, image_grid_size=4, max_text_length=16,
        caption_loss_weight=0.0, generation_loss_weight=0.0, id2label=dict(enumerate(NER_LABELS)),
    )
    model.save_pretrained(tmp_path)
    MuSEProcessor.from_text_vision_pretrained(str(MINILM_DIR), "test_resnet", max_length=16).save_pretrained(tmp_path)
    for path in tmp_path.glob("*.json"):
        for value in _string_values(json.loads(path.read_text())):
            assert not os.path.isabs(value) and str(MINILM_DIR) not in value, (path.name, value)
    reloaded = MuSEConfig.from_pretrained(tmp_path)
    assert reloaded.text_config.hidden_size == 384


def test_hub_ids_are_told_from_local_folders(tmp_path, monkeypatch):
    assert is_hub_id("bert-base-uncased") and is_hub_id("sentence-transformers/all-MiniLM-L6-v2")
    assert not is_hub_id(str(MINILM_DIR)) and not is_hub_id("") and not is_hub_id(None)
    assert not is_hub_id("./model") and not is_hub_id("a/b/c")
    (tmp_path / "local-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("local-model")


def test_offline_pretrained_vision_fails_at_once_naming_the_backbone_and_the_switch():
    # The suite runs with HF_HUB_OFFLINE=1 (conftest) and an empty Hub cache for timm's weights.
    with pytest.raises(OSError) as error:
        MuSEForTokenClassification.from_text_vision_pretrained(
            str(MINILM_DIR), "resnet18", num_cross_layers=1, num_attention_heads=6, exchange_start_layer=1,
            exchange_end_layer=1, caption_loss_weight=0.0, generation_loss_weight=0.0,
        )
    message = str(error.value)
    assert "'resnet18'" in message and "timm/resnet18" in message
    assert "pretrained_vision=False" in message and "HF_HUB_OFFLINE=1" in message


def test_pretrained_vision_weights_come_from_the_local_cache(tmp_path, monkeypatch):
    # A Hub cache laid out as huggingface_hub writes it, holding "pretrained" weights for timm's test_resnet.
    hub_id = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    snapshot = tmp_path / f"models--{hub_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(5)
    weights = timm.create_model("test_resnet").state_dict()
    save_file(weights, snapshot / "model.safetensors")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))

    model = MuSEForTokenClassification.from_text_vision_pretrained(
        str(MINILM_DIR), "test_resnet", num_cross_layers=1, num_attention_heads=6, exchange_start_layer=1,
        exchange_end_layer=1, image_grid_size=4, max_text_length=16, caption_loss_weight=0.0,
        generation_loss_weight=0.0,
    )
    backbone = model.muse.image_encoder.backbone.state_dict()
    assert all(torch.equal(backbone[name], value) for name, value in weights.items() if not name.startswith("fc."))


@pytest.mark.slow
def test_models_around_vit_towers_load_without_the_project_and_without_the_towers(tmp_path):
    """A transformers ViT and a timm ViT folder as towers: the saved MuSE needs neither folder, nor this project."""
    from timm.models import save_for_hf
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    vit = tmp_path / "vit"
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    timm_vit = tmp_path / "timm-vit"
    save_for_hf(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8), timm_vit,
                model_args={"img_size": 32, "patch_size": 8})
    sizes = dict(num_cross_layers=1, num_attention_heads=6, exchange_start_layer=1, exchange_end_layer=1,
                 image_grid_size=4, max_text_length=16, caption_loss_weight=0.0, generation_loss_weight=0.0)
    ner = MuSEForTokenClassification.from_text_vision_pretrained(
        str(MINILM_DIR), str(vit), id2label=dict(enumerate(NER_LABELS)), **sizes
    ).eval()
    ner.save_pretrained(tmp_path / "ner")
    MuSEProcessor.from_text_vision_pretrained(str(MINILM_DIR), str(vit), max_length=16,
                                              label_names=NER_LABELS).save_pretrained(tmp_path / "ner")
    sentiment = MuSEForSequenceClassification.from_text_vision_pretrained(
        str(MINILM_DIR), str(timm_vit), id2label=dict(enumerate(SENTIMENT_LABELS)), **sizes
    ).eval()
    sentiment.save_pretrained(tmp_path / "sentiment")
    MuSEProcessor.from_text_vision_pretrained(str(MINILM_DIR), str(timm_vit), max_length=16).save_pretrained(
        tmp_path / "sentiment"
    )
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    # The towers' folders are gone: everything needed to rebuild them is in the saved configuration.
    import shutil

    shutil.rmtree(vit)
    shutil.rmtree(timm_vit)
    report = _run_client(tmp_path / "ner", tmp_path / "sentiment", tmp_path / "p.png", tmp_path)
    assert report["project_importable"] is False
    torch.set_num_threads(1)
    processor = MuSEProcessor.from_pretrained(tmp_path / "ner")
    inputs = processor(images=[Image.open(tmp_path / "p.png")], text=[["Lionel", "Messi", "visits", "Paris"]],
                       return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(torch.tensor(report["ner_logits"]), ner(**inputs).logits)
    post = {"text": "Lionel Messi visits Paris", "image": str(tmp_path / "p.png")}
    assert report["sentiment_pipeline"] == pipeline("multimodal-sentiment", model=str(tmp_path / "sentiment"))(
        [post, post], top_k=None
    )


def test_a_timm_hub_tower_is_read_from_the_local_cache_offline(tmp_path, monkeypatch):
    """``hf-hub:<repo>``: its config.json and weights from the Hugging Face cache, as timm lays them out on the Hub."""
    from timm.models import save_for_hf

    from modeling_muse.image_encoder import resolve_vision_tower

    repo = "someone/tiny-vit"
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    torch.manual_seed(4)
    save_for_hf(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8), snapshot,
                model_args={"img_size": 32, "patch_size": 8}, safe_serialization=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    tower = resolve_vision_tower(f"hf-hub:{repo}")
    assert (tower.timm_architecture, tower.timm_model_args["patch_size"]) == ("vit_tiny_patch16_224", 8)
    model = MuSEForSequenceClassification.from_text_vision_pretrained(
        str(MINILM_DIR), f"hf-hub:{repo}", num_labels=2, num_cross_layers=1, num_attention_heads=6,
        exchange_start_layer=1, exchange_end_layer=1, image_grid_size=4, max_text_length=16,
        caption_loss_weight=0.0, generation_loss_weight=0.0,
    )
    from safetensors.torch import load_file

    saved = load_file(snapshot / "model.safetensors")
    backbone = model.muse.image_encoder.backbone.state_dict()
    assert all(torch.equal(backbone[name], value) for name, value in saved.items() if not name.startswith("head."))
    assert model.config.to_dict()["vision_model_name_or_path"] == f"hf-hub:{repo}"


# Run with remote_code_client.py's blocker of the project's modules in front (a machine without MuSE).
SAVE_WITHOUT_THE_PROJECT = CLIENT.read_text().split("import torch  # noqa: E402")[0] + """
import json, os
from transformers import AutoModelForTokenClassification, pipeline

checkpoint, model_copy, pipeline_copy = sys.argv[1:]
AutoModelForTokenClassification.from_pretrained(checkpoint, trust_remote_code=True).save_pretrained(model_copy)
pipeline("multimodal-ner", model=checkpoint, trust_remote_code=True).save_pretrained(pipeline_copy)
tagger = pipeline("multimodal-ner", model=pipeline_copy, trust_remote_code=True)
print(json.dumps({"model": sorted(os.listdir(model_copy)), "pipeline": sorted(os.listdir(pipeline_copy)),
                  "tags": tagger({"text": "Messi visits Paris", "image": sys.argv[1] + "/../photo.png"},
                                 aggregation_strategy="none")}))
"""


def test_a_model_loaded_with_remote_code_saves_a_complete_checkpoint(checkpoints, tmp_path):
    # Loaded with trust_remote_code, the model's code runs from transformers' module cache, which holds only the files
    # the model imports: its pipelines and handler are read from the checkpoint it came from.
    environment = {
        **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    result = subprocess.run(
        [sys.executable, "-I", "-c", SAVE_WITHOUT_THE_PROJECT, str(checkpoints / "ner"), str(tmp_path / "model"),
         str(tmp_path / "pipeline")],
        capture_output=True, text=True, cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for saved in ("model", "pipeline"):
        assert {"pipelines.py", "handler.py", "requirements.txt", "modeling.py"} <= set(report[saved]), saved
    assert {"processor_config.json", "tokenizer.json"} <= set(report["pipeline"])
    assert len(report["tags"]) == 3
