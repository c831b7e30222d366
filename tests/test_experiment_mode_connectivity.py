import dataclasses
import json

import numpy as np
import pytest

from experiments import mode_connectivity as mc
from research.landscape import curves as C
from research.landscape.surface import load_surface


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    cfg = mc.PRESETS["tiny"]
    run = dataclasses.replace(cfg.run, data=dataclasses.replace(cfg.run.data,
                                                                cache_dir=str(root / "cache")))
    cfg = dataclasses.replace(cfg, workdir=str(root), run=run)
    return cfg, mc.main(cfg), root / "mode_connectivity"


def test_writes_metrics_figures_and_consistent_barriers(job):
    cfg, results, out = job
    saved = json.loads((out / "results.json").read_text())
    ts = np.asarray(saved["t"])
    assert ts[0] == 0.0 and ts[-1] == 1.0 and len(ts) == cfg.num_t
    for key in ("line_train", "line_test", "bezier_train", "bezier_test"):
        loss = np.asarray(saved["along"][key]["loss"])
        # The barrier by its definition, recomputed by hand from the saved losses.
        excess = loss - ((1 - ts) * loss[0] + ts * loss[-1])
        assert saved["barrier"][key]["barrier"] == pytest.approx(excess.max())
    for split in ("train", "test"):
        line, curve = saved["along"][f"line_{split}"], saved["along"][f"bezier_{split}"]
        # Both paths start at w1 and end at w2 (BatchNorm statistics recomputed alike).
        assert curve["loss"][0] == pytest.approx(line["loss"][0], rel=1e-5)
        assert curve["loss"][-1] == pytest.approx(line["loss"][-1], rel=1e-5)
    for path in saved["figures"]:
        assert (out.parent / path).stat().st_size > 1000 if not path.startswith("/") else True
    names = {p.rsplit("/", 1)[-1] for p in saved["figures"]}
    assert {"paths.png", "plane.png"} <= names
    plane = load_surface(str(out / "plane.npz"))
    assert plane.done.all() and plane.values["loss"].shape == (3, 3)
    assert np.allclose(saved["plane"]["points"][0], [0.0, 0.0])
    assert len(saved["models"]) == 2 and saved["models"][0]["seed"] != saved["models"][1]["seed"]


def test_resume_reuses_models_curve_and_surfaces(job):
    cfg, results, out = job
    files = [out / "curve" / "theta.npz", out / "paths" / "bezier_test.npz", out / "plane.npz"]
    before = [f.stat().st_mtime_ns for f in files]
    again = mc.main(cfg)
    assert again["curve"]["reused"] is True
    assert [f.stat().st_mtime_ns for f in files] == before
    assert again["barrier"] == results["barrier"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="two different seeds"):
        dataclasses.replace(mc.PRESETS["tiny"], seeds=(3, 3))
    with pytest.raises(ValueError, match="bezier or polychain"):
        dataclasses.replace(mc.PRESETS["tiny"], curve="line")
    assert "bezier" in C.CURVES
