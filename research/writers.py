"""Metric writers: JSON lines (the record), and TensorBoard event files (optional, to look at)."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
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


def log_record(tb: TensorBoardWriter | None, record: dict[str, Any]) -> None:
    """Mirror one metrics.jsonl record into TensorBoard (`<split>/<metric>`, `optim/learning_rate`).

    Args:
        tb: the writer, or None (nothing is written).
        record: a record with `step` and `split`.
    """
    if tb is None:
        return
    values = {k: v for k, v in record.items() if k not in ("step", "epoch", "split", "time")}
    if "learning_rate" in values:
        tb.scalars(record["step"], {"learning_rate": values.pop("learning_rate")}, "optim")
    tb.scalars(record["step"], values, record["split"])


def _summary_writer_class():
    """`tensorboardX.SummaryWriter`, imported without importing PyTorch.

    Where PyTorch is installed, `tensorboardX.writer` imports it only to name `torch.Tensor` in
    its type hints: 2.0-2.5 s added to every run that opens a writer (0.2 s without). While
    nothing has imported torch yet, it is hidden for the length of the import (a `None` entry in
    `sys.modules` makes `import torch` fail), then unhidden, so a later `import torch` works.
    Every value we log is a number or a numpy array, which tensorboardX takes either way.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        # tensorboardX's failed `import torch` leaves our placeholder, and nothing else, behind.
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class TensorBoardWriter:
    """TensorBoard event files through `tensorboardX`, or nothing (one warning) without it.

    tensorboardX is a pure-Python writer: scalars, images and text without TensorFlow (the
    writers of flax and clu import TensorFlow). It is an optional extra (`pip install
    '.[tensorboard]'`); where it is missing, every method does nothing and the first instance
    warns once, so runs on a bare accelerator host still go through. metrics.jsonl stays the
    record the reports read; these files are for looking at runs with `tensorboard --logdir runs`.
    Only process 0 should create one (`jax.process_index() == 0`), as for every file.
    """

    _warned = False

    def __init__(self, logdir: str):
        """Open an event file in `logdir` (created if needed).

        Args:
            logdir: the folder for the event files, e.g. `<run_dir>/tensorboard`.
        """
        self.logdir = logdir
        try:
            SummaryWriter = _summary_writer_class()
        except ImportError:
            if not TensorBoardWriter._warned:
                TensorBoardWriter._warned = True
                warnings.warn("tensorboardX is not installed: no TensorBoard logs are written "
                              "(metrics.jsonl still is); install it with pip install "
                              "'tensorboardX>=2.6' or the project's [tensorboard] extra",
                              stacklevel=2)
            self._writer = None
            return
        os.makedirs(logdir, exist_ok=True)
        self._writer = SummaryWriter(logdir=logdir)

    @property
    def enabled(self) -> bool:
        """Whether event files are being written (tensorboardX is installed)."""
        return self._writer is not None

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        """Write each finite number of `values` as the scalar `<prefix>/<name>` at `step`.

        Args:
            step: the global step (x axis).
            values: name -> number; non-numbers (e.g. a confusion matrix, the split name) and
                non-finite values are skipped.
            prefix: the tag group, e.g. "train", "val", "test" (TensorBoard draws one section
                per prefix).
        """
        if self._writer is None:
            return
        for name, value in values.items():
            value = _clean(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                tag = f"{prefix}/{name}" if prefix else name
                self._writer.add_scalar(tag, float(value), int(step))
        self._writer.flush()

    def figure(self, tag: str, fig, step: int = 0, close: bool = True) -> None:
        """Write a matplotlib figure as an image.

        Args:
            tag: the image's name, e.g. "landscape/plane_contour".
            fig: the figure.
            step: the global step.
            close: close the figure afterwards.
        """
        if self._writer is None:
            if close:
                import matplotlib.pyplot as plt

                plt.close(fig)
            return
        self._writer.add_figure(tag, fig, int(step), close=close)
        self._writer.flush()

    def image_file(self, tag: str, path: str, step: int = 0) -> None:
        """Write a saved PNG (e.g. from `save_figure`) as an image, without redrawing it.

        Args:
            tag: the image's name.
            path: the PNG file.
            step: the global step.
        """
        if self._writer is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
        self._writer.add_image(tag, img, int(step), dataformats="HWC")
        self._writer.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Write a text (Markdown) entry, e.g. the run's config or report."""
        if self._writer is None:
            return
        self._writer.add_text(tag, text, int(step))
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def log_image_files(logdir: str, images: dict[str, str], step: int) -> None:
    """Add saved image files to the TensorBoard logs in `logdir` (process 0 only).

    Args:
        logdir: the event folder, e.g. `<run_dir>/tensorboard`.
        images: tag -> PNG path, e.g. {"landscape/plane_contour": ".../plane_contour.png"}.
        step: the global step they belong to.
    """
    import jax

    if jax.process_index() != 0:
        return
    writer = TensorBoardWriter(logdir)
    try:
        for tag, path in images.items():
            writer.image_file(tag, path, step)
    finally:
        writer.close()
