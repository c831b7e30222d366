"""The native first stage (`research.models.native`) against independent JAX references.

The reference here is written from the library's own operations (`lax.conv_general_dilated`,
Flax's `nn.BatchNorm` formula with its fast variance, `jax.nn.relu`, `nn.max_pool`), not from
`research.models.ops`; the model-level tests compare whole training steps with the native stage
on and off (`RESEARCH_NATIVE=0`, read when a step is traced).
"""

import os
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from research.losses import Loss
from research.models import CNN, native
from research.train.state import TrainState
from research.train.steps import train_step

pytestmark = pytest.mark.skipif(not native.available(),
                                reason="no C++ compiler: the native first stage cannot be built")


def _library_stage(x, kernel, scale, bias, eps, window):
    kh, kw = kernel.shape[:2]
    pads = (((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2))
    z = lax.conv_general_dilated(x, kernel, (1, 1), pads,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)
    mean = jnp.mean(z, (0, 1, 2))
    var = jnp.maximum(0.0, jnp.mean(z * z, (0, 1, 2)) - mean * mean)
    c = (1, 1, 1, -1)
    y = jax.nn.relu((z - mean.reshape(c)) * (lax.rsqrt(var + eps) * scale).reshape(c)
                    + bias.reshape(c))
    return nn.max_pool(y, window, strides=window), mean, var


def _inputs(seed, b, h, w, kernel, c):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k[0], (b, h, w, 1)) + 0.5
    kern = jax.random.normal(k[1], (*kernel, 1, c)) * 0.4
    # Negative scales too: the pooling picks each window's maximum after the affine map.
    scale = jax.random.normal(k[2], (c,)) + 0.5
    bias = 0.3 * jax.random.normal(k[3], (c,))
    return x, kern, scale, bias


def _close(a, b, rel):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * max(1e-6, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("b,h,w,kernel,c,window", [
    (4, 16, 24, (3, 3), 16, (2, 2)),
    (3, 11, 14, (2, 4), 8, (3, 2)),   # asymmetric "SAME" pads; rows and columns left over
    (2, 9, 10, (5, 5), 32, (2, 3)),
])
def test_values_and_gradients_match_the_library_operations(b, h, w, kernel, c, window):
    x, kern, scale, bias = _inputs(0, b, h, w, kernel, c)
    eps = 1e-5
    got = jax.jit(native.first_stage, static_argnums=(4, 5))(x, kern, scale, bias, eps, window)
    want = _library_stage(x, kern, scale, bias, eps, window)
    for g, r in zip(got, want):
        _close(g, r, 2e-6)

    # Cotangents on all three outputs, as a loss on the stage and on its statistics would give.
    ct = [jax.random.normal(jax.random.PRNGKey(i + 7), o.shape) for i, o in enumerate(want)]

    def loss(stage):
        def f(x, kern, scale, bias):
            outs = stage(x, kern, scale, bias, eps, window)
            return sum(jnp.sum(o * t) for o, t in zip(outs, ct))
        return f

    got = jax.jit(jax.grad(loss(native.first_stage), argnums=(0, 1, 2, 3)))(x, kern, scale, bias)
    want = jax.grad(loss(_library_stage), argnums=(0, 1, 2, 3))(x, kern, scale, bias)
    for name, g, r in zip(("input", "kernel", "scale", "bias"), got, want):
        assert np.all(np.isfinite(np.asarray(g))), name
        _close(g, r, 2e-5)


def test_first_maximum_wins_ties_and_zero_windows_pass_no_gradient():
    # The second image is constant: its inner windows are ties. With scale 0 every output is
    # `relu(bias)`. (A random first image keeps the variance well conditioned in float32.)
    x = jnp.concatenate([jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 1)),
                         jnp.ones((1, 6, 6, 1))])
    kern = jnp.ones((3, 3, 1, 8)) * 0.1
    scale = jnp.concatenate([jnp.ones(4), jnp.zeros(4)])
    bias = jnp.array([0.5, -0.5, 0.5, -0.5, 0.2, -0.2, 0.2, -0.2])
    window = (2, 2)
    got = native.first_stage(x, kern, scale, bias, 1e-5, window)
    want = _library_stage(x, kern, scale, bias, 1e-5, window)
    for g, r in zip(got, want):
        _close(g, r, 1e-6)
    gk = jax.grad(lambda k, s, b: jnp.sum(native.first_stage(x, k, s, b, 1e-5, window)[0]),
                  argnums=(0, 1, 2))(kern, scale, bias)
    rk = jax.grad(lambda k, s, b: jnp.sum(_library_stage(x, k, s, b, 1e-5, window)[0]),
                  argnums=(0, 1, 2))(kern, scale, bias)
    for g, r in zip(gk, rk):
        _close(g, r, 1e-5)
    # Channels with scale 0 and a negative bias output relu(-0.2) = 0: no bias gradient.
    assert float(gk[2][5]) == 0.0 and float(gk[2][7]) == 0.0
    assert float(gk[2][4]) == 2 * 3 * 3  # relu(0.2): every pooled output passes it on


def test_the_same_inputs_give_the_same_bits():
    x, kern, scale, bias = _inputs(3, 16, 20, 32, (3, 3), 16)
    f = jax.jit(jax.value_and_grad(
        lambda k, s: jnp.sum(native.first_stage(x, k, s, bias, 1e-5, (2, 2))[0] ** 2),
        argnums=(0, 1)))
    a, b = f(kern, scale), f(kern, scale)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


