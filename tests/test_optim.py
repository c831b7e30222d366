import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.config import OptimConfig
from research.optim import current_learning_rate, make_optimizer, make_schedule


def _run(cfg, grads_seq, params, total=100):
    tx = make_optimizer(cfg, total)
    state = tx.init(params)
    lrs = []
    for g in grads_seq:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        lrs.append(float(current_learning_rate(state)))
    return params, lrs


def test_sgd_matches_hand_update_and_logs_lr():
    p = {"Dense_0": {"kernel": jnp.array([1.0, 2.0]), "bias": jnp.array([0.5])}}
    g = {"Dense_0": {"kernel": jnp.array([0.1, -0.2]), "bias": jnp.array([1.0])}}
    out, lrs = _run(OptimConfig(name="sgd", learning_rate=0.5), [g], p)
    np.testing.assert_allclose(out["Dense_0"]["kernel"], [1.0 - 0.05, 2.0 + 0.1])
    np.testing.assert_allclose(out["Dense_0"]["bias"], [0.0])
    assert lrs == [0.5]


def test_momentum_and_nesterov_by_hand():
    p = {"w": jnp.array([0.0])}
    g = {"w": jnp.array([1.0])}
    lr, mu = 0.1, 0.9
    out, _ = _run(OptimConfig(name="momentum", learning_rate=lr, momentum=mu), [g, g], p)
    # v1 = 1, v2 = 1 + 0.9 = 1.9; w = -lr * (1 + 1.9)
    np.testing.assert_allclose(out["w"], [-lr * 2.9], rtol=1e-6)
    out, _ = _run(OptimConfig(name="nesterov", learning_rate=lr, momentum=mu), [g, g], p)
    # nesterov step uses g + mu * v: step1 = 1 + 0.9 = 1.9, step2 = 1 + 0.9 * 1.9 = 2.71
    np.testing.assert_allclose(out["w"], [-lr * (1.9 + 2.71)], rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
    p = {"w": jnp.array([0.0, 0.0])}
    out, _ = _run(OptimConfig(name="adam", learning_rate=0.01), [{"w": jnp.array([3.0, -0.2])}], p)
    np.testing.assert_allclose(out["w"], [-0.01, 0.01], rtol=1e-4)


def test_weight_decay_skips_biases():
    p = {"Dense_0": {"kernel": jnp.array([1.0]), "bias": jnp.array([1.0])}}
    zero = jax.tree_util.tree_map(jnp.zeros_like, p)
    out, _ = _run(OptimConfig(name="sgd", learning_rate=0.1, weight_decay=0.5), [zero], p)
    np.testing.assert_allclose(out["Dense_0"]["kernel"], [1.0 - 0.1 * 0.5])
    np.testing.assert_allclose(out["Dense_0"]["bias"], [1.0])
    out, _ = _run(OptimConfig(name="adamw", learning_rate=0.1, weight_decay=0.5), [zero], p)
    np.testing.assert_allclose(out["Dense_0"]["kernel"], [1.0 - 0.1 * 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["Dense_0"]["bias"], [1.0])


def test_clipping_bounds_the_update():
    p = {"w": jnp.array([0.0, 0.0])}
    out, _ = _run(OptimConfig(name="sgd", learning_rate=1.0, clip_norm=1.0),
                  [{"w": jnp.array([30.0, 40.0])}], p)
    np.testing.assert_allclose(out["w"], [-0.6, -0.8], rtol=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine", "step"])
def test_schedules_by_formula(schedule):
    total, lr = 100, 0.2
    cfg = OptimConfig(learning_rate=lr, schedule=schedule, warmup_steps=10,
                      step_boundaries=(0.5, 0.75), step_factor=0.1)
    s = make_schedule(cfg, total)
    for t in (0, 5, 10, 49, 50, 74, 75, 99):
        if schedule == "constant":
            want = lr
        elif schedule == "cosine":
            want = 0.5 * lr * (1 + math.cos(math.pi * t / total))
        elif schedule == "warmup_cosine":
            want = (lr * t / 10 if t < 10 else
                    0.5 * lr * (1 + math.cos(math.pi * (t - 10) / (total - 10))))
        else:
            want = lr * (0.1 if t >= 50 else 1.0) * (0.1 if t >= 75 else 1.0)
        assert float(s(t)) == pytest.approx(want, rel=1e-5, abs=1e-8), t


def test_logged_lr_follows_schedule():
    p = {"w": jnp.array([0.0])}
    g = {"w": jnp.array([1.0])}
    cfg = OptimConfig(name="sgd", learning_rate=0.2, schedule="cosine")
    _, lrs = _run(cfg, [g] * 4, p, total=4)
    np.testing.assert_allclose(lrs, [float(make_schedule(cfg, 4)(t)) for t in range(4)],
                               rtol=1e-6)
