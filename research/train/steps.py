"""Pure training and evaluation steps, for any model adapter and any per-example loss.

`train_step(state, batch, key) -> (state, metrics)` and `eval_step(state, batch) -> metrics` are
pure functions of their arguments: import them into your own code and `jax.jit` them.
`train_step_jit` is jitted without donation, so arrays you still hold (say the initial
parameters, for an interpolation plot) stay valid; `train_step_donated` reuses the state's
buffers in place and is for loops that own the state. Both, and `compile_train_steps`, compile
with `research.sharding.cpu_jit`: on a multi-core CPU with XLA's multi-threaded Eigen
convolutions (use it for your own jit of `train_step` too), elsewhere as `jax.jit`.

Several steps per compiled call: `train_steps(state, batches_K, key)` scans `train_step` over
batches stacked on a leading axis, and `train_steps_gather` gathers each batch from a split
already on the device by indices. `compile_train_steps(mesh, state, ...)` jits either with
explicit shardings for data parallelism (the batch split along the mesh's `data` axis, the
state as `research.sharding.param_sharding` says, replicated today); our loop uses it.

The loss is `state.loss(outputs, y) -> per-example values`. When it also has `penalty(params)`
(as `research.losses.Loss` does) the penalty is added to the objective; when it has `predict`
its predictions give the accuracy; otherwise integer labels are taken as class ids and the
accuracy comes from the outputs (sign of one logit, argmax of several).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from research import sharding as sh
from research.optim import current_learning_rate
from research.train.state import TrainState

Batch = dict[str, jax.Array]


def _per_example(loss, out, y) -> jax.Array:
    per = getattr(loss, "per_example", loss)
    return jnp.asarray(per(out, y), jnp.float32)


def _penalty(loss, params) -> jax.Array:
    pen = getattr(loss, "penalty", None)
    return pen(params) if pen is not None else jnp.zeros((), jnp.float32)


def _classification(loss, y) -> bool:
    if hasattr(loss, "classification"):
        return bool(loss.classification)
    return jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer)


def _predict(loss, out) -> jax.Array:
    if hasattr(loss, "predict"):
        return loss.predict(out)
    if out.ndim == 1 or out.shape[-1] == 1:
        return (out.reshape(out.shape[0]) > 0).astype(jnp.int32)
    return jnp.argmax(out, axis=-1).astype(jnp.int32)


def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict]:
    """One optimiser update on one batch.

    Args:
        state: the training state.
        batch: `{"x": x_Bx..., "y": y_B}`.
        key: the run's base PRNG key; this step uses `fold_in(key, state.step)` (for dropout), so
            results do not depend on how the run was split into resumed pieces.

    Returns:
        The new state and metrics (device scalars): loss (data loss), objective (loss plus
        penalty), grad_norm, learning_rate (when the optimiser exposes it) and accuracy
        (classification).
    """
    step_key = jax.random.fold_in(key, state.step)

    def objective(params):
        out_BxO, model_state = state.model(params, state.model_state, batch["x"], True, step_key)
        data_loss = jnp.mean(_per_example(state.loss, out_BxO, batch["y"]))
        return data_loss + _penalty(state.loss, params), (data_loss, out_BxO, model_state)

    (total, (data_loss, out_BxO, model_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    metrics = {"loss": data_loss, "objective": total, "grad_norm": optax.global_norm(grads)}
    lr = current_learning_rate(opt_state)
    if lr is not None:
        metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
    if _classification(state.loss, batch["y"]):
        metrics["accuracy"] = jnp.mean(
            (_predict(state.loss, out_BxO) == batch["y"]).astype(jnp.float32))
    return new_state, metrics


def eval_step(state: TrainState, batch: Batch) -> dict:
    """Sums over one evaluation batch, in evaluation mode (BatchNorm running averages).

    Sums rather than means make the mean over a whole split exact when the last batch is padded:
    padding rows carry `mask = 0`.

    Args:
        state: the training state.
        batch: `{"x": ..., "y": y_B}` and optionally `"mask": mask_B` (1 real, 0 padding).

    Returns:
        loss_sum, correct_sum (classification) and count (device scalars), and pred_B, the
        predicted class ids (or values, for regression).
    """
    out_BxO, _ = state.model(state.params, state.model_state, batch["x"], False)
    mask_B = batch.get("mask")
    if mask_B is None:
        mask_B = jnp.ones(batch["y"].shape[:1], jnp.float32)
    mask_B = mask_B.astype(jnp.float32)
    classification = _classification(state.loss, batch["y"])
    pred_B = _predict(state.loss, out_BxO) if classification else getattr(
        state.loss, "predict", lambda o: o)(out_BxO)
    metrics = {
        "loss_sum": jnp.sum(_per_example(state.loss, out_BxO, batch["y"]) * mask_B),
        "count": jnp.sum(mask_B),
        "pred": pred_B,
    }
    if classification:
        metrics["correct_sum"] = jnp.sum((pred_B == batch["y"]).astype(jnp.float32) * mask_B)
    return metrics


@functools.cache
def _train_step_compiled(donate: bool) -> Callable:
    # Created at the first call, when JAX knows its backend (`cpu_jit` asks for it).
    return sh.cpu_jit(train_step, donate_argnums=(0,) if donate else ())


def train_step_jit(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict]:
    """`train_step` compiled with `research.sharding.cpu_jit`, the state not donated.

    On a multi-core CPU that means Eigen's multi-threaded convolutions; elsewhere `jax.jit`.
    """
    return _train_step_compiled(False)(state, batch, key)


def train_step_donated(state: TrainState, batch: Batch,
                       key: jax.Array) -> tuple[TrainState, dict]:
    """`train_step_jit` with the state's buffers donated (do not use the old state again)."""
    return _train_step_compiled(True)(state, batch, key)


