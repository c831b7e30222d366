"""Surface files: round trip, resume after an interruption, refusal to mix settings, config."""

import os
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from research import landscape as L
from research.io import _temp_path
from research.landscape.config import LandscapeConfig
from research.landscape.surface import empty_surface

AXES = [np.linspace(-1.0, 1.0, 5), np.linspace(-1.0, 1.0, 4)]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 3)).astype(np.float32)
    y = rng.normal(size=23).astype(np.float32)
    theta = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
    d1 = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
    d2 = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}

    def fn(p, batch):
        err = batch["x"] @ p["w"] - batch["y"]
        return {"loss": err ** 2, "abs": jnp.abs(err)}

    return dict(fn=fn, theta=theta, dirs=[d1, d2], data={"x": x, "y": y})


def _run(p, path, **kw):
    return L.evaluate_grid(p["fn"], p["theta"], p["dirs"], AXES, p["data"], batch_size=8,
                           points_per_call=3, path=str(path), settings={"seed": 0}, **kw)


class Stop(Exception):
    pass


def test_round_trip(tmp_path):
    s = empty_surface(AXES, ["loss"], {"seed": 3, "normalization": "filter"}, {"split": "train"},
                      {"trajectory": np.ones((4, 2))})
    s.values["loss"][1, 2] = np.nan
    s.values["loss"][0, 0] = 1.5
    s.done[:2] = True
    L.save_surface(str(tmp_path / "s.npz"), s)
    t = L.load_surface(str(tmp_path / "s.npz"))
    assert t.settings == s.settings and t.info == s.info
    np.testing.assert_array_equal(t.done, s.done)
    np.testing.assert_array_equal(t.values["loss"], s.values["loss"])
    np.testing.assert_array_equal(t.extras["trajectory"], np.ones((4, 2)))
    for a, b in zip(t.axes, AXES):
        np.testing.assert_array_equal(a, b)
    # Plain numpy can read it without this package.
    with np.load(str(tmp_path / "s.npz")) as f:
        assert {"axis_0", "axis_1", "metric_loss", "done", "metadata"} <= set(f.files)


def test_interrupted_run_resumes_to_the_same_file(tmp_path, problem):
    full = _run(problem, tmp_path / "full.npz")
    calls = []

    def interrupt(surface, n_new):
        calls.append(n_new)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        _run(problem, tmp_path / "part.npz", on_chunk=interrupt)
    part = L.load_surface(str(tmp_path / "part.npz"))
    assert part.done.sum() == 6 and not part.complete  # two chunks of 3 were saved
    assert np.isnan(part.values["loss"][~part.done]).all()

    new_points = []
    resumed = _run(problem, tmp_path / "part.npz",
                   on_chunk=lambda surface, n: new_points.append(n))
    assert sum(new_points) == 20 - 6  # only the missing points
    again = L.load_surface(str(tmp_path / "part.npz"))
    ref = L.load_surface(str(tmp_path / "full.npz"))
    for k in ref.values:
        np.testing.assert_array_equal(again.values[k], ref.values[k])
        np.testing.assert_array_equal(resumed.values[k], full.values[k])
    np.testing.assert_array_equal(again.done, ref.done)
    assert again.settings == ref.settings and again.info == ref.info

    # A complete file is not recomputed at all.
    more = []
    _run(problem, tmp_path / "part.npz", on_chunk=lambda surface, n: more.append(n))
    assert more == []


def test_nan_points_are_done_not_recomputed(tmp_path, problem):
    def fn(p, batch):
        return {"loss": jnp.log(batch["x"] @ p["w"] - 1e6)}  # NaN everywhere

    s = L.evaluate_grid(fn, problem["theta"], problem["dirs"], AXES, problem["data"],
                        path=str(tmp_path / "nan.npz"))
    assert s.complete and np.isnan(s.values["loss"]).all()
    again = []
    L.evaluate_grid(fn, problem["theta"], problem["dirs"], AXES, problem["data"],
                    path=str(tmp_path / "nan.npz"), on_chunk=lambda surface, n: again.append(n))
    assert again == []


def test_resume_with_other_settings_refuses(tmp_path, problem):
    path = tmp_path / "s.npz"
    _run(problem, path)
    before = L.load_surface(str(path))
    with pytest.raises(L.SurfaceMismatchError, match="seed: saved 0, now 1"):
        L.evaluate_grid(problem["fn"], problem["theta"], problem["dirs"], AXES, problem["data"],
                        path=str(path), settings={"seed": 1})
    other = {"w": problem["theta"]["w"] + 1.0}
    with pytest.raises(L.SurfaceMismatchError, match="params_fingerprint"):
        L.evaluate_grid(problem["fn"], other, problem["dirs"], AXES, problem["data"],
                        path=str(path), settings={"seed": 0})
    with pytest.raises(L.SurfaceMismatchError, match=r"axes: saved -1:1:5 x -1:1:4"):
        L.evaluate_grid(problem["fn"], problem["theta"], problem["dirs"],
                        [AXES[0], np.linspace(-2, 2, 4)], problem["data"], path=str(path),
                        settings={"seed": 0})
    data = dict(problem["data"], y=problem["data"]["y"] + 1)
    with pytest.raises(L.SurfaceMismatchError, match="data_fingerprint"):
        L.evaluate_grid(problem["fn"], problem["theta"], problem["dirs"], AXES, data,
                        path=str(path), settings={"seed": 0})
    with pytest.raises(L.SurfaceMismatchError, match="dtype"):
        L.evaluate_grid(problem["fn"], problem["theta"], problem["dirs"], AXES,
                        problem["data"], path=str(path), settings={"seed": 0}, dtype="bfloat16")
    # Nothing was lost.
    after = L.load_surface(str(path))
    np.testing.assert_array_equal(after.values["loss"], before.values["loss"])


