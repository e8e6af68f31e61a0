# Copyright 2026 The MuSE-HF contributors. Licensed under the Apache License, Version 2.0.
"""MuSE model configuration.

`MuSEConfig` is the only home of MuSE's hyperparameters and of their validation. Field names follow
the paper (Zhu et al., "Exchanging-based Multimodal Fusion with Transformer") where it names them:
mu = ``exchange_start_layer``, eta = ``exchange_end_layer``, theta = ``exchange_ratio``, P =
``image_grid_size``, n = ``max_text_length``, d = ``hidden_size``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .hub import is_hub_id, is_vision_model_id
from .serving import pipelines_registered_by

__all__ = ["ABLATION_VARIANTS", "MuSEConfig"]


@strict
class MuSEConfig(PreTrainedConfig):
    r"""
    Configuration of a MuSE model: a text encoder (any `transformers` text model, nested as ``text_config``),
    an image encoder (a timm model, or a `transformers` vision model nested as ``vision_config``), and the
    CrossTransformer that exchanges tokens between the two.

    Args:
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Configuration of the text encoder (paper eq. 1). Any `AutoConfig` model type; defaults to
            BERT-base uncased (`BertConfig()`), the encoder of the paper's reference runs.
        vision_model_name_or_path (`str`, *optional*, defaults to `"resnet152"`):
            The image encoder's backbone (paper eq. 2), as it was named when the model was built: a timm model
            name (CNN or ViT), a ``hf-hub:`` / ``timm/`` Hub id of a timm model, or the Hub id of a `transformers`
            vision model. Only a Hub id or a timm name is kept (a folder of this machine is saved as ``""``); the
            architecture is rebuilt from ``vision_config`` or ``vision_timm_architecture`` when they are set, so a
            saved MuSE reloads without the tower's repository. ``vision_model_name`` is an alias.
        vision_config (`PreTrainedConfig` or `dict`, *optional*):
            Configuration of a `transformers` vision backbone (ViT, CLIP / SigLIP vision, ConvNeXt, DINOv2, Swin,
            ...), built with `AutoModel.from_config`. `None` means a timm backbone.
        vision_timm_architecture (`str`, *optional*):
            The timm architecture of a tower given by Hub id (``hf-hub:...``) or folder, read from its
            ``config.json``; `None` when ``vision_model_name_or_path`` is a timm name itself.
        vision_model_kwargs (`dict`, *optional*):
            Extra keyword arguments for `timm.create_model` (e.g. ``{"layers": [1, 1, 1, 1]}``; for a tower from
            the Hub or a folder, its ``model_args``).
        vision_trainable_stages (`int`, *optional*):
            Train only the last ``vision_trainable_stages`` feature stages of the backbone (timm's
            ``feature_info``: for a ResNet the stem and ``layer1``..``layer4``) and freeze the rest. `None`
            trains the whole backbone. The reference code froze the stem and trained the last stages.
        hidden_size (`int`, *optional*):
            Fusion width d. Defaults to the text encoder's hidden size; a linear projection is added when
            they differ.
        num_cross_layers (`int`, *optional*, defaults to 6):
            Number of CrossTransformer layers L.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads of each CrossTransformer layer.
        intermediate_size (`int`, *optional*):
            Feed-forward width of each CrossTransformer layer; defaults to 4 * hidden_size.
        cross_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside the CrossTransformer (attention weights, residual branches, feed-forward).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the CrossTransformer's LayerNorms.
        exchange_start_layer (`int`, *optional*, defaults to 2):
            mu: the first exchange layer (1-based, inclusive).
        exchange_end_layer (`int`, *optional*, defaults to 4):
            eta: the last exchange layer (1-based, inclusive).
        exchange_ratio (`float`, *optional*, defaults to 0.1):
            theta: the proportion of each sample's valid tokens that are exchanged in an exchange layer.
            0 switches the exchange off.
        exchange_mode (`str`, *optional*, defaults to `"residual"`):
            `"residual"` adds the other modality's mean to a selected token (paper eqs. 10-11);
            `"replace"` overwrites the token with that mean.
        image_grid_size (`int`, *optional*, defaults to 8):
            P: the backbone's feature map is pooled to P x P image tokens.
        max_text_length (`int`, *optional*, defaults to 64):
            n: text length in sub-word tokens after padding. Must equal P * P, because the fusion layer
            pairs text position j with image token j.
        token_classifier_dropout (`float`, *optional*, defaults to 0.5):
            Dropout before the emission layer of the NER (CRF) head.
        sequence_classifier_dropout (`float`, *optional*, defaults to 0.5):
            Dropout before the output layer of the sentiment head.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of MuSE's own linear layers.
        use_text, use_image (`bool`, *optional*, default to `True`):
            Build the text / image branch. Switching one off gives the only-I / only-T ablations (paper
            Table 3); the CrossTransformer then runs on the remaining stream alone, without exchange.
        use_cross_transformer (`bool`, *optional*, defaults to `True`):
            `False` is the w/o-CT ablation: T_e and I_e are fused directly.
        noise_std (`float`, *optional*, defaults to 1.0):
            sigma of the Gaussian noise added to T_e and I_e before the regularizers (eqs. 3-4).
        caption_loss_weight (`float`, *optional*, defaults to 1e-4):
            alpha in eq. 14, the weight of the image-captioning loss L_it. 0 builds no caption decoder.
        generation_loss_weight (`float`, *optional*, defaults to 1e-4):
            beta in eq. 14, the weight of the text-to-image loss L_ti. 0 builds no PixelCNN++ decoder.
        caption_decoder_dim (`int`, *optional*, defaults to 512):
            Width of the caption decoder's LSTM, attention and word embeddings.
        caption_dropout (`float`, *optional*, defaults to 0.5):
            Dropout before the caption decoder's output layer.
        pixelcnn_filters (`int`, *optional*, defaults to 80):
            Filters of the conditional PixelCNN++ text-to-image decoder.
        pixelcnn_resnet_blocks (`int`, *optional*, defaults to 5):
            Gated ResNet blocks per stage of the PixelCNN++.
        pixelcnn_mixtures (`int`, *optional*, defaults to 10):
            Logistic components of the PixelCNN++'s discretized mixture.
        pixelcnn_dropout (`float`, *optional*, defaults to 0.5):
            Dropout inside the PixelCNN++'s gated ResNet blocks.
        decoder_image_size (`int`, *optional*, defaults to 32):
            Side of the images the PixelCNN++ decoder models.
        include_regularizers (`bool`, *optional*, defaults to `True`):
            `False` builds the model without its decoder weights, for serving a trained model
            (`MuSEPreTrainedModel.remove_regularizers()` sets it); the loss weights stay as a record of training.

    Example:

    ```python
    >>> from configuration_muse import MuSEConfig
    >>> config = MuSEConfig(num_cross_layers=6, exchange_ratio=0.2)
    >>> config.hidden_size  # taken from BERT-base
    768
    ```
    """

    model_type = "muse"
    # What transformers' Trainer leaves out of its predictions (`Trainer.prediction_step`): the task models' outputs
    # besides ``logits`` (the loss terms, the CRF's Viterbi path), so that `EvalPrediction.predictions` is the logits
    # array, as for every transformers head, and compute_metrics functions written for those work unchanged.
    keys_to_ignore_at_inference = [
        "task_loss",
        "caption_loss",
        "generation_loss",
        "generation_bits_per_dim",
        "predicted_tag_ids",
    ]
    # Checkpoints saved before the image tower could be more than a timm name call the field vision_model_name.
    attribute_map = {"vision_model_name": "vision_model_name_or_path"}
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", optional=True),
    }

    # The fields that the training scripts put on their command line carry their one-line help as metadata, which
    # transformers' HfArgumentParser reads; it says what the Args above say of them.
    text_config: PreTrainedConfig | dict | None = None
    vision_model_name_or_path: str = "resnet152"
    vision_config: PreTrainedConfig | dict | None = None
    vision_timm_architecture: str | None = None
    vision_model_kwargs: dict | None = None
    vision_trainable_stages: int | None = field(
        default=None,
        metadata={
            "help": "Train only the last ``vision_trainable_stages`` feature stages of the backbone (timm's "
            "``feature_info``: for a ResNet the stem and ``layer1``..``layer4``) and freeze the rest. `None` trains "
            "the whole backbone. The reference code froze the stem and trained the last stages."
        },
    )
    hidden_size: int | None = None
    num_cross_layers: int = field(default=6, metadata={"help": "Number of CrossTransformer layers L."})
    num_attention_heads: int = field(default=12, metadata={"help": "Attention heads of each CrossTransformer layer."})
    intermediate_size: int | None = None
    cross_dropout: float | int = field(
        default=0.1,
        metadata={"help": "Dropout inside the CrossTransformer (attention weights, residual branches, feed-forward)."},
    )
    layer_norm_eps: float = 1e-5
    exchange_start_layer: int = field(
        default=2, metadata={"help": "mu: the first exchange layer (1-based, inclusive)."}
    )
    exchange_end_layer: int = field(default=4, metadata={"help": "eta: the last exchange layer (1-based, inclusive)."})
    exchange_ratio: float | int = field(
        default=0.1,
        metadata={
            "help": "theta: the proportion of each sample's valid tokens that are exchanged in an exchange layer. 0 "
            "switches the exchange off."
        },
    )
    exchange_mode: Literal["residual", "replace"] = "residual"
    image_grid_size: int = field(
        default=8, metadata={"help": "P: the backbone's feature map is pooled to P x P image tokens."}
    )
    max_text_length: int = field(
        default=64,
        metadata={
            "help": "n: text length in sub-word tokens after padding. Must equal P * P, because the fusion layer pairs "
            "text position j with image token j."
        },
    )
    token_classifier_dropout: float | int = 0.5
    sequence_classifier_dropout: float | int = 0.5
    initializer_range: float = 0.02
    use_text: bool = True
    use_image: bool = True
    use_cross_transformer: bool = True
    noise_std: float | int = field(
        default=1.0,
        metadata={"help": "sigma of the Gaussian noise added to T_e and I_e before the regularizers (eqs. 3-4)."},
    )
    caption_loss_weight: float | int = field(
        default=1e-4,
        metadata={
            "help": "alpha in eq. 14, the weight of the image-captioning loss L_it. 0 builds no caption decoder."
        },
    )
    generation_loss_weight: float | int = field(
        default=1e-4,
        metadata={"help": "beta in eq. 14, the weight of the text-to-image loss L_ti. 0 builds no PixelCNN++ decoder."},
    )
    caption_decoder_dim: int = field(
        default=512, metadata={"help": "Width of the caption decoder's LSTM, attention and word embeddings."}
    )
    caption_dropout: float | int = 0.5
    pixelcnn_filters: int = field(
        default=80, metadata={"help": "Filters of the conditional PixelCNN++ text-to-image decoder."}
    )
    pixelcnn_resnet_blocks: int = field(
        default=5, metadata={"help": "Gated ResNet blocks per stage of the PixelCNN++."}
    )
    pixelcnn_mixtures: int = 10
    pixelcnn_dropout: float | int = 0.5
    decoder_image_size: int = 32
    include_regularizers: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size is None:
            self.hidden_size = self.text_config.hidden_size
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.vision_model_kwargs is None:
            self.vision_model_kwargs = {}

    @property
    def custom_pipelines(self) -> dict[str, dict[str, Any]]:
        """The pipeline tasks whose code a saved MuSE model carries (``pipeline(task, model=..., trust_remote_code=True)``).

        Empty while this very code has registered those tasks itself (the package is installed and imported):
        transformers' `pipeline()` ranks a config's ``custom_pipelines`` above registered tasks and would otherwise
        demand ``trust_remote_code`` for a model the installed package serves, whereas the Auto classes prefer
        installed code. The saved ``config.json`` keeps the entries either way.
        """
        tasks = self.__dict__.get("custom_pipelines", {})
        registered_here = set(tasks) <= set(pipelines_registered_by(type(self).__module__.rpartition(".")[0]))
        return {} if tasks and registered_here else tasks

    @custom_pipelines.setter
    def custom_pipelines(self, tasks: dict[str, dict[str, Any]]) -> None:
        self.__dict__["custom_pipelines"] = tasks

    def to_dict(self) -> dict[str, Any]:
        """`PreTrainedConfig.to_dict`, naming the towers by Hub id or timm name only: a local folder is meaningless
        on another machine (and would leak this one's paths into every saved checkpoint), so it is left out."""
        output = super().to_dict()
        for key in ("text_config", "vision_config"):
            sub_config = output.get(key)
            if isinstance(sub_config, dict) and not is_hub_id(sub_config.get("_name_or_path")):
                sub_config["_name_or_path"] = ""
        if not is_vision_model_id(output.get("vision_model_name_or_path")):
            output["vision_model_name_or_path"] = ""
        return output

    @property
    def exchange_layers(self) -> range:
        """The 1-based indices of the exchange layers, mu..eta inclusive."""
        return range(self.exchange_start_layer, self.exchange_end_layer + 1)

    @property
    def num_image_tokens(self) -> int:
        return self.image_grid_size * self.image_grid_size

    def validate_muse_fusion_shape(self):
        if self.image_grid_size < 1:
            raise ValueError(f"image_grid_size must be at least 1, got {self.image_grid_size}.")
        if self.num_image_tokens != self.max_text_length:
            raise ValueError(
                f"image_grid_size={self.image_grid_size} gives P*P={self.num_image_tokens} image tokens but "
                f"max_text_length={self.max_text_length}. The fusion layer pairs text position j with image token "
                f"j, so they must be equal: set max_text_length={self.num_image_tokens}, or choose image_grid_size "
                f"with image_grid_size**2 == max_text_length."
            )
        max_positions = getattr(self.text_config, "max_position_embeddings", None)
        if max_positions is not None and self.max_text_length > max_positions:
            raise ValueError(
                f"max_text_length={self.max_text_length} exceeds the text encoder's max_position_embeddings="
                f"{max_positions}: lower max_text_length (and image_grid_size with it)."
            )

    def validate_muse_exchange_layers(self):
        if self.num_cross_layers < 1:
            raise ValueError(f"num_cross_layers must be at least 1, got {self.num_cross_layers}.")
        if self.exchange_start_layer < 1:
            raise ValueError(
                f"exchange_start_layer (mu) is 1-based and must be at least 1, got {self.exchange_start_layer}."
            )
        if self.exchange_start_layer > self.exchange_end_layer:
            raise ValueError(
                f"exchange_start_layer (mu={self.exchange_start_layer}) is after exchange_end_layer "
                f"(eta={self.exchange_end_layer}): set mu <= eta (to switch the exchange off, set exchange_ratio=0)."
            )
        if self.exchange_end_layer > self.num_cross_layers:
            raise ValueError(
                f"exchange_end_layer (eta={self.exchange_end_layer}) is past the last CrossTransformer layer "
                f"(num_cross_layers={self.num_cross_layers}): set eta <= num_cross_layers or add layers."
            )
        if self.exchange_mode not in ("residual", "replace"):
            raise ValueError(f"exchange_mode must be 'residual' or 'replace', got {self.exchange_mode!r}.")
        if not 0.0 <= self.exchange_ratio <= 1.0:
            raise ValueError(
                f"exchange_ratio (theta) is a proportion of tokens and must lie in [0, 1], got {self.exchange_ratio}."
            )

    def validate_muse_widths(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}: "
                f"choose a number of heads that divides the fusion width."
            )
        if self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be positive, got {self.intermediate_size}.")
        if self.vision_trainable_stages is not None and self.vision_trainable_stages < 0:
            raise ValueError(
                f"vision_trainable_stages must be None (train everything) or >= 0, got {self.vision_trainable_stages}."
            )
        if self.vision_trainable_stages is not None and self.vision_config is not None:
            raise ValueError(
                "vision_trainable_stages freezes the stages of a timm backbone (its feature_info); this model's image "
                "tower is a transformers model (vision_config): leave vision_trainable_stages unset."
            )

    def validate_muse_dropouts(self):
        for name in (
            "cross_dropout",
            "token_classifier_dropout",
            "sequence_classifier_dropout",
            "caption_dropout",
            "pixelcnn_dropout",
        ):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} is a dropout probability and must lie in [0, 1), got {value}.")

    def validate_muse_branches(self):
        if not (self.use_text or self.use_image):
            raise ValueError("use_text and use_image are both False: MuSE needs at least one branch.")
        for name in ("noise_std", "caption_loss_weight", "generation_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.decoder_image_size % 4 != 0:
            raise ValueError(
                f"decoder_image_size={self.decoder_image_size}: the PixelCNN++ halves the resolution twice, so it "
                f"must be divisible by 4 (the paper uses 32)."
            )

    @property
    def has_caption_decoder(self) -> bool:
        """The image-captioning regularizer exists when it is weighted and both modalities are present."""
        return self.include_regularizers and self.caption_loss_weight > 0 and self.use_text and self.use_image

    @property
    def has_generation_decoder(self) -> bool:
        """The text-to-image regularizer exists when it is weighted and both modalities are present."""
        return self.include_regularizers and self.generation_loss_weight > 0 and self.use_text and self.use_image


ABLATION_VARIANTS: dict[str, dict] = {
    "full": {},
    "only_t": {"use_image": False},
    "only_i": {"use_text": False},
    "wo_ct": {"use_cross_transformer": False},
    "only_l_task": {"caption_loss_weight": 0.0, "generation_loss_weight": 0.0},
    "wo_l_it": {"caption_loss_weight": 0.0},
    "wo_l_ti": {"generation_loss_weight": 0.0},
}
"""The ablation variants of paper Table 3, each as `MuSEConfig` overrides: `MuSEConfig(**ABLATION_VARIANTS["wo_ct"])`."""
