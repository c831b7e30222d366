"""Models and their fast operations: parameter counts; values and gradients against Flax, lax."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from research.config import ModelConfig
from research.models import CNN, MLP, PiczakCNN, make_model, param_count
from research.models import cnn as cnn_module
from research.models.ops import BatchNorm, conv_general_dilated, max_pool


def _init(model, x):
    # Compiled: one compilation instead of one per initializer operation.
    return jax.jit(model.init)({"params": jax.random.PRNGKey(0),
                                "dropout": jax.random.PRNGKey(1)}, x)


def _shapes(model, x):
    """The variables `_init` gives, as shapes only: traced, not compiled or run."""
    return jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0),
                                       "dropout": jax.random.PRNGKey(1)}, x)


def _normal(seed, shape):
    """Standard normal float32 inputs from numpy: continuous values (no ties), and no
    compilation per shape as `jax.random.normal` outside a program costs (50-200 ms each)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_mlp_param_count_matches_hand_count():
    model = MLP(widths=(4, 2), num_outputs=1, activation="tanh")
    variables = _shapes(model, np.zeros((1, 7), np.float32))
    # (7*4 + 4) + (4*2 + 2) + (2*1 + 1)
    assert param_count(variables["params"]) == 32 + 10 + 3
    assert "batch_stats" not in variables


def test_cnn_param_count_matches_hand_count():
    model = CNN(channels=(4, 8), num_outputs=3, kernel_size=(3, 3), batch_norm=True, head=(5,))
    variables = _shapes(model, np.zeros((1, 16, 12, 1), np.float32))
    # conv without bias when BN: 3*3*1*4, BN scale+bias 2*4; 3*3*4*8, BN 2*8; head 8*5+5; out 5*3+3
    expected = 36 + 8 + 288 + 16 + 45 + 18
    assert param_count(variables["params"]) == expected
    # running mean and variance per channel
    assert param_count(variables["batch_stats"]) == 2 * (4 + 8)


def test_residual_cnn_param_count_and_skip_changes_function():
    kw = dict(channels=(4,), num_outputs=2, depth=1, batch_norm=False)
    plain, res = CNN(residual=False, **kw), CNN(residual=True, **kw)
    x = _normal(3, (2, 8, 8, 1))
    v = _init(plain, x)
    # stem conv (9*1*4+4) + two block convs (9*4*4+4 each) + out (4*2+2)
    assert param_count(v["params"]) == 40 + 2 * 148 + 10
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(_shapes(res, x))
    # One program for both (eager operations compile one program each).
    out_plain, out_res = jax.jit(lambda v, x: (plain.apply(v, x), res.apply(v, x)))(v, x)
    assert not np.allclose(out_plain, out_res)


def test_piczak_param_count_with_tall_filters():
    model = PiczakCNN(filters=(6, 5), num_outputs=4, first_kernel=(57, 6), hidden=(7,),
                      dropout=0.5)
    x = np.zeros((1, 60, 41, 1), np.float32)
    variables = _shapes(model, x)
    # conv1 57x6x1x6+6 -> map 4x36; pool 4x3 stride 1x3 -> 1x12; conv2 1x3x6x5+5 -> 1x10;
    # pool 1x3 -> 1x3; flatten 15 -> dense 7 -> out 4
    expected = (57 * 6 * 6 + 6) + (3 * 6 * 5 + 5) + (15 * 7 + 7) + (7 * 4 + 4)
    assert param_count(variables["params"]) == expected
    k = variables["params"]["Conv_0"]["kernel"]
    assert k.shape == (57, 6, 1, 6)  # frequency-tall, output channels on the last axis


def test_piczak_clips_first_filter_to_short_inputs():
    model = PiczakCNN(filters=(3, 3), num_outputs=2, hidden=(4,))
    x = np.zeros((2, 40, 30, 1), np.float32)
    out = jax.jit(model.apply)(_init(model, x), x)
    assert out.shape == (2, 2)


