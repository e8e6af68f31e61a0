"""``predictions.jsonl``: one JSON object per post of the predicted split, in the split's order (``--do_predict``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PARTIAL_SUFFIX", "PREDICTIONS_FILE", "write_predictions"]

PREDICTIONS_FILE = "predictions.jsonl"
PARTIAL_SUFFIX = ".partial"


def write_predictions(output_dir: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` to ``output_dir/predictions.jsonl``, whole or not at all (a partial file is renamed at the end)."""
    path = Path(output_dir, PREDICTIONS_FILE)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path
