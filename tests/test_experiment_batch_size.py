"""Batch-size reproduction: the 1D sharpness measure against hand-computed quadratics, and the
script end to end.

The end-to-end test runs the tiny preset and checks the files and that the table's numbers are
those of the saved curves.
"""

import dataclasses
import json

import numpy as np
import pytest

from experiments import batch_size
from research.landscape import load_surface
from research.landscape.measures import sharpness_1d


def test_sharpness_of_a_quadratic_by_hand():
    alpha = np.linspace(-1.0, 1.0, 41)
    f = 0.3 + 0.2 * alpha + 4.0 * alpha**2  # f''(0) = 8; rise at r: 4 r^2 (the slope cancels)
    sh = sharpness_1d(f, alpha, radii=(0.25, 0.5), fit_radius=0.25)
    assert sh["curvature"] == pytest.approx(8.0)
    assert sh["fit"] == pytest.approx([0.3, 0.2, 4.0])
    assert sh["rise"][0.25] == pytest.approx(0.25)
    assert sh["rise"][0.5] == pytest.approx(1.0)
    assert sh["at_zero"] == pytest.approx(0.3)
    # Between grid points the curve is interpolated linearly: at r = 0.06 (grid step 0.05),
    # the mean of both sides is the chord's value, by hand:
    step = 0.05
    chord = 0.3 + 4.0 * (0.05**2 + (0.1**2 - 0.05**2) * (0.06 - 0.05) / step)
    assert sharpness_1d(f, alpha, radii=(0.06,))["rise"][0.06] == pytest.approx(chord - 0.3)


def test_sharper_quadratic_scores_sharper_and_bad_inputs():
    alpha = np.linspace(-1.0, 1.0, 21)
    flat, sharp = sharpness_1d(alpha**2, alpha), sharpness_1d(5 * alpha**2, alpha)
    assert sharp["curvature"] == pytest.approx(5 * flat["curvature"])
    with pytest.raises(ValueError, match="outside the grid"):
        sharpness_1d(alpha**2, alpha, radii=(2.0,))
    with pytest.raises(ValueError, match="fit_radius"):
        sharpness_1d(alpha**2, alpha, fit_radius=0.05)
    with pytest.raises(ValueError, match="increasing"):
        sharpness_1d(alpha**2, alpha[::-1])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="Config.batch_sizes"):
        batch_size.Config(batch_sizes=(64, 16))
    with pytest.raises(ValueError, match="Config.none_grid"):
        batch_size.Config(none_grid="0:1:11")


def test_batch_size_end_to_end(tmp_path):
    # One stage instead of the tiny preset's two: both networks compile fewer layers; every
    # number checked below is recomputed from the saved curves whatever the network.
    cfg = dataclasses.replace(batch_size.PRESETS["tiny"], channels=(2,), workdir=str(tmp_path),
                              cache_dir=str(tmp_path / "cache"))
    results = batch_size.main(cfg)
    out = tmp_path / "batch_size"
    for ext in ("png", "pdf"):
        assert (out / f"curves.{ext}").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    small, large = saved["rows"]
    assert (small["batch_size"], large["batch_size"]) == cfg.batch_sizes
    # 8 clips per class: 4 train, of which 1 per class held out for validation -> 30 examples.
    assert small["steps"] == 2 * (30 // 4) and large["steps"] == 4 * (30 // 16)
    for row in (small, large):
        for norm, grid in (("filter", cfg.grid), ("none", cfg.none_grid)):
            s = load_surface(str(out / row["model"] / f"line_{norm}.npz"))
            assert s.complete and s.settings["normalization"] == norm
            lo, hi, num = grid.split(":")
            np.testing.assert_allclose(s.axes[0], np.linspace(float(lo), float(hi), int(num)))
            half = float(hi)
            sh = sharpness_1d(s.values["loss"], s.axes[0], (0.25 * half, 0.5 * half),
                              fit_radius=cfg.fit_fraction * half)
            assert row[f"{norm}_curvature"] == pytest.approx(sh["curvature"])
            assert row[f"{norm}_rise_half"] == pytest.approx(sh["rise"][0.5 * half])
            middle = len(s.axes[0]) // 2
            assert row[f"{norm}_loss_at_zero"] == pytest.approx(s.values["loss"][middle])
            curve = saved["curves"][f"{row['model']}/{norm}"]
            np.testing.assert_allclose(curve["loss"], s.values["loss"])
        assert np.isfinite(row["top_eigenvalue"]) and 1 <= row["hessian_iters_used"] <= 5
        assert row["accuracy_gap"] == pytest.approx(row["train_accuracy"] - row["test_accuracy"])
    assert "| batch4 |" in (out / "results.md").read_text()


def test_cpu_preset_large_batch_fits_its_training_split():
    # The validation split, once carved from training, left 230 clips for a batch of 256: the
    # command stopped after training the small batch.
    from research.data import load_dataset

    cfg = batch_size.run_config(batch_size.PRESETS["cpu"], 1)
    data = load_dataset(dataclasses.replace(cfg.data, cache_dir=""))
    assert cfg.train.batch_size <= len(data.x_train)
    assert len(data.x_val) > 0 and len(data.x_test) > 0
