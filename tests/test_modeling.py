import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from modeling_muse import (
    MuSEConfig,
    MuSEForSequenceClassification,
    MuSEForTokenClassification,
    MuSEModel,
    MuSEProcessor,
)
from modeling_muse.heads import CRFTaggingHead, WordPositions
from tiny_models import MINILM_DIR, NER_LABELS, SENTIMENT_LABELS, TINY_LENGTH, tiny_config, tiny_processor

REPO = Path(__file__).resolve().parents[1]


def random_inputs(batch=2, seed=0, image_size=32):
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, TINY_LENGTH, dtype=torch.long)
    attention_mask[0, 10:] = 0
    word_start_mask = torch.zeros(batch, TINY_LENGTH, dtype=torch.long)
    word_start_mask[:, 1:9:2] = 1
    return {
        "input_ids": torch.randint(1000, 2000, (batch, TINY_LENGTH), generator=generator),
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch, 3, image_size, image_size, generator=generator),
        "word_start_mask": word_start_mask,
    }


@pytest.fixture(scope="module")
def ner_model():
    torch.manual_seed(0)
    return MuSEForTokenClassification(tiny_config()).eval()


@pytest.fixture(scope="module")
def sentiment_model():
    torch.manual_seed(0)
    return MuSEForSequenceClassification(tiny_config(SENTIMENT_LABELS)).eval()


def test_output_shapes(ner_model, sentiment_model):
    inputs = random_inputs()
    outputs = ner_model.muse(**inputs, output_cls_attentions=True, output_exchange_masks=True)
    d = ner_model.config.hidden_size
    assert outputs.fusion_embeddings.shape == (2, TINY_LENGTH, d)
    assert outputs.pooler_output.shape == (2, d)
    assert outputs.text_last_hidden_state.shape == outputs.image_last_hidden_state.shape == (2, TINY_LENGTH + 1, d)
    assert len(outputs.text_cls_attentions) == 3 and outputs.text_cls_attentions[0].shape == (2, TINY_LENGTH + 1)
    assert len(outputs.image_exchange_masks) == 2 and outputs.image_exchange_masks[0].dtype == torch.bool
    ner = ner_model(**inputs)
    assert ner.logits.shape == (2, TINY_LENGTH, len(NER_LABELS))
    assert ner.predicted_tag_ids.shape == (2, TINY_LENGTH)
    assert ((ner.predicted_tag_ids != -100) == inputs["word_start_mask"].bool()).all()
    sentiment = sentiment_model(**{k: v for k, v in inputs.items()}, labels=torch.tensor([0, 2]))
    assert sentiment.logits.shape == (2, 3) and sentiment.loss.ndim == 0


def test_diagnostics_are_off_by_default(ner_model):
    outputs = ner_model(**random_inputs())
    assert outputs.text_cls_attentions is None and outputs.image_exchange_masks is None


def test_initialisation_covers_explicit_parameters(ner_model):
    cls_vectors = torch.cat([ner_model.muse.cross_transformer.text_cls, ner_model.muse.cross_transformer.image_cls])
    expected_std = (2 / ner_model.config.hidden_size) ** 0.5  # Kaiming normal, fan-in d
    assert torch.isfinite(cls_vectors).all()
    assert 0.5 * expected_std < cls_vectors.std().item() < 1.5 * expected_std
    transitions = ner_model.tagger.crf.transitions
    assert transitions.abs().max() <= 0.1 and transitions.abs().max() > 0


def test_padding_does_not_change_ner_predictions(ner_model):
    inputs = random_inputs(batch=4, seed=3)
    inputs["attention_mask"][1, 5:] = 0
    inputs["word_start_mask"][3] = 0  # a post without words
    with torch.no_grad():
        batched = ner_model(**inputs)
        for index in range(4):
            single = ner_model(**{name: value[index : index + 1] for name, value in inputs.items()})
            assert torch.equal(single.predicted_tag_ids[0], batched.predicted_tag_ids[index])
            torch.testing.assert_close(single.logits[0], batched.logits[index], rtol=1e-5, atol=1e-5)
    assert (batched.predicted_tag_ids[3] == -100).all()


