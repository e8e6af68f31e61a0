"""Gradient checkpointing (issue 21): the CrossTransformer layers, the text encoder, the image tower and the PixelCNN++
decoder's blocks recompute their activations in the backward pass, with the gradients of a step without
checkpointing."""

import copy
import warnings

import pytest
import torch
from transformers import ViTConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from modeling_muse import MuSEForSequenceClassification, MuSEForTokenClassification
from modeling_muse.cross_transformer import CrossTransformerLayer
from modeling_muse.exchange import exchange_least_attended_tokens
from modeling_muse.pixelcnn_decoder import GatedResnet
from tiny_models import NER_LABELS, SENTIMENT_LABELS, TINY_DECODER_SIZES, TINY_LENGTH, tiny_config

TOWERS = {
    "timm resnet": dict(vision_model_name="test_resnet"),
    "timm vit": dict(vision_model_name="vit_tiny_patch16_224", vision_model_kwargs={"img_size": 32, "patch_size": 8}),
    "transformers vit": dict(
        vision_model_name="",
        vision_config=ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37),
    ),
}
# Small regularizer decoders, so that the full loss of eq. 14 runs.
REGULARIZERS = dict(caption_loss_weight=0.5, generation_loss_weight=0.5, **TINY_DECODER_SIZES)


def batch(task: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(2, TINY_LENGTH, dtype=torch.long)
    attention_mask[0, 10:] = 0
    inputs = {
        "input_ids": torch.randint(1000, 2000, (2, TINY_LENGTH), generator=generator),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(2, 3, 32, 32, generator=generator),
        "decoder_pixel_values": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
    }
    if task == "ner":
        word_start_mask = torch.zeros(2, TINY_LENGTH, dtype=torch.long)
        word_start_mask[:, 1:9:2] = 1
        tags = torch.randint(0, len(NER_LABELS), (2, TINY_LENGTH), generator=generator)
        inputs["word_start_mask"] = word_start_mask
        inputs["labels"] = torch.where(word_start_mask.bool(), tags, -100)
    else:
        inputs["labels"] = torch.tensor([0, 2])
    return inputs


def build(task: str, tower: str = "timm resnet", **overrides):
    torch.manual_seed(0)
    if task == "ner":
        return MuSEForTokenClassification(tiny_config(**TOWERS[tower], **overrides)).train()
    return MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS, **TOWERS[tower], **overrides)).train()


def gradients(model, inputs) -> dict[str, torch.Tensor]:
    # Same seed for both runs: dropout (kept on) draws the same masks, and checkpointing restores the random state
    # before each recomputation.
    torch.manual_seed(1234)
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()
    return {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}


def enable(model, **checkpointing_kwargs) -> None:
    with warnings.catch_warnings():
        # transformers 5 calls gradient_checkpointing_enable a deprecated alias of activation_checkpointing_enable.
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs or None)


def disable(model) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_disable()


class Calls:
    """Counts the calls of some modules (through their forward hooks) or of a layer's ``attend``."""

    def __init__(self) -> None:
        self.count = 0

    def hook(self, *_):
        self.count += 1

    def wrap(self, function):
        def counted(*args, **kwargs):
            self.count += 1
            return function(*args, **kwargs)

        return counted


def first_layer_part(backbone: torch.nn.Module) -> torch.nn.Module:
    """A module that runs inside the first checkpointed block of a tower: the first child of a transformers model's
    first `GradientCheckpointingLayer`, or a timm model's first block."""
    if hasattr(backbone, "layer1"):
        return backbone.layer1[0]
    if hasattr(backbone, "blocks"):
        return backbone.blocks[0]
    layer = next(module for module in backbone.modules() if isinstance(module, GradientCheckpointingLayer))
    return next(layer.children())


