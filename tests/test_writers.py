"""TensorBoard writer: scalars read back with tbparse, images, text; a no-op without it."""

import builtins
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from research import writers
from research.writers import TensorBoardWriter


def _image_tags(logdir):
    """(tag, step, height) of every image in the event files (tbparse needs TensorFlow there)."""
    import glob
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                if v.HasField("image"):
                    out.append((v.tag, event.step, v.image.height))
    return out


def test_scalars_read_back_with_tbparse(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX (the [tensorboard] extra) missing")
    tbparse = pytest.importorskip("tbparse", reason="tbparse (the dev extra) is not installed")
    w = TensorBoardWriter(str(tmp_path / "tb"))
    assert w.enabled
    for step, loss in ((2, 2.5), (4, 1.25)):
        w.scalars(step, {"loss": np.float32(loss), "accuracy": 0.5 * step / 4, "epoch": step // 2,
                         "split": "train", "confusion": [[1, 0], [0, 1]], "bad": math.nan},
                  prefix="train")
    w.scalars(4, {"loss": 1.5}, prefix="test")
    w.scalars(4, {"learning_rate": 3e-3})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    w.figure("figures/line", fig, step=4)
    w.text("config", "lr 3e-3", step=0)
    w.close()
    df = tbparse.SummaryReader(str(tmp_path / "tb")).scalars
    got = {(r.tag, int(r.step)): float(r.value) for r in df.itertuples()}
    assert got == {("train/loss", 2): 2.5, ("train/loss", 4): 1.25,
                   ("train/accuracy", 2): 0.25, ("train/accuracy", 4): 0.5,
                   ("train/epoch", 2): 1.0, ("train/epoch", 4): 2.0,
                   ("test/loss", 4): 1.5, ("learning_rate", 4): pytest.approx(3e-3)}
    tags = _image_tags(tmp_path / "tb")
    assert [(t, s) for t, s, _ in tags] == [("figures/line", 4)] and tags[0][2] > 100
    assert plt.get_fignums() == []


def test_saved_png_is_logged_as_image(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX (the [tensorboard] extra) missing")
    from research.viz import save_figure

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    png = save_figure(fig, str(tmp_path / "f"), ("png",))[0]
    w = TensorBoardWriter(str(tmp_path / "tb"))
    w.image_file("landscape/f", png, step=7)
    w.close()
    assert [(t, s) for t, s, _ in _image_tags(tmp_path / "tb")] == [("landscape/f", 7)]


def test_without_tensorboardx_it_warns_once_and_writes_nothing(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError("No module named 'tensorboardX'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    monkeypatch.setattr(writers.TensorBoardWriter, "_warned", False)
    with pytest.warns(UserWarning, match="tensorboardX is not installed"):
        w = TensorBoardWriter(str(tmp_path / "tb"))
    assert not w.enabled
    w.scalars(1, {"loss": 1.0}, prefix="train")
    fig, _ = plt.subplots()
    w.figure("f", fig)
    w.text("t", "x")
    w.close()
    assert not (tmp_path / "tb").exists()
    assert plt.get_fignums() == []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TensorBoardWriter(str(tmp_path / "tb2"))  # the second one is silent