def test_image_content_changes_ner_emissions(ner_model):
    inputs = random_inputs()
    changed = dict(inputs, pixel_values=torch.randn_like(inputs["pixel_values"]) * 3)
    with torch.no_grad():
        assert not torch.allclose(ner_model(**inputs).logits, ner_model(**changed).logits, atol=1e-4)


def test_text_content_changes_sentiment_logits(sentiment_model):
    inputs = random_inputs()
    changed = dict(inputs, input_ids=torch.randint(3000, 4000, inputs["input_ids"].shape))
    with torch.no_grad():
        assert not torch.allclose(sentiment_model(**inputs).logits, sentiment_model(**changed).logits, atol=1e-4)


def test_crf_loss_and_decoding_on_a_hand_checkable_case():
    head = CRFTaggingHead(hidden_size=2, num_labels=2, dropout=0.0)
    with torch.no_grad():
        head.crf.start_transitions.copy_(torch.tensor([0.0, 1.0]))
        head.crf.end_transitions.copy_(torch.tensor([0.0, 0.0]))
        head.crf.transitions.copy_(torch.tensor([[0.0, 0.0], [-5.0, 2.0]]))
    # Two words at sub-word positions 1 and 3 (position 2 continues word 0).
    emissions = torch.tensor([[[9.0, 9.0], [2.0, 0.0], [9.0, 9.0], [0.0, 1.0]]])
    words = WordPositions(torch.tensor([[0, 1, 0, 1]]))
    # Path scores: (0,0) 2+0+0+0 = 2; (0,1) 2+1 = 3; (1,0) 1+0-5+0 = -4; (1,1) 1+0+2+1 = 4.
    scores = torch.tensor([2.0, 3.0, -4.0, 4.0])
    log_partition = torch.logsumexp(scores, 0)
    labels = torch.tensor([[-100, 0, -100, 1]])
    loss = head.negative_log_likelihood(emissions, words, labels)
    torch.testing.assert_close(loss, log_partition - 3.0)
    assert head.decode(emissions, words).tolist() == [[-100, 1, -100, 1]]


def test_crf_rejects_unlabelled_word_starts():
    head = CRFTaggingHead(hidden_size=2, num_labels=2, dropout=0.0)
    words = WordPositions(torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="labels"):
        head.negative_log_likelihood(torch.zeros(1, 3, 2), words, torch.tensor([[0, -100, -100]]))


def test_token_classification_loss_trains(ner_model):
    model = MuSEForTokenClassification(tiny_config())
    inputs = random_inputs()
    labels = torch.where(inputs["word_start_mask"].bool(), torch.tensor(1), torch.tensor(-100))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    assert (model(**inputs).predicted_tag_ids[labels != -100] == 1).all()


@pytest.mark.parametrize(
    "change, argument",
    [
        ({"input_ids": torch.zeros(2, 12, dtype=torch.long)}, "input_ids"),
        ({"pixel_values": torch.zeros(2, 1, 32, 32)}, "pixel_values"),
        ({"pixel_values": torch.zeros(3, 3, 32, 32)}, "pixel_values"),
        ({"attention_mask": torch.ones(2, 15, dtype=torch.long)}, "attention_mask"),
        ({"word_start_mask": torch.ones(2, 15, dtype=torch.long)}, "word_start_mask"),
        ({"labels": torch.zeros(2, 15, dtype=torch.long)}, "labels"),
    ],
)
def test_wrong_shapes_name_the_argument(ner_model, change, argument):
    inputs = {**random_inputs(), **change}
    with pytest.raises(ValueError, match=argument):
        ner_model(**inputs)


def test_sentiment_labels_shape_is_checked(sentiment_model):
    with pytest.raises(ValueError, match="labels"):
        sentiment_model(**random_inputs(), labels=torch.tensor([[0], [1]]))


