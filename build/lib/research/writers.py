"""Metric writers: JSON lines, one record per line, appended and flushed as they come."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from research.io import atomic_write_text


def _clean(value: Any) -> Any:
    """Plain JSON values: numpy/JAX scalars to floats, non-finite floats to strings."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlWriter:
    """Appends metric records to a `.jsonl` file."""

    def __init__(self, path: str):
        """Open (append) the file at `path`."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, record: dict) -> None:
        """Append one record and flush it to disk."""
        self._file.write(json.dumps(_clean(record), sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def read_jsonl(path: str) -> list[dict]:
    """All records of a `.jsonl` file (a torn last line from a kill is ignored)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def truncate_after(path: str, step: int) -> None:
    """Drop records with `step` beyond `step` (a resumed run rewrites them), atomically."""
    if not os.path.exists(path):
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