def test_batchnorm_train_and_eval_modes():
    model = CNN(channels=(4,), num_outputs=2, batch_norm=True)
    x = 3.0 + 2.0 * _normal(0, (8, 8, 8, 1))
    variables = _init(model, x)
    (out_train, updates), out_eval = jax.jit(lambda v, x: (
        model.apply(v, x, train=True, mutable=["batch_stats"]),
        model.apply(v, x, train=False)))(variables, x)
    # training mode normalises with batch statistics, eval mode with the (initial) averages
    assert not np.allclose(out_train, out_eval)
    mean = updates["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean, 0.0)


def test_mlp_dropout_only_in_training():
    model = MLP(widths=(16,), num_outputs=1, dropout=0.5)
    x = np.ones((4, 3), np.float32)
    v = _init(model, x)
    apply = jax.jit(model.apply, static_argnames="train")
    a = apply(v, x, train=False)
    b = apply(v, x, train=False)
    c = apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(5)})
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


# --- fast pooling and first convolution (research.models.ops) against the library operations ---

def _pool_ref(x, window, strides=None):
    return nn.max_pool(x, tuple(window), strides=tuple(strides or window))


@pytest.mark.parametrize("shape,window,strides", [
    ((2, 8, 8, 3), (2, 2), None),
    ((2, 9, 7, 2), (2, 2), None),      # non-dividing edge: VALID drops the last row and column
    ((1, 10, 11, 4), (3, 2), None),
    ((3, 5, 6, 1), (1, 3), None),
    ((2, 4, 160, 2), (2, 80), None),   # 160 window positions: more than int8 indexes
    ((2, 9, 12, 2), (4, 3), (1, 3)),   # window != stride: falls back to nn.max_pool
])
def test_max_pool_values_and_gradients_match_nn_max_pool(shape, window, strides):
    x = _normal(0, shape)  # continuous: no ties
    w = _normal(1, jax.eval_shape(lambda x: _pool_ref(x, window, strides), x).shape)
    v = _normal(2, shape)

    # One program per side (value, gradient, and the second order, forward over reverse (the
    # curvature tools' product), on a loss that curves: sum(w * pool(x)^2)).
    @functools.partial(jax.jit, static_argnums=0)
    def value_grad_hvp(pool, x, w, v):
        grad = jax.grad(lambda x: jnp.sum(pool(x, window, strides) ** 2 * w))
        return (pool(x, window, strides),
                jax.grad(lambda x: jnp.sum(pool(x, window, strides) * w))(x),
                jax.jvp(grad, (x,), (v,))[1])
    out, g, hvp = value_grad_hvp(max_pool, x, w, v)
    ref, g_ref, hvp_ref = value_grad_hvp(_pool_ref, x, w, v)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(g, g_ref)
    if strides is None:  # tiling windows: one maximum per window gets the gradient
        assert np.count_nonzero(g) == ref.size
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-6, atol=1e-6)