_DIGEST = """
import hashlib, os, sys
os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
import jax, jax.numpy as jnp, numpy as np
from research.models import native
k = jax.random.split(jax.random.PRNGKey(5), 3)
x = jax.random.normal(k[0], (24, 20, 32, 1))
kern = jax.random.normal(k[1], (3, 3, 1, 16))
scale = jax.random.normal(k[2], (16,)) + 0.5
f = jax.jit(jax.value_and_grad(
    lambda k, s: jnp.sum(native.first_stage(x, k, s, scale * 0, 1e-5, (2, 2))[0] ** 2),
    argnums=(0, 1)))
out = jax.tree.leaves(f(kern, scale))
out += list(native.first_stage(x, kern, scale, scale, 1e-5, (2, 2)))
print(hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in out)).hexdigest())
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs and Linux's affinity calls")
def test_results_do_not_depend_on_the_number_of_threads():
    # XLA:CPU's thread pool follows the affinity mask (one CPU: no helper threads at all), but
    # only with one host device: forced host devices get a thread each.
    env = dict(os.environ, XLA_FLAGS=" ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f))
    cpus = sorted(os.sched_getaffinity(0))
    digests = []
    for mask in ([cpus[0]], cpus[:2]):
        done = subprocess.run([sys.executable, "-c", _DIGEST, ",".join(map(str, mask))],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64


def _steps(model, flag, variables, x, y, steps=3):
    """`steps` SGD steps of the production train step, traced with RESEARCH_NATIVE=flag."""
    old = os.environ.get("RESEARCH_NATIVE")
    os.environ["RESEARCH_NATIVE"] = flag
    try:
        state = TrainState.create(apply_fn=model.apply, variables=variables,
                                  tx=optax.sgd(0.05, momentum=0.9),
                                  loss=Loss("softmax_ce", num_classes=5))
        # A new function object per call, so that each flag gets its own trace.
        step = jax.jit(lambda s, b, k: train_step(s, b, k))
        batch = {"x": x, "y": y}
        text = str(jax.make_jaxpr(step)(state, batch, jax.random.PRNGKey(0)))
        losses = []
        for i in range(steps):
            state, metrics = step(state, batch, jax.random.PRNGKey(i))
            losses.append(float(metrics["loss"]))
    finally:
        if old is None:
            os.environ.pop("RESEARCH_NATIVE")
        else:
            os.environ["RESEARCH_NATIVE"] = old
    return state, losses, "research_FirstStageForward" in text


def test_training_steps_match_with_the_native_stage_on_and_off():
    # One stage, so that no later max pooling can flip between nearly equal maxima (which makes
    # deeper networks' gradients differ by more than rounding between any two float orders).
    model = CNN(channels=(16,), num_outputs=5, head=(8,))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(12, 10, 16, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, 12), jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), x[:2])
    on, losses_on, used_on = _steps(model, "1", variables, x, y)
    off, losses_off, used_off = _steps(model, "0", variables, x, y)
    assert used_on and not used_off
    np.testing.assert_allclose(losses_on, losses_off, rtol=1e-5)
    assert losses_on[-1] < losses_on[0]
    for path, a in jax.tree_util.tree_leaves_with_path(on.params):
        b = off.params
        for key in path:
            b = b[key.key]
        _close(a, b, 1e-5)
    for a, b in zip(jax.tree.leaves(on.model_state), jax.tree.leaves(off.model_state)):
        _close(a, b, 1e-5)


def test_evaluation_and_recorded_features_use_the_layers():
    model = CNN(channels=(8, 8), num_outputs=3)
    x = jnp.ones((2, 8, 8, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    evaluate = str(jax.make_jaxpr(lambda v: model.apply(v, x))(variables))
    train = str(jax.make_jaxpr(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables))
    recorded = jax.make_jaxpr(lambda v: model.apply(
        v, x, train=True, mutable=["batch_stats", "intermediates"]))(variables)
    assert "research_FirstStageForward" in train
    assert "research_FirstStageForward" not in evaluate
    assert "research_FirstStageForward" not in str(recorded)
    _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"])
    assert state["intermediates"]["stage0_features"][0].shape == (2, 8, 8, 8)


def test_without_a_compiler_the_model_warns_and_trains_on_the_layers(tmp_path, monkeypatch):
    # A fresh cache, a compiler that fails and a process that has not loaded the kernel yet.
    monkeypatch.setenv("CXX", "false")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "_LOADED", {})
    model = CNN(channels=(8,), num_outputs=2)
    x = jnp.ones((2, 8, 8, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.warns(RuntimeWarning, match="native first stage is unavailable.*false"):
        text = str(jax.make_jaxpr(
            lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables))
    assert "research_FirstStageForward" not in text
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.shape == (2, 2)
    assert not list(tmp_path.rglob("*.so*")), "a failed build left a file behind"


def test_a_compiler_without_march_native_gets_the_portable_build(tmp_path, monkeypatch):
    # Apple's clang on arm64 rejects -march=native: the build retries without it. The stand-in
    # compiler logs its arguments and hands back the library this process already built.
    assert native.available()
    built = native._library_path()
    log = tmp_path / "calls.txt"
    fake = tmp_path / "cxx"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n'
                    'for a in "$@"; do [ "$a" = -march=native ] && exit 1; done\n'
                    f'while [ "$1" != -o ]; do shift; done\ncp {built} "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = native._library_path()
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "-march=native" in calls[0] and "-march=native" not in calls[1]
    assert path.read_bytes() == built.read_bytes()
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == ["research-native", path.name]
    assert native._library_path() == path and len(log.read_text().splitlines()) == 2  # cached


def test_calling_the_stage_where_it_is_unavailable_says_so(monkeypatch):
    monkeypatch.setenv("RESEARCH_NATIVE", "0")
    assert not native.available()
    x, kern, scale, bias = _inputs(0, 2, 8, 8, (3, 3), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="RESEARCH_NATIVE=0"):
            native.first_stage(x, kern, scale, bias, 1e-5, (2, 2))