def count_calls(model, task_inputs) -> dict[str, int]:
    """How often, in one forward + backward, the first CrossTransformer layer attends, and the first layers of the
    text encoder and of the image tower start running. (Counted on entry: torch's checkpointing stops a recomputation
    once it has what the backward needs, which can be before a block's end.)"""
    muse = model.base_muse
    layer = muse.cross_transformer.layers[0]
    cross, text, image = Calls(), Calls(), Calls()
    layer.attend = cross.wrap(layer.attend)
    handles = [
        first_layer_part(muse.text_encoder.backbone).register_forward_pre_hook(text.hook),
        first_layer_part(muse.image_encoder.backbone).register_forward_pre_hook(image.hook),
    ]
    try:
        torch.manual_seed(0)
        model(**task_inputs).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        del layer.attend
    return {"cross": cross.count, "text": text.count, "image": image.count}


@pytest.mark.parametrize("task", ["ner", "sentiment"])
@pytest.mark.parametrize("tower", list(TOWERS))
def test_checkpointing_leaves_every_gradient_as_it_is(task, tower):
    model = build(task, tower, cross_dropout=0.2)
    inputs = batch(task)
    plain = gradients(model, inputs)
    checkpointed_model = copy.deepcopy(model)
    enable(checkpointed_model)
    checkpointed = gradients(checkpointed_model, inputs)
    assert checkpointed.keys() == plain.keys()
    # Every parameter that trains gets a gradient (the heads, the CrossTransformer, both towers).
    assert len(plain) == sum(1 for p in model.parameters() if p.requires_grad)
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_with_the_regularizers_of_eq_14():
    model = build("ner", **REGULARIZERS)
    inputs = batch("ner")
    plain = gradients(model, inputs)
    assert any(name.startswith("muse.regularizers.") for name in plain)
    checkpointed_model = copy.deepcopy(model)
    enable(checkpointed_model)
    checkpointed = gradients(checkpointed_model, inputs)
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_the_pixelcnn_blocks_are_checkpointed_with_the_rest(use_reentrant):
    model = build("ner", **REGULARIZERS)
    inputs = batch("ner")
    blocks = [module for module in model.modules() if isinstance(module, GatedResnet)]
    assert blocks
    plain = gradients(model, inputs)
    first_block = Calls()
    handle = blocks[0].conv_in.register_forward_pre_hook(first_block.hook)
    enable(model, use_reentrant=use_reentrant)
    assert all(block.gradient_checkpointing for block in blocks)
    checkpointed = gradients(model, inputs)
    # Once in the forward pass, once more when the backward pass recomputes it.
    assert first_block.count == 2
    handle.remove()
    # Reentrant checkpointing passes gradients only to positional tensors: the skip inputs must be among them.
    for name in (name for name in plain if ".generation_decoder." in name):
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    disable(model)
    assert not any(block.gradient_checkpointing for block in blocks)


