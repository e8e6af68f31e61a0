"""The error both data readers raise for a malformed file, and how messages quote what they found."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DataFormatError", "OutsideFolderError", "check_inside_folder", "file_id_problem", "leaves_folder", "quoted"]

# How much of an offending line or value a message quotes: enough to recognise it, never a 10 MB line.
QUOTED_CHARACTERS = 100


def quoted(value: Any) -> str:
    """``repr(value)``, cut to `QUOTED_CHARACTERS` characters with the full length said."""
    text = repr(value)
    if len(text) <= QUOTED_CHARACTERS:
        return text
    length = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:QUOTED_CHARACTERS]}... ({length})"


def file_id_problem(file_id: str) -> str | None:
    """Why a dataset's post or image id cannot name a file inside its folder, or None if it can.

    The releases' ids are plain file names (``1234567890``, ``O_3456``); an id with a path separator, ``..``, a drive
    or a NUL byte would make the reader open (and the Parquet export embed) a file outside the dataset.
    """
    if "\x00" in file_id:
        return "it holds a NUL byte"
    if "/" in file_id or "\\" in file_id:
        return "it holds a path separator"
    if file_id in (".", ".."):
        return "it names a folder"
    if os.path.isabs(file_id) or os.path.splitdrive(file_id)[0]:
        return "it is an absolute path"
    return None


def leaves_folder(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, named inside ``folder``, resolves to a place outside it: it is a symbolic link, or lies
    behind one (a linked folder), that leads out. The rule that keeps ids from climbing out with ``..``, applied to
    where the path actually leads."""
    real_folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), real_folder]) != real_folder


class OutsideFolderError(ValueError):
    """A file a dataset's folder names that leads outside the folder (`leaves_folder`); the message names it."""


def check_inside_folder(path: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Raise `OutsideFolderError` naming ``path`` if it leads outside ``folder`` (`leaves_folder`)."""
    if leaves_folder(path, folder):
        raise OutsideFolderError(
            f"{path} is a symbolic link, or lies behind one, that leads outside {folder}: a dataset's files are read "
            f"from inside its folder only. Put the file itself there instead of a link to it."
        )


class DataFormatError(ValueError):
    """A data file violates its format; the message starts with ``file:line:``."""

    def __init__(self, path: str | os.PathLike, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        super().__init__(f"{self.path}:{line}: {message}")
