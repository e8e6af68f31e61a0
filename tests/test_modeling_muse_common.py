"""MuSE held to transformers' common model and configuration tests, as every transformers model is.

`MuSEModelTester` builds a tiny configuration (a 2-layer BERT, timm's ``test_resnet`` tower, both training-time
decoders) and inputs; `MuSEModelTest` runs transformers' ``ModelTesterMixin`` over the three model classes and
``ConfigTester`` over `MuSEConfig`, from the transformers source of the installed version
(`transformers_common_tests`). The common tests read the CrossTransformer's text stream as the model's
``hidden_states`` / ``attentions``: its cls slot and the post's tokens, ``1 + seq_length`` positions.
"""

from __future__ import annotations

import os
import unittest

import pytest
import torch
from transformers import BertConfig

import transformers_common_tests
from modeling_muse import MuSEConfig, MuSEForSequenceClassification, MuSEForTokenClassification, MuSEModel
from tiny_models import TINY_DECODER_SIZES, tiny_config

if transformers_common_tests.tests_folder() is None and not os.environ.get("CI"):
    # CI fetches them before the tests (.ci/run), so there a missing copy fails the import below.
    pytest.skip(
        "transformers' common test files are not fetched: run `python tests/transformers_common_tests.py`",
        allow_module_level=True,
    )

modeling_common = transformers_common_tests.load("test_modeling_common")
configuration_common = transformers_common_tests.load("test_configuration_common")
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
ids_tensor, floats_tensor = modeling_common.ids_tensor, modeling_common.floats_tensor


class MuSEModelTester:
    def __init__(
        self,
        parent: unittest.TestCase,
        batch_size: int = 3,
        seq_length: int = 7,
        vocab_size: int = 99,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        image_size: int = 32,
        num_labels: int = 3,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.image_size = image_size
        self.num_labels = num_labels
        # The CrossTransformer's text stream: its cls slot, then the post's tokens.
        self.encoder_seq_length = self.key_length = seq_length + 1
        self.is_training = True

    def get_config(self) -> MuSEConfig:
        text_config = BertConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64,
        )  # fmt: skip
        return tiny_config(
            [f"LABEL_{index}" for index in range(self.num_labels)], text_config=text_config,
            num_cross_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads, intermediate_size=37,
            max_text_length=16, exchange_start_layer=1, exchange_end_layer=2, caption_loss_weight=0.1,
            generation_loss_weight=0.1, **TINY_DECODER_SIZES,
        )  # fmt: skip

    def prepare_config_and_inputs(self) -> tuple[MuSEConfig, dict[str, torch.Tensor]]:
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = modeling_common.random_attention_mask([self.batch_size, self.seq_length])
        # Every real token after the first ([CLS]) starts a word.
        word_start_mask = attention_mask.clone()
        word_start_mask[:, 0] = 0
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": floats_tensor([self.batch_size, 3, self.image_size, self.image_size]),
            "word_start_mask": word_start_mask,
            # The 32 x 32 picture in [-1, 1] that the text-to-image regularizer models in training (MuSEProcessor
            # returns it beside pixel_values).
            "decoder_pixel_values": floats_tensor([self.batch_size, 3, 32, 32]) * 2 - 1,
        }
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[MuSEConfig, dict[str, torch.Tensor]]:
        return self.prepare_config_and_inputs()


class MuSEModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MuSEModel, MuSEForTokenClassification, MuSEForSequenceClassification)
    _is_composite = True

    def setUp(self):
        self.model_tester = MuSEModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MuSEConfig, has_text_modality=False, common_properties=["hidden_size"],
            num_cross_layers=2, num_attention_heads=4, exchange_start_layer=1, exchange_end_layer=2,
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            batch, length = inputs["input_ids"].shape
            # Derived from the inputs, as transformers' own testers' fixed labels are: two calls get the same ones.
            if model_class is MuSEForTokenClassification:
                labels = inputs["input_ids"] % self.model_tester.num_labels
                inputs["labels"] = labels.masked_fill(inputs["word_start_mask"] == 0, -100)
            elif model_class is MuSEForSequenceClassification:
                inputs["labels"] = inputs["input_ids"][:, 0] % self.model_tester.num_labels
        return inputs

    def test_config(self):
        self.config_tester.run_common_tests()
