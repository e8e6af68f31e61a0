"""ImageEncoder (paper eq. 2): I_e = ImageEncoder(I), shape (B, P*P, d).

The backbone is any image tower that yields a spatial feature map or a sequence of patch tokens:

- a timm model (CNNs such as ResNet or ConvNeXt, token models such as ViT or DeiT), by timm name, by Hub id
  (``hf-hub:<repo>`` or ``timm/<name>``) or from a folder that timm saved (``local-dir:<folder>`` or the folder itself);
- a `transformers` vision model (ViT, CLIP / SigLIP vision, ConvNeXt, DINOv2, Swin, ...), by Hub id or folder, built
  with `AutoModel` (the vision half of a CLIP or SigLIP checkpoint is taken when the folder holds both halves).

Whatever the tower, its last feature map (C, h, w) is average-pooled to (C, P, P), flattened to P*P tokens and
projected to d (docs/design.md, section 1). Token towers first drop their prefix tokens (cls, distillation and
register tokens) and lay the patch tokens out on their grid.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from timm.models._hub import load_model_config_from_hf, load_model_config_from_path
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from .hub import offline_reason
from .image_input import PLACEHOLDER_COLOR
from .text_encoder import layer_classes

logger = logging.getLogger(__name__)

__all__ = [
    "ImageEncoder",
    "VisionTower",
    "build_vision_backbone",
    "load_pretrained_vision_backbone",
    "resolve_vision_tower",
    "tower_image_processor",
]

# The file names under which timm publishes weights on the Hub, in the order timm tries them.
_TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TIMM_PREFIXES = ("hf-hub:", "local-dir:")
_HEAD_ARGUMENTS = ("num_classes", "global_pool")


@dataclass
class VisionTower:
    """What an image tower's name or folder stands for, resolved once when a model or processor is built.

    Attributes:
        name_or_path: as given.
        library: ``"timm"`` or ``"transformers"``.
        timm_name: the name `timm.create_model` takes for the pretrained weights (a registry name, or the
            ``hf-hub:`` / ``local-dir:`` form).
        timm_architecture: for a timm tower from the Hub or a folder, the architecture in its ``config.json``.
        timm_model_args: that ``config.json``'s ``model_args``.
        timm_pretrained_cfg: timm's pretrained configuration (input size, crop, interpolation, mean, std).
        vision_config: for a transformers tower, its configuration (the vision half of a two-tower checkpoint).
    """

    name_or_path: str
    library: str
    timm_name: str | None = None
    timm_architecture: str | None = None
    timm_model_args: dict[str, Any] = field(default_factory=dict)
    timm_pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    vision_config: PreTrainedConfig | None = None

    def config_fields(self) -> dict[str, Any]:
        """The `MuSEConfig` fields that describe this tower, enough to rebuild it without its repository."""
        fields: dict[str, Any] = {"vision_model_name_or_path": self.name_or_path}
        if self.library == "transformers":
            fields["vision_config"] = self.vision_config
        elif self.timm_architecture is not None:
            fields["vision_timm_architecture"] = self.timm_architecture
            fields["vision_model_kwargs"] = dict(self.timm_model_args)
        return fields


def _vision_half(config: PreTrainedConfig) -> PreTrainedConfig:
    # A CLIP / SigLIP checkpoint holds a text and a vision tower; MuSE uses the vision one.
    return getattr(config, "vision_config", None) or config


def _timm_tower(name_or_path: str, timm_name: str) -> VisionTower:
    source, model_id = timm.models.parse_model_name(timm_name)
    if source is None:
        if not timm.is_model(model_id.split(".")[0]):
            raise ValueError(
                f"vision_model_name_or_path={name_or_path!r} is neither a timm model name (timm.list_models()), a "
                f"folder, nor a Hub id: give a timm name such as 'resnet152' or 'vit_base_patch16_224', a Hub id "
                f"('timm/<name>', 'hf-hub:<repo>' or a transformers vision model's repo) or a folder."
            )
        pretrained_cfg = timm.models.get_pretrained_cfg(model_id)
        return VisionTower(
            name_or_path,
            "timm",
            timm_name=model_id,
            timm_pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg is not None else {},
        )
    loader = load_model_config_from_hf if source == "hf-hub" else load_model_config_from_path
    pretrained_cfg, architecture, model_args = loader(model_id)
    # MuSE builds every timm tower without classifier and pooling; the saved ones say what they were trained with.
    model_args = {key: value for key, value in (model_args or {}).items() if key not in _HEAD_ARGUMENTS}
    return VisionTower(
        name_or_path,
        "timm",
        timm_name=timm_name,
        timm_architecture=architecture,
        timm_model_args=model_args,
        timm_pretrained_cfg=dict(pretrained_cfg or {}),
    )


def resolve_vision_tower(name_or_path: str | os.PathLike, **config_kwargs: Any) -> VisionTower:
    """Tell which library builds the image tower ``name_or_path`` and read its configuration (no weights).

    - ``hf-hub:<repo>``, ``local-dir:<folder>``, ``timm/<name>``: timm.
    - a folder: timm when its ``config.json`` names an ``architecture`` (timm's format), else transformers.
    - another Hub id (``<owner>/<name>``): transformers (`AutoConfig`), unless the repository is timm's.
    - anything else: a timm model name.

    ``config_kwargs`` go to `AutoConfig.from_pretrained` (``revision``, ``token``, ...).
    """
    name = os.fspath(name_or_path)
    if name.startswith(_TIMM_PREFIXES):
        return _timm_tower(name, name)
    if name.startswith("timm/"):
        return _timm_tower(name, f"hf-hub:{name}")
    if os.path.isdir(name):
        config_file = os.path.join(name, "config.json")
        if not os.path.isfile(config_file):
            raise ValueError(
                f"vision_model_name_or_path={name!r} is a folder without a config.json: give a folder saved by "
                f"transformers (save_pretrained) or timm (with its config.json), or a timm name or Hub id."
            )
        with open(config_file, encoding="utf-8") as handle:
            saved = json.load(handle)
        if "architecture" in saved and "model_type" not in saved:
            return _timm_tower(name, f"local-dir:{name}")
    elif "/" not in name:
        return _timm_tower(name, name)
    config = AutoConfig.from_pretrained(name, **config_kwargs)
    if config.model_type == "timm_wrapper":
        return _timm_tower(name, f"hf-hub:{name}")
    vision_config = _vision_half(config)
    # The tower's own normalisation travels in its configuration, for the placeholder picture of a post without one
    # (`ImageEncoder.placeholder_pixel_values`): the model never sees the image processor.
    normalisation = _image_processor_normalisation(name, **config_kwargs)
    if normalisation is not None:
        vision_config.image_mean, vision_config.image_std = normalisation
    return VisionTower(name, "transformers", vision_config=vision_config)


def _image_processor_normalisation(name: str, **config_kwargs: Any) -> tuple[list[float], list[float]] | None:
    """The mean and std of the image processor saved with a transformers tower (``preprocessor_config.json``), or
    None where there is none."""
    from transformers.utils import cached_file

    path = cached_file(name, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **config_kwargs)
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    mean, std = saved.get("image_mean"), saved.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return None
    return [float(value) for value in mean], [float(value) for value in std]


_RESAMPLING = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


def tower_image_processor(tower: VisionTower, image_size: int | None = None) -> Any:
    """The image processor that prepares pictures for ``tower``.

    ``image_size=None`` gives the tower's own preprocessing: a transformers tower's `AutoImageProcessor` (saved in
    its folder or repository); for a timm tower, its pretrained configuration as a `BitImageProcessor` (shorter side
    to ``input_size / crop_pct``, centre crop to ``input_size``, timm's interpolation, mean and std) or, without a
    centre crop, a resize to ``input_size``. A side in pixels resizes every image to ``image_size`` x
    ``image_size`` with the tower's mean and std.
    """
    from transformers import AutoImageProcessor, BitImageProcessor, ViTImageProcessor

    if tower.library == "transformers":
        try:
            own = AutoImageProcessor.from_pretrained(tower.name_or_path)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"vision_model_name_or_path={tower.name_or_path!r}: no image processor could be loaded for it "
                f"({error}). Save the tower's image processor beside it (image_processor.save_pretrained(folder)), "
                f"or give image_size=<side in pixels> to resize images to a square with ImageNet's normalisation."
            ) from error
        if image_size is None:
            return own
        mean, std = list(own.image_mean), list(own.image_std)
    else:
        settings = tower.timm_pretrained_cfg
        mean = list(settings.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN)
        std = list(settings.get("std") or timm.data.IMAGENET_DEFAULT_STD)
        if image_size is None:
            _, height, width = settings.get("input_size") or (3, 224, 224)
            resample = _RESAMPLING.get(settings.get("interpolation", "bilinear"), 2)
            crop_pct = settings.get("crop_pct") or 1.0
            if settings.get("crop_mode", "center") == "center" and crop_pct < 1.0:
                return BitImageProcessor(
                    size={"shortest_edge": math.floor(min(height, width) / crop_pct)},
                    resample=resample,
                    do_center_crop=True,
                    crop_size={"height": height, "width": width},
                    image_mean=mean,
                    image_std=std,
                )
            return ViTImageProcessor(
                size={"height": height, "width": width}, resample=resample, image_mean=mean, image_std=std
            )
    return ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std)


def _drop_pooler_kwargs(model_class: type[nn.Module]) -> dict[str, Any]:
    # MuSE reads the feature map, never a pooled output; an unused pooler would also leave parameters without
    # gradients, which DistributedDataParallel rejects.
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


def _transformers_backbone(vision_config: PreTrainedConfig) -> nn.Module:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING[type(vision_config)]
    return AutoModel.from_config(vision_config, **_drop_pooler_kwargs(model_class))


# timm.create_model arguments that read or fetch weights or configurations: a configuration (which a downloaded
# checkpoint brings) may not name them, since building a model from its configuration reads nothing else.
_TIMM_LOADING_ARGUMENTS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def _timm_architecture_of(config: Any) -> str:
    """The timm architecture a `MuSEConfig` names, refused unless it is one of timm's own architecture names: a
    ``hf-hub:`` or ``local-dir:`` name would make timm download or read a configuration when the model is built."""
    architecture = config.vision_timm_architecture or config.vision_model_name_or_path
    if not timm.is_model(architecture):
        raise ValueError(
            f"This MuSE configuration builds its image tower from {architecture!r}, which is not a timm architecture "
            f"name ({', '.join(timm.list_models()[:3])}, ...): building a model from its configuration downloads and "
            f"reads nothing, so a tower given by Hub id or folder is stored by its architecture in "
            f"`vision_timm_architecture` (from_text_vision_pretrained does this). Set vision_timm_architecture to the "
            f"tower's timm architecture."
        )
    loading = sorted(set(config.vision_model_kwargs) & set(_TIMM_LOADING_ARGUMENTS))
    if loading:
        raise ValueError(
            f"vision_model_kwargs names {loading}, which make timm read or download weights or configurations: a "
            f"MuSE configuration builds its tower from the architecture alone. Remove them (load pretrained towers "
            f"with from_text_vision_pretrained)."
        )
    return architecture


def build_vision_backbone(config: Any) -> nn.Module:
    """A randomly initialised image backbone for a `MuSEConfig` (no classifier, no global pooling), built from the
    configuration alone: nothing is downloaded or read (a ``timm_wrapper`` vision_config or a timm name with a
    ``hf-hub:`` / ``local-dir:`` prefix is refused, see `_timm_architecture_of`)."""
    if config.vision_config is not None:
        if config.vision_config.model_type == "timm_wrapper" and not timm.is_model(config.vision_config.architecture):
            raise ValueError(
                f"vision_config is a timm_wrapper of {config.vision_config.architecture!r}, not a timm architecture "
                f"name: building it would make timm download or read a configuration. Name the architecture."
            )
        return _transformers_backbone(config.vision_config)
    return timm.create_model(
        _timm_architecture_of(config), pretrained=False, num_classes=0, global_pool="", **config.vision_model_kwargs
    )


# Set on every module of a timm backbone: timm initialises them (`ImageEncoder.timm_initial_state`), not transformers'
# generic `_init_weights`.
INITIALISED_BY_TIMM = "muse_initialised_by_timm"


def _timm_pretrained(tower: VisionTower, model_kwargs: dict[str, Any]) -> nn.Module:
    """The timm tower with its pretrained weights: from a folder, the local Hugging Face cache, or the Hub."""
    kwargs = {"num_classes": 0, "global_pool": "", **model_kwargs}
    if tower.timm_name.startswith("local-dir:"):
        return timm.create_model(tower.timm_name, pretrained=True, **kwargs)
    hub_id = tower.timm_name.removeprefix("hf-hub:") if tower.timm_name.startswith("hf-hub:") else None
    hub_id = hub_id or tower.timm_pretrained_cfg.get("hf_hub_id")
    if not hub_id:
        raise ValueError(
            f"vision_model_name_or_path={tower.name_or_path!r}: timm publishes no pretrained weights for it on the "
            f"Hugging Face Hub; choose a backbone that has them (e.g. 'resnet152') or pass pretrained_vision=False."
        )
    architecture = tower.timm_architecture or tower.timm_name
    for file_name in _TIMM_WEIGHT_FILES:
        cached = try_to_load_from_cache(hub_id, file_name)
        if isinstance(cached, str):
            # Built from the architecture and the configuration already read, so that nothing asks the Hub again.
            overlay = {**tower.timm_pretrained_cfg, "file": cached}
            return timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    switch = "pretrained_vision=False (command line: --no-pretrained_vision) to start the backbone from random weights"
    reason = offline_reason()
    if reason is not None:
        raise OSError(
            f"vision_model_name_or_path={tower.name_or_path!r}: timm's pretrained weights ({hub_id} on the Hugging "
            f"Face Hub) are not in the local cache and cannot be downloaded: {reason}. Download them once with a "
            f"connection, or pass {switch}."
        )
    try:
        return timm.create_model(tower.timm_name, pretrained=True, **kwargs)
    except OSError as error:
        raise OSError(
            f"vision_model_name_or_path={tower.name_or_path!r}: downloading timm's pretrained weights ({hub_id}) "
            f"failed: {error}. Check the connection, or pass {switch}."
        ) from error


def load_pretrained_vision_backbone(
    tower: VisionTower, model_kwargs: dict[str, Any], **from_pretrained_kwargs: Any
) -> nn.Module:
    """The image backbone of ``tower`` with its pretrained weights, built as `build_vision_backbone` builds it.

    A timm tower's weights come from its folder, the local Hugging Face cache or the Hub; when the Hub cannot be
    reached (``HF_HUB_OFFLINE=1`` or no connection) and nothing is cached this fails at once, naming the tower and
    ``pretrained_vision=False``. A transformers tower loads with `from_pretrained` (``from_pretrained_kwargs``).
    """
    if tower.library == "timm":
        return _timm_pretrained(tower, model_kwargs)
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING[type(tower.vision_config)]
    # Loaded as saved, pooler included, so that the weights match the architecture exactly; dropped afterwards.
    backbone = model_class.from_pretrained(tower.name_or_path, config=tower.vision_config, **from_pretrained_kwargs)
    if _drop_pooler_kwargs(model_class) and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone


def _prefix_token_count(backbone: nn.Module) -> int:
    """Tokens before the patch tokens in a transformers vision model's output: cls, distillation and registers."""
    embeddings = getattr(backbone, "embeddings", None)
    if embeddings is None:
        embeddings = getattr(getattr(backbone, "vision_model", None), "embeddings", None)
    count = 0
    for name in ("cls_token", "class_embedding", "distillation_token"):
        count += getattr(embeddings, name, None) is not None
    registers = getattr(embeddings, "register_tokens", None)
    if registers is not None:
        count += registers.shape[1]
    return count


def _tokens_to_grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, N, C) patch tokens in row-major order -> (B, C, H, W), the grid laid over a ``height`` x ``width`` image."""
    count = tokens.shape[1]
    stride = math.sqrt(height * width / count)
    rows, columns = round(height / stride), round(width / stride)
    if rows * columns != count:
        raise ValueError(
            f"The image tower returned {count} patch tokens for a {height}x{width} image, which lay out on no grid "
            f"of that aspect ratio: give it images of the size it was made for (its image processor's)."
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, columns)


def _feature_width(backbone: nn.Module, config: Any) -> int:
    if config.vision_config is None:
        return backbone.num_features
    vision_config = config.vision_config
    sizes = getattr(vision_config, "hidden_sizes", None)
    return sizes[-1] if sizes else vision_config.hidden_size


class ImageEncoder(nn.Module):
    """An image backbone whose last feature map is average-pooled to P x P, flattened and projected to d.

    docs/design.md, section 1: image -> feature map (C, h, w) -> adaptive average pool to (C, P, P) -> P*P
    tokens -> Linear(C -> d). A token backbone's patch tokens are laid out on their grid first.
    """

    def __init__(self, config: Any):
        super().__init__()
        self.backbone = build_vision_backbone(config)
        self.is_timm = config.vision_config is None
        if self.is_timm:
            # timm's own initialisation suits its architectures (Kaiming for convolutions, zero-initialised last
            # batch norms of residual blocks, ...): `MuSEPreTrainedModel._init_weights` gives it to the whole backbone
            # at once (also where the backbone was built on the meta device or its weights are missing from a
            # checkpoint), and leaves its modules alone one by one.
            self.timm_config = config
            for module in self.backbone.modules():
                setattr(module, INITIALISED_BY_TIMM, True)
            self.prefix_tokens = getattr(self.backbone, "num_prefix_tokens", 0)
            self.channels_last_output = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"
        else:
            self.prefix_tokens = _prefix_token_count(self.backbone)
            self.channels_last_output = False
            configured_size = getattr(config.vision_config, "image_size", None)
            self.configured_size = (
                tuple(configured_size) if isinstance(configured_size, (list, tuple)) else (configured_size,) * 2
            )
            self.interpolates = "interpolate_pos_encoding" in inspect.signature(self.backbone.forward).parameters
            # The tower's own unsplittable layers (ViTLayer, ...), collected by MuSE's `post_init`.
            self._no_split_modules = layer_classes(self.backbone)
        self.image_grid_size = config.image_grid_size
        self._warned_of_repeated_cells = False
        self.projection = nn.Linear(_feature_width(self.backbone, config), config.hidden_size)
        # The tower's own input size and normalisation, for the placeholder picture of a post without one.
        if self.is_timm:
            settings = getattr(self.backbone, "pretrained_cfg", None) or {}
            self.input_size = tuple((settings.get("input_size") or (3, 224, 224))[1:])
        else:
            settings = {
                "mean": getattr(config.vision_config, "image_mean", None),
                "std": getattr(config.vision_config, "image_std", None),
            }
            self.input_size = self.configured_size if self.configured_size[0] else (224, 224)
        self.image_mean = tuple(settings.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN)
        self.image_std = tuple(settings.get("std") or timm.data.IMAGENET_DEFAULT_STD)
        if config.vision_trainable_stages is not None:
            self.freeze_all_but_last_stages(config.vision_trainable_stages)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint a timm backbone's stages (timm's ``set_grad_checkpointing``) when ``enable``.

        A transformers tower needs nothing here: its layers are `GradientCheckpointingLayer`s, which MuSE's
        ``gradient_checkpointing_enable`` switches with the rest of the model. A timm architecture without
        checkpointing support keeps its activations, with a warning.
        """
        if not self.is_timm:
            return
        try:
            self.backbone.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as error:
            # timm's models refuse unsupported checkpointing with an assertion.
            if enable:
                logger.warning(
                    "The timm backbone %s does not support gradient checkpointing (%s): it keeps its activations.",
                    type(self.backbone).__name__,
                    error,
                )

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether the backbone checkpoints its activations (timm's ``grad_checkpointing``, or a transformers
        tower's layer flags)."""
        if self.is_timm:
            return bool(getattr(self.backbone, "grad_checkpointing", False))
        return any(getattr(module, "gradient_checkpointing", False) for module in self.backbone.modules())

    def freeze_all_but_last_stages(self, trainable_stages: int) -> None:
        """Freeze the backbone up to its last ``trainable_stages`` feature stages (timm ``feature_info``).

        Parameters are taken in registration order, which for timm's CNNs is the order of the forward
        pass: everything from the first parameter of the first trainable stage on stays trainable.
        """
        stage_names = [stage["module"] for stage in self.backbone.feature_info]
        parameters = list(self.backbone.named_parameters())
        if trainable_stages >= len(stage_names):
            first_trainable = 0
        elif trainable_stages == 0:
            first_trainable = len(parameters)
        else:
            prefix = stage_names[len(stage_names) - trainable_stages] + "."
            first_trainable = next(i for i, (name, _) in enumerate(parameters) if name.startswith(prefix))
        for index, (_, parameter) in enumerate(parameters):
            parameter.requires_grad = index >= first_trainable

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's last features as a (B, C, h, w) map."""
        if self.is_timm:
            # Channels-last images take oneDNN's (and cuDNN's) faster convolution layouts, which the whole backbone
            # then keeps.
            features = self.backbone.forward_features(pixel_values.contiguous(memory_format=torch.channels_last))
        else:
            kwargs = {}
            if self.interpolates and tuple(pixel_values.shape[-2:]) != self.configured_size:
                # ViT-style towers interpolate their position embeddings to other image sizes only when asked.
                kwargs["interpolate_pos_encoding"] = True
            features = self.backbone(pixel_values=pixel_values, **kwargs).last_hidden_state
        if features.dim() == 3:
            return _tokens_to_grid(features[:, self.prefix_tokens :], *pixel_values.shape[-2:])
        if self.channels_last_output:
            return features.permute(0, 3, 1, 2)
        return features

    def timm_initial_state(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the timm backbone as timm initialises them: those of a newly created model of
        the same architecture (built on the CPU, whatever device the model is being built on)."""
        with torch.device("cpu"):
            return build_vision_backbone(self.timm_config).state_dict()

    def placeholder_pixel_values(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The ``pixel_values`` of the placeholder picture (the mid-grey stand-in that the processor, the dataset
        builders and the pipelines use for a missing image) for ``batch_size`` posts, at the tower's input size and
        normalised with its mean and std (timm's pretrained configuration; for a transformers tower, its image
        processor's, which `resolve_vision_tower` keeps in ``vision_config``, else ImageNet's)."""
        grey = torch.tensor(PLACEHOLDER_COLOR, dtype=torch.float32) / 255
        normalised = (grey - torch.tensor(self.image_mean)) / torch.tensor(self.image_std)
        return normalised.to(device=device, dtype=dtype)[None, :, None, None].expand(batch_size, 3, *self.input_size)

    def _warn_if_grid_repeats_cells(self, feature_size: tuple[int, int], image_size: tuple[int, int]) -> None:
        """Warn once when the P x P grid is finer than the feature map, whose cells the pooling then repeats.

        Repeated cells give exact copies of a token, which tie in the cls attention; the exchange then takes the
        earliest copies (docs/design.md, section 3). Deterministic, but the copies carry no information of their own.
        """
        (height, width), grid = feature_size, self.image_grid_size
        if self._warned_of_repeated_cells or (height >= grid and width >= grid):
            return
        self._warned_of_repeated_cells = True
        needed_height = math.ceil(grid * image_size[0] / height)
        needed_width = math.ceil(grid * image_size[1] / width)
        logger.warning(
            "image_grid_size=%d is finer than the image tower's %dx%d feature map (for %dx%d images): the average "
            "pooling repeats feature-map cells, so several of the %d image tokens are exact copies, which tie in the "
            "cls attention (the exchange takes the earliest of tied tokens). Give the tower images of at least "
            "%dx%d pixels (the processor's image_size; --image_size in the training scripts), or choose a smaller "
            "image_grid_size (with max_text_length = image_grid_size**2).",
            grid, height, width, image_size[0], image_size[1], grid * grid, needed_height, needed_width,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The processor's float32 pixels enter a tower loaded with dtype= (bf16, fp16) in its own dtype, as
        # transformers' ViT and CLIP embeddings take them.
        pixel_values = pixel_values.to(next(self.backbone.parameters()).dtype)
        features = self.feature_map(pixel_values)
        if not torch.compiler.is_compiling():
            # Logging inside a compiled or exported graph would break it; eager forwards give the warning.
            self._warn_if_grid_repeats_cells(tuple(features.shape[-2:]), tuple(pixel_values.shape[-2:]))
        grid = F.adaptive_avg_pool2d(features, self.image_grid_size)
        tokens = grid.flatten(2).transpose(1, 2)
        return self.projection(tokens)