@pytest.mark.parametrize("overrides", [dict(use_image=False), dict(use_cross_transformer=False)], ids=["only-T", "w/o-CT"])
def test_checkpointing_in_the_ablations(overrides):
    model = build("ner", **overrides)
    inputs = batch("ner")
    plain = gradients(model, inputs)
    checkpointed_model = copy.deepcopy(model)
    enable(checkpointed_model)
    checkpointed = gradients(checkpointed_model, inputs)
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_in_the_only_image_ablation():
    model = build("sentiment", use_text=False)
    inputs = batch("sentiment")
    plain = gradients(model, inputs)
    enable(model)
    assert model.is_activation_checkpointing and model.muse.image_encoder.is_gradient_checkpointing
    for name, gradient in gradients(model, inputs).items():
        torch.testing.assert_close(gradient, plain[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("tower", list(TOWERS))
def test_enable_reaches_the_text_encoder_and_the_tower_and_disable_undoes_it(tower):
    model = build("ner", tower)
    muse = model.muse
    inputs = batch("ner")
    assert not model.is_activation_checkpointing
    plain_calls = count_calls(model, inputs)
    # The layer attends each of the two streams once.
    assert plain_calls == {"cross": 2, "text": 1, "image": 1}

    enable(model)
    assert all(layer.gradient_checkpointing for layer in muse.cross_transformer.layers)
    assert muse.text_encoder.backbone.is_activation_checkpointing
    assert muse.image_encoder.is_gradient_checkpointing
    if muse.image_encoder.is_timm:
        assert muse.image_encoder.backbone.grad_checkpointing
    # Checkpointed blocks run again in the backward pass.
    assert count_calls(model, inputs) == {name: 2 * count for name, count in plain_calls.items()}

    disable(model)
    assert not model.is_activation_checkpointing
    assert not muse.text_encoder.backbone.is_activation_checkpointing
    assert not muse.image_encoder.is_gradient_checkpointing
    assert count_calls(model, inputs) == plain_calls


def test_evaluation_does_not_recompute():
    model = build("ner")
    enable(model)
    model.eval()
    layer = model.muse.cross_transformer.layers[0]
    calls = Calls()
    layer.attend = calls.wrap(layer.attend)
    with torch.no_grad():
        model(**{name: value for name, value in batch("ner").items() if name != "labels"})
    assert calls.count == 2


def test_the_layer_forward_is_attend_exchange_feed_forward():
    """The checkpointing unit computes what its two sub-modules and the exchange compute one by one (eqs. 8-13)."""
    config = tiny_config(cross_dropout=0.3)
    torch.manual_seed(0)
    layer = CrossTransformerLayer(config).train()
    generator = torch.Generator().manual_seed(3)
    text, image = torch.randn(2, 9, 32, generator=generator), torch.randn(2, 17, 32, generator=generator)
    text_valid = torch.ones(2, 8, dtype=torch.bool)
    text_valid[1, 5:] = False
    image_valid = torch.ones(2, 16, dtype=torch.bool)

    torch.manual_seed(7)
    by_hand = [layer.attend(text, torch.nn.functional.pad(text_valid, (1, 0), value=True), True),
               layer.attend(image, torch.nn.functional.pad(image_valid, (1, 0), value=True), True)]
    streams, masks = exchange_least_attended_tokens(
        [states for states, _, _ in by_hand], [row for _, row, _ in by_hand], [text_valid, image_valid], 0.25,
        "residual",
    )
    streams = [layer.feed_forward(stream) for stream in streams]

    torch.manual_seed(7)
    out = layer(text, image, text_valid, image_valid, exchange=True, exchange_ratio=0.25)
    for got, expected in zip(out, [*streams, by_hand[0][1], by_hand[1][1], *masks]):
        assert torch.equal(got, expected)

    only_text = layer(text, None, text_valid, None)
    assert only_text[1] is None and only_text[2] is None and only_text[4] is None
    with pytest.raises(ValueError, match="exchange=True needs both streams"):
        layer(text, None, text_valid, None, exchange=True)


@pytest.mark.parametrize("script_name", ["run_mner", "run_msa"])
def test_the_scripts_gradient_checkpointing_flag_reaches_the_model(script_name, tiny_text_model):
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts are files at the repository root
    script = importlib.import_module(script_name)
    from accelerate import PartialState

    from muse_training.arguments import parse_args
    from muse_training.models import load_model

    PartialState()  # as the scripts' Accelerator does, for accelerate's logging

    model_class = MuSEForTokenClassification if script_name == "run_mner" else MuSEForSequenceClassification
    towers = ["--text_model_name_or_path", str(tiny_text_model), "--vision_model_name_or_path", "test_resnet",
              "--pretrained_vision", "false", "--num_attention_heads", "4"]
    labels = NER_LABELS if script_name == "run_mner" else SENTIMENT_LABELS
    for argv, expected in ((towers, False), ([*towers, "--gradient_checkpointing"], True)):
        args = parse_args(script.TASK, argv)
        assert args.gradient_checkpointing is expected
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the scripts use transformers' current entry point
            model = load_model(args, model_class, labels, script.TASK.head_modules)
        assert model.is_activation_checkpointing is expected
        assert model.muse.text_encoder.backbone.is_activation_checkpointing is expected
        assert model.muse.image_encoder.is_gradient_checkpointing is expected
