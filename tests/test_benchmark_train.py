"""Smoke test of `benchmarks/train.py`: a few tiny steps per side, with or without PyTorch."""

import os
import subprocess
import sys


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_train_benchmark_runs_tiny_and_prints_every_side():
    cmd = [sys.executable, "-m", "benchmarks.train", "--batch", "4", "--threads", "1",
           "--rounds", "2", "--steps", "2", "--warmup", "1", "--height", "8", "--width", "8",
           "--channels", "8", "--examples", "8", "--sides", "jax-step", "jax-loop",
           "jax-devices", "jax-composite", "jax-library", "torch-eager"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "pinned with os.sched_setaffinity" in out
    assert "jax-step" in out and "loop overhead per step" in out
    assert "devices: jax-step cpu" in out
    # Timed rows only: a side that could not run prints "<side>: skipped: <why>" instead.
    rows = [line.split() for line in out.splitlines()
            if line.startswith(("jax-", "torch-")) and ": skipped:" not in line]
    losses = {row[0]: float(row[7]) for row in rows}
    # Flax's and lax's own operations train the same model: the same first loss.
    assert abs(losses["jax-library"] - losses["jax-step"]) < 1e-5, out
    # The native first stage (8 channels: it applies) and the JAX operations agree.
    assert abs(losses["jax-composite"] - losses["jax-step"]) < 1e-5, out
    if not _torch_importable():
        assert "torch-eager: skipped: torch is not importable" in out
    else:
        # Same weights and data on both sides: the first step's loss agrees.
        assert abs(losses["jax-step"] - losses["torch-eager"]) < 1e-4, out
        assert abs(losses["jax-devices"] - losses["jax-step"]) < 1e-5, out
        assert "vs eager" in out


def test_train_benchmark_without_torch_skips_the_torch_sides(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named torch (blocked)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    cmd = [sys.executable, "-m", "benchmarks.train", "--batch", "4", "--threads", "1",
           "--rounds", "1", "--steps", "1", "--warmup", "0", "--height", "8", "--width", "8",
           "--channels", "2", "--examples", "8", "--sides", "jax-step", "torch-eager"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch-eager: skipped: torch is not importable" in proc.stdout
    assert "jax-step: skipped" not in proc.stdout  # --warmup 0 used to crash it
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("jax-step ")]
    assert len(rows) == 1 and float(rows[0][2]) > 0, proc.stdout
