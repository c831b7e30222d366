"""The training loop: exact resume after any kill, best chosen on validation, clean starts."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research import checkpoint as ckpt
from research.config import PLAYGROUND_PRESETS, to_dict
from research.train import evaluate, load_run, train_and_evaluate
from research.writers import read_jsonl

BASE = PLAYGROUND_PRESETS["tiny"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**train):
    t = dataclasses.replace(BASE.train, progress=False, **train)
    return dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, dropout=0.2),
                               optim=dataclasses.replace(BASE.optim, name="momentum",
                                                         schedule="cosine"), train=t)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _steps(folder):
    return sorted(int(f) for f in os.listdir(folder) if f.isdigit())


def _assert_same_run(ref, other, ignore=()):
    """Every file a run writes equals the reference run's, except wall-clock times.

    `ignore`: TrainConfig fields allowed to differ in config.json (e.g. steps_per_call).
    """
    ref, other = str(ref), str(other)
    for name in ("config.json", "data.json"):
        a, b = (_load_json(os.path.join(d, name)) for d in (other, ref))
        for key in ignore if name == "config.json" else ():
            a["train"].pop(key, None), b["train"].pop(key, None)
        assert a == b, name
    recs = [read_jsonl(os.path.join(d, "metrics.jsonl")) for d in (ref, other)]
    assert [_without(r, "time") for r in recs[1]] == [_without(r, "time") for r in recs[0]]
    # elapsed training time survives a resume: it never runs backwards
    times = [r["time"] for r in recs[1] if "time" in r]
    assert times == sorted(times)
    summaries = [_load_json(os.path.join(d, "summary.json")) for d in (ref, other)]
    assert _without(summaries[1], "seconds") == _without(summaries[0], "seconds")
    assert _steps(os.path.join(other, "checkpoints")) == _steps(os.path.join(ref, "checkpoints"))
    for best in (False, True):
        states = [load_run(d, best=best)[1] for d in (ref, other)]
        assert int(states[1].step) == int(states[0].step)
        for a, b in zip(_leaves(states[0].to_tree()), _leaves(states[1].to_tree())):
            np.testing.assert_array_equal(a, b)
    assert int(load_run(ref, best=True)[1].step) == summaries[0]["best"]["step"]
    files = [sorted(f for f in os.listdir(os.path.join(d, "trajectory")) if not f.startswith("."))
             for d in (ref, other)]
    assert files[1] == files[0]
    for name in ["../init_params.npz"] + files[0]:
        a, b = (ckpt.load_params(os.path.join(d, "trajectory", name)) for d in (ref, other))
        for x, y in zip(_leaves(a), _leaves(b)):
            np.testing.assert_array_equal(x, y)


def test_resume_gives_identical_parameters(tmp_path):
    # 4 epochs x 4 steps (45 training examples, batch 10); stop at step 7 (mid-epoch),
    # resume, finish; compare to one go.
    cfg = _cfg(epochs=4, checkpoint_every=3, trajectory_every=4)
    full, s_full = train_and_evaluate(cfg, str(tmp_path / "full"))
    assert "time" in read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))[0]
    part, s_part = train_and_evaluate(dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, stop_after=7)), str(tmp_path / "split"))
    assert s_part["steps"] == 7 and not s_part["finished"]
    resumed, s_res = train_and_evaluate(cfg, str(tmp_path / "split"))
    assert s_res["finished"] and int(resumed.step) == 16
    for a, b in zip(_leaves(full.params) + _leaves(full.opt_state),
                    _leaves(resumed.params) + _leaves(resumed.opt_state)):
        np.testing.assert_array_equal(a, b)
    assert s_full["test"] == s_res["test"]
    # every file, the epoch-2 step averages (accumulated across the stop at step 7) included
    _assert_same_run(tmp_path / "full", tmp_path / "split")
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


# A run long enough to be killed at a random moment: 4 steps per epoch, checkpoints every 6
# steps (so most kills fall between two, mid-epoch), the trajectory every 5.
KILL_CFG = _cfg(epochs=30, checkpoint_every=6, trajectory_every=5)

_SCRIPT = """
import json, os, signal, sys
from research.config import Config, from_dict
from research.train import train_and_evaluate
import research.checkpoint, research.io, research.train.loop, research.writers

def die():
    os.kill(os.getpid(), signal.SIGKILL)

{patch}
train_and_evaluate(from_dict(Config, json.loads(sys.argv[1])), sys.argv[2])
"""


def _start(cfg, run_dir, patch=""):
    """`train_and_evaluate` in a fresh Python process, with `patch` run first (a kill hook)."""
    code = _SCRIPT.format(patch=patch)
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(to_dict(cfg)), str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _killed(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of KILL_CFG."""
    run_dir = tmp_path_factory.mktemp("reference")
    state, summary = train_and_evaluate(KILL_CFG, str(run_dir))
    return run_dir, summary