def test_max_pool_ties_and_nans_send_the_gradient_where_nn_max_pool_does():
    # Row-major first maximum, as XLA's select_and_scatter and PyTorch's max_pool2d do
    # (jnp.max would split the gradient among the tied elements).
    x = np.array([[0.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]], np.float32).reshape(1, 2, 4, 1)
    # Windows with NaNs: select_and_scatter keeps the current element while `current >= next`,
    # so its choice is not always a NaN (written out by hand below, one row per window).
    nan = np.nan
    windows = [[1, nan, 3, 2], [nan, 1, 2, 3], [1, 2, 3, nan], [nan, nan, 1, 5],
               [5, nan, 1, nan], [2, 2, nan, 2], [1, nan, 1, 0]]
    chosen = [2, 3, 3, 3, 3, 3, 2]
    with_nan = np.array(windows, np.float32).reshape(len(windows), 2, 2, 1)
    # One program (eager operations compile one program each).
    g, g_ref, g_nan, g_nan_ref, out_nan = jax.jit(lambda x, with_nan: (
        jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2))))(x),
        jax.grad(lambda x: jnp.sum(_pool_ref(x, (2, 2))))(x),
        jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2))))(with_nan),
        jax.grad(lambda x: jnp.sum(_pool_ref(x, (2, 2))))(with_nan),
        max_pool(with_nan, (2, 2))))(x, with_nan)
    np.testing.assert_array_equal(g, g_ref)
    np.testing.assert_array_equal(g[0, :, :, 0], [[0, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(g_nan, g_nan_ref)
    np.testing.assert_array_equal(g_nan.reshape(len(windows), 4), np.eye(4)[chosen])
    assert np.isnan(out_nan).all()


def _conv_ref(x, k, padding):
    return lax.conv_general_dilated(x, k, (1, 1), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((5, 1), "VALID"),
                                            ((2, 3), ((1, 0), (2, 1)))])
def test_one_channel_conv_values_and_gradients_match_lax(kernel, padding):
    x = _normal(0, (2, 7, 9, 1))
    k = _normal(1, kernel + (1, 4))
    w = _normal(2, jax.eval_shape(lambda x, k: _conv_ref(x, k, padding), x, k).shape)
    v = _normal(3, k.shape)

    def ours(x, k):
        return conv_general_dilated(x, k, (1, 1), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def theirs(x, k):
        return _conv_ref(x, k, padding)

    # One program per side: the value, the gradients, and forward over reverse (the
    # Hessian-vector products of research.landscape.hessian).
    @functools.partial(jax.jit, static_argnums=0)
    def value_grads_hvp(conv, x, k, w, v):
        def loss(x, k):
            return jnp.sum(jnp.tanh(conv(x, k)) * w)
        return (conv(x, k), jax.grad(loss, (0, 1))(x, k),
                jax.jvp(jax.grad(loss, 1), (x, k), (jnp.zeros_like(x), v))[1])
    out, grads, hvp = value_grads_hvp(ours, x, k, w, v)
    ref, grads_ref, hvp_ref = value_grads_hvp(theirs, x, k, w, v)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-4, atol=1e-4)


def _conv_outputs(fun, *args, inputs=False):
    """Output shapes of the library convolutions in `fun`'s jaxpr (nested jaxprs included);
    with `inputs`, (input shape, output shape) pairs."""
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                out = tuple(eqn.outvars[0].aval.shape)
                shapes.append((tuple(eqn.invars[0].aval.shape), out) if inputs else out)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)
    walk(jax.make_jaxpr(fun)(*args).jaxpr)
    return shapes


def _tanh_loss(conv, w):
    """sum(tanh(conv(x, k)) * w) with a SAME NHWC convolution `conv`."""
    return lambda x, k: jnp.sum(jnp.tanh(conv(x, k, (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))) * w)


def _lax_same(x, k, *args, **kwargs):
    return _conv_ref(x, k, "SAME")


def test_one_channel_conv_second_derivatives_match_lax_in_every_order_and_batch():
    # On the device (a copy, not a program): the programs below close over them.
    x, k, w, v_VxK, dx = jax.device_put([_normal(0, (3, 6, 8, 1)), _normal(1, (3, 3, 1, 4)),
                                         _normal(2, (3, 6, 8, 4)), _normal(3, (5, 3, 3, 1, 4)),
                                         _normal(4, (3, 6, 8, 1))])

    ours, theirs = _tanh_loss(conv_general_dilated, w), _tanh_loss(_lax_same, w)

    def fwd_rev(f):  # vmapped over vectors, with a data tangent too
        return jax.vmap(lambda v: jax.jvp(jax.grad(f, (0, 1)), (x, k), (dx, v))[1])(v_VxK)

    def rev_rev(f):
        return jax.grad(lambda k: jnp.vdot(jax.grad(f, 1)(x, k), v_VxK[0]))(k)

    def all_orders(f):
        return fwd_rev(f), rev_rev(f), jax.hessian(f, 1)(x, k)

    # One program per side instead of hundreds of dispatched operations.
    for a, b in zip(jax.tree_util.tree_leaves(jax.jit(lambda: all_orders(ours))()),
                    jax.tree_util.tree_leaves(jax.jit(lambda: all_orders(theirs))())):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # The Hessian-vector product's forward tangent x * v takes the shift form: no library
    # convolution with the output's shape (there is one with the plain lax convolution), while
    # training's gradient keeps a library kernel gradient, over the batch stacked into one
    # image: its input is that image (3 images of 6 + 2 padding rows, then 2 zero rows).
    out_shape = w.shape

    def hvp(f):
        return lambda v: jax.jvp(lambda k: jax.grad(f, 1)(x, k), (k,), (v,))[1]
    assert out_shape in _conv_outputs(hvp(theirs), k)
    assert out_shape not in _conv_outputs(hvp(ours), k)
    assert _conv_outputs(jax.grad(ours, 1), x, k, inputs=True) == [((1, 26, 10, 1), k.shape)]


@pytest.mark.parametrize("cpus,flags,parts", [(2, True, 2), (3, True, 2), (1, True, 1),
                                              (2, False, 1)])
def test_kernel_gradient_stacks_one_image_per_core_only_with_eigen_convolutions(
        cpus, flags, parts, monkeypatch):
    import research.sharding as sh

    monkeypatch.setattr(sh, "usable_cpus", lambda: cpus)
    monkeypatch.setenv("XLA_FLAGS", sh.EIGEN_CONVOLUTIONS if flags else "")
    x = _normal(0, (4, 6, 8, 1))
    k = _normal(1, (3, 3, 1, 4))
    w = _normal(2, (4, 6, 8, 4))

    grad = jax.grad(_tanh_loss(conv_general_dilated, w), 1)
    # One program for both (traced here, under the patched settings).
    ours, theirs = jax.jit(lambda x, k: (grad(x, k), jax.grad(_tanh_loss(_lax_same, w), 1)(x, k)))(
        x, k)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # 4 images of 6 + 2 padding rows in `parts` tall images (batch 4 does not split in 3), each
    # with 2 zero rows after its last image; the library convolution's batch-1 kernel gradient.
    rows = 4 // parts * 8 + 2
    assert _conv_outputs(grad, x, k, inputs=True) == [((1, rows, 10, 1), k.shape)] * parts


def test_conv_with_several_input_channels_is_the_library_convolution():
    x = _normal(0, (2, 6, 6, 3))
    k = _normal(1, (3, 3, 3, 2))
    out = conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(out, lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))


