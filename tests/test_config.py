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
