"""End to end: train a tiny Playground run, then `experiments/landscape.py` on it, and a BN CNN."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from experiments import landscape as exp
from research import landscape as L
from research.config import PLAYGROUND_PRESETS, DataConfig, ModelConfig
from research.landscape.config import LANDSCAPE_PRESETS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from research.train import train_and_evaluate

    base = PLAYGROUND_PRESETS["tiny"]
    cfg = dataclasses.replace(base, workdir=str(tmp_path_factory.mktemp("runs")),
                              train=dataclasses.replace(base.train, trajectory_every=3))
    train_and_evaluate(cfg)
    return cfg.run_dir()


def test_landscape_experiment_end_to_end(run_dir):
    from research.train import evaluate, load_run

    cfg = dataclasses.replace(LANDSCAPE_PRESETS["tiny"], run_dir=run_dir)
    summary = exp.main(cfg)
    out = os.path.join(run_dir, "landscape")
    for name in ("line_1d.png", "plane_contour.png", "plane_filled.png", "plane_heatmap.png",
                 "plane_3d.png", "plane.vtp", "interpolation.png", "pca_trajectory.png",
                 "pca_descent.gif", "pca.vtp", "landscape.json"):
        assert os.path.getsize(os.path.join(out, name)) > 500, name
    # The surface's centre is the trained model's training loss, as the training loop reports it.
    _, state, data = load_run(run_dir)
    ref = evaluate(state, data.x_train, data.y_train, 64)
    assert summary["line"]["loss_at_origin"] == pytest.approx(ref["loss"], rel=1e-5)
    plane = L.load_surface(os.path.join(out, "plane.npz"))
    assert plane.complete and plane.shape == (5, 5)
    assert plane.values["loss"][2, 2] == pytest.approx(ref["loss"], rel=1e-5)
    assert plane.settings["seeds"] == [0, 1] and plane.settings["normalization"] == "filter"
    # Interpolation: coordinate 1 is the trained model, coordinate 0 the initialisation.
    interp = L.load_surface(os.path.join(out, "interpolation.npz"))
    i1 = int(np.argmin(np.abs(interp.axes[0] - 1.0)))
    assert interp.values["loss"][i1] == pytest.approx(ref["loss"], rel=1e-4)
    # PCA: the trajectory (steps 0, 3, ..., 12: 3 epochs x 4 steps) ends at the origin.
    pca = L.load_surface(os.path.join(out, "pca.npz"))
    np.testing.assert_array_equal(pca.extras["trajectory_steps"], [0, 3, 6, 9, 12])
    np.testing.assert_allclose(pca.extras["trajectory"][-1], 0.0, atol=1e-6)
    assert 0.5 < sum(pca.info["explained_variance_ratio"]) <= 1.0 + 1e-9
    with open(os.path.join(out, "landscape.json")) as f:
        assert json.load(f)["plane"]["surface"].endswith("plane.npz")

    # A second run resumes: nothing is recomputed and the files are unchanged.
    before = plane.values["loss"].copy()
    exp.main(cfg)
    np.testing.assert_array_equal(L.load_surface(os.path.join(out, "plane.npz")).values["loss"],
                                  before)
    # Other settings into the same folder are refused, naming the setting.
    with pytest.raises(L.SurfaceMismatchError, match="seeds"):
        exp.main(dataclasses.replace(cfg, seed=5, plots=("plane",)))
    # --overwrite replaces the refusing file with the new settings' surface.
    exp.main(dataclasses.replace(cfg, seed=5, plots=("plane",), overwrite=True))
    replaced = L.load_surface(os.path.join(out, "plane.npz"))
    assert replaced.complete and replaced.settings["seeds"] == [5, 6]
    assert not np.array_equal(replaced.values["loss"], before)


def test_missing_trajectory_fails_before_computing(run_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("trajectory", "landscape"))
    cfg = dataclasses.replace(LANDSCAPE_PRESETS["tiny"], run_dir=str(bare))
    with pytest.raises(FileNotFoundError, match="trajectory-every"):
        exp.main(cfg)
    assert not (bare / "landscape").exists()


def test_missing_run_folder_is_named_as_such(tmp_path):
    cfg = dataclasses.replace(LANDSCAPE_PRESETS["tiny"], run_dir=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"run folder .*nope does not exist"):
        exp.main(cfg)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        exp.main(dataclasses.replace(cfg, run_dir=str(tmp_path)))


def test_unfinished_run_says_which_checkpoint_it_evaluates(run_dir, tmp_path, capsys):
    import shutil

    part = tmp_path / "part"
    shutil.copytree(run_dir, part, ignore=shutil.ignore_patterns("landscape"))
    # As if killed after the checkpoint of step 10: no final checkpoint, no summary.json.
    shutil.rmtree(part / "checkpoints" / "12")
    os.remove(part / "summary.json")
    cfg = dataclasses.replace(LANDSCAPE_PRESETS["tiny"], run_dir=str(part), plots=("line",))
    capsys.readouterr()
    exp.main(cfg)
    err = capsys.readouterr().err
    assert "unfinished" in err and "no summary.json" in err
    assert "newest checkpoint, at step 10 of 12" in err


def test_landscape_experiment_cli_parses(run_dir):
    from research.config import cli

    cfg = cli(LANDSCAPE_PRESETS, "paper", "test",
              ["--preset", "tiny", "--run-dir", run_dir, "--plane-x", "-2:2:3",
               "--plots", "line", "plane"])
    assert cfg.plane_x == "-2:2:3" and cfg.plots == ("line", "plane") and cfg.preset == "tiny"
    with pytest.raises(SystemExit):
        cli(LANDSCAPE_PRESETS, "paper", "test", ["--run-dir", run_dir, "--plane-x", "-2:2"])


def test_batchnorm_cnn_run_with_interpolated_statistics(tmp_path):
    # A BatchNorm CNN on tiny spectrogram-like data, with the interpolation's BN policy.
    from research.data import Dataset
    from research.train import build_state

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
    cfg = dataclasses.replace(
        PLAYGROUND_PRESETS["tiny"], data=DataConfig(dataset="xor"),
        model=ModelConfig(kind="cnn", channels=(2, 3), batch_norm=True))
    data = Dataset(x, y, x, y, ("a", "b"), x_val=x, y_val=y)
    state, _ = build_state(cfg, data)
    init_stats = state.batch_stats
    trained_stats = jax.tree_util.tree_map(lambda s: s + 0.5, init_stats)
    fn, _ = L.linen_functions(state.apply_fn, state.loss)
    d = L.interpolation_direction(state.params, jax.tree_util.tree_map(
        lambda p: p * 1.1, state.params))
    sd = L.interpolation_direction(init_stats, trained_stats)
    surf = L.evaluate_grid(fn, state.params, [d], [np.array([0.0, 1.0])], {"x": x, "y": y},
                           model_state=init_stats, bn_policy="interpolate",
                           state_directions=[sd], batch_size=16)
    trained = state.replace(params=jax.tree_util.tree_map(lambda p: p * 1.1, state.params),
                            model_state={"batch_stats": trained_stats})
    from research.train import evaluate

    assert surf.values["loss"][0] == pytest.approx(evaluate(state, x, y, 16)["loss"], rel=1e-5)
    assert surf.values["loss"][1] == pytest.approx(evaluate(trained, x, y, 16)["loss"], rel=1e-5)


def test_max_examples_takes_a_fixed_subset_across_classes():
    import types

    from research.landscape.analysis import _split
    from research.landscape.config import LandscapeConfig

    y = np.repeat(np.arange(4), 25)  # stored class by class
    data = types.SimpleNamespace(x_train=np.arange(100.0)[:, None], y_train=y,
                                 x_test=None, y_test=None)
    cfg = LandscapeConfig(run_dir="-", max_examples=20)
    a, b = _split(cfg, data), _split(cfg, data)
    assert len(a["y"]) == 20 and set(a["y"].tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], y[a["x"][:, 0].astype(int)])