@pytest.mark.parametrize("padding", ["SAME", ((0, 2), (1, 0))])
def test_multi_channel_kernel_gradient_in_chunks_matches_lax(padding):
    # Batch 37 and 35 output channels: chunks of 16, 16 and 5 examples and 16, 16 and 3
    # channels, so uneven last chunks are covered too.
    x = _normal(0, (37, 5, 6, 3))
    k = _normal(1, (3, 2, 3, 35))
    nhwc = ("NHWC", "HWIO", "NHWC")

    def ours(x, k):
        return conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=nhwc)

    def theirs(x, k):
        return _conv_ref(x, k, padding)

    # The value is the library convolution itself.
    np.testing.assert_array_equal(ours(x, k), lax.conv_general_dilated(
        x, k, (1, 1), padding, dimension_numbers=nhwc))
    w = _normal(2, jax.eval_shape(theirs, x, k).shape)
    v = _normal(3, k.shape)
    dx = _normal(4, x.shape)

    def derivatives(conv):
        f = lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) * w)  # noqa: E731
        grads = jax.grad(f, (0, 1))(x, k)
        fwd_rev = jax.jvp(jax.grad(f, (0, 1)), (x, k), (dx, v))[1]
        rev_rev = jax.grad(lambda k: jnp.vdot(jax.grad(f, 1)(x, k), v))(k)
        fwd = jax.jvp(conv, (x, k), (dx, v))[1]
        return grads, fwd_rev, rev_rev, fwd

    for a, b in zip(jax.tree_util.tree_leaves(jax.jit(lambda: derivatives(ours))()),
                    jax.tree_util.tree_leaves(jax.jit(lambda: derivatives(theirs))())):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Training's kernel gradient: nine convolutions of at most 16 examples and 16 output
    # channels (what YNNPACK leaves to Eigen), the input gradient one of the whole batch.
    shapes = _conv_outputs(jax.grad(lambda x, k: jnp.sum(ours(x, k) * w), (0, 1)), x, k,
                           inputs=True)
    kernel = sorted((i[0], o[-1]) for i, o in shapes if o[:3] == k.shape[:3])
    assert kernel == sorted((b, c) for b in (16, 16, 5) for c in (16, 16, 3))
    assert [o for _, o in shapes if o == x.shape] == [x.shape]