def test_best_is_chosen_on_validation_and_reported_with_test(reference):
    run_dir, summary = reference
    recs = read_jsonl(str(run_dir / "metrics.jsonl"))
    val = [r for r in recs if r["split"] == "val"]
    assert [r["epoch"] for r in val] == list(range(1, 31))
    # classification (xor, squared error on a tanh output): the best val accuracy wins, ties
    # going to the lower val loss, then to the earlier step (brute force over the records)
    top = max(r["accuracy"] for r in val)
    tied = [r for r in val if r["accuracy"] == top]
    best = min(tied, key=lambda r: (r["loss"], r["step"]))
    assert summary["selection"] == {"split": "val", "metric": "accuracy",
                                    "higher_is_better": True, "ties": "lower validation loss"}
    assert summary["best"]["step"] == best["step"] and summary["best"]["epoch"] == best["epoch"]
    assert summary["best"]["val"] == {k: best[k] for k in summary["best"]["val"]}
    _, best_state, data = load_run(str(run_dir), best=True)
    assert int(best_state.step) == best["step"]
    conf = np.array(summary["best"]["test"]["confusion"])
    assert conf.sum() == len(data.y_test)
    # the final state's numbers on every split; the last epoch's records are the same numbers
    last = {r["split"]: r for r in recs if r["step"] == 120}
    for split in ("train", "val", "test"):
        assert _without(summary[split], "confusion") == {
            k: last[split][k] for k in _without(summary[split], "confusion")}
    # a second start of a finished run changes nothing, its training time included
    before = (run_dir / "summary.json").read_text()
    _, again = train_and_evaluate(KILL_CFG, str(run_dir))
    assert again == summary and (run_dir / "summary.json").read_text() == before


def test_resume_after_sigkill_at_a_random_moment(reference, tmp_path):
    ref_dir, _ = reference
    proc = _start(KILL_CFG, tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    # once the loop is past its first checkpoint, kill it a random moment later, from outside
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 12):
        assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
        time.sleep(0.002)
    delay = random.uniform(0.0, 0.3)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _killed(proc)
    assert not (tmp_path / "summary.json").exists(), f"finished before the kill ({delay:.3f} s)"
    train_and_evaluate(KILL_CFG, str(tmp_path))
    _assert_same_run(ref_dir, tmp_path)


def test_resume_after_kills_between_checkpoints_and_during_truncation(reference, tmp_path):
    ref_dir, _ = reference
    # 1. killed right after the records of epoch 5 (step 20): the newest checkpoint is step 18,
    #    mid-epoch, so the epoch's step sums come from it and the records must be dropped.
    _killed(_start(KILL_CFG, tmp_path, """
real_write = research.writers.JsonlWriter.write
def write(self, record):
    real_write(self, record)
    if record["step"] == 20 and record["split"] == "test":
        die()
research.writers.JsonlWriter.write = write
"""))
    assert _steps(tmp_path / "checkpoints")[-1] == 18
    assert max(r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))) == 20
    # 2. killed while the resumed run drops those records (before its atomic rename)
    _killed(_start(KILL_CFG, tmp_path, """
real_truncate = research.train.loop.truncate_after
def truncate(path, step):
    os.replace = lambda *args: die()
    real_truncate(path, step)
research.train.loop.truncate_after = truncate
"""))
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # the kill left one
    train_and_evaluate(KILL_CFG, str(tmp_path))
    _assert_same_run(ref_dir, tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_kill_between_best_and_newest_checkpoint_keeps_the_best(reference, tmp_path):
    ref_dir, summary = reference
    at = summary["best"]["step"]  # stopping there saves both the best and the newest state
    patch = f"""
saved = []
for name in ("save", "save_best"):
    def hook(self, step, *args, _real=getattr(research.checkpoint.Checkpointer, name)):
        if step == {at} and saved:
            die()  # the second of the two saves of this step
        saved.append(step) if step == {at} else None
        return _real(self, step, *args)
    setattr(research.checkpoint.Checkpointer, name, hook)
"""
    stop = dataclasses.replace(KILL_CFG, train=dataclasses.replace(KILL_CFG.train,
                                                                   stop_after=at))
    _killed(_start(stop, tmp_path, patch))
    train_and_evaluate(KILL_CFG, str(tmp_path))
    _assert_same_run(ref_dir, tmp_path)


def test_best_lost_by_an_older_version_is_recovered_on_resume(reference, tmp_path):
    # Older versions saved the newest checkpoint first: a kill then left best/ without the
    # step that metrics.jsonl records as best. The resumed run saves it from that checkpoint.
    import shutil

    ref_dir, summary = reference
    at = summary["best"]["step"]
    train_and_evaluate(dataclasses.replace(KILL_CFG, train=dataclasses.replace(
        KILL_CFG.train, stop_after=at)), str(tmp_path))
    shutil.rmtree(tmp_path / "best" / str(at))
    train_and_evaluate(KILL_CFG, str(tmp_path))
    _assert_same_run(ref_dir, tmp_path)


def test_refused_start_leaves_no_trace(tmp_path, monkeypatch):
    from research.data import playground

    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        train_and_evaluate(_cfg(batch_size=1000, epochs=1), str(tmp_path / "run"))
    real_load = playground.load

    def broken(c):
        raise ValueError("bad files: a.wav")

    monkeypatch.setattr(playground, "load", broken)
    with pytest.raises(ValueError, match="bad files"):
        train_and_evaluate(_cfg(epochs=1), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()
    assert not (tmp_path / "run" / "data.json").exists()

    def skipped(c):
        d = real_load(c)
        return dataclasses.replace(d, info={**d.info, "bad_files_skipped": 1, "bad_files": [
            {"path": "a.wav", "reason": "empty"}]})

    # the corrected command starts; the skipped files are kept in the run folder
    monkeypatch.setattr(playground, "load", skipped)
    cfg = _cfg(epochs=1)
    train_and_evaluate(cfg, str(tmp_path / "run"))
    data = _load_json(tmp_path / "run" / "data.json")
    assert data["bad_files_skipped"] == 1 and data["bad_files"][0]["path"] == "a.wav"
    # moving the feature cache is no other run
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir="elsewhere"))
    _, summary = train_and_evaluate(moved, str(tmp_path / "run"))
    assert summary["finished"]