eval_step_jit = jax.jit(eval_step)


def _scan(body, carry, xs):
    """`lax.scan` over training steps, and no loop at all for one step.

    XLA:CPU runs convolutions inside loop bodies without its fast path (jax-ml/jax#12868): a
    one-step scan ran the CNN step 10x slower than the same step outside a loop (0.23 s vs
    0.022 s), so K = 1 (the default) calls the step directly. K > 1 keeps the rolled loop, which
    is what accelerators want and gives the same bits as K = 1 (unrolling would not: XLA fuses
    across the unrolled steps), except on the CPU, where a body with convolutions is unrolled:
    rolled, the benchmark CNN's K = 10 steps ran 30x slower than ten single steps (75 against
    2,481 samples/s at batch 128 on 2 host devices; 50 against 1,656 on one), since the slow
    path takes the convolutions' gradients. Unrolled, K = 8 compiled in 4.7 s (one step 1.9 s)
    and ran 1.06x faster than K = 1 (batch 32, 2 cores): one call and one metric fetch for K
    steps. Finding the convolutions traces the body once more (once per compiled length).
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    first = jax.tree_util.tree_map(lambda v: v[0], xs)
    if n == 1:
        carry, out = body(carry, first)
        return carry, jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], out)
    unroll = 1
    if (jax.default_backend() == "cpu"
            and _has_convolution(jax.make_jaxpr(body)(carry, first).jaxpr)):
        unroll = n
    return jax.lax.scan(body, carry, xs, unroll=unroll)


def _has_convolution(jaxpr) -> bool:
    """Whether a jaxpr, or one nested in it (jit, custom rules, control flow), convolves."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns") and _has_convolution(inner):
                    return True
    return False


def train_steps(state: TrainState, batches: Batch, key: jax.Array) -> tuple[TrainState, dict]:
    """`train_step` over K batches stacked on a leading axis, in one `lax.scan`.

    Returns:
        The state after K steps and each step's metrics stacked, `metric_K`.
    """
    return _scan(lambda s, b: train_step(s, b, key), state, batches)


