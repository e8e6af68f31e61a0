"""LoRA adapters (muse_training/lora.py, ``--use_peft``): what is targeted and trained, the adapter's round trip onto a
freshly loaded base (with the package, through transformers' own peft support, and with ``trust_remote_code`` where
the project cannot be imported), and the scripts' runs that train, resume and continue an adapter.

Fast tests use the tiny models of tests/tiny_models.py. The slow ones run `run_mner.py` / `run_msa.py` in subprocesses
on the bundled samples with the tiny configuration of tests/test_training.py, starting from a tiny trained-format
MuSE saved here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from tiny_models import NER_LABELS, SENTIMENT_LABELS, tiny_config, tiny_processor
from torch import nn

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
from muse_training.checkpoints import save_model
from muse_training.hub_upload import files_to_upload
from muse_training.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    CROSS_TRANSFORMER_TARGETS,
    adapter_base_model,
    adapter_counts,
    apply_lora,
    build_lora_config,
    default_target_modules,
    load_adapter,
    save_adapter,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

peft = pytest.importorskip("peft")

WORDS = [["Lionel", "Messi", "visits", "Paris"], ["Obama", "meets", "Merkel", "in", "Berlin", "today"]]


def _inputs(processor, seed: int = 0):
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    images = [
        Image.fromarray((torch.rand(30, 40, 3, generator=generator) * 255).to(torch.uint8).numpy()) for _ in WORDS
    ]
    return processor(images=images, text=WORDS, return_tensors="pt")


def _expected_counts(model: nn.Module, config) -> dict[str, int]:
    """LoRA A (r x in) and B (out x r) of every targeted Linear, and every parameter of the modules trained in full,
    counted from the plain model and the configuration alone."""
    if isinstance(config.target_modules, str):
        targeted = [name for name, _ in model.named_modules() if re.fullmatch(config.target_modules, name)]
    else:
        targeted = [n for n, _ in model.named_modules() if any(n == t or n.endswith(f".{t}") for t in config.target_modules)]
    lora = 0
    for name in targeted:
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear), name
        lora += config.r * (layer.in_features + layer.out_features)
    full = sum(p.numel() for name in config.modules_to_save for p in model.get_submodule(name).parameters())
    return {"targeted": len(targeted), "lora": lora, "modules_to_save": full}


# ----------------------------------------------------------------------------------------------------------------
# What is targeted and trained
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_class", "labels", "heads", "saved"),
    [
        (MuSEForTokenClassification, NER_LABELS, ("tagger",), ["tagger", "muse.fusion"]),
        # The sentiment head `classifier` holds a Linear `classifier`: peft would wrap both, so the Linear is named.
        (MuSEForSequenceClassification, SENTIMENT_LABELS, ("classifier",), ["classifier.classifier", "muse.fusion"]),
    ],
)
def test_trainable_parameters_are_the_lora_matrices_and_the_modules_trained_in_full(model_class, labels, heads, saved):
    torch.manual_seed(0)
    model = model_class(tiny_config(labels))
    total = sum(p.numel() for p in model.parameters())
    config = build_lora_config(model, heads, r=4, alpha=8, dropout=0.1)
    assert config.modules_to_save == saved
    expected = _expected_counts(model, config)
    # 3 CrossTransformer layers x 4 projections, and query + value of the tiny BERT's one layer.
    assert expected["targeted"] == 3 * len(CROSS_TRANSFORMER_TARGETS) + 2
    peft_model = apply_lora(model, config)
    counts = adapter_counts(peft_model)
    assert counts["lora"] == expected["lora"]
    assert counts["modules_to_save"] == expected["modules_to_save"]
    assert counts["trainable"] == expected["lora"] + expected["modules_to_save"]  # no regularizers in this config
    assert counts["base"] == total
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert all(".lora_" in name or ".modules_to_save.default." in name for name in trainable)
    assert not any("image_encoder" in name for name in trainable)
    if heads == ("tagger",):
        assert "base_model.model.tagger.modules_to_save.default.crf.transitions" in trainable


def test_the_regularizer_decoders_train_in_full_but_stay_out_of_the_adapter(tmp_path):
    torch.manual_seed(0)
    model = MuSEForTokenClassification(
        tiny_config(caption_loss_weight=0.1, generation_loss_weight=0.1, caption_decoder_dim=8, pixelcnn_filters=4,
                    pixelcnn_resnet_blocks=1)
    )
    decoders = sum(p.numel() for p in model.muse.regularizers.parameters())
    config = build_lora_config(model, ("tagger",))
    expected = _expected_counts(model, config)
    peft_model = apply_lora(model, config)
    counts = adapter_counts(peft_model)
    assert counts["trainable"] == expected["lora"] + expected["modules_to_save"] + decoders
    save_adapter(peft_model, str(tmp_path), None, is_main_process=True)
    saved = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    assert sum(t.numel() for t in saved.values()) == counts["adapter"] == expected["lora"] + expected["modules_to_save"]
    assert not any("regularizers" in name for name in saved)
    # A training step reaches the decoders and the LoRA matrices.
    processor = tiny_processor(image_size=32)
    batch = processor(
        images=_inputs_images(), text=WORDS, word_labels=[[1, 2, 0, 3], [1, 0, 1, 0, 3, 0]], return_tensors="pt"
    )
    peft_model.train()
    peft_model(**batch).loss.backward()
    grads = {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "caption_decoder" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "generation_decoder" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "text_encoder" in n and "lora_B" in n)


def _inputs_images():
    from PIL import Image

    return [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (20, 50), (10, 200, 90))]


def test_default_targets_leave_an_image_tower_with_the_same_layer_names_alone():
    """A timm ViT has `qkv` layers like the CrossTransformer's; the defaults are anchored at module paths."""
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config(vision_model_name="test_vit"))
    image_linears = [n for n, m in model.named_modules() if "image_encoder.backbone" in n and isinstance(m, nn.Linear)]
    assert any(n.endswith(".qkv") for n in image_linears)
    pattern = default_target_modules(model)
    assert not any(re.fullmatch(pattern, name) for name in image_linears)
    # Asked by name, the layers of that name are targeted everywhere, the tower included.
    config = build_lora_config(model, ("tagger",), target_modules=["qkv"])
    peft_model = apply_lora(model, config)
    lora_layers = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert any("image_encoder.backbone" in n for n in lora_layers)
    assert any("cross_transformer" in n for n in lora_layers)