def test_playground_stopped_early_reports_and_resumes(tmp_path):
    from experiments import playground

    cfg = dataclasses.replace(BASE, workdir=str(tmp_path))
    summary = playground.main(dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, stop_after=7)))
    assert summary["steps"] == 7 and not summary["finished"]
    assert playground.main(cfg)["finished"]


def test_main_report_names_the_split_and_state_of_every_number(tmp_path):
    from experiments import main as main_job

    ev = {"loss": 0.5, "accuracy": 0.75, "balanced_accuracy": 0.7, "macro_f1": 0.6}
    summary = {"class_names": ["a", "b"], "params": 10, "steps": 8, "seconds": 12.0,
               "train": ev, "val": ev, "test": {**ev, "confusion": [[3, 1], [0, 4]]},
               "best": {"step": 4, "epoch": 1, "val": ev,
                        "test": {**ev, "confusion": [[2, 2], [0, 4]]}}}
    figures = {k: str(tmp_path / f"{k}.png") for k in ("examples", "curves", "confusion")}
    path = main_job.write_report(str(tmp_path), main_job.PRESETS["tiny"], summary, {}, {},
                                 figures, {"data": 1.0, "train": 12.0, "landscape": 3.0})
    with open(path, encoding="utf-8") as f:
        report = f.read()
    test_table = report.split("## Evaluation (test split)")[1].split("\n\n")[1]
    assert "train" not in test_table
    assert "final" in test_table and "best" in test_table
    assert "validation" in report


def test_tensorboard_mirrors_metrics_and_a_resume_writes_no_step_twice(tmp_path):
    tbparse = pytest.importorskip("tbparse", reason="tbparse (the dev extra) is not installed")
    import shutil

    cfg = _cfg(epochs=3, checkpoint_every=3)
    train_and_evaluate(dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, stop_after=9)), str(tmp_path))
    # As if killed before the checkpoint of step 9: the epoch record of step 8 is already in
    # the event file, and the run resumes from step 6.
    shutil.rmtree(tmp_path / "checkpoints" / "9")
    train_and_evaluate(cfg, str(tmp_path))
    df = tbparse.SummaryReader(str(tmp_path / "tensorboard" / "metrics")).scalars
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    for split in ("train_steps", "val", "test"):
        want = [(r["step"], r["loss"]) for r in records if r["split"] == split]
        got = df[df.tag == f"{split}/loss"].sort_values("step")
        # The killed piece's events past its checkpoint are gone: one value per step.
        assert list(got.step) == [s for s, _ in want], split
        np.testing.assert_allclose(got.value, [v for _, v in want], rtol=1e-6)
    assert (df.tag == "optim/learning_rate").any()


