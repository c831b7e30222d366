import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from experiments import gradient_descent
from research.data.playground import make_dataset
from research.paths import loss_grid, minimum_and_curvature, neuron_problem, optimizer_path


def test_quadratic_neuron_minimum_and_curvature_by_hand():
    points, _ = make_dataset("reg-plane", 500, 0.0, 0)
    x = points * np.array([1.0, 0.25])
    hessian = x.T @ x / len(x)  # of mean (x.w - t)^2 / 2
    theta, eig = minimum_and_curvature(neuron_problem("mse"), jnp.zeros(2))
    np.testing.assert_allclose(theta, [0.1, 0.4], atol=1e-5)
    np.testing.assert_allclose(eig, np.linalg.eigvalsh(hessian), rtol=1e-4)


def test_optimizer_path_matches_python_loop():
    loss_fn = neuron_problem("bce")
    start = jnp.array([0.5, -1.0])
    tx = optax.sgd(0.3, momentum=0.9)
    thetas, losses = optimizer_path(loss_fn, start, tx, 6)
    import jax

    @jax.jit  # one step of the loop as one program, where eager operations compile one each
    def step(theta, state):
        upd, state = tx.update(jax.grad(loss_fn)(theta), state, theta)
        return optax.apply_updates(theta, upd), state

    loss_jit = jax.jit(loss_fn)
    theta, state = start, jax.jit(tx.init)(start)
    for k in range(6):
        np.testing.assert_allclose(thetas[k], theta, rtol=1e-5)
        np.testing.assert_allclose(losses[k], loss_jit(theta), rtol=1e-5)
        theta, state = step(theta, state)
    np.testing.assert_allclose(thetas[6], theta, rtol=1e-5)


def test_loss_grid_orientation():
    w1, w2 = np.array([0.0, 1.0, 2.0]), np.array([10.0, 20.0])
    grid = loss_grid(lambda t: t[0] + t[1] * 100, w1, w2)
    np.testing.assert_allclose(grid, [[1000, 1001, 1002], [2000, 2001, 2002]])


def test_learning_rate_stability_limit(tmp_path):
    cfg = dataclasses.replace(gradient_descent.PRESETS["tiny"], workdir=str(tmp_path), steps=60,
                              lr_fractions=(0.95, 1.05))
    res = gradient_descent.main(cfg)
    start_loss = float(neuron_problem("mse")(jnp.asarray(cfg.start)))
    assert res["paths"]["gd_0.95"]["final_loss"] < 1e-2 * start_loss  # below 2/lambda: converges
    assert res["paths"]["gd_1.05"]["final_loss"] > start_loss  # above it: diverges
    for name in ("gd_learning_rates.png", "gd_optimizers.pdf", "gd_loss_vs_step.png",
                 "results.json"):
        assert (tmp_path / "gradient_descent" / name).stat().st_size > 0
