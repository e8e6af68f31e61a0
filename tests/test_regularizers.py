import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

import modeling_muse  # noqa: F401  registers MuSE with the Auto classes
from configuration_muse import ABLATION_VARIANTS
from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification, MuSEModel
from modeling_muse.regularizers import EmbeddingRegularizers
from test_modeling import random_inputs
from tiny_models import SENTIMENT_LABELS, TINY_DECODER_SIZES, tiny_config

DECODER_SIZES = dict(caption_loss_weight=0.5, generation_loss_weight=0.25, pixelcnn_mixtures=2, **TINY_DECODER_SIZES)


def training_inputs(batch=2, seed=0):
    inputs = random_inputs(batch, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs["decoder_pixel_values"] = torch.randint(0, 256, (batch, 3, 32, 32), generator=generator) / 255 * 2 - 1
    inputs["labels"] = torch.where(inputs["word_start_mask"].bool(), 1, -100)
    return inputs


def test_total_loss_combines_the_three_terms():
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config(**DECODER_SIZES)).train()
    outputs = model(**training_inputs())
    assert outputs.caption_loss is not None and outputs.generation_loss is not None
    expected = outputs.task_loss + 0.5 * outputs.caption_loss + 0.25 * outputs.generation_loss
    torch.testing.assert_close(outputs.loss, expected)
    # L_ti is the nats of a whole 3x32x32 image; bits/dim is its per-sub-pixel value in bits.
    bits_per_dim = outputs.generation_loss.detach() / (3 * 32 * 32 * torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(outputs.generation_bits_per_dim, bits_per_dim)
    assert all(torch.isfinite(term) for term in (outputs.task_loss, outputs.caption_loss, outputs.generation_loss))


def test_caption_loss_reaches_the_image_encoder_and_generation_loss_the_text_encoder():
    torch.manual_seed(0)
    model = MuSEModel(tiny_config(**DECODER_SIZES)).train()
    inputs = {k: v for k, v in training_inputs().items() if k != "labels"}

    def gradient_norms(loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        image = sum(p.grad.abs().sum() for p in model.image_encoder.parameters() if p.grad is not None)
        text = sum(p.grad.abs().sum() for p in model.text_encoder.parameters() if p.grad is not None)
        return float(image), float(text)

    outputs = model(**inputs)
    image_from_caption, text_from_caption = gradient_norms(outputs.caption_loss)
    image_from_generation, text_from_generation = gradient_norms(outputs.generation_loss)
    assert image_from_caption > 0 and text_from_generation > 0
    # Each decoder reads one modality only (eqs. 5-6).
    assert text_from_caption == 0 and image_from_generation == 0


def test_decoders_never_run_in_eval_mode_or_without_labels():
    model = MuSEForTokenClassification(tiny_config(**DECODER_SIZES))
    calls = []
    for decoder in (model.muse.regularizers.caption_decoder, model.muse.regularizers.generation_decoder):
        decoder.register_forward_hook(lambda module, args, output: calls.append(type(module).__name__))
    inputs = training_inputs()
    model.eval()
    outputs = model(**inputs)
    assert calls == [] and outputs.caption_loss is None and outputs.generation_loss is None
    model.train()
    unlabelled = {k: v for k, v in inputs.items() if k != "labels"}
    assert model(**unlabelled).loss is None and calls == []
    model(**inputs)
    assert sorted(calls) == ["CaptionDecoder", "PixelCNNPlusPlusDecoder"]


def test_missing_decoder_images_in_training_name_the_argument():
    model = MuSEForTokenClassification(tiny_config(**DECODER_SIZES)).train()
    inputs = training_inputs()
    del inputs["decoder_pixel_values"]
    with pytest.raises(ValueError, match="decoder_pixel_values"):
        model(**inputs)


def parameter_names(model):
    return {name for name, _ in model.named_parameters()}


def test_only_l_task_has_no_decoder_weights_and_serving_checkpoints_load_everywhere(tmp_path):
    plain = MuSEForTokenClassification(tiny_config(**{**DECODER_SIZES, **ABLATION_VARIANTS["only_l_task"]}))
    assert plain.muse.regularizers is None
    assert not any("regularizers" in name for name in parameter_names(plain))

    trained = MuSEForTokenClassification(tiny_config(**DECODER_SIZES)).eval()
    assert any("caption_decoder" in name for name in parameter_names(trained))
    inputs = random_inputs()
    with torch.no_grad():
        expected = trained(**inputs).logits
    trained.remove_regularizers()
    trained.save_pretrained(tmp_path)
    for auto_class in (AutoModel, AutoModelForTokenClassification):
        loaded = auto_class.from_pretrained(tmp_path).eval()
        assert not any("regularizers" in name for name in parameter_names(loaded))
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.caption_loss_weight == 0.5 and not reloaded.config.include_regularizers
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected)


@pytest.mark.parametrize("variant", sorted(ABLATION_VARIANTS))
@pytest.mark.parametrize("task", ["ner", "msa"])
def test_every_ablation_variant_trains_one_step_saves_and_reloads(variant, task, tmp_path):
    if variant == "only_i" and task == "ner":
        with pytest.raises(ValueError, match="only-I"):
            MuSEForTokenClassification(tiny_config(**{**DECODER_SIZES, **ABLATION_VARIANTS[variant]}))
        return
    torch.manual_seed(0)
    if task == "ner":
        model_class, auto_class = MuSEForTokenClassification, AutoModelForTokenClassification
        config = tiny_config(**{**DECODER_SIZES, **ABLATION_VARIANTS[variant]})
        inputs = training_inputs()
    else:
        model_class, auto_class = MuSEForSequenceClassification, AutoModelForSequenceClassification
        config = tiny_config(SENTIMENT_LABELS, **{**DECODER_SIZES, **ABLATION_VARIANTS[variant]})
        inputs = {**training_inputs(), "labels": torch.tensor([0, 2])}
    model = model_class(config).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    outputs = model(**inputs)
    outputs.loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "one optimisation step changed nothing"
    if config.use_image:
        assert any(name.startswith("muse.image_encoder") for name in changed)
    if config.use_text:
        assert any(name.startswith("muse.text_encoder") for name in changed)
    assert (outputs.caption_loss is not None) == config.has_caption_decoder
    assert (outputs.generation_loss is not None) == config.has_generation_decoder

    model.eval()
    model.save_pretrained(tmp_path)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert parameter_names(loaded) == parameter_names(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_regularizers_are_built_only_for_weighted_decoders():
    both = EmbeddingRegularizers(tiny_config(**DECODER_SIZES))
    caption_only = EmbeddingRegularizers(tiny_config(**{**DECODER_SIZES, "generation_loss_weight": 0.0}))
    assert both.caption_decoder is not None and both.generation_decoder is not None
    assert caption_only.generation_decoder is None and not hasattr(caption_only, "text_projection")
