"""The one kernel rule and the host tree arithmetic of `research.tree`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from research import tree
from research.config import OptimConfig
from research.losses import Loss
from research.optim import make_optimizer


def _kinds(params):
    return {tree.path_str(p): tree.is_kernel(p, leaf)
            for p, leaf in jax.tree_util.tree_leaves_with_path(params)}


def test_kernels_of_linen_nnx_and_plain_models():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Embed(5, 3)(x)
            x = nn.Dense(4)(x)
            return nn.LayerNorm()(x)

    params = Net().init(jax.random.key(0), jnp.zeros((2,), jnp.int32))["params"]
    assert _kinds(params) == {"Embed_0/embedding": True, "Dense_0/kernel": True,
                              "Dense_0/bias": False, "LayerNorm_0/scale": False,
                              "LayerNorm_0/bias": False}
    _, nnx_params, _ = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param, ...)
    assert _kinds(nnx_params) == {"kernel": True, "bias": False}
    plain = {"w": np.ones((2, 3)), "b": np.ones(3), "ln": {"weight": np.ones(3)},
             "proj": {"weight": np.ones((3, 3))}, "W": np.ones(3)}
    assert _kinds(plain) == {"W": True, "b": False, "ln/weight": False, "proj/weight": True,
                             "w": True}


def test_penalty_and_weight_decay_reach_nnx_kernels_only():
    _, params, _ = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param, ...)
    kernel = np.asarray(params["kernel"].value)
    pen = Loss("mse", num_classes=0, regularization="l2", reg_rate=1.0).penalty(params)
    np.testing.assert_allclose(pen, 0.5 * np.sum(kernel ** 2), rtol=1e-6)
    tx = make_optimizer(OptimConfig(name="sgd", learning_rate=1.0, weight_decay=0.5), 1)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"].value, -0.5 * kernel, rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"].value, 0.0)


def test_ravel_unravel_and_float64_dot():
    a = {"k": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(2, jnp.bfloat16)}
    flat = tree.ravel(a)
    assert flat.dtype == np.float64 and flat.shape == (8,)
    back = tree.unravel(flat, a)
    assert back["b"].dtype == jnp.float32
    np.testing.assert_array_equal(back["k"], a["k"])
    assert tree.vdot(a, a) == float(np.sum(np.arange(6.0) ** 2) + 2)
    np.testing.assert_allclose(tree.norm(a), float(optax.tree_utils.tree_norm(
        jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), a))), rtol=1e-6)


def test_ravel_unravel_follow_ravel_pytree_on_the_host(caplog):
    # JAX's own flattening is the reference for the order; on the host nothing is compiled.
    from jax.flatten_util import ravel_pytree

    rng = np.random.default_rng(0)
    a = {"z": {"w": rng.normal(size=(3, 5)).astype(np.float32)},
         "a": jnp.asarray(rng.normal(size=(7,)), jnp.bfloat16), "m": np.float32(2.5)}
    ref, _ = ravel_pytree(a)
    _, unflatten = ravel_pytree(jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x)), a))
    caplog.clear()
    with jax.log_compiles(), caplog.at_level("WARNING"):
        flat = tree.ravel(a)
        back = tree.unravel(flat[::-1].copy(), a)
    assert [r for r in caplog.records if "Compiling" in r.getMessage()] == []
    np.testing.assert_array_equal(flat, np.asarray(ref, np.float64))
    for got, want in zip(jax.tree_util.tree_leaves(back),
                         jax.tree_util.tree_leaves(unflatten(ref[::-1]))):
        assert got.dtype == jnp.float32 and got.shape == np.shape(want)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="23 entries"):
        tree.unravel(flat[:-1], a)
