"""Environment variables changed for the duration of a block."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["environment_variables"]


@contextmanager
def environment_variables(variables: dict[str, str | None]) -> Iterator[None]:
    """``variables`` set in this process's environment for the duration (None removes one), then put back as they
    were, set or not."""
    saved = {name: os.environ.get(name) for name in variables}
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
