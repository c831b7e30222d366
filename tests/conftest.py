"""Test settings: four CPU devices for the sharding tests, strict numpy rank promotion, no GPU,
and the number of pytest-xdist workers `make test` starts."""

import os

# Must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this process may use, at most 4 (each holds its own JAX
    and compiled programs, about 1-2 GB; more workers also oversubscribe the subprocess tests)."""
    from research.sharding import usable_cpus

    return max(1, min(4, usable_cpus()))
