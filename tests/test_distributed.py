"""Several processes on one machine (Open MPI): training and landscapes equal one process's.

Each test starts `mpirun -np 2` with two host CPU devices per process (4 in all, as the
one-process runs here have from tests/conftest.py), gloo collectives, and
`jax.distributed.initialize()` reading Open MPI's environment. Skipped where `mpirun` is absent
(Debian: `apt-get install openmpi-bin`).
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research.config import PLAYGROUND_PRESETS, to_dict
from research.train import load_run, train_and_evaluate
from research.writers import read_jsonl

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None,
                                reason="mpirun not found (Debian: apt-get install openmpi-bin)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = PLAYGROUND_PRESETS["tiny"]
# 45 training examples, batch 8 (2 per device): 5 steps per epoch, 20 in all; 2 steps per call.
CFG = dataclasses.replace(
    BASE, model=dataclasses.replace(BASE.model, dropout=0.2),
    train=dataclasses.replace(BASE.train, epochs=4, batch_size=8, checkpoint_every=6,
                              trajectory_every=5, steps_per_call=2, progress=False,
                              tensorboard=False))

# What every process runs: its own 2 host devices, then the run (with `--distributed`).
_SCRIPT = """
import os, sys, json, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
from research.config import Config, from_dict
from research.train import train_and_evaluate
import research.writers
hang_after = int(sys.argv[3])
if hang_after:
    # Process 0 stalls once a record past step `hang_after` is on disk (the other process
    # waits at the next collective), so the test's kill falls between two checkpoints.
    write = research.writers.JsonlWriter.write
    def stall(self, record):
        write(self, record)
        if record["step"] > hang_after:
            open(sys.argv[2] + ".stalled", "w").close()
            time.sleep(600)
    research.writers.JsonlWriter.write = stall
