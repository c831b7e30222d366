import dataclasses
import json

import numpy as np
import pytest

from experiments import main as main_job
from research.landscape import load_surface


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("main")
    cfg = main_job.PRESETS["tiny"]
    run = dataclasses.replace(cfg.run, data=dataclasses.replace(cfg.run.data,
                                                                cache_dir=str(root / "cache")))
    cfg = dataclasses.replace(cfg, workdir=str(root), run=run)
    return cfg, main_job.main(cfg), root / "main"


def test_main_job_writes_report_and_figures(job):
    cfg, results, out = job
    report = (out / "report.md").read_text()
    for heading in ("## Data", "## Model and training", "## Evaluation", "## Loss landscape"):
        assert heading in report
    # every image the report embeds exists
    import re

    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 8
    for rel in images:
        assert (out / rel).stat().st_size > 1000, rel
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"]["accuracy"] == pytest.approx(results["test"]["accuracy"])
    conf = np.array(saved["test"]["confusion"])
    assert conf.shape == (10, 10)
    assert saved["per_class"]["support"] == conf.sum(axis=1).tolist()


def test_main_job_landscape_is_consistent_with_training(job):
    cfg, results, out = job
    interp = load_surface(str(out / "landscape" / "interpolation.npz"))
    assert interp.done.all()
    # at alpha = 1 the interpolation evaluates the trained weights on the training split
    at_one = int(np.argmin(np.abs(interp.axes[0] - 1.0)))
    assert interp.values["loss"][at_one] == pytest.approx(results["train"]["loss"], rel=1e-4)
    plane = load_surface(str(out / "landscape" / "plane.npz"))
    assert plane.values["loss"].shape == (5, 5)
    assert results["landscape"]["plane"]["loss_at_origin"] == pytest.approx(
        results["train"]["loss"], rel=1e-4)


def test_main_job_resumes_without_recomputing(job, capsys):
    cfg, results, out = job
    before = (out / "landscape" / "plane.npz").stat().st_mtime_ns
    again = main_job.main(cfg)
    assert again["test"] == results["test"]
    assert (out / "landscape" / "plane.npz").stat().st_mtime_ns == before


def test_main_job_runs_without_librosa_on_the_jax_front_end(tmp_path):
    # Accelerator hosts often lack librosa (and soundfile): with frontend=jax the whole job
    # needs neither.
    import os
    import subprocess
    import sys

    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(
        "import sys\nsys.modules['librosa'] = sys.modules['soundfile'] = None\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "block"), JAX_PLATFORMS="cpu")
    # A one-stage CNN (the tiny preset has two): what is checked here is that no part of the
    # job needs librosa, which the model's size does not change; fewer layers to compile.
    res = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--preset", "tiny", "--workdir",
         str(tmp_path / "runs"), "--run.data.frontend", "jax", "--run.train.no-progress",
         "--run.data.cache-dir", str(tmp_path / "cache"), "--run.model.channels", "2",
         "--landscape.no-progress"],
        capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "runs" / "main"
    saved = json.loads((out / "results.json").read_text())
    assert np.array(saved["test"]["confusion"]).sum() == 20
    config = json.loads((out / "train" / "config.json").read_text())
    assert config["data"]["frontend"] == "jax" and config["model"]["channels"] == [2]
    assert load_surface(str(out / "landscape" / "plane.npz")).done.all()
