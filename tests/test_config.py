"""Configs: validation naming the field, round trips, the command line and its error lines."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from research.config import (
    PLAYGROUND_PRESETS,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    cli,
    from_dict,
    run_cli,
    to_dict,
)


@pytest.mark.parametrize("make, field", [
    (lambda: ModelConfig(activation="swish"), "ModelConfig.activation"),
    (lambda: ModelConfig(kind="mlp", widths=()), "ModelConfig.widths"),
    (lambda: OptimConfig(learning_rate=-0.1), "OptimConfig.learning_rate"),
    (lambda: OptimConfig(learning_rate=float("nan")), "OptimConfig.learning_rate"),
    (lambda: OptimConfig(name="lion"), "OptimConfig.name"),
    (lambda: TrainConfig(batch_size=0), "TrainConfig.batch_size"),
    (lambda: TrainConfig(loss="hinge"), "TrainConfig.loss"),
    (lambda: DataConfig(noise=0.9), "DataConfig.noise"),
    (lambda: DataConfig(features=("x3",)), "DataConfig.features"),
])
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_dict_round_trip():
    cfg = PLAYGROUND_PRESETS["cpu"]
    again = from_dict(Config, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg


def test_cli_preset_and_override():
    cfg = cli(PLAYGROUND_PRESETS, "cpu", "test", args=["--preset", "tiny",
                                                       "--optim.learning-rate", "0.5"])
    assert cfg.preset == "tiny"
    assert cfg.optim.learning_rate == 0.5
    assert cfg.data == PLAYGROUND_PRESETS["tiny"].data
    assert dataclasses.replace(cfg, optim=PLAYGROUND_PRESETS["tiny"].optim) == \
        dataclasses.replace(PLAYGROUND_PRESETS["tiny"], preset="tiny")


def test_cli_bad_value_fails_at_start():
    with pytest.raises((SystemExit, ValueError)):
        cli(PLAYGROUND_PRESETS, "cpu", "test", args=["--optim.learning-rate", "-1"])


def test_help_lists_every_option_with_defaults():
    out = subprocess.run([sys.executable, "-m", "experiments.playground", "--preset", "tiny",
                          "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for flag in ("--preset", "--data.dataset", "--model.activation", "--optim.learning-rate",
                 "--train.regularization", "--train.batch-size", "--model.widths"):
        assert flag in text, flag
    assert "tiny" in text and "xor" in text  # the tiny preset's defaults are shown


def test_experiment_user_error_is_one_line_with_exit_code_2():
    cmd = [sys.executable, "-m", "experiments.main", "--preset", "tiny",
           "--run.data.dataset", "esc50", "--run.data.root", "/nonexistent"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == ["error: DataConfig.root: folder not found: /nonexistent"]
    assert "Traceback" not in out.stdout + out.stderr


def test_run_cli_keeps_tracebacks_for_bugs_and_on_request(monkeypatch, capsys):
    def fails_with(exc):
        def main(cfg):
            raise exc
        return main

    monkeypatch.delenv("RESEARCH_TRACEBACK", raising=False)
    args = ["--preset", "tiny"]
    for exc in (ValueError("TrainConfig.batch_size: 64 is larger than the split (50)"),
                FloatingPointError("loss is nan at step 7"), PermissionError("denied: /x"),
                NotADirectoryError("/x is a file")):
        with pytest.raises(SystemExit) as info:
            run_cli(fails_with(exc), PLAYGROUND_PRESETS, "cpu", "test", args)
        assert info.value.code == 2
        assert capsys.readouterr().err == f"error: {exc}\n"
    # Anything else is a bug: its traceback stays.
    with pytest.raises(KeyError):
        run_cli(fails_with(KeyError("x")), PLAYGROUND_PRESETS, "cpu", "test", args)
    monkeypatch.setenv("RESEARCH_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bad"):
        run_cli(fails_with(ValueError("bad")), PLAYGROUND_PRESETS, "cpu", "test", args)


def test_landscape_missing_run_dir_on_the_command_line(capsys):
    from experiments import landscape
    from research.landscape.config import LANDSCAPE_PRESETS

    with pytest.raises(SystemExit) as info:
        run_cli(landscape.main, LANDSCAPE_PRESETS, "paper", "test",
                ["--run-dir", "/nonexistent/run"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: --run-dir: the run folder /nonexistent/run does "
                                       "not exist\n")


def _help(presets, default, capsys):
    with pytest.raises(SystemExit):
        cli(presets, default, "test", ["--help"])
    return capsys.readouterr().out


def test_choices_are_listed_in_help_and_names_written_once(capsys):
    import typing

    from research import config as C
    from research.landscape import config as LC
    from research.landscape.directions import IGNORES, NORMALIZATIONS

    assert C.ACTIVATIONS == typing.get_args(C.Activation)
    assert set(typing.get_args(LC.Normalization)) == set(NORMALIZATIONS)
    assert set(typing.get_args(LC.Ignore)) == set(IGNORES)
    assert typing.get_args(LC.BnPolicy) == LC.BN_POLICIES  # the engine's names
    text = _help(PLAYGROUND_PRESETS, "cpu", capsys)
    for choices in ("{relu,tanh,sigmoid,gelu,linear}", "{sgd,momentum,nesterov,adam,adamw}",
                    "{bce,softmax_ce,mse}", "{none,l1,l2}", "{logmel,mfcc_stats,mfcc}"):
        assert choices in text, choices
    with pytest.raises(ValueError, match=r"ModelConfig\.activation: unknown value 'swish'"):
        ModelConfig(activation="swish")


def test_main_job_help_has_one_of_each_flag_and_no_playground_options(capsys):
    from experiments import main as main_job

    text = _help(main_job.PRESETS, "cpu", capsys)
    for flag in ("--run.name", "--run.workdir", "--run.preset", "--landscape.preset",
                 "--landscape.run-dir", "--landscape.out-dir", "--run.data.noise",
                 "--run.data.features"):
        assert flag not in text, flag
    for flag in ("--name", "--workdir", "--preset", "--run.data.dataset", "--landscape.overwrite",
                 "--run.train.tensorboard"):
        assert flag in text, flag
    cfg = cli(main_job.PRESETS, "cpu", "test", ["--preset", "tiny", "--run.data.n", "3"])
    assert isinstance(cfg.run.data, DataConfig) and cfg.run.data.n == 3
    # The saved config is a plain run config: it loads back as one.
    assert from_dict(Config, to_dict(cfg.run)).data.n == 3


def test_one_preset_name_means_the_same_landscape_everywhere():
    from experiments import main as main_job
    from research.landscape.config import LANDSCAPE_PRESETS

    job_only = {"run_dir", "out_dir", "preset"}
    for name, job in main_job.PRESETS.items():
        ref = LANDSCAPE_PRESETS[name]
        for f in dataclasses.fields(ref):
            if f.name not in job_only:
                assert getattr(job.landscape, f.name) == getattr(ref, f.name), (name, f.name)
        assert job.run.preset == job.preset == name


def test_landscape_defaults_to_the_newest_finished_run(tmp_path, monkeypatch):
    import os
    import time

    from research.landscape.analysis import newest_finished_run

    def make(path, finished):
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "summary.json").write_text(json.dumps({"finished": finished}))
        return str(path)

    with pytest.raises(FileNotFoundError, match="no finished training run"):
        newest_finished_run(str(tmp_path))
    old = make(tmp_path / "playground", True)
    new = make(tmp_path / "main" / "train", True)
    make(tmp_path / "half", False)
    now = time.time()
    os.utime(os.path.join(old, "summary.json"), (now - 100, now - 100))
    os.utime(os.path.join(new, "summary.json"), (now - 50, now - 50))
    assert newest_finished_run(str(tmp_path)) == new
    os.utime(os.path.join(old, "summary.json"), (now, now))
    assert newest_finished_run(str(tmp_path)) == old




def test_configure_cpu_backend_sets_its_flag_only_where_measured(monkeypatch):
    import jaxlib.version

    from research import sharding as sh

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(jaxlib.version, "__version__", "0.10.2")
    assert sh.configure_cpu_backend()
    assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=4 "
                                       + sh.EIGEN_CONVOLUTIONS)
    assert not sh.configure_cpu_backend()  # set once, not twice
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")  # the user's
    assert not sh.configure_cpu_backend()
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # one CPU: YNNPACK is faster
    assert not sh.configure_cpu_backend() and os.environ["XLA_FLAGS"] == ""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(jaxlib.version, "__version__", "0.11.0")  # not measured: XLA may abort
    assert not sh.configure_cpu_backend() and os.environ["XLA_FLAGS"] == ""


_CONV = """
import jax, jax.numpy as jnp, numpy as np
x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 12, 10, 3)), jnp.float32)
k = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 3, 5)), jnp.float32)
def loss(k):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y) ** 2)
print(float(jax.jit(loss)(k)), *np.asarray(jax.jit(jax.grad(loss))(k)).ravel().tolist())
"""


def test_the_cpu_flag_is_accepted_and_gives_the_same_convolutions():
    from research import sharding as sh

    def run(flags):
        env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, "-c", _CONV], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]  # XLA aborts on an unknown flag
        return np.array(proc.stdout.split(), float)

    default, eigen = run(""), run(sh.EIGEN_CONVOLUTIONS)
    np.testing.assert_allclose(eigen, default, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cpus,backend,version,flags,eigen", [
    (2, "cpu", "0.10.2", "", True),
    (1, "cpu", "0.10.2", "", False),  # one CPU: YNNPACK's convolutions are faster
    (2, "gpu", "0.10.2", "", False),
    (2, "cpu", "0.11.0", "", False),  # not measured: XLA may reject the option
    (2, "cpu", "0.10.2", "--xla_cpu_experimental_ynn_fusion_type=", False),  # the user's choice
])
def test_cpu_jit_compiles_eigen_convolutions_only_where_measured(cpus, backend, version, flags,
                                                                 eigen, monkeypatch):
    import jax
    import jax.numpy as jnp
    import jaxlib.version

    from research import sharding as sh

    monkeypatch.setattr(sh, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(jaxlib.version, "__version__", version)
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    seen = []

    def conv(x, k):
        seen.append(sh.eigen_convolutions())
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    # Over 16 features: YNNPACK leaves smaller convolutions to Eigen anyway.
    x, k = jnp.ones((2, 6, 6, 20)), jnp.ones((3, 3, 20, 24))
    program = sh.cpu_jit(conv).lower(x, k).compile().as_text().split("ENTRY")[1]
    # JAX hands one trace of a function to every later jit of it, whatever its compiler
    # options; cpu_jit traces a wrapper for Eigen, so a plain jit afterwards traces its own
    # (elsewhere cpu_jit is the plain jit, with the same trace).
    jax.jit(conv).lower(x, k)
    assert seen == ([True, False] if eigen else [False])
    # Eigen's convolution is a plain `convolution` in the program; YNNPACK's is in a fusion.
    assert (" convolution(" in program) == eigen
    monkeypatch.setenv("XLA_FLAGS", sh.EIGEN_CONVOLUTIONS)  # the process-wide flag
    assert sh.eigen_convolutions()


# Allocates, writes and frees a 64 MiB block four times; prints the page faults of the last three.
_FAULTS = """
import resource, sys
if sys.argv[1] == "reuse":
    from research.sharding import reuse_host_memory
    assert reuse_host_memory() is True and reuse_host_memory() is True
import numpy as np

def touch():
    a = np.ones(16 << 20, np.float32)
    return float(a[::4096].sum())

touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_reuse_host_memory_keeps_freed_blocks_without_page_faults():
    def faults(mode):
        proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return int(proc.stdout.split()[-1])

    # glibc's default returns a freed large block to the kernel: its pages fault in again.
    default, reused = faults("default"), faults("reuse")
    assert default > 100
    assert reused < default / 20