cfg = from_dict(Config, json.loads(sys.argv[1]))
train_and_evaluate(cfg, sys.argv[2])
"""


def _mpirun(cfg, run_dir, hang_after=0):
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable, "-c",
           _SCRIPT, json.dumps(to_dict(dataclasses.replace(cfg, distributed=True))),
           str(run_dir), str(hang_after)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _descendants(pid):
    """Every process below `pid` (from /proc): Open MPI starts the ranks under its own daemon,
    in another session, so killing mpirun's process group alone leaves them running."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill(proc):
    """SIGKILL mpirun and every process it started (the ranks included)."""
    below = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, _ = proc.communicate()
        pytest.fail(f"mpirun timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def _is_python(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read().split(b"\0")[0]
    except OSError:
        return False


def _wait_gone(pid, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # killed, waiting for its parent to collect it
        except OSError:
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} still runs after SIGKILL")


def _records(run_dir):
    return [{k: v for k, v in r.items() if k != "time"}
            for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run on 2 processes x 2 devices, and on 1 process x 4 devices."""
    base = tmp_path_factory.mktemp("dist")
    out = _finish(_mpirun(CFG, base / "two"))
    train_and_evaluate(CFG, str(base / "one"))
    return base, out


def test_two_processes_train_like_one(runs):
    base, out = runs
    assert "batches split over 4 device(s) in 2 process(es)" in out
    two, one = str(base / "two"), str(base / "one")
    with open(os.path.join(two, "topology.json")) as f:
        assert json.load(f) == {"processes": 2, "devices": 4}
    r2, r1 = _records(two), _records(one)
    assert [(r["step"], r["split"]) for r in r2] == [(r["step"], r["split"]) for r in r1]
    for a, b in zip(r1, r2):
        for k, v in a.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (a["step"], a["split"], k)
    for best in (False, True):
        s2, s1 = (load_run(d, best=best)[1] for d in (two, one))
        assert int(s2.step) == int(s1.step)
        for a, b in zip(_leaves(s1.to_tree()), _leaves(s2.to_tree())):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for name in ("summary.json", "init_params.npz", "trajectory/step_00000020.npz"):
        assert os.path.exists(os.path.join(two, name)), name


def test_killed_two_process_run_resumes_exactly(runs, tmp_path):
    base, _ = runs
    run_dir = tmp_path / "killed"
    proc = _mpirun(CFG, run_dir, hang_after=8)  # checkpoint at 6, records up to 10 on disk
    deadline = time.time() + 240
    while not os.path.exists(str(run_dir) + ".stalled"):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    ranks = [p for p in _descendants(proc.pid) if _is_python(p)]
    assert len(ranks) == 2, ranks
    _kill(proc)
    proc.communicate()
    for pid in ranks:  # no rank survives the kill (they would sleep on, holding the run)
        _wait_gone(pid)
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["6"]
    assert max(r["step"] for r in _records(run_dir)) == 10
    out = _finish(_mpirun(CFG, run_dir))
    assert "resumed from step 6" in out
    assert _records(run_dir) == _records(base / "two")
    for best in (False, True):
        a, b = (load_run(str(d), best=best)[1] for d in (base / "two", run_dir))
        for x, y in zip(_leaves(a.to_tree()), _leaves(b.to_tree())):
            np.testing.assert_array_equal(y, x)
    # another number of processes is refused, naming both
    with pytest.raises(ValueError, match="trained on 2 process.*this run has 1 process"):
        train_and_evaluate(CFG, str(run_dir))


# A small surface: squared error of a linear model over 50 examples, a 7 x 5 grid, on a
# 2 (grid) x 2 (data) mesh, batch 8 (2 per data device, last batch ragged and masked).
_SURFACE = """
import numpy as np
from research.landscape.evaluate import evaluate_grid
from research.sharding import make_mesh

def loss_fn(p, b):
    return (b["x"] @ p["w"] + p["b"] - b["y"]) ** 2

rng = np.random.default_rng(0)
data = {"x": rng.normal(size=(50, 3)).astype(np.float32),
        "y": rng.normal(size=(50,)).astype(np.float32)}
params = {"w": np.array([0.5, -1.0, 2.0], np.float32), "b": np.float32(0.1)}
dirs = [{"w": rng.normal(size=3).astype(np.float32), "b": np.float32(1.0)},
        {"w": rng.normal(size=3).astype(np.float32), "b": np.float32(-0.5)}]
computed = []
surface = evaluate_grid(loss_fn, params, dirs, [np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)],
                        data, batch_size=8, points_per_call=8, mesh=make_mesh(2, 2), path=PATH,
                        on_chunk=lambda s, n: computed.append(n))

import jax.numpy as jnp
from research.landscape.hessian import eigenvalue_map

def tanh_fn(p, b):
    return (jnp.tanh(b["x"] @ p["w"]) + p["b"] - b["y"]) ** 2

# The eigenvalue map's points over all 4 devices (2 per process), written by process 0.
eig = eigenvalue_map(tanh_fn, params, dirs, [np.linspace(-1, 1, 3), np.linspace(-1, 1, 2)],
                     data, steps=4, batch_size=8, points_per_call=4, mesh=make_mesh(4, 1),
                     path=PATH + ".eig.npz")
"""

_SURFACE_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
from research.sharding import initialize_distributed
initialize_distributed()
import jax
PATH = sys.argv[1]
exec(sys.argv[2])
print(f"process {jax.process_index()} computed {sum(computed)} points", flush=True)
"""


def test_two_process_surface_equals_one_process_and_resumes(tmp_path):
    from research.landscape.surface import load_surface, save_surface

    ref = {"PATH": str(tmp_path / "one.npz")}
    exec(_SURFACE, ref)  # this process: 4 devices, the same 2 x 2 mesh
    path = str(tmp_path / "two.npz")

    def mpirun():
        proc = subprocess.Popen(
            ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable,
             "-c", _SURFACE_SCRIPT, path, _SURFACE], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return _finish(proc)

    out = mpirun()
    assert "process 0 computed 35 points" in out and "process 1 computed 35 points" in out
    two, one = load_surface(path), ref["surface"]
    assert two.done.all()
    assert two.info["mesh"] == {"grid": 2, "data": 2}
    np.testing.assert_allclose(two.values["loss"], one.values["loss"], rtol=1e-5)
    eig = load_surface(path + ".eig.npz")
    assert eig.complete
    for name in ("lambda_max", "lambda_min"):
        np.testing.assert_allclose(eig.values[name], ref["eig"].values[name], rtol=1e-5,
                                   atol=1e-6)
    # Resume: five points lost, the rest kept; both processes skip the same finished points.
    two.done.reshape(-1)[[0, 3, 11, 20, 34]] = False
    two.values["loss"].reshape(-1)[[0, 3, 11, 20, 34]] = np.nan
    save_surface(path, two)
    out = mpirun()
    assert "process 0 computed 5 points" in out and "process 1 computed 5 points" in out
    np.testing.assert_allclose(load_surface(path).values["loss"], one.values["loss"], rtol=1e-5)