def test_auto_classes_are_registered(tmp_path, ner_model, sentiment_model):
    assert AutoConfig.for_model("muse").__class__ is MuSEConfig
    ner_model.save_pretrained(tmp_path / "ner")
    sentiment_model.save_pretrained(tmp_path / "msa")
    tiny_processor().save_pretrained(tmp_path / "ner")
    assert (tmp_path / "ner" / "model.safetensors").is_file()
    assert isinstance(AutoModel.from_pretrained(tmp_path / "ner"), MuSEModel)
    assert isinstance(AutoModelForTokenClassification.from_pretrained(tmp_path / "ner"), MuSEForTokenClassification)
    assert isinstance(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "msa"), MuSEForSequenceClassification
    )
    processor = AutoProcessor.from_pretrained(tmp_path / "ner")
    assert isinstance(processor, MuSEProcessor) and processor.label_names == NER_LABELS


LOAD_IN_FRESH_PROCESS = """
import sys, torch
import modeling_muse
from transformers import AutoModel, AutoModelForTokenClassification
torch.set_num_threads(1)  # as in the test process: the same reduction order gives bit-identical outputs
folder, inputs_path, out_path = sys.argv[1:]
inputs = torch.load(inputs_path)
base = AutoModel.from_pretrained(folder).eval()
tagger = AutoModelForTokenClassification.from_pretrained(folder).eval()
with torch.no_grad():
    torch.save({
        "fusion": base(**{k: v for k, v in inputs.items() if k != "word_start_mask"}).fusion_embeddings,
        "logits": tagger(**inputs).logits,
        "tags": tagger(**inputs).predicted_tag_ids,
    }, out_path)
"""


def test_save_and_load_in_a_fresh_process_give_identical_outputs(tmp_path, ner_model):
    ner_model.save_pretrained(tmp_path / "model")
    inputs = random_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(tmp_path / "model"), str(tmp_path / "inputs.pt"),
         str(tmp_path / "out.pt")],
        check=True, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    loaded = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(loaded["fusion"], ner_model.muse(**inputs).fusion_embeddings)
        expected = ner_model(**inputs)
    assert torch.equal(loaded["logits"], expected.logits)
    assert torch.equal(loaded["tags"], expected.predicted_tag_ids)


def test_from_text_vision_pretrained_keeps_the_text_weights(tmp_path):
    from transformers import AutoModel as TextAutoModel

    model = MuSEForTokenClassification.from_text_vision_pretrained(
        str(MINILM_DIR), "test_resnet", pretrained_vision=False, num_cross_layers=2, num_attention_heads=6,
        exchange_start_layer=1, exchange_end_layer=2, image_grid_size=4, max_text_length=16,
        caption_loss_weight=0.0, generation_loss_weight=0.0, id2label=dict(enumerate(NER_LABELS)),
    )
    assert model.config.hidden_size == 384 and model.config.text_config.num_hidden_layers == 6
    reference = TextAutoModel.from_pretrained(MINILM_DIR)
    ours = model.muse.text_encoder.backbone.state_dict()
    for name, tensor in reference.state_dict().items():
        if not name.startswith("pooler"):
            assert torch.equal(ours[name], tensor), name
    assert not any(name.startswith("pooler") for name in ours)
    assert isinstance(model.muse.text_encoder.projection, torch.nn.Identity)


def test_vision_trainable_stages_freezes_the_early_backbone():
    model = MuSEModel(tiny_config(vision_trainable_stages=2))
    trainable = {name.split(".")[0] for name, p in model.image_encoder.backbone.named_parameters() if p.requires_grad}
    frozen = {name.split(".")[0] for name, p in model.image_encoder.backbone.named_parameters() if not p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}
    assert all(p.requires_grad for p in model.image_encoder.projection.parameters())


def test_processor_outputs_feed_the_models(ner_model, sentiment_model):
    from PIL import Image

    processor = tiny_processor()
    batch = processor(
        images=[Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 20), "blue")],
        text=[["Obama", "visits", "Paris"], ["hello"]],
        word_labels=[[1, 0, 3], [0]],
        return_tensors="pt",
    )
    outputs = ner_model(**batch)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    assert (outputs.predicted_tag_ids != -100).sum(dim=1).tolist() == [3, 1]
    batch.pop("labels")
    assert sentiment_model(**batch).logits.shape == (2, 3)
    # Padded to the longest post, [CLS] Obama visits Paris [SEP], not to max_length.
    assert batch["input_ids"].shape[1] == 5
    assert MuSEModel(tiny_config())(**batch).fusion_embeddings.shape[1] == 5


