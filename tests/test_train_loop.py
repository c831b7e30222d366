import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from research import checkpoint as ckpt
from research.config import PLAYGROUND_PRESETS
from research.train import load_run, train_and_evaluate
from research.writers import read_jsonl

BASE = PLAYGROUND_PRESETS["tiny"]


def _cfg(**train):
    t = dataclasses.replace(BASE.train, progress=False, **train)
    return dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, dropout=0.2),
                               optim=dataclasses.replace(BASE.optim, name="momentum",
                                                         schedule="cosine"), train=t)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_resume_gives_identical_parameters(tmp_path):
    # 4 epochs x 4 steps (45 training examples, batch 10); stop at step 7 (mid-epoch),
    # resume, finish; compare to one go.
    cfg = _cfg(epochs=4, checkpoint_every=3, trajectory_every=4)
    full, s_full = train_and_evaluate(cfg, str(tmp_path / "full"))
    part, s_part = train_and_evaluate(dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, stop_after=7)), str(tmp_path / "split"))
    assert s_part["steps"] == 7 and not s_part["finished"]
    resumed, s_res = train_and_evaluate(cfg, str(tmp_path / "split"))
    assert s_res["finished"] and int(resumed.step) == 16
    for a, b in zip(_leaves(full.params) + _leaves(full.opt_state),
                    _leaves(resumed.params) + _leaves(resumed.opt_state)):
        np.testing.assert_array_equal(a, b)
    assert s_full["test"] == s_res["test"]
    # metrics of the resumed run have no duplicated evaluation records
    recs = read_jsonl(str(tmp_path / "split" / "metrics.jsonl"))
    recs = [r for r in recs if r["split"] == "test"]
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    # trajectory: initialisation plus every 4 steps; the last equals the final parameters
    traj = ckpt.load_trajectory(str(tmp_path / "split"))
    assert [s for s, _ in traj] == [0, 4, 8, 12, 16]
    for a, b in zip(_leaves(traj[-1][1]), _leaves(full.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(traj[0][1]), _leaves(ckpt.load_init_params(str(tmp_path / "full")))):
        np.testing.assert_array_equal(a, b)


def test_run_folder_contents_and_load_run(tmp_path):
    cfg = _cfg(epochs=2, checkpoint_every=4, keep_checkpoints=2)
    state, summary = train_and_evaluate(cfg, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["train"]["epochs"] == 2
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")) == [4, 8]
    assert len(os.listdir(tmp_path / "best")) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["test"] == summary["test"]
    cfg2, state2, data = load_run(str(tmp_path))
    assert cfg2 == cfg
    for a, b in zip(_leaves(state.params), _leaves(state2.params)):
        np.testing.assert_array_equal(a, b)
    conf = np.array(summary["test"]["confusion"])
    assert conf.sum() == len(data.y_test)
    assert summary["test"]["accuracy"] == pytest.approx(np.trace(conf) / conf.sum())


def test_resume_with_other_settings_is_refused(tmp_path):
    train_and_evaluate(_cfg(epochs=1), str(tmp_path))
    other = dataclasses.replace(_cfg(epochs=1), optim=dataclasses.replace(BASE.optim,
                                                                          learning_rate=0.5))
    with pytest.raises(ValueError, match="optim.learning_rate"):
        train_and_evaluate(other, str(tmp_path))


def test_resume_on_changed_data_is_refused(tmp_path, monkeypatch):
    from research.data import playground

    cfg = _cfg(epochs=2, stop_after=3)
    train_and_evaluate(cfg, str(tmp_path))
    real_load = playground.load

    def changed(c):
        d = real_load(c)
        x = d.x_train.copy()
        x[5, 0] += 1e-3  # one value of one example: same settings, other data
        return dataclasses.replace(d, x_train=x)

    monkeypatch.setattr(playground, "load", changed)
    metrics_before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="trained on other data"):
        train_and_evaluate(_cfg(epochs=2), str(tmp_path))
    # The refused run leaves the folder as it was.
    assert (tmp_path / "metrics.jsonl").read_text() == metrics_before
    monkeypatch.setattr(playground, "load", real_load)
    _, summary = train_and_evaluate(_cfg(epochs=2), str(tmp_path))
    assert summary["finished"]


def test_nan_in_data_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from research.data import playground

    real_load = playground.load

    def poisoned(cfg):
        d = real_load(cfg)
        x = d.x_train.copy()
        x[:] = np.where(np.arange(len(x))[:, None] == 17, np.nan, x)
        return dataclasses.replace(d, x_train=x)

    monkeypatch.setattr(playground, "load", poisoned)
    cfg = _cfg(epochs=3, checkpoint_every=2)
    # Which step sees row 17 depends on the seeded shuffle: find it the way the loop does.
    order = np.concatenate([np.random.default_rng([cfg.train.seed, e]).permutation(45)[:45]
                            for e in range(3)])
    bad_step = int(np.argmax(order == 17)) // cfg.train.batch_size + 1
    with pytest.raises(FloatingPointError, match=rf"step {bad_step}\b.*NaN"):
        train_and_evaluate(cfg, str(tmp_path))
    good = [s for s in range(2, bad_step, 2)]
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints"))
    assert saved == good[-cfg.train.keep_checkpoints:]
    if saved:
        _, state, _ = load_run(str(tmp_path))
        assert all(np.isfinite(x).all() for x in _leaves(state.params))
        assert int(state.step) == saved[-1]


def test_batch_larger_than_data_is_named(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        train_and_evaluate(_cfg(batch_size=1000), str(tmp_path))
