"""Values from data, arguments and loaded files, written into the model card (Markdown) so that they show as written.

A label, a dataset or folder name or a model's configuration value is the data's, not the card's: put in as it is,
a line break and a fence would close the card's code block and whatever followed would render as Markdown and HTML
(links, images). Here such a value goes into a code span or a code block whose backtick fence is longer than any run
of backticks inside it, so nothing in it can close it (CommonMark: a code span ends at a backtick string of the same
length, a fenced block at a fence at least as long), and CommonMark renders nothing inside code as markup or HTML.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["code_block", "code_span", "table_cell"]

_BACKTICKS = re.compile(r"`+")


def _fence_length(text: str, shortest: int) -> int:
    return max([shortest, *(len(run) + 1 for run in _BACKTICKS.findall(text))])


def code_span(value: Any) -> str:
    """``value`` as inline code on one line (every line break and run of white space becomes one space)."""
    text = " ".join(str(value).split()) or " "
    fence = "`" * _fence_length(text, 1)
    # A space on each side keeps a backtick at either end from joining the fence; CommonMark removes the pair.
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def table_cell(value: Any) -> str:
    """``value`` as a table cell of inline code: a ``|`` inside would end the cell (GFM tables), so it is escaped."""
    return code_span(value).replace("|", "\\|")


def code_block(text: str, info: str = "") -> list[str]:
    """The lines of a fenced code block holding ``text`` (lines split as Python's `str.splitlines` splits them, which
    includes every line ending CommonMark knows)."""
    lines = text.splitlines()
    fence = "`" * _fence_length(text, 3)
    return [f"{fence}{info}", *lines, fence]