POSTS = [["Lionel", "Messi", "visits", "Paris", "with", "friends"], ["RT", "@nba", ":", "Kawhi", "wins"], ["hello"]]
POST_LABELS = [[1, 2, 0, 3, 0, 0], [0, 0, 0, 1, 0], [0]]


def _padding_pair(processor):
    from PIL import Image

    images = [Image.new("RGB", (40, 30), color) for color in ("red", "green", "blue")]
    encodings = [
        processor(images=images, text=POSTS, word_labels=POST_LABELS, padding=padding, return_tensors="pt")
        for padding in ("longest", "max_length")
    ]
    assert encodings[0]["input_ids"].shape[1] < encodings[1]["input_ids"].shape[1] == TINY_LENGTH
    return encodings


def _without_labels(encoding):
    return {name: value for name, value in encoding.items() if name != "labels"}


@pytest.mark.parametrize("training", [False, True])
def test_padding_to_the_longest_post_changes_no_valid_output(training):
    # Every dropout off and no regularizer noise, so that training mode is deterministic; the exchange is on.
    text_config = tiny_config().text_config
    text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = 0.0
    config = tiny_config(
        text_config=text_config, cross_dropout=0.0, token_classifier_dropout=0.0, caption_dropout=0.0,
        pixelcnn_dropout=0.0, noise_std=0.0, caption_loss_weight=1e-4, generation_loss_weight=1e-4,
        caption_decoder_dim=16, pixelcnn_filters=8, pixelcnn_resnet_blocks=1,
    )
    torch.manual_seed(0)
    model = MuSEForTokenClassification(config).train(training)
    torch.nn.init.normal_(model.tagger.classifier.weight, std=1.0)
    short, full = _padding_pair(tiny_processor())
    diagnostics = {"output_cls_attentions": True, "output_exchange_masks": True}
    with torch.no_grad():
        outputs = [model(**encoding, **diagnostics) for encoding in (short, full)]
        streams = [model.muse(**_without_labels(encoding), **diagnostics) for encoding in (short, full)]
    length = short["input_ids"].shape[1]
    real = short["attention_mask"].bool()
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(streams[0].fusion_embeddings[real], streams[1].fusion_embeddings[:, :length][real], **close)
    torch.testing.assert_close(streams[0].pooler_output, streams[1].pooler_output, **close)
    text_real = torch.nn.functional.pad(real, (1, 0), value=True)
    torch.testing.assert_close(
        streams[0].text_last_hidden_state[text_real], streams[1].text_last_hidden_state[:, : 1 + length][text_real], **close
    )
    torch.testing.assert_close(streams[0].image_last_hidden_state, streams[1].image_last_hidden_state, **close)
    assert streams[0].image_last_hidden_state.shape[1] == 1 + config.num_image_tokens
    for masks_short, masks_full in zip(streams[0].text_exchange_masks, streams[1].text_exchange_masks):
        assert torch.equal(masks_short, masks_full[:, :length]) and not masks_full[:, length:].any()
    for masks_short, masks_full in zip(streams[0].image_exchange_masks, streams[1].image_exchange_masks):
        assert torch.equal(masks_short, masks_full)
    torch.testing.assert_close(outputs[0].logits[real], outputs[1].logits[:, :length][real], **close)
    for name in ("loss", "task_loss", "caption_loss", "generation_loss"):
        value = getattr(outputs[0], name)
        assert (value is not None) == (name in ("loss", "task_loss") or training), name
        if value is not None:
            torch.testing.assert_close(value, getattr(outputs[1], name), **close)
    if not training:
        assert torch.equal(outputs[0].predicted_tag_ids, outputs[1].predicted_tag_ids[:, :length])