def test_parse_grid_and_config_validation():
    np.testing.assert_array_equal(L.parse_grid("-1:1:5"), np.linspace(-1, 1, 5))
    np.testing.assert_array_equal(L.parse_grid("-0.5:1.5:401"), np.linspace(-0.5, 1.5, 401))
    for bad in ("-1:1", "a:1:3", "1:-1:5", "-1:1:0", "-1:inf:3"):
        with pytest.raises(ValueError, match="grid"):
            L.parse_grid(bad)
    with pytest.raises(ValueError, match=r"LandscapeConfig\.plane_x"):
        LandscapeConfig(plane_x="-1:1")
    with pytest.raises(ValueError, match=r"LandscapeConfig\.normalization"):
        LandscapeConfig(normalization="filters")
    with pytest.raises(ValueError, match=r"LandscapeConfig\.plots"):
        LandscapeConfig(plots=("line", "hessian"))
    with pytest.raises(ValueError, match=r"LandscapeConfig\.bn_policy"):
        LandscapeConfig(bn_policy="interpolate")
    with pytest.raises(ValueError, match=r"LandscapeConfig\.batch_size"):
        LandscapeConfig(batch_size=0)
    assert LandscapeConfig().line == "-1:1:51" and LandscapeConfig().interpolation == "-0.5:1.5:401"


def test_overwrite_replaces_a_surface_with_other_settings(tmp_path, problem):
    path = tmp_path / "s.npz"
    _run(problem, path)
    with pytest.raises(L.SurfaceMismatchError, match="overwrite=True"):
        L.evaluate_grid(problem["fn"], problem["theta"], problem["dirs"], AXES, problem["data"],
                        path=str(path), settings={"seed": 1})
    s = L.evaluate_grid(problem["fn"], problem["theta"], problem["dirs"], AXES, problem["data"],
                        path=str(path), settings={"seed": 1}, overwrite=True)
    assert s.complete and L.load_surface(str(path)).settings["seed"] == 1


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path, problem):
    stale = tmp_path / ".s.npz.k1ll3dab.tmp"  # an old-style temporary of a killed write
    stale.write_bytes(b"half a file")
    hours_ago = time.time() - 7200
    os.utime(stale, (hours_ago, hours_ago))
    live = Path(_temp_path(str(tmp_path / "other.npz")))  # a write in progress right now
    live.write_bytes(b"another file's write in progress")
    _run(problem, tmp_path / "s.npz")
    assert not stale.exists()
    assert live.exists()
    assert L.load_surface(str(tmp_path / "s.npz")).complete


# A loss surface or an eigenvalue map computed one point per chunk (a save after each), in a
# process of its own; PATH and KIND come from the command line. Each chunk is paced by 30 ms
# so that the parent, polling the file, kills it well before the end even on a loaded machine.
_KILLED_JOB = """
import sys
import time
import jax
import jax.numpy as jnp
import numpy as np
from research import landscape as L
from research.landscape import hessian as H

KIND, PATH = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.normal(size=(40, 3)).astype(np.float32)
y = rng.normal(size=40).astype(np.float32)
theta = {"w": np.array([0.5, -1.0, 2.0], np.float32), "b": np.float32(0.1)}
dirs = [{"w": rng.normal(size=3).astype(np.float32), "b": np.float32(1.0)},
        {"w": rng.normal(size=3).astype(np.float32), "b": np.float32(-0.5)}]

def fn(p, batch):
    return (jnp.tanh(batch["x"] @ p["w"]) + p["b"] - batch["y"]) ** 2

axes = [np.linspace(-1, 1, 7), np.linspace(-1, 1, 6)]
new = []
if KIND == "grid":
    L.evaluate_grid(fn, theta, dirs, axes, {"x": x, "y": y}, batch_size=8, points_per_call=1,
                    path=PATH, on_chunk=lambda s, n: (new.append(n), time.sleep(0.03)))
else:
    real = H._map_chunk
    H._map_chunk = lambda run, coords: (time.sleep(0.03), new.append(len(coords)),
                                        real(run, coords))[2]
    H.eigenvalue_map(fn, theta, dirs, axes, {"x": x, "y": y}, steps=4, batch_size=8,
                     points_per_call=1, path=PATH)
print("computed", sum(new), flush=True)
"""


@pytest.mark.parametrize("kind", ["grid", "eigen"])
def test_sigkilled_computation_resumes_to_the_uninterrupted_file(tmp_path, kind):
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def start(path):
        return subprocess.Popen([sys.executable, "-c", _KILLED_JOB, kind, str(path)], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    ref = start(tmp_path / "ref.npz")
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out[-3000:]
    path = tmp_path / "killed.npz"
    proc, done = start(path), 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # until a few points are saved
        if path.exists():
            done = int(L.load_surface(str(path)).done.sum())
            if done >= 5:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-chunk or mid-save, wherever it is now
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and 5 <= done < 42, (done, out[-3000:])
    part = L.load_surface(str(path))  # the last complete save, whatever the kill interrupted
    assert part.done.sum() >= done and not part.complete
    resumed = start(path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert f"computed {42 - int(part.done.sum())}" in out, out  # only the missing points
    a, b = L.load_surface(str(path)), L.load_surface(str(tmp_path / "ref.npz"))
    assert a.complete and a.settings == b.settings and a.info == b.info
    for k in b.values:
        np.testing.assert_array_equal(a.values[k], b.values[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.npz", "ref.npz"]  # no temps
