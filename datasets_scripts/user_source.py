"""Where the user's data comes from and which of its columns are read (`datasets_scripts.user_data`).

Holds the error every check of the user's data raises (`UserDataError`), the file kinds read (`DATA_FILE_LOADERS`),
the task's default column names (`DEFAULT_COLUMNS`), the source of the data (a Hub dataset id, a local dataset folder
checked for symbolic links that lead out of it, or one file per split), its loading with `datasets.load_dataset`,
the split names MuSE trains on, and the choice of the text, label and image columns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .errors import leaves_folder

# File extension -> the `datasets` loader that reads it.
DATA_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Task -> (text, label, image) column names looked for when none is given.
DEFAULT_COLUMNS = {"mner": ("tokens", "ner_tags", "image"), "msa": ("text", "label", "image")}
_COLUMN_ARGUMENTS = ("--text_column_name", "--label_column_name", "--image_column_name")
# Split names that mean validation, as `datasets` reads them from file names.
_VALIDATION_NAMES = ("validation", "valid", "dev", "val")
# Each post's row in the split it was read from, kept through a validation split cut from train, for messages.
_ROW = "__muse_source_row__"


class UserDataError(ValueError):
    """A dataset that cannot be trained on as given; the message names the split, row or column and the fix."""


@dataclass
class _Source:
    """Where the data came from: ``datasets.load_dataset``'s arguments and where relative image paths resolve."""

    description: str
    load_args: tuple[Any, ...]
    load_kwargs: dict[str, Any]
    base_folders: dict[str, Path | None]
    from_hub: bool
    split_names: dict[str, str] | None = None

    def split_name(self, split: str) -> str:
        """How messages name a split: its file, or the dataset and the split."""
        if self.split_names and split in self.split_names:
            return self.split_names[split]
        return f"{self.description} ({split} split)"


def _source(
    dataset_name: str | None,
    dataset_config_name: str | None,
    data_files: Mapping[str, str | os.PathLike] | None,
    image_dir: str | os.PathLike | None,
) -> _Source:
    override = Path(image_dir).resolve() if image_dir is not None else None
    if data_files:
        files = {split: Path(path) for split, path in data_files.items()}
        loaders = {}
        for split, path in files.items():
            loader = DATA_FILE_LOADERS.get(path.suffix.lower())
            if loader is None:
                raise UserDataError(
                    f"--{split}_file {path}: the extension {path.suffix or '(none)'!r} is not one of "
                    f"{', '.join(DATA_FILE_LOADERS)}; save the data as CSV, JSON lines or Parquet."
                )
            if not path.is_file():
                raise UserDataError(f"--{split}_file {path}: no such file.")
            loaders[split] = loader
        if len(set(loaders.values())) > 1:
            raise UserDataError(
                f"The data files are of different kinds ({', '.join(f'{s}: {p.name}' for s, p in files.items())}); "
                f"give every split in the same format."
            )
        return _Source(
            description=", ".join(f"{split}: {path.name}" for split, path in files.items()),
            load_args=(next(iter(loaders.values())),),
            load_kwargs={"data_files": {split: str(path) for split, path in files.items()}},
            base_folders={split: override or path.resolve().parent for split, path in files.items()},
            from_hub=False,
            split_names={split: str(path) for split, path in files.items()},
        )
    folder = Path(dataset_name)
    if folder.is_dir():
        _check_no_links_out(folder)
        base = override or folder.resolve()
        return _Source(str(dataset_name), (str(folder),), {"name": dataset_config_name}, {"*": base}, False)
    return _Source(str(dataset_name), (str(dataset_name),), {"name": dataset_config_name}, {"*": override}, True)


def _check_no_links_out(folder: Path) -> None:
    """Refuse a dataset folder with a symbolic link (to a file or a folder) that leads outside it: `datasets` would
    read a data file, and the conversion an image, from wherever it leads."""
    for parent, folders, files in os.walk(folder):
        for name in (*folders, *files):
            path = Path(parent, name)
            if path.is_symlink() and leaves_folder(path, folder):
                raise UserDataError(
                    f"{path} is a symbolic link that leads outside the dataset folder {folder}: a dataset's files are "
                    f"read from inside its folder only. Put the file itself there, or name data files elsewhere with "
                    f"--train_file etc."
                )


def _load_raw(
    source: _Source, cache_dir: str | os.PathLike | None, streaming: bool = False
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    kwargs = {key: value for key, value in source.load_kwargs.items() if value is not None}
    try:
        loaded = datasets.load_dataset(*source.load_args, cache_dir=cache_dir, streaming=streaming, **kwargs)
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        hint = (
            " As a Hub dataset id it needs the Hugging Face Hub (or a copy in the datasets cache); a local dataset "
            "is a folder."
            if source.from_hub
            else ""
        )
        raise UserDataError(f"Could not load {source.description}: {error}{hint}") from error
    if isinstance(loaded, datasets.IterableDataset):
        loaded = datasets.IterableDatasetDict({"train": loaded})
    elif not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _rename_splits(raw: datasets.DatasetDict | datasets.IterableDatasetDict) -> datasets.DatasetDict:
    splits = dict(raw)
    if "validation" not in splits:
        for name in _VALIDATION_NAMES[1:]:
            if name in splits:
                splits["validation"] = splits.pop(name)
                break
    unused = [name for name in splits if name not in ("train", "validation", "test")]
    if unused:
        raise UserDataError(
            f"The data has splits {sorted(splits)}; MuSE trains on 'train', selects the model on 'validation' "
            f"(also read from 'valid' or 'dev') and scores it on 'test'. Rename or remove {unused}."
        )
    return type(raw)(splits)


def _columns(task: str, raw: datasets.DatasetDict, given: Sequence[str | None], source: _Source) -> tuple[str, str, str]:
    """The (text, label, image) columns; the label column may be absent from the test split only (new posts to tag,
    `_unlabeled_splits`)."""
    chosen = []
    for name, default, argument in zip(given, DEFAULT_COLUMNS[task], _COLUMN_ARGUMENTS, strict=True):
        column = name or default
        for split, dataset in raw.items():
            if argument == "--label_column_name" and split == "test":
                continue
            if column not in dataset.column_names:
                why = f"{argument} {column!r} is not" if name else f"no {argument} was given and {column!r} is not"
                raise UserDataError(
                    f"{source.split_name(split)}: {why} one of its columns "
                    f"{[c for c in dataset.column_names if c != _ROW]}; name the column with {argument} <column>."
                )
        chosen.append(column)
    return tuple(chosen)
