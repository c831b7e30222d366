"""Test settings: four CPU devices for the sharding tests, strict numpy rank promotion, no GPU,
cheaper compilation, and the number of pytest-xdist workers `make test` starts.

Compilation is most of the suite's time (tiny models, many programs), so the tests (and the
subprocesses they start, which inherit the environment):
- compile at LLVM's optimisation level 1 (`--xla_backend_optimization_level=1`): XLA's own
  passes, and so the operations, are those of a default build, but XLA:CPU's default level
  spends about 1 s on a random-number program (0.15 s at level 1). The whole suite took
  9:36-10:01 at the default level and 7:50-8:46 at level 1 (2 cores). Float rounding can
  differ in the last bits from a default build (LLVM may contract multiply-adds differently);
  the tests compare against references computed in the same setting, except the two that
  check the library's level-1 programs against an explicit level-3 (default) compile
  (`init_variables`, `gaussian_direction`);
- share one persistent compilation cache, made for the run and removed at its end: a run
  resumed after a kill, or an experiment run twice, loads the programs its first part compiled
  (`test_train_loop.py` and `test_landscape_surface.py`, with their killed subprocesses, took
  95-97 s with it and 147 s without, on 2 workers). Every program goes in, however fast it
  compiled: most of the suite's compilations are small ones (eager operations, `jit` of a new
  lambda, one model's `init`) of 50-80 ms each, and the same ones recur in other tests and
  other workers, which load them instead (`tests/test_models.py` alone compiles 465, 4 MB of
  cache; it took 44 s with an empty cache and 15.5 s run again on the filled one). The whole
  suite took 9:29, 10:51 and 10:47 with every program cached against 11:17, 11:19 and 10:58
  with only those over 0.2 s (2 workers, session 15; the tests' summed durations 1,086 against
  1,291 s in the first pair).
"""

import os
import shutil
import tempfile

# Must be set before jax initialises its backends; subprocesses inherit them.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# Made by the process that starts the xdist workers (they inherit it); a cache the user set is
# used and kept.
_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="research-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# Cache every program (see the module docstring).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# The experiments cache features under the relative `.cache/features` unless told otherwise; a
# test that forgets to point them elsewhere reads and writes the checkout's cache (results of
# earlier runs, and a fresh clone then runs slower than a used one). The process that starts the
# workers checks that no test added a file there.
_FEATURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache",
                         "features")


def _feature_files() -> set[str]:
    try:
        return set(os.listdir(_FEATURES))
    except FileNotFoundError:
        return set()


_FEATURES_BEFORE = None if "PYTEST_XDIST_WORKER" in os.environ else _feature_files()


def pytest_sessionfinish(session, exitstatus):
    """Remove the run's compilation cache and fail the run if a test wrote into the checkout's
    feature cache (in the process that started the workers, after them)."""
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)
    if _FEATURES_BEFORE is None:
        return
    added = sorted(_feature_files() - _FEATURES_BEFORE)
    if added:
        session.exitstatus = 1
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"FAILED: tests wrote {len(added)} file(s) into the checkout's feature cache "
            f"{_FEATURES} (e.g. {added[0]}): give the experiment a cache_dir under tmp_path "
            "(or run it in tmp_path), so tests neither read nor leave cached features there",
            red=True)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this process may use, at most 4 (each holds its own JAX
    and compiled programs, about 1-2 GB; more workers also oversubscribe the subprocess tests)."""
    from research.sharding import usable_cpus

    return max(1, min(4, usable_cpus()))