def test_kernel_gradient_is_one_convolution_off_the_cpu_for_small_batches_and_bfloat16(
        monkeypatch):
    x = _normal(0, (40, 5, 6, 3))
    k = _normal(1, (3, 3, 3, 20))

    def kernel_grad_convs(x):
        conv = functools.partial(conv_general_dilated, window_strides=(1, 1), padding="SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return _conv_outputs(jax.grad(lambda k: jnp.sum(conv(x, k) ** 2)), k)

    assert len(kernel_grad_convs(x[:16])) == 1 + 1  # the value and one kernel gradient
    assert len(kernel_grad_convs(x)) == 1 + 3 * 2
    # bfloat16 keeps the library's one sum (chunks would round each partial sum to it).
    k16 = k.astype(jnp.bfloat16)
    assert len(_conv_outputs(jax.grad(lambda k: jnp.sum(conv_general_dilated(
        x.astype(jnp.bfloat16), k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        .astype(jnp.float32))), k16)) == 2
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert kernel_grad_convs(x) == [(40, 5, 6, 20), k.shape]


@pytest.mark.parametrize("model,shape", [
    (CNN(channels=(4, 6, 5), num_outputs=3, head=(7,)), (4, 12, 18, 1)),
    (CNN(channels=(3, 4), num_outputs=2, padding="CIRCULAR", global_pool="none"), (2, 9, 10, 1)),
    (PiczakCNN(filters=(3, 4), num_outputs=2, first_kernel=(5, 3), hidden=(6,), dropout=0.0),
     (2, 8, 15, 1)),
])
def test_models_unchanged_against_nn_max_pool_and_lax_conv(model, shape, monkeypatch):
    x = _normal(0, shape)
    y = np.arange(shape[0], dtype=np.int32) % model.num_outputs
    variables = _init(model, x)

    def run():
        def loss(params):
            v = {**variables, "params": params}
            out, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), out
        (_, out), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return out, model.apply(variables, x, train=False), grads

    # Compiled, so each side costs one compilation instead of one per operation. Each side
    # jits its own function, so the reference traces at its call, after the swap (`jax.jit`
    # of the same function again would reuse the first trace: the fast model twice).
    fast = jax.jit(lambda: run())()
    monkeypatch.setattr(cnn_module, "max_pool", _pool_ref)
    monkeypatch.setattr(cnn_module, "conv_general_dilated", lax.conv_general_dilated)
    monkeypatch.setattr(cnn_module, "BatchNorm", nn.BatchNorm)
    ref = jax.jit(lambda: run())()
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_matches_flax_batchnorm(train):
    x = 2.0 + 3.0 * _normal(0, (4, 5, 6, 3))
    ours, ref = BatchNorm(momentum=0.9), nn.BatchNorm(momentum=0.9)
    v = jax.jit(ref.init, static_argnames="use_running_average")(
        jax.random.PRNGKey(1), x, use_running_average=False)
    v = {"params": {"scale": np.array([1.0, 0.5, 2.0], np.float32),
                    "bias": np.array([0.0, 1.0, -1.0], np.float32)},
         "batch_stats": v["batch_stats"]}
    assert (jax.tree_util.tree_structure(jax.eval_shape(
        lambda key, x: ours.init(key, x, False), jax.random.PRNGKey(1), x))
            == jax.tree_util.tree_structure(v))
    w = _normal(2, x.shape)

    def run(module, params, x):
        return module.apply({**v, "params": params}, x, use_running_average=not train,
                            mutable=["batch_stats"])

    # One program per side: the values, statistics and gradients.
    @functools.partial(jax.jit, static_argnums=0)
    def value_grads(module, params, x):
        return run(module, params, x), jax.grad(
            lambda p, x: jnp.sum(run(module, p, x)[0] * w), (0, 1))(params, x)
    ((a, a_stats), ga), ((b, b_stats), gb) = (value_grads(ours, v["params"], x),
                                              value_grads(ref, v["params"], x))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for s, t in zip(jax.tree_util.tree_leaves(a_stats), jax.tree_util.tree_leaves(b_stats)):
        np.testing.assert_allclose(s, t, rtol=1e-6, atol=1e-6)
    for s, t in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(s, t, rtol=1e-4, atol=1e-4)


def test_models_keep_the_dtypes_of_nn_max_pool_and_lax_conv(monkeypatch):
    model = CNN(channels=(3, 4), num_outputs=2)
    x = _normal(0, (2, 8, 8, 1))
    variables = _init(model, x)
    bf16 = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(jnp.bfloat16), variables)
    cases = [(bf16, x.astype(jnp.bfloat16)), (variables, x.astype(jnp.bfloat16))]

    # One program per side, each its own function so that it traces at its call (the
    # reference after the swap).
    def apply_cases():
        return jax.jit(lambda cases: [model.apply(v, xb, mutable=["intermediates"])
                                      for v, xb in cases])(cases)
    fast = apply_cases()
    monkeypatch.setattr(cnn_module, "max_pool", _pool_ref)
    monkeypatch.setattr(cnn_module, "conv_general_dilated", lax.conv_general_dilated)
    monkeypatch.setattr(cnn_module, "BatchNorm", nn.BatchNorm)
    ref = apply_cases()
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(ref)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=0.05, atol=0.05)
