import dataclasses
import json

import numpy as np
import pytest

from experiments import main as main_job
from research.landscape import load_surface


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("main")
    cfg = dataclasses.replace(main_job.PRESETS["tiny"], workdir=str(root))
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
    assert plane.values["loss"].shape == (3, 3)
    assert results["landscape"]["plane"]["loss_at_origin"] == pytest.approx(
        results["train"]["loss"], rel=1e-4)


def test_main_job_resumes_without_recomputing(job, capsys):
    cfg, results, out = job
    before = (out / "landscape" / "plane.npz").stat().st_mtime_ns
    again = main_job.main(cfg)
    assert again["test"] == results["test"]
    assert (out / "landscape" / "plane.npz").stat().st_mtime_ns == before
