"""What the builders share: the configuration check and the split generators."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import datasets

from .images import check_missing_images_policy

logger = logging.getLogger(__name__)


def check_builder_config(builder: datasets.DatasetBuilder) -> None:
    """Reject an unnamed configuration and an unknown ``missing_images`` policy before any file is read."""
    if builder.config.name not in builder.builder_configs:
        # Without config_name, datasets would build a "default" configuration from the kwargs.
        raise ValueError(f"Pass config_name=, one of {list(builder.builder_configs)}; got {builder.config.name!r}.")
    check_missing_images_policy(builder.config.missing_images)


def make_split_generators(
    examples: Mapping[str, list[dict[str, Any]]], dataset_name: str
) -> list[datasets.SplitGenerator]:
    """One generator per split whose examples are passed whole in ``gen_kwargs``.

    An empty split is left out with a warning: ``datasets`` cannot read back a split of zero
    examples, and only toy data (an empty file, an MVSA folder of fewer than ten posts) has one.
    """
    generators = []
    for split, split_examples in examples.items():
        if not split_examples:
            logger.warning("%s: the %s split has no posts and is left out.", dataset_name, split)
            continue
        generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"examples": split_examples}))
    return generators
