"""Optimiser paths on small problems: the lecture's gradient descent and learning-rate pictures.

`optimizer_path` runs any optax transformation on any differentiable loss with full-batch
gradients inside one `lax.scan`, returning every iterate, so paths can be drawn over the exact
loss contour of a two-parameter model (`loss_grid`). `neuron_problem` builds the lecture's
example: one neuron with two weights on Playground data, whose inputs are scaled unevenly so the
loss valley is elongated, as in real networks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data.playground import make_dataset
from research.losses import Loss


def optimizer_path(loss_fn: Callable[[jax.Array], jax.Array], theta0: jax.Array,
                   tx: optax.GradientTransformation, steps: int) -> tuple[jax.Array, jax.Array]:
    """Iterates of an optimiser from `theta0`.

    Args:
        loss_fn: differentiable loss of a parameter vector `theta_P`.
        theta0: start, `theta_P`.
        tx: optax transformation (e.g. `optax.sgd(lr)`).
        steps: number of updates.

    Returns:
        thetas_(K+1)xP (start included) and losses_(K+1).
    """
    grad_fn = jax.value_and_grad(loss_fn)

    def step(carry, _):
        theta, opt_state = carry
        loss, g = grad_fn(theta)
        updates, opt_state = tx.update(g, opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), (theta, loss)

    # One compiled program per call (the optimiser's state initialisation and the last loss
    # included), not the scan's plus a few small eager ones.
    @jax.jit
    def run(theta0):
        (last, _), (thetas, losses) = jax.lax.scan(step, (theta0, tx.init(theta0)), None,
                                                    length=steps)
        return (jnp.concatenate([thetas, last[None]], axis=0),
                jnp.concatenate([losses, loss_fn(last)[None]], axis=0))

    return run(jnp.asarray(theta0, jnp.float32))


def loss_grid(loss_fn: Callable[[jax.Array], jax.Array], w1_R: np.ndarray,
              w2_S: np.ndarray) -> np.ndarray:
    """The loss of a two-parameter model on a grid.

    Args:
        loss_fn: loss of `theta_2`.
        w1_R: values of the first parameter (x axis).
        w2_S: values of the second parameter (y axis).

    Returns:
        loss_SxR (rows follow w2, as `contour(w1_R, w2_S, loss_SxR)` expects).
    """
    g1, g2 = jnp.meshgrid(jnp.asarray(w1_R, jnp.float32), jnp.asarray(w2_S, jnp.float32))
    thetas = jnp.stack([g1.ravel(), g2.ravel()], axis=1)
    return np.asarray(jax.jit(jax.vmap(loss_fn))(thetas)).reshape(len(w2_S), len(w1_R))


def neuron_problem(loss: str = "mse", n: int = 500, noise: float = 0.5,
                   scale: tuple[float, float] = (1.0, 0.25), l2: float = 1e-2,
                   seed: int = 0) -> Callable[[jax.Array], jax.Array]:
    """Full-batch loss of one neuron without bias, `o = w1 s1 x1 + w2 s2 x2`, on Playground data.

    With `loss="mse"` it is a linear neuron with squared error `(o - t)^2 / 2` on the noise-free
    reg-plane set (`t = (x1 + x2) / 10`): an exactly quadratic bowl with its minimum at
    `w = (0.1 / s1, 0.1 / s2)`, where gradient descent converges exactly when the learning rate
    is below `2 / lambda_max`. With `loss="bce"` it is a sigmoid neuron with binary cross-entropy
    on the gauss set (non-quadratic, with an L2 penalty that keeps the minimum finite).

    Args:
        loss: "mse" or "bce".
        n: number of points.
        noise: Playground noise of the gauss set (bce only; 0.5 makes the classes overlap).
        scale: input scaling `(s1, s2)`; unequal scales stretch the loss valley.
        l2: L2 penalty `l2 * |w|^2 / 2` (bce only).
        seed: data seed.

    Returns:
        loss(theta_2) -> scalar.
    """
    if loss not in ("mse", "bce"):
        raise ValueError(f"loss: choose mse or bce, got {loss!r}")
    name = "reg-plane" if loss == "mse" else "gauss"
    points, labels = make_dataset(name, n, 0.0 if loss == "mse" else noise, seed)
    x_Nx2 = jnp.asarray(points * np.asarray(scale)[None, :], jnp.float32)
    if loss == "mse":
        t_N = jnp.asarray(labels, jnp.float32)
        return lambda theta_2: 0.5 * jnp.mean(jnp.square(x_Nx2 @ theta_2 - t_N))
    y_N = jnp.asarray(labels > 0, jnp.int32)
    bce = Loss("bce", 2)

    def loss_fn(theta_2):
        logits_Nx1 = (x_Nx2 @ theta_2)[:, None]
        return jnp.mean(bce.per_example(logits_Nx1, y_N)) + 0.5 * l2 * jnp.sum(theta_2 ** 2)

    return loss_fn


def minimum_and_curvature(loss_fn: Callable[[jax.Array], jax.Array], theta0: jax.Array,
                          iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Minimise a smooth convex loss by Newton's method; return the minimum and Hessian eigenvalues.

    Args:
        loss_fn: loss of a parameter vector.
        theta0: start.
        iters: Newton iterations.

    Returns:
        theta_star_P and the Hessian's eigenvalues there, ascending.
    """
    grad, hess = jax.grad(loss_fn), jax.jit(jax.hessian(loss_fn))
    # Compiled once: eagerly, every operation of the Hessian compiled a program of its own.
    newton = jax.jit(lambda theta: theta - jnp.linalg.solve(hess(theta), grad(theta)))
    theta = jnp.asarray(theta0, jnp.float32)
    for _ in range(iters):
        theta = newton(theta)
    return np.asarray(theta), np.linalg.eigvalsh(np.asarray(hess(theta), np.float64))
