"""TensorBoard writer: scalars read back with tbparse, images, text; a no-op without it."""

import builtins
import math
import os
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest

from research import writers
from research.writers import TensorBoardWriter

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_opening_a_writer_does_not_import_torch_and_torch_still_imports_later(tmp_path):
    """tensorboardX imports PyTorch, where installed, only for type hints (2 s a run): the writer
    hides it during the import. A stand-in `torch` package on the path records being imported
    (CI has no PyTorch), and must still import normally afterwards."""
    pytest.importorskip("tensorboardX", reason="tensorboardX (the [tensorboard] extra) missing")
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os\nopen(os.environ['TORCH_MARK'], 'a').write('imported\\n')\n"
        "class Tensor:\n    pass\n")
    mark = tmp_path / "mark"
    code = (
        "import sys, os\n"
        "from research.writers import TensorBoardWriter\n"
        f"w = TensorBoardWriter({str(tmp_path / 'tb')!r})\n"
        "assert w.enabled\n"
        "w.scalars(1, {'loss': 0.5}, prefix='train')\n"
        "w.close()\n"
        "assert 'torch' not in sys.modules, sys.modules.get('torch')\n"
        f"assert not os.path.exists({str(mark)!r})\n"
        "import torch\n"
        "assert torch.Tensor is not None\n"
        "print('ok')\n")
    env = dict(os.environ, TORCH_MARK=str(mark),
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), _REPO]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
    assert mark.read_text() == "imported\n"  # once, by the script's own import
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

    # A torch the caller imported first is left exactly as it was.
    code = (
        "import sys\n"
        "import torch\n"
        "from research.writers import TensorBoardWriter\n"
        f"TensorBoardWriter({str(tmp_path / 'tb2')!r}).close()\n"
        "assert sys.modules['torch'] is torch\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
