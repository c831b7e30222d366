"""The model adapter: foreign Linen modules (any flag), NNX modules and plain functions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research import adapters as A


class TrainingFlag(nn.Module):
    @nn.compact
    def __call__(self, x, training: bool = False):
        h = nn.Dense(5)(x)
        h = nn.BatchNorm(use_running_average=not training, momentum=0.5)(h)
        h = nn.Dropout(0.5, deterministic=not training)(nn.relu(h))
        return nn.Dense(3)(h)


class Deterministic(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return nn.Dense(3)(nn.Dropout(0.5, deterministic=deterministic)(x))


class NoFlag(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 5, rngs=rngs)
        self.bn = nnx.BatchNorm(5, momentum=0.5, rngs=rngs)
        self.l2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


X = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
Y = jnp.arange(8) % 3


def test_linen_training_flag_modes_and_state():
    module = TrainingFlag()
    params, state = A.split_variables(module.init(jax.random.PRNGKey(1), X))
    model = A.linen(module)
    out_eval, same = model(params, state, X, train=False)
    ref = module.apply({"params": params, **state}, X, training=False)
    np.testing.assert_array_equal(out_eval, ref)
    assert same is state
    key = jax.random.PRNGKey(2)
    out_tr, new_state = model(params, state, X, train=True, rng=key)
    ref_tr, upd = module.apply({"params": params, **state}, X, training=True,
                               rngs={"dropout": key}, mutable=["batch_stats"])
    np.testing.assert_array_equal(out_tr, ref_tr)
    np.testing.assert_array_equal(new_state["batch_stats"]["BatchNorm_0"]["mean"],
                                  upd["batch_stats"]["BatchNorm_0"]["mean"])
    assert not np.allclose(new_state["batch_stats"]["BatchNorm_0"]["mean"], 0.0)


def test_linen_inverted_flag_and_no_flag():
    for module, flag in ((Deterministic(), "deterministic"), (NoFlag(), None)):
        params, state = A.split_variables(module.init(jax.random.PRNGKey(1), X))
        model = A.linen(module)
        assert model.apply.flag == flag
        out, _ = model(params, state, X, train=False)
        np.testing.assert_array_equal(out, module.apply({"params": params}, X))
    # Dropout is on in training mode only: the inverted flag is handled.
    module = Deterministic()
    params, state = A.split_variables(module.init(jax.random.PRNGKey(1), X))
    out_tr, _ = A.linen(module)(params, state, X, train=True, rng=jax.random.PRNGKey(3))
    assert not np.allclose(out_tr, A.linen(module)(params, state, X)[0])


def test_nnx_module_modes_and_state():
    net = NnxNet(nnx.Rngs(0))
    model, params, state = A.nnx(net)
    mean0 = np.array(state["bn"]["mean"].value)  # the module below updates its own variables
    out_eval, _ = model(params, state, X, train=False)
    net.eval()
    np.testing.assert_allclose(out_eval, net(X), rtol=1e-6)
    out_tr, new_state = jax.jit(lambda p, s, x: model(p, s, x, train=True))(params, state, X)
    net.train()
    np.testing.assert_allclose(out_tr, net(X), rtol=1e-5)  # batch statistics in training mode
    assert not np.allclose(new_state["bn"]["mean"].value, mean0)
    np.testing.assert_allclose(new_state["bn"]["mean"].value, net.bn.mean.value, rtol=1e-6)


def test_function_and_per_example_fn_with_an_optax_loss():
    def f(params, x):
        return x @ params["w"] + params["b"][None, :]

    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    fn = A.per_example_fn(f, optax.softmax_cross_entropy_with_integer_labels,
                          metrics={"accuracy": A.accuracy})
    out = fn(params, {"x": X, "y": Y})
    np.testing.assert_allclose(out["loss"], optax.softmax_cross_entropy_with_integer_labels(
        f(params, X), Y), rtol=1e-6)
    np.testing.assert_array_equal(out["accuracy"], (jnp.argmax(f(params, X), -1) == Y))


def test_bad_flag_and_bad_model():
    with pytest.raises(ValueError, match="train_flag"):
        A.linen(NoFlag(), train_flag="mode")
    with pytest.raises(TypeError, match="cannot use"):
        A.as_model(3)


def _train(state, steps=30):
    from research.train import train_step_jit

    key = jax.random.PRNGKey(7)
    batch = {"x": X, "y": Y}
    losses = []
    for _ in range(steps):
        state, m = train_step_jit(state, batch, key)
        losses.append(float(m["loss"]))
    return state, losses


def test_foreign_models_train_with_our_step_and_an_optax_loss():
    from research.train import TrainState, eval_step_jit

    loss = optax.softmax_cross_entropy_with_integer_labels
    module = TrainingFlag()
    variables = module.init(jax.random.PRNGKey(1), X)
    linen_state = TrainState.create(model=module, params=variables["params"],
                                    model_state={"batch_stats": variables["batch_stats"]},
                                    tx=optax.adam(0.05), loss=loss)
    model, params, state = A.nnx(NnxNet(nnx.Rngs(0)))
    nnx_state = TrainState.create(model=model, params=params, model_state=state,
                                  tx=optax.adam(0.05), loss=loss)

    def f(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    k1, k2 = jax.random.split(jax.random.PRNGKey(4))
    fn_state = TrainState.create(model=f, params={"w1": 0.5 * jax.random.normal(k1, (4, 8)),
                                                  "w2": 0.5 * jax.random.normal(k2, (8, 3))},
                                 tx=optax.adam(0.05), loss=loss)
    for st in (linen_state, nnx_state, fn_state):
        init_params = st.params  # kept by the user through training: must stay valid
        trained, losses = _train(st)
        assert losses[-1] < 0.7 * losses[0], (st.model.kind, losses[0], losses[-1])
        leaves = jax.tree_util.tree_leaves(init_params)
        assert all(np.isfinite(np.asarray(v)).all() for v in leaves)  # not deleted by donation
        assert int(trained.step) == 30
        out = eval_step_jit(trained, {"x": X, "y": Y})
        assert 0.0 <= float(out["correct_sum"]) <= 8.0 and float(out["count"]) == 8.0
    # BatchNorm statistics moved in training for the Linen and NNX models.
    assert not np.allclose(_train(linen_state, 1)[0].batch_stats["BatchNorm_0"]["mean"], 0.0)
