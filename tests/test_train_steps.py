"""The pure train and eval steps: learning, jit against eager, BatchNorm state, initialisation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.losses import Loss
from research.models import CNN, MLP, PiczakCNN
from research.train import TrainState, eval_step_jit, train_step, train_step_jit
from research.train.loop import init_variables


def _state(model, x, loss, lr=0.1):
    # The library's compiled initialisation: one compilation, not one per initializer operation.
    variables = init_variables(model, jax.random.PRNGKey(0), x)
    return TrainState.create(apply_fn=model.apply, variables=variables, tx=optax.sgd(lr),
                             loss=loss)


def _batch(n=16, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return {"x": x, "y": (x[:, 0] * x[:, 1] > 0).astype(np.int32)}


def test_overfits_one_batch():
    batch = _batch()
    state = _state(MLP(widths=(32, 32), activation="tanh"), batch["x"], Loss("bce", 2), lr=0.3)
    key = jax.random.PRNGKey(1)
    state, first = train_step_jit(state, batch, key)
    for _ in range(300):
        state, m = train_step_jit(state, batch, key)
    assert float(m["loss"]) < 0.2 * float(first["loss"])
    assert float(m["accuracy"]) == 1.0
    assert int(state.step) == 301


def test_cheap_compiled_initialisation_gives_the_default_build_values_bit_for_bit():
    # The reference is compiled at XLA's default level 3 explicitly: the suite itself compiles
    # at level 1 (conftest), so an eager reference here would be level 1 too.
    key = jax.random.fold_in(jax.random.PRNGKey(3), 0)
    for model, shape in [(MLP(widths=(5, 4), activation="tanh"), (1, 2)),
                         (CNN(channels=(2, 3), depth=1, residual=True, head=(4,)), (1, 12, 9, 1)),
                         (PiczakCNN(filters=(2, 3), first_kernel=(5, 3), hidden=(4,)),
                          (1, 12, 9, 1))]:
        x = jnp.zeros(shape)
        default = jax.jit(lambda r, x, m=model: m.init(r, x, train=False),
                          compiler_options={"xla_backend_optimization_level": 3})(
            {"params": key, "dropout": key}, x)
        fast = init_variables(model, key, x)
        assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(default)
        for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(default)):
            np.testing.assert_array_equal(a, b)


def test_initialising_the_same_configuration_again_compiles_nothing(caplog):
    # A run and then its interpolation plot each build the model from the config: the second
    # initialisation reuses the first's program (same values); another model compiles its own.
    x, key = np.ones((2, 5), np.float32), jax.random.PRNGKey(3)
    first = init_variables(MLP(widths=(6, 5), activation="tanh"), key, x)

    def compiles(model):
        caplog.clear()
        with jax.log_compiles(), caplog.at_level("WARNING"):
            out = init_variables(model, key, x)
        return out, [r for r in caplog.records if "Compiling" in r.getMessage()]

    again, logged = compiles(MLP(widths=(6, 5), activation="tanh"))
    assert logged == []
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)
    _, logged = compiles(MLP(widths=(6, 4), activation="tanh"))
    assert len(logged) == 1


def test_jit_and_eager_agree():
    batch = _batch()
    model = MLP(widths=(8,), activation="relu", dropout=0.25)
    key = jax.random.PRNGKey(7)
    s1 = _state(model, batch["x"], Loss("bce", 2, "l2", 0.01))
    s2 = _state(model, batch["x"], Loss("bce", 2, "l2", 0.01))
    with jax.disable_jit():
        for _ in range(3):
            s1, m1 = train_step(s1, batch, key)
    for _ in range(3):
        s2, m2 = train_step_jit(s2, batch, key)
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)


def test_gradient_matches_finite_differences():
    batch = _batch(n=8, d=2)
    model = MLP(widths=(3,), activation="tanh")
    state = _state(model, batch["x"], Loss("mse", 2), lr=1.0)
    # Compiled (one program each instead of one per operation); not donated: `state` is reused.
    new, _ = jax.jit(train_step)(state, batch, jax.random.PRNGKey(0))
    grad = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b), state.params,
                                  new.params)  # lr = 1
    w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)

    @jax.jit
    def loss_jit(kernel):
        p = jax.tree_util.tree_map(lambda a: a, state.params)
        p["Dense_0"]["kernel"] = kernel
        out = model.apply({"params": p}, batch["x"])
        return jnp.mean(Loss("mse", 2).per_example(out, batch["y"]))

    def loss_at(w_):
        return float(loss_jit(np.asarray(w_, np.float32)))

    eps = 1e-3
    e = np.zeros_like(w)
    e[1, 2] = eps
    fd = (loss_at(w + e) - loss_at(w - e)) / (2 * eps)
    np.testing.assert_allclose(grad["Dense_0"]["kernel"][1, 2], fd, rtol=2e-2, atol=1e-4)


def test_dropout_key_comes_from_step():
    batch = _batch()
    model = MLP(widths=(16,), activation="relu", dropout=0.5)
    key = jax.random.PRNGKey(3)
    s = _state(model, batch["x"], Loss("bce", 2))
    _, a = train_step_jit(s, batch, key)
    _, b = train_step_jit(s, batch, key)
    _, c = train_step_jit(s.replace(step=s.step + 1), batch, key)
    assert float(a["loss"]) == float(b["loss"])
    assert float(a["loss"]) != float(c["loss"])


def test_batchnorm_stats_update_in_training_and_are_used_in_eval():
    x = 5.0 + np.random.default_rng(0).normal(size=(8, 6, 6, 1)).astype(np.float32)
    batch = {"x": x, "y": np.arange(8, dtype=np.int32) % 2}
    state = _state(CNN(channels=(4,), num_outputs=2), x, Loss("softmax_ce", 2))
    before = state.batch_stats["BatchNorm_0"]["mean"]
    out0 = eval_step_jit(state, batch)
    state, _ = train_step_jit(state, batch, jax.random.PRNGKey(0))
    after = state.batch_stats["BatchNorm_0"]["mean"]
    # running mean moves 10% of the way to the batch mean (momentum 0.9)
    assert not np.allclose(before, after)
    out1 = eval_step_jit(state, batch)
    assert float(out0["loss_sum"]) != float(out1["loss_sum"])


def test_eval_step_sums_respect_mask():
    batch = _batch(n=10)
    state = _state(MLP(widths=(4,)), batch["x"], Loss("bce", 2))
    full = eval_step_jit(state, batch)
    mask = np.array([1] * 6 + [0] * 4, np.float32)
    part = eval_step_jit(state, {**batch, "mask": mask})
    sub = eval_step_jit(state, {"x": batch["x"][:6], "y": batch["y"][:6]})
    assert float(full["count"]) == 10 and float(part["count"]) == 6
    np.testing.assert_allclose(part["loss_sum"], sub["loss_sum"], rtol=1e-6)
    np.testing.assert_allclose(part["correct_sum"], sub["correct_sum"])


def _sharded_run(n_devices, k, steps=4):
    """`steps` steps of a BatchNorm CNN, batch 8, on the first n devices, k steps per call."""
    from research import sharding as sh
    from research.train.steps import compile_train_steps, state_sharding

    rng = np.random.default_rng(0)
    x_N = rng.normal(size=(32, 6, 5, 1)).astype(np.float32)
    y_N = rng.integers(0, 3, size=32).astype(np.int32)
    mesh = sh.data_mesh(jax.devices()[:n_devices])
    model = CNN(channels=(4,), num_outputs=3, batch_norm=True, dropout=0.2)
    state = _state(model, x_N[:1], Loss("softmax_ce", 3))
    where = state_sharding(mesh, state).to_tree()
    state = state.replace_tree(jax.tree_util.tree_map(sh.put, state.to_tree(), where))
    run = compile_train_steps(mesh, state, resident=True)
    key = sh.put(np.asarray(jax.random.PRNGKey(3)), sh.replicated(mesh))
    x_dev, y_dev = (sh.put(a, sh.replicated(mesh)) for a in (x_N, y_N))
    order = sh.put(rng.permutation(32)[:steps * 8].reshape(steps, 8).astype(np.int32),
                   sh.batch_sharding(mesh, 1))
    losses = []
    for i in range(0, steps, k):
        state, m = run(state, x_dev, y_dev, order, i, key, k)
        losses += list(np.asarray(m["loss"]))
    return state, np.array(losses), mesh


def test_data_parallel_step_matches_one_device_with_global_batch_norm():
    assert jax.device_count() >= 4, "tests/conftest.py gives 4 host devices"
    one, loss1, _ = _sharded_run(1, 1)
    four, loss4, mesh = _sharded_run(4, 2)
    # the batch was really split, and the state replicated
    assert mesh.devices.size == 4 and len(four.params["Conv_0"]["kernel"].sharding.device_set) == 4
    # BatchNorm statistics over the global batch: same running averages as on one device
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(one.to_tree()),
                    jax.tree_util.tree_leaves(four.to_tree())):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_compiled_steps_are_traced_under_their_mesh():
    # The model reads how the batch is split from the mesh it is traced under
    # (`research.models.ops._stacked_conv`); `compile_train_steps` must provide it.
    from research import sharding as sh
    from research.train.steps import compile_train_steps, state_sharding

    seen = []

    class Recording(CNN):
        def __call__(self, x, train=False):
            seen.append(dict(jax.sharding.get_abstract_mesh().shape))
            return super().__call__(x, train)

    x_1xBx = np.ones((1, 4, 5, 3, 1), np.float32)
    state = _state(Recording(channels=(2,), num_outputs=3), x_1xBx[0], Loss("softmax_ce", 3))
    seen.clear()
    mesh = sh.data_mesh(jax.devices()[:2])
    state = jax.device_put(state, state_sharding(mesh, state))
    batches = {"x": sh.put(x_1xBx, sh.batch_sharding(mesh, 1)),
               "y": sh.put(np.zeros((1, 4), np.int32), sh.batch_sharding(mesh, 1))}
    compile_train_steps(mesh, state, resident=False)(state, batches, jax.random.PRNGKey(0))
    assert seen and all(m == {"data": 2} for m in seen)


@pytest.mark.parametrize("batch,channels", [(8, 1), (80, 2)])
def test_data_parallel_kernel_gradient_moves_only_sums_between_devices(batch, channels):
    # The one-channel convolution's kernel gradient convolves the batch stacked into tall
    # images. Under a 4-device data mesh it is one tall image per device, so the compiled
    # gradient crosses devices only in the final sum. One tall image for the whole batch was
    # split along its height instead, each device swapping edge rows with its neighbours
    # (collective permutes, 5-7% of a data-parallel step on 2 CPU devices). With several
    # channels and 20 examples per device, the kernel gradient's chunks (16 + 4 examples) take
    # the same examples from every device's part, so they too stay where the batch is.
    from jax import lax

    from research import sharding as sh
    from research.models import ops

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 6, 5, channels)).astype(np.float32)
    dy = rng.normal(size=(batch, 6, 5, 3)).astype(np.float32)
    k = rng.normal(size=(3, 3, channels, 3)).astype(np.float32)
    nhwc = ("NHWC", "HWIO", "NHWC")

    def kernel_grad(conv, x, k, dy):
        return jax.vjp(lambda k: conv(x, k, (1, 1), "SAME", dimension_numbers=nhwc), k)[1](dy)[0]

    mesh = sh.data_mesh(jax.devices()[:4])
    split, repl = sh.batch_sharding(mesh), sh.replicated(mesh)
    fn = jax.jit(functools.partial(kernel_grad, ops.conv_general_dilated),
                 in_shardings=(split, repl, split), out_shardings=repl)
    with jax.set_mesh(mesh):
        compiled = fn.lower(x, k, dy).compile()
    text = compiled.as_text()
    assert "all-reduce" in text
    assert not any(op in text for op in ("collective-permute", "all-gather", "all-to-all"))
    expected = kernel_grad(lax.conv_general_dilated, x, k, dy)
    np.testing.assert_allclose(np.asarray(compiled(x, k, dy)), np.asarray(expected),
                               rtol=1e-5, atol=1e-5)


def test_k_steps_per_call_equal_single_steps():
    # Up to float rounding: on the CPU the K steps of this CNN are unrolled into one program,
    # which XLA may fuse across steps (rolled, the loop body's convolutions took another path,
    # and at real sizes differed in the last bits).
    s1, l1, _ = _sharded_run(2, 1)
    s4, l4, _ = _sharded_run(2, 4)
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    for a, b in zip(*(jax.tree_util.tree_leaves(s.to_tree()) for s in (s1, s4))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_k_steps_of_a_convolutional_model_are_unrolled_on_the_cpu():
    # XLA:CPU computes convolution gradients inside a loop body without its fast path (the
    # benchmark CNN's K = 10 steps 30x slower than single steps), so K steps of a model with
    # convolutions are unrolled there; a model without keeps the rolled loop.
    from research.train.steps import train_steps

    def lowered(model, x_Bx):
        state = _state(model, x_Bx[:1], Loss("softmax_ce", 3))
        batches = {"x": np.stack([x_Bx] * 3), "y": np.zeros((3, len(x_Bx)), np.int32)}
        return jax.jit(train_steps).lower(state, batches, jax.random.PRNGKey(0)).as_text()

    cnn = lowered(CNN(channels=(2,), num_outputs=3), np.ones((4, 5, 3, 1), np.float32))
    mlp = lowered(MLP(widths=(4,), num_outputs=3), np.ones((4, 3), np.float32))
    assert jax.default_backend() == "cpu"
    assert "while" not in cnn and "convolution" in cnn
    assert "while" in mlp


def test_batch_not_dividing_the_devices_is_named():
    import pytest

    from research import sharding as sh
    from research.config import TrainConfig

    with pytest.raises(ValueError, match="10 does not divide by the 4 devices"):
        sh.check_divisible(10, sh.data_mesh(jax.devices()[:4]))
    with pytest.raises(ValueError, match="10 does not divide by the 4 devices"):
        TrainConfig(batch_size=10, devices=4)
    mesh, note = sh.training_mesh(10)  # all devices by default: the most that divide it
    assert mesh.devices.size == 2 and "10 does not divide by the 4 devices" in note
    assert sh.training_mesh(8)[0].devices.size == 4 and sh.training_mesh(8)[1] is None


def test_cpu_jit_step_on_two_cores_agrees_with_jit_and_drops_the_kernel_gradient_chunks(
        monkeypatch):
    # On a multi-core CPU our steps compile with Eigen's convolutions (`cpu_jit`), which run a
    # kernel gradient as one convolution; a plain jit keeps YNNPACK's and the chunks of at most
    # 16 examples (`research.models.ops._chunked_conv`). Both give the step of the same model
    # built from Flax's and lax's own operations, to rounding.
    import flax.linen as nn
    from jax import lax

    from research import sharding as sh
    from research.models import cnn as cnn_module

    monkeypatch.setattr(sh, "usable_cpus", lambda: 2)
    model = CNN(channels=(3, 18), num_outputs=3)
    x = np.random.default_rng(0).standard_normal((40, 8, 10, 1), dtype=np.float32)
    batch = {"x": x, "y": np.arange(40, dtype=np.int32) % 3}
    state = _state(model, x, Loss("softmax_ce", 3))
    key = jax.random.PRNGKey(1)

    def kernel_gradients(step):
        """Output shapes of the program's convolutions that produce 3x3 kernels."""
        text = step.lower(state, batch, key).as_text()
        return sorted(line.rsplit("tensor<", 1)[1].split("xf32>")[0] for line in text.splitlines()
                      if "stablehlo.convolution" in line and "-> tensor<3x3x" in line)

    eigen, plain = sh.cpu_jit(train_step), jax.jit(train_step)
    # YNNPACK's: the 3 -> 18 kernel gradient as 3 chunks of examples x 2 of channels; Eigen's:
    # one convolution, and the first layer's as one tall image per core.
    assert kernel_gradients(plain) == ["3x3x1x3"] + ["3x3x3x16"] * 3 + ["3x3x3x2"] * 3
    assert kernel_gradients(eigen) == ["3x3x1x3"] * 2 + ["3x3x3x18"]
    ours = [eigen(state, batch, key), plain(state, batch, key)]
    # Inside the caller's own jit (compiler options are for top-level programs only): the
    # plain nested jit.
    ours.append(jax.jit(lambda s: eigen(s, batch, key))(state))
    # The reference: the library's pooling, convolutions and BatchNorm, traced afresh (a new
    # function, so no cached trace of train_step is reused).
    monkeypatch.setattr(cnn_module, "max_pool",
                        lambda h, window: nn.max_pool(h, tuple(window), strides=tuple(window)))
    monkeypatch.setattr(cnn_module, "conv_general_dilated", lax.conv_general_dilated)
    monkeypatch.setattr(cnn_module, "BatchNorm", nn.BatchNorm)
    reference = jax.jit(lambda s, b, k: train_step(s, b, k))
    assert "reduce_window" in reference.lower(state, batch, key).as_text()  # the swap took
    ref_state, ref = reference(state, batch, key)
    for new_state, metrics in ours:
        np.testing.assert_allclose(metrics["loss"], ref["loss"], rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(new_state),
                        jax.tree_util.tree_leaves(ref_state)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
