import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.config import ModelConfig
from research.models import CNN, MLP, PiczakCNN, make_model, param_count


def _init(model, x):
    return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x)


def test_mlp_param_count_matches_hand_count():
    model = MLP(widths=(4, 2), num_outputs=1, activation="tanh")
    variables = _init(model, jnp.zeros((1, 7)))
    # (7*4 + 4) + (4*2 + 2) + (2*1 + 1)
    assert param_count(variables["params"]) == 32 + 10 + 3
    assert "batch_stats" not in variables


def test_cnn_param_count_matches_hand_count():
    model = CNN(channels=(4, 8), num_outputs=3, kernel_size=(3, 3), batch_norm=True, head=(5,))
    variables = _init(model, jnp.zeros((1, 16, 12, 1)))
    # conv without bias when BN: 3*3*1*4, BN scale+bias 2*4; 3*3*4*8, BN 2*8; head 8*5+5; out 5*3+3
    expected = 36 + 8 + 288 + 16 + 45 + 18
    assert param_count(variables["params"]) == expected
    # running mean and variance per channel
    assert param_count(variables["batch_stats"]) == 2 * (4 + 8)


def test_residual_cnn_param_count_and_skip_changes_function():
    kw = dict(channels=(4,), num_outputs=2, depth=1, batch_norm=False)
    plain, res = CNN(residual=False, **kw), CNN(residual=True, **kw)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 1))
    v = _init(plain, x)
    # stem conv (9*1*4+4) + two block convs (9*4*4+4 each) + out (4*2+2)
    assert param_count(v["params"]) == 40 + 2 * 148 + 10
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(_init(res, x))
    assert not np.allclose(plain.apply(v, x), res.apply(v, x))


def test_piczak_param_count_with_tall_filters():
    model = PiczakCNN(filters=(6, 5), num_outputs=4, first_kernel=(57, 6), hidden=(7,),
                      dropout=0.5)
    x = jnp.zeros((1, 60, 41, 1))
    variables = _init(model, x)
    # conv1 57x6x1x6+6 -> map 4x36; pool 4x3 stride 1x3 -> 1x12; conv2 1x3x6x5+5 -> 1x10;
    # pool 1x3 -> 1x3; flatten 15 -> dense 7 -> out 4
    expected = (57 * 6 * 6 + 6) + (3 * 6 * 5 + 5) + (15 * 7 + 7) + (7 * 4 + 4)
    assert param_count(variables["params"]) == expected
    k = variables["params"]["Conv_0"]["kernel"]
    assert k.shape == (57, 6, 1, 6)  # frequency-tall, output channels on the last axis


def test_piczak_clips_first_filter_to_short_inputs():
    model = PiczakCNN(filters=(3, 3), num_outputs=2, hidden=(4,))
    out = model.apply(_init(model, jnp.zeros((2, 40, 30, 1))), jnp.zeros((2, 40, 30, 1)))
    assert out.shape == (2, 2)


def test_batchnorm_train_and_eval_modes():
    model = CNN(channels=(4,), num_outputs=2, batch_norm=True)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 1))
    variables = _init(model, x)
    out_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    out_eval = model.apply(variables, x, train=False)
    # training mode normalises with batch statistics, eval mode with the (initial) averages
    assert not np.allclose(out_train, out_eval)
    mean = updates["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean, 0.0)


def test_mlp_dropout_only_in_training():
    model = MLP(widths=(16,), num_outputs=1, dropout=0.5)
    x = jnp.ones((4, 3))
    v = _init(model, x)
    a = model.apply(v, x, train=False)
    b = model.apply(v, x, train=False)
    c = model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(5)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="activation"):
        MLP(widths=(3,), activation="swishy").init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))


def test_make_model_from_config():
    m = make_model(ModelConfig(kind="cnn", channels=(2, 3), activation="relu"), 5)
    assert isinstance(m, CNN) and m.num_outputs == 5 and m.channels == (2, 3)
    m = make_model(ModelConfig(kind="piczak", channels=(4, 4), head=(8,)), 3)
    assert isinstance(m, PiczakCNN) and m.first_kernel == (57, 6)