def test_steps_per_call_gives_the_same_run_and_resumes_exactly(tmp_path):
    # 4 steps per epoch, checkpoints every 3, trajectory every 4: calls of 3 steps are cut at
    # every boundary, so calls of 1, 2 and 3 steps all occur.
    cfg = _cfg(epochs=4, checkpoint_every=3, trajectory_every=4)
    k3 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps_per_call=3))
    train_and_evaluate(cfg, str(tmp_path / "k1"))
    train_and_evaluate(k3, str(tmp_path / "k3"))
    _assert_same_run(tmp_path / "k1", tmp_path / "k3", ignore=("steps_per_call",))
    _, part = train_and_evaluate(dataclasses.replace(
        k3, train=dataclasses.replace(k3.train, stop_after=7)), str(tmp_path / "split"))
    assert part["steps"] == 7
    train_and_evaluate(k3, str(tmp_path / "split"))
    _assert_same_run(tmp_path / "k3", tmp_path / "split")
    assert _load_json(str(tmp_path / "k3" / "topology.json")) == {"processes": 1, "devices": 2}


def test_resume_on_another_device_count_is_refused(tmp_path):
    cfg = _cfg(epochs=1, batch_size=8, stop_after=2)
    train_and_evaluate(cfg, str(tmp_path))
    assert _load_json(str(tmp_path / "topology.json"))["devices"] == 4
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="trained on 1 process.*4 device.*2 device"):
        train_and_evaluate(_cfg(epochs=1, batch_size=8, devices=2), str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_bfloat16_run_trains(tmp_path):
    # float32 with these settings: train_steps loss 0.518 -> 0.261, test accuracy 0.82
    cfg = dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, dtype="bfloat16"),
                              optim=dataclasses.replace(BASE.optim, name="adam",
                                                        learning_rate=0.05),
                              train=dataclasses.replace(BASE.train, epochs=8, tensorboard=False))
    state, summary = train_and_evaluate(cfg, str(tmp_path))
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(state.params))
    assert state.apply(np.zeros((2, 2), np.float32)).dtype == jax.numpy.bfloat16
    steps = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["split"] == "train_steps"]
    assert steps[-1]["loss"] < 0.6 * steps[0]["loss"]
    assert summary["test"]["accuracy"] >= 0.7


def test_split_too_big_for_the_device_streams_the_same_run(tmp_path, monkeypatch):
    # Batches copied from the host per call, evaluation one batch per chunk: same numbers.
    from research.train import loop

    cfg = _cfg(epochs=2, batch_size=8, steps_per_call=2, eval_batch_size=8)
    resident, _ = train_and_evaluate(cfg, str(tmp_path / "resident"))
    monkeypatch.setattr(loop, "_DEVICE_DATA_BYTES", 0)
    streamed, _ = train_and_evaluate(cfg, str(tmp_path / "streamed"))
    for a, b in zip(_leaves(resident.to_tree()), _leaves(streamed.to_tree())):
        np.testing.assert_array_equal(b, a)
    recs = [[_without(r, "time") for r in read_jsonl(str(tmp_path / d / "metrics.jsonl"))]
            for d in ("resident", "streamed")]
    assert recs[1] == recs[0]


def test_evaluation_equals_the_whole_split_at_once_with_one_batch_shape(tmp_path, monkeypatch):
    # The splits (45 train, 5 val, 50 test) cut into padded batches of 7 (rounded up to a
    # multiple of the devices), all evaluated with one batch shape, so one compiled program;
    # every reported number equals the model applied to the whole split at once, summed in
    # float64 here.
    from research.train import loop

    shapes, real = set(), loop._eval_fn
    monkeypatch.setattr(loop, "_eval_fn", lambda mesh: lambda state, batch: (
        shapes.add(batch["x"].shape), real(mesh)(state, batch))[1])
    cfg = _cfg(epochs=1, eval_batch_size=7)
    state, summary = train_and_evaluate(cfg, str(tmp_path))
    ((rows, _),) = shapes
    assert 7 <= rows < 7 + jax.device_count()
    _, _, data = load_run(str(tmp_path))
    for split, x, y in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val),
                        ("test", data.x_test, data.y_test)):
        out, _ = state.model(state.params, state.model_state, x, False)
        loss = np.mean(np.asarray(state.loss(out, y), np.float64))
        pred = np.asarray(state.loss.predict(out))
        got = summary[split]
        np.testing.assert_allclose(got["loss"], loss, rtol=1e-6)
        assert got["accuracy"] == pytest.approx(np.mean(pred == y))
        if split == "test":
            conf = np.zeros((2, 2), int)
            np.add.at(conf, (np.asarray(y), pred), 1)
            assert got["confusion"] == conf.tolist()
            # The public function, another batch size: the same numbers.
            public = evaluate(state, x, y, 9, with_confusion=True)
            np.testing.assert_allclose(public["loss"], loss, rtol=1e-6)
            assert public["confusion"] == conf.tolist()
    with pytest.raises(ValueError, match="evaluate: x and y"):
        evaluate(state, data.x_test[:0], data.y_test[:0], 9)