def train_steps_gather(state: TrainState, x_N: jax.Array, y_N: jax.Array, order_SxB: jax.Array,
                       start: jax.Array, key: jax.Array, *, k: int,
                       batch_sharding=None) -> tuple[TrainState, dict]:
    """`k` steps on batches gathered from a split already on the device.

    Args:
        state: the training state.
        x_N: inputs of the whole split (replicated on each device).
        y_N: its labels.
        order_SxB: the examples of each batch of the epoch (S batches of B).
        start: the epoch's batch of the first step.
        key: the run's base key (see `train_step`).
        k: steps (static).
        batch_sharding: where each gathered batch lives (e.g. split along `data`); None leaves
            it to the compiler.

    Returns:
        As `train_steps`.
    """
    idx_KxB = jax.lax.dynamic_slice_in_dim(order_SxB, start, k)

    def body(s, idx_B):
        batch = {"x": jnp.take(x_N, idx_B, axis=0), "y": jnp.take(y_N, idx_B, axis=0)}
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return train_step(s, batch, key)

    return _scan(body, state, idx_KxB)


def state_sharding(mesh: Mesh, state: TrainState) -> TrainState:
    """The sharding of every array of a state: parameters as `sharding.param_sharding` says.

    The step counter, the model state (BatchNorm statistics) and the optimiser state are
    replicated; when parameters get sharded, give the optimiser's parameter-shaped moments the
    same shardings here (e.g. with `optax.tree_utils.tree_map_params`).
    """
    repl = sh.replicated(mesh)
    return state.replace(step=repl, params=sh.param_sharding(mesh, state.params),
                         model_state=jax.tree_util.tree_map(lambda _: repl, state.model_state),
                         opt_state=jax.tree_util.tree_map(lambda _: repl, state.opt_state))


def compile_train_steps(mesh: Mesh, state: TrainState, resident: bool, donate: bool = True):
    """`train_steps_gather` (resident) or `train_steps`, jitted with explicit shardings.

    Args:
        mesh: a mesh with a `data` axis (`research.sharding.data_mesh`).
        state: a state of the run (for the structure of its shardings).
        resident: the split is on the device; the call is `run(state, x_N, y_N, order_SxB,
            start, key, k)` with x_N, y_N replicated and order_SxB (the epoch's batches, put
            once per epoch) split along `data` on its second axis; otherwise
            `run(state, batches_K, key)` with batches split the same way.
        donate: reuse the state's buffers (the caller must not use the old state again).

    Returns:
        The function, returning (state, metrics_K) with replicated metrics; compiled once per
        number of steps k.
    """
    repl, st = sh.replicated(mesh), state_sharding(mesh, state)
    split = sh.batch_sharding(mesh, leading=1)
    donate_argnums = (0,) if donate else ()
    # Traced under the mesh, so the model can see how the batch is split
    # (`research.models.ops._stacked_conv`).
    if not resident:
        step = sh.cpu_jit(train_steps, in_shardings=(st, split, repl),
                          out_shardings=(st, repl), donate_argnums=donate_argnums)

        def run_batches(state, batches, key):
            with jax.set_mesh(mesh):
                return step(state, batches, key)

        return run_batches
    compiled: dict[int, Callable] = {}

    def run(state, x_N, y_N, order_SxB, start, key, k: int):
        if k not in compiled:
            fn = functools.partial(train_steps_gather, k=k,
                                   batch_sharding=sh.batch_sharding(mesh))
            compiled[k] = sh.cpu_jit(fn, in_shardings=(st, repl, repl, split, repl, repl),
                                     out_shardings=(st, repl), donate_argnums=donate_argnums)
        with jax.set_mesh(mesh):
            return compiled[k](state, x_N, y_N, order_SxB, start, key)

    return run