def test_other_text_encoders_take_their_own_attention_names_or_an_error_naming_the_option():
    from transformers import DistilBertConfig

    text = DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=37, max_position_embeddings=64)
    model = MuSEForTokenClassification(tiny_config(text_config=text))
    config = build_lora_config(model, ("tagger",))
    peft_model = apply_lora(model, config)
    targeted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert {"q_lin", "v_lin"} <= targeted and "k_lin" not in targeted
    with pytest.raises(ValueError, match="--lora_target_modules"):
        build_lora_config(MuSEForTokenClassification(tiny_config()), ("tagger",), target_modules=["no_such_layer"])
    with pytest.raises(ValueError, match="--lora_target_modules"):
        build_lora_config(MuSEForTokenClassification(tiny_config()), ("tagger",), target_modules=[r"image_.*\.nothing"])
    # "output" also names BERT's output blocks, which are not Linear layers: peft's refusal names the option.
    plain = MuSEForTokenClassification(tiny_config())
    with pytest.raises(ValueError, match="(?s)BertSelfOutput.*--lora_target_modules"):
        apply_lora(plain, build_lora_config(plain, ("tagger",), target_modules=["qkv", "output"]))


# ----------------------------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------------------------


def _train_a_few_steps(peft_model: nn.Module, processor, steps: int = 5) -> None:
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    batch = processor(
        images=_inputs_images(), text=WORDS, word_labels=[[1, 2, 0, 3], [1, 0, 1, 0, 3, 0]], return_tensors="pt"
    )
    peft_model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
    peft_model.eval()