def test_each_word_reads_the_fusion_of_its_own_first_subtoken_and_cls_reads_position_0():
    torch.manual_seed(0)
    model = MuSEForTokenClassification(tiny_config()).eval()
    torch.nn.init.normal_(model.tagger.classifier.weight, std=1.0)
    encoding, _ = _padding_pair(tiny_processor())
    with torch.no_grad():
        streams = model.muse(**_without_labels(encoding))
        emissions = model(**encoding).logits
        text, image = streams.text_last_hidden_state, streams.image_last_hidden_state
        for post, starts in enumerate(encoding["word_start_mask"]):
            for position in starts.nonzero().flatten().tolist():
                # Sub-token `position` of input_ids sits at stream position 1 + position, behind the CrossTransformer's
                # own cls, in both streams.
                fused = model.muse.fusion(torch.cat([text[post, 1 + position], image[post, 1 + position]]))
                torch.testing.assert_close(emissions[post, position], model.tagger.classifier(fused))
        pooled = model.muse.fusion(torch.cat([text[:, 0], image[:, 0]], dim=-1))
        torch.testing.assert_close(streams.pooler_output, pooled)


def test_forwards_take_the_transformers_output_switches():
    from tiny_models import tiny_config

    torch.manual_seed(0)
    config = tiny_config()
    model = MuSEForTokenClassification(config).eval()
    inputs = {
        "input_ids": torch.randint(5, 100, (2, 7)),
        "attention_mask": torch.ones(2, 7, dtype=torch.long),
        "word_start_mask": torch.ones(2, 7, dtype=torch.long),
        "pixel_values": torch.randn(2, 3, 32, 32),
    }
    plain = model(**inputs)
    assert plain.hidden_states is None and plain.attentions is None and plain.text_cls_attentions is None
    detailed = model(**inputs, output_hidden_states=True, output_attentions=True, output_cls_attentions=True)
    # The standard fields hold the CrossTransformer's text stream: L + 1 states and L attention maps.
    assert len(detailed.hidden_states) == config.num_cross_layers + 1
    layers = config.num_cross_layers
    assert [tuple(state.shape) for state in detailed.hidden_states] == [(2, 8, config.hidden_size)] * (layers + 1)
    assert [tuple(map_.shape) for map_ in detailed.attentions] == [(2, config.num_attention_heads, 8, 8)] * layers
    assert detailed.image_hidden_states is None and detailed.image_attentions is None
    assert len(detailed.image_cls_attentions) == config.num_cross_layers
    # Asking for the maps runs the eager attention, equal to SDPA's up to rounding.
    torch.testing.assert_close(detailed.hidden_states[-1], model.muse(**inputs).text_last_hidden_state)
    # Rows of an attention map are distributions; the cls row averaged over heads is the one the exchange reads.
    assert torch.allclose(detailed.attentions[0].sum(-1), torch.ones(2, config.num_attention_heads, 8))
    assert torch.allclose(detailed.attentions[0].mean(1)[:, 0], detailed.text_cls_attentions[0], atol=1e-6)
    both = model(**inputs, output_hidden_states=True, output_attentions=True, output_image_stream=True)
    image_tokens = config.image_grid_size**2 + 1
    assert [tuple(state.shape) for state in both.image_hidden_states] == [(2, image_tokens, config.hidden_size)] * (
        layers + 1
    )
    assert tuple(both.image_attentions[-1].shape) == (2, config.num_attention_heads, image_tokens, image_tokens)
    torch.testing.assert_close(both.image_hidden_states[-1], model.muse(**inputs).image_last_hidden_state)
    selected = model(**inputs, output_hidden_states=[0, -1])
    assert selected.hidden_states[1] is None
    torch.testing.assert_close(selected.hidden_states[-1], detailed.hidden_states[-1])
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], plain.logits) and torch.equal(as_tuple[1], plain.predicted_tag_ids)
    # Transformers' keyword arguments reach the text encoder; anything else is refused there.
    assert torch.equal(model(**inputs, num_items_in_batch=2).logits, plain.logits)
    with pytest.raises(TypeError, match=r"unexpected arguments \['no_such_argument'\]"):
        model(**inputs, no_such_argument=1)
