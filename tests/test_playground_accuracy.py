"""The Playground's classic results: an MLP solves noise-free xor, circle and spiral."""

import pytest

from research.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from research.train import train_and_evaluate


def _train(tmp_path, dataset, activation, widths, epochs):
    cfg = Config(data=DataConfig(dataset=dataset, n=500, noise=0.0),
                 model=ModelConfig(kind="mlp", widths=widths, activation=activation),
                 optim=OptimConfig(name="adam", learning_rate=0.01),
                 train=TrainConfig(epochs=epochs, batch_size=10, loss="bce", eval_every=epochs,
                                   eval_train=False, checkpoint_every=10**6, progress=False))
    return train_and_evaluate(cfg, str(tmp_path))[1]["test"]["accuracy"]


@pytest.mark.parametrize("dataset", ["xor", "circle"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_xor_and_circle(tmp_path, dataset, activation):
    assert _train(tmp_path, dataset, activation, (8, 8), 40) >= 0.95


def test_spiral_two_hidden_layers(tmp_path):
    assert _train(tmp_path, "spiral", "relu", (8, 8), 200) >= 0.90


def test_squared_error_on_tanh_output_as_in_the_playground(tmp_path):
    # With the squared inputs the circle is linearly separable, the Playground's classic lesson.
    cfg = Config(data=DataConfig(dataset="circle", n=500, features=("x1", "x2", "x1^2", "x2^2")),
                 model=ModelConfig(kind="mlp", widths=(4, 2), activation="tanh"),
                 optim=OptimConfig(name="sgd", learning_rate=0.03),
                 train=TrainConfig(epochs=40, batch_size=10, loss="mse", eval_every=40,
                                   checkpoint_every=10**6, progress=False))
    summary = train_and_evaluate(cfg, str(tmp_path))[1]
    assert summary["test"]["accuracy"] >= 0.95