@pytest.fixture(scope="module")
def adapter_round_trip(tmp_path_factory):
    """A tiny NER base saved with its code, and an adapter trained on it for a few steps, saved beside it."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = MuSEForTokenClassification(tiny_config()).eval()
    base.save_pretrained(root / "base")
    processor = tiny_processor()
    processor.save_pretrained(root / "base")
    loaded = MuSEForTokenClassification.from_pretrained(root / "base")
    peft_model = apply_lora(loaded, build_lora_config(loaded, ("tagger",)))
    torch.manual_seed(1)
    _train_a_few_steps(peft_model, processor)
    # As the scripts save it: the adapter and the processor, then the marker that lists what was written.
    save_model(Accelerator(cpu=True), peft_model, processor, str(root / "adapter"), {"epoch": 1})
    inputs = _inputs(processor)
    with torch.no_grad():
        trained = peft_model(**inputs)
        plain = MuSEForTokenClassification.from_pretrained(root / "base").eval()(**inputs)
    return root, inputs, trained, plain


def test_an_adapter_loads_onto_a_fresh_base_and_predicts_identically(adapter_round_trip):
    root, inputs, trained, plain = adapter_round_trip
    config = json.loads((root / "adapter" / ADAPTER_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(root / "base") == adapter_base_model(str(root / "adapter"))
    assert adapter_base_model(str(root / "base")) is None
    adapter_bytes = (root / "adapter" / ADAPTER_WEIGHTS_FILE).stat().st_size
    model_bytes = (root / "base" / "model.safetensors").stat().st_size
    print(f"\ntiny NER model: adapter {adapter_bytes / 1e3:.1f} kB, full model {model_bytes / 1e3:.1f} kB "
          f"({model_bytes / adapter_bytes:.0f}x smaller)")  # fmt: skip
    assert adapter_bytes < model_bytes / 10

    fresh = MuSEForTokenClassification.from_pretrained(root / "base")
    reloaded = load_adapter(fresh, str(root / "adapter")).eval()
    with torch.no_grad():
        again = reloaded(**inputs)
    assert torch.equal(again.logits, trained.logits)
    assert torch.equal(again.predicted_tag_ids, trained.predicted_tag_ids)
    # The adapter changed the model: the base alone predicts otherwise.
    assert not torch.allclose(plain.logits, trained.logits)
    assert not torch.equal(plain.predicted_tag_ids, trained.predicted_tag_ids)

    # transformers' own peft support loads the adapter folder like a whole model.
    from transformers import AutoModelForTokenClassification

    import modeling_muse  # noqa: F401

    auto = AutoModelForTokenClassification.from_pretrained(root / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(auto(**inputs).logits, trained.logits)


def test_the_adapter_files_are_what_the_hub_upload_takes(adapter_round_trip):
    root = adapter_round_trip[0]
    uploaded = files_to_upload(root / "adapter")
    assert {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, "processor_config.json", "processing_muse.py"} <= set(uploaded)
    assert "model.safetensors" not in uploaded


REMOTE_CLIENT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"modeling_muse", "configuration_muse", "processing_muse", "muse_training"}:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
            return None

    sys.meta_path.insert(0, BlockProject())
    import torch
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    base_folder, adapter_folder, inputs_path, output_path = sys.argv[1:]
    torch.set_num_threads(1)
    try:
        import modeling_muse
        importable = True
    except ModuleNotFoundError:
        importable = False
    inputs = torch.load(inputs_path)
    base = AutoModelForTokenClassification.from_pretrained(base_folder, trust_remote_code=True)
    model = PeftModel.from_pretrained(base, adapter_folder).eval()
    direct = AutoModelForTokenClassification.from_pretrained(adapter_folder, trust_remote_code=True).eval()
    with torch.no_grad():
        outputs, direct_outputs = model(**inputs), direct(**inputs)
    json.dump({"importable": importable, "module": type(base).__module__, "logits": outputs.logits.tolist(),
               "tags": outputs.predicted_tag_ids.tolist(), "direct_logits": direct_outputs.logits.tolist()},
              open(output_path, "w"))
    """
)


@pytest.mark.slow
def test_an_adapter_loads_onto_a_remote_code_base_where_the_project_cannot_be_imported(adapter_round_trip, tmp_path):
    root, inputs, trained, _ = adapter_round_trip
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    environment = {
        **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_CLIENT, str(root / "base"), str(root / "adapter"),
         str(tmp_path / "inputs.pt"), str(tmp_path / "report.json")],
        check=True, cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["importable"] is False and report["module"].startswith("transformers_modules.")
    assert torch.equal(torch.tensor(report["logits"]), trained.logits)
    assert torch.equal(torch.tensor(report["direct_logits"]), trained.logits)
    assert report["tags"] == trained.predicted_tag_ids.tolist()


