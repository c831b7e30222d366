"""Configs: validation naming the field, round trips, the command line and its error lines."""

import dataclasses
import json
import subprocess
import sys

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