# ----------------------------------------------------------------------------------------------------------------
# The scripts
# ----------------------------------------------------------------------------------------------------------------


def test_without_peft_the_error_names_the_extra_and_the_model_package_does_not_need_it(monkeypatch):
    from muse_training import lora

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=re.escape('pip install "muse-hf[peft]"')):
        lora.require_peft()
    package = REPO_ROOT / "modeling_muse"
    assert not [path.name for path in package.glob("*.py") if re.search(r"^\s*(import|from) peft", path.read_text(), re.M)]


def test_use_peft_needs_a_trained_model_and_lora_options_need_use_peft(capsys):
    sys.path.insert(0, str(REPO_ROOT))
    import run_mner

    from muse_training.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, ["--use_peft"])
    assert "--use_peft adapts a trained MuSE model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(run_mner.TASK, ["--lora_r", "4"])
    assert "--lora_r set LoRA adapters up: add --use_peft" in capsys.readouterr().err


def _sample_labels(dataset: str) -> list[str]:
    from datasets_scripts import load_muse_dataset

    feature = load_muse_dataset(dataset)["train"].features["ner_tags" if "twitter" in dataset else "label"]
    return list(getattr(feature, "feature", feature).names)


def _save_base(folder: Path, text_model: Path, model_class, labels: list[str]) -> Path:
    """A tiny MuSE in the configuration of tests/test_training.py's runs, saved as the scripts save a model."""
    from processing_muse import MuSEProcessor

    torch.manual_seed(0)
    model = model_class.from_text_vision_pretrained(
        str(text_model), "test_resnet", pretrained_vision=False, max_text_length=16, image_grid_size=4,
        num_cross_layers=2, num_attention_heads=2, exchange_start_layer=1, exchange_end_layer=2,
        caption_decoder_dim=16, pixelcnn_filters=8, pixelcnn_resnet_blocks=1,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    model.save_pretrained(folder)
    MuSEProcessor.from_text_vision_pretrained(
        str(text_model), "test_resnet", max_length=16, label_names=labels, image_size=32
    ).save_pretrained(folder)
    return folder


def _peft_args(base: Path, output_dir: Path, *extra: str) -> list[str]:
    # tests/test_training.py's tiny run, less what the base model brings (towers, image size, MuSE hyperparameters).
    return [
        "--model_name_or_path", str(base), "--use_peft", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--max_train_samples", "24", "--max_eval_samples", "10",
        "--num_train_epochs", "2", "--logging_steps", "2", "--learning_rate", "1e-2", "--head_learning_rate", "1e-2",
        "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.mark.slow
def test_run_mner_with_use_peft_trains_resumes_and_continues_an_adapter(
    tiny_text_model, script_env, tmp_path, monkeypatch, capsys
):
    """A --use_peft run saves an adapter (and its card) that loads onto the base; the same run resumed from its
    mid-epoch checkpoint ends with the same adapter; the adapter folder as --model_name_or_path is evaluated."""
    base = _save_base(tmp_path / "base", tiny_text_model, MuSEForTokenClassification, _sample_labels("twitter2017_sample"))
    output_dir = tmp_path / "adapter"
    result = _run([sys.executable, "run_mner.py", *_peft_args(base, output_dir, "--checkpointing_steps", "3")],
                  script_env)  # fmt: skip
    files = {path.name for path in output_dir.iterdir()}
    assert {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, "processor_config.json", "README.md", "all_results.json"} <= files
    assert "model.safetensors" not in files and "config.json" not in files
    assert "LoRA: a new adapter (r=8, alpha=16, dropout=0.1)" in result.stderr
    adapter_bytes = (output_dir / ADAPTER_WEIGHTS_FILE).stat().st_size
    model_bytes = (base / "model.safetensors").stat().st_size
    print(f"\nrun_mner --use_peft (tiny): adapter {adapter_bytes / 1e3:.1f} kB, base model {model_bytes / 1e3:.1f} kB")
    card = (output_dir / "README.md").read_text()
    assert "library_name: peft" in card and "## LoRA adapter" in card
    # The base is a local folder: named in the text, not as the metadata's base_model (a Hub model id).
    assert "base_model" not in card.split("\n---\n")[0] and "LoRA adapter (peft) of the MuSE model `base`" in card
    assert "PeftModel.from_pretrained(base, \"adapter\")" in card
    results = json.loads((output_dir / "all_results.json").read_text())
    # The card's last snippet loads the adapter folder like a whole model (transformers' peft support) and tags a post.
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.jpg")
    code = card.split("```python\n")[-1].split("```")[0].replace('"photo.jpg"', repr(str(tmp_path / "photo.jpg")))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, "model card", "exec"), {})
    assert capsys.readouterr().out.startswith("[")

    # The saved adapter, loaded onto the base here, scores the test posts as the run reported.
    from transformers import AutoProcessor

    import run_mner  # noqa: F401  (the repository root is on sys.path through test collection)
    from datasets_scripts import load_muse_dataset
    from muse_training.evaluation import EvaluationOutput

    model = load_adapter(MuSEForTokenClassification.from_pretrained(base), str(output_dir)).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    test = load_muse_dataset("twitter2017_sample")["test"].select(range(10))
    with torch.no_grad():
        batch = run_mner.MNERCollator(processor)(list(test))
        outputs = model(**batch)
    evaluation = EvaluationOutput(outputs.predicted_tag_ids.numpy(), batch["labels"].numpy(), float(outputs.loss))
    rescored = run_mner.ner_metrics(evaluation, [model.config.id2label[i] for i in range(model.config.num_labels)])
    assert rescored["f1"] == pytest.approx(results["test_f1"], abs=1e-6)

    # Resume: the folder as a run killed after its first checkpoint (step 3 of 6 in epoch 1) leaves it.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed_dir, ignore=shutil.ignore_patterns("step_6", "step_9", "step_12"))
    for name in ("all_results.json", "README.md", "best_model.json", ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE):
        (resumed_dir / name).unlink()
    resumed = _run(
        [sys.executable, "run_mner.py",
         *_peft_args(base, resumed_dir, "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest")],
        script_env,
    )  # fmt: skip
    assert f"Resumed from {resumed_dir / 'step_3'}" in resumed.stderr
    first, second = load_file(output_dir / ADAPTER_WEIGHTS_FILE), load_file(resumed_dir / ADAPTER_WEIGHTS_FILE)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6, msg=f"{name} differs")

    # The adapter folder as --model_name_or_path: evaluated on its base, the same test scores.
    evaluated = _run(
        [sys.executable, "run_mner.py", "--model_name_or_path", str(output_dir), "--do_train", "false",
         "--max_eval_samples", "10", "--per_device_eval_batch_size", "4", "--output_dir", str(tmp_path / "eval")],
        script_env,
    )  # fmt: skip
    assert f"the adapter {output_dir} on {base}" in evaluated.stderr
    again = json.loads((tmp_path / "eval" / "all_results.json").read_text())
    assert again["test_f1"] == pytest.approx(results["test_f1"], abs=1e-6)


@pytest.mark.slow
def test_run_msa_with_use_peft_saves_an_adapter(tiny_text_model, script_env, tmp_path):
    base = _save_base(tmp_path / "base", tiny_text_model, MuSEForSequenceClassification,
                      _sample_labels("mvsa_single_sample"))  # fmt: skip
    output_dir = tmp_path / "adapter"
    _run([sys.executable, "run_msa.py", *_peft_args(base, output_dir, "--lora_r", "4", "--lora_target_modules",
                                                    "qkv", "attention_output")], script_env)  # fmt: skip
    config = json.loads((output_dir / ADAPTER_CONFIG_FILE).read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["attention_output", "qkv"]
    assert sorted(config["modules_to_save"]) == ["classifier.classifier", "muse.fusion"]
    saved = load_file(output_dir / ADAPTER_WEIGHTS_FILE)
    assert any("cross_transformer.layers.1.attention_output.lora_A" in name for name in saved)
    assert not any("text_encoder" in name for name in saved)
