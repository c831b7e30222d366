"""Directions: filter normalisation by hand, classification by path, orthogonality, PCA."""

import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research import landscape as L
from research.landscape.directions import check_same_structure, gaussian_direction


class ConvDense(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(3, (2, 2))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(2)(x)


@pytest.fixture(scope="module")
def variables():
    # Compiled: one compilation instead of one per initializer operation.
    return jax.jit(ConvDense().init)(jax.random.key(0), jnp.ones((1, 5, 5, 1)))


def test_filter_normalisation_matches_hand_computation(variables):
    params = variables["params"]
    d = L.random_direction(params, seed=3)
    raw = gaussian_direction(params, 3)
    # Hand computation, one output channel/neuron at a time (last axis in Flax).
    for layer in ("Conv_0", "Dense_0"):
        w = np.asarray(params[layer]["kernel"], np.float64)
        r = np.asarray(raw[layer]["kernel"], np.float64)
        got = np.asarray(d[layer]["kernel"])
        for j in range(w.shape[-1]):
            wj, rj = w[..., j], r[..., j]
            want = rj * np.sqrt((wj ** 2).sum()) / (np.sqrt((rj ** 2).sum()) + 1e-10)
            np.testing.assert_allclose(got[..., j], want, rtol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(got[..., j]), np.linalg.norm(wj), rtol=1e-6)
    # biasbn: biases and BatchNorm scale/bias get a zero direction.
    np.testing.assert_array_equal(d["Dense_0"]["bias"], 0.0)
    np.testing.assert_array_equal(d["BatchNorm_0"]["scale"], 0.0)
    np.testing.assert_array_equal(d["BatchNorm_0"]["bias"], 0.0)


def test_filter_axis_matters(variables):
    # The PyTorch convention (first axis) gives a different, wrong-for-Flax direction.
    params = variables["params"]
    d_flax = L.random_direction(params, 0)
    d_torch = L.random_direction(params, 0, filter_axis=0)
    w = np.asarray(params["Dense_0"]["kernel"])
    np.testing.assert_allclose(np.linalg.norm(d_flax["Dense_0"]["kernel"], axis=0),
                               np.linalg.norm(w, axis=0), rtol=1e-6)
    assert not np.allclose(np.linalg.norm(d_torch["Dense_0"]["kernel"], axis=0),
                           np.linalg.norm(w, axis=0), rtol=1e-3)


def test_layer_model_none_and_ignore_none(variables):
    params = variables["params"]
    raw = gaussian_direction(params, 1)
    d = L.random_direction(params, 1, normalization="layer", ignore="none")
    w, r = np.asarray(params["Conv_0"]["kernel"]), np.asarray(raw["Conv_0"]["kernel"])
    np.testing.assert_allclose(d["Conv_0"]["kernel"], r * np.linalg.norm(w) / np.linalg.norm(r),
                               rtol=1e-6)
    # Not ignored: biases and norm parameters take the parameter's value (the reference's rule).
    np.testing.assert_allclose(d["BatchNorm_0"]["scale"], params["BatchNorm_0"]["scale"])
    np.testing.assert_allclose(d["Dense_0"]["bias"], params["Dense_0"]["bias"])

    dm = L.random_direction(params, 1, normalization="model")
    kernels = [np.asarray(params[k]["kernel"]).ravel() for k in ("Conv_0", "Dense_0")]
    d_kernels = [np.asarray(dm[k]["kernel"]).ravel() for k in ("Conv_0", "Dense_0")]
    np.testing.assert_allclose(np.linalg.norm(np.concatenate(d_kernels)),
                               np.linalg.norm(np.concatenate(kernels)), rtol=1e-6)
    ratio = np.asarray(dm["Conv_0"]["kernel"]) / np.asarray(raw["Conv_0"]["kernel"])
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # one global scale

    dn = L.random_direction(params, 1, normalization="none", ignore="none")
    for a, b in zip(jax.tree_util.tree_leaves(dn), jax.tree_util.tree_leaves(raw)):
        np.testing.assert_array_equal(a, b)


def test_seed_reproducible_and_gaussian():
    params = {"w": jnp.zeros((200, 50))}
    a = gaussian_direction(params, 7)["w"]
    np.testing.assert_array_equal(a, gaussian_direction(params, 7)["w"])
    assert not np.allclose(a, gaussian_direction(params, 8)["w"])
    assert abs(float(a.mean())) < 0.02 and abs(float(a.std()) - 1.0) < 0.02
    # A leaf's direction depends on its path only, not on which other leaves exist.
    b = gaussian_direction({"w": jnp.zeros((200, 50)), "v": jnp.zeros(3)}, 7)["w"]
    np.testing.assert_array_equal(a, b)
    # Leaves of several sizes, each cut from a longer flat draw (70 x 70 from one of 8192):
    # the same bits as `normal` of the documented key and the leaf's shape, drawn in a program
    # compiled at XLA's default level 3 (the suite compiles at level 1, see conftest).
    nested = {"Conv_0": {"kernel": jnp.zeros((3, 3, 1, 4))}, "Dense_0": {"bias": jnp.zeros(5)},
              "Dense_1": {"kernel": jnp.zeros((70, 70))}}
    got = gaussian_direction(nested, 11)
    for path in ("Conv_0/kernel", "Dense_0/bias", "Dense_1/kernel"):
        layer, name = path.split("/")
        leaf = got[layer][name]
        assert leaf.shape == nested[layer][name].shape
        key = jax.random.fold_in(jax.random.key(11), zlib.crc32(path.encode()) & 0x7FFFFFFF)
        ref = jax.jit(lambda k, s=leaf.shape: jax.random.normal(k, s, jnp.float32),
                      compiler_options={"xla_backend_optimization_level": 3})(key)
        np.testing.assert_array_equal(leaf, ref)


def test_param_kind_by_path():
    assert L.param_kind("Conv_0/kernel") == "weight"
    assert L.param_kind("Dense_1/bias") == "bias"
    assert L.param_kind("BatchNorm_0/scale") == "norm"
    assert L.param_kind("LayerNorm_2/bias") == "norm"
    assert L.param_kind("batch_stats/BatchNorm_0/mean") == "norm"
    assert L.param_kind("b1") == "bias" and L.param_kind("w1") == "weight"
    assert L.param_kind("bn1/weight") == "norm"
    # A 1-D weight is not a bias, and a 2-D norm parameter is still a norm parameter.
    assert L.param_kind("prelu/alpha") == "weight"
    assert L.param_kind("GroupNorm_0/scale") == "norm"


class Normalizer(nn.Module):
    """A user's block whose name contains "norm" but which holds a Dense layer."""

    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm()(nn.Dense(4)(x))


class UserNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Normalizer()(x)
        x = nn.GroupNorm(num_groups=2)(x)
        return nn.Dense(2)(x)


def _by_path(tree):
    return {L.directions.path_str(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_norm_by_module_kind_and_rank_not_substring():
    params = jax.jit(UserNet().init)(jax.random.key(0), jnp.ones((1, 3)))["params"]
    p = _by_path(params)
    assert set(p) == {"Normalizer_0/Dense_0/kernel", "Normalizer_0/Dense_0/bias",
                      "Normalizer_0/LayerNorm_0/scale", "Normalizer_0/LayerNorm_0/bias",
                      "GroupNorm_0/scale", "GroupNorm_0/bias", "Dense_0/kernel", "Dense_0/bias"}
    d = _by_path(L.random_direction(params, seed=0))
    # The Dense kernel inside the user's Normalizer block is a weight: filter-normalised.
    kernel = "Normalizer_0/Dense_0/kernel"
    assert np.all(np.abs(d[kernel]) > 0)
    np.testing.assert_allclose(np.linalg.norm(d[kernel], axis=0),
                               np.linalg.norm(p[kernel], axis=0), rtol=1e-5)
    # Biases and the real LayerNorm / GroupNorm parameters are left out (zero direction)...
    zero = [n for n in p if not n.endswith("kernel")]
    for n in zero:
        np.testing.assert_array_equal(d[n], 0.0, err_msg=n)
    # ... and with ignore="none" they move with the parameter itself (the reference's rule).
    d_none = _by_path(L.random_direction(params, seed=0, ignore="none"))
    for n in zero:
        np.testing.assert_array_equal(d_none[n], p[n], err_msg=n)
    assert L.param_kind("Normalizer_0/Dense_0/kernel") == "weight"
    assert L.param_kind("Normalizer_0/Dense_0/bias") == "bias"
    assert L.param_kind("Normalizer_0/scale") == "weight"


def test_param_kind_names_and_rank_veto():
    for name in ("BatchNorm_0/scale", "LayerNorm_3/bias", "RMSNorm_0/scale", "InstanceNorm_1/scale",
                 "block/batch_norm/scale", "bn1/weight", "ln_f/scale", "norm/scale",
                 "attn_norm/scale", "Block_0/GroupNorm_0/bias", "bn/mean"):
        assert L.param_kind(name, ndim=1) == "norm", name
    for name in ("Normalizer_0/scale", "normal/scale", "WeightNorm_0/Dense_0/kernel/scale",
                 "Abnormal_0/bias", "BatchNorm_0/kernel"):
        assert L.param_kind(name, ndim=1) != "norm", name
    # A tensor of rank >= 2 is never a norm parameter, whatever its module is called.
    assert L.param_kind("bn1/weight", ndim=2) == "weight"
    assert L.param_kind("norm/Dense_0/kernel", ndim=2) == "weight"
    d = L.random_direction({"norm": {"w": jnp.ones((3, 2)), "scale": jnp.ones(2)}}, seed=0)
    assert np.all(np.asarray(d["norm"]["w"]) != 0)
    np.testing.assert_array_equal(d["norm"]["scale"], 0.0)


def test_nnx_state_paths():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)

    _, params, _ = nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)
    d = L.random_direction(params, 0)
    flat = {L.directions.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(d)[0]}
    assert set(flat) == {"lin/kernel", "lin/bias", "bn/scale", "bn/bias"}
    np.testing.assert_array_equal(flat["lin/bias"], 0.0)
    np.testing.assert_array_equal(flat["bn/scale"], 0.0)
    w = np.asarray(params["lin"]["kernel"].value)
    np.testing.assert_allclose(np.linalg.norm(flat["lin/kernel"], axis=0),
                               np.linalg.norm(w, axis=0), rtol=1e-6)


def test_orthogonalize_and_cosine():
    params = {"w": jnp.ones((4, 3)), "v": jnp.ones((5, 2))}
    d1 = L.random_direction(params, 0, normalization="none")
    d2 = jax.tree_util.tree_map(lambda a, b: a + 0.5 * b, d1,
                                L.random_direction(params, 1, normalization="none"))
    v1 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(d1)])
    v2 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(d2)])
    want = v1 @ v2 / np.linalg.norm(v1) / np.linalg.norm(v2)
    assert L.cosine(d1, d2) == pytest.approx(want, rel=1e-6)
    assert abs(L.cosine(d1, L.orthogonalize(d1, d2))) < 1e-6


def test_interpolation_and_plane_directions():
    a = {"w": jnp.arange(6.0).reshape(2, 3)}
    b = {"w": jnp.ones((2, 3))}
    c = {"w": -jnp.ones((2, 3))}
    np.testing.assert_allclose(L.interpolation_direction(a, b)["w"], b["w"] - a["w"])
    d1, d2 = L.plane_directions(a, b, c)
    np.testing.assert_allclose(a["w"] + d1["w"], b["w"])
    np.testing.assert_allclose(a["w"] + d2["w"], c["w"])


def test_pca_recovers_planted_plane():
    rng = np.random.default_rng(0)
    p = 300
    e1, e2 = rng.normal(size=p), rng.normal(size=p)
    e2 -= e1 @ e2 / (e1 @ e1) * e1
    final = rng.normal(size=p)
    t = np.linspace(0, 1, 12)
    u, v = 3.0 * (1 - t) ** 2, np.sin(4 * t) * (1 - t)
    noise = 1e-4 * rng.normal(size=(12, p))
    traj = [(int(10 * k), {"layer": {"kernel": jnp.asarray(final + u[k] * e1 + v[k] * e2
                                                         + noise[k], jnp.float32).reshape(30, 10)}})
            for k in range(12)]
    traj[-1] = (110, {"layer": {"kernel": jnp.asarray(final, jnp.float32).reshape(30, 10)}})
    res = L.pca_directions(traj)
    basis = np.stack([np.asarray(d["layer"]["kernel"], np.float64).ravel()
                      for d in res.directions])
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-5)
    # The recovered plane is the planted one: both planted vectors lie in it.
    plane = np.stack([e1 / np.linalg.norm(e1), e2 / np.linalg.norm(e2)])
    proj = plane @ basis.T @ basis
    np.testing.assert_allclose(proj, plane, atol=1e-3)
    assert res.explained_variance_ratio.sum() > 0.999
    # Coordinates reproduce the checkpoints' offsets, which lie ~noise away from the plane.
    offsets = np.stack([u * np.linalg.norm(e1), v * np.linalg.norm(e2)], 1)  # in the e-basis
    rec = res.coords @ basis
    want = u[:, None] * e1 + v[:, None] * e2
    np.testing.assert_allclose(rec[:-1], want[:-1], atol=5e-3)
    np.testing.assert_allclose(np.linalg.norm(res.coords, axis=1),
                               np.linalg.norm(offsets, axis=1), atol=5e-3)
    assert res.distances.max() < 5e-3 and res.distances[-1] == 0.0
    np.testing.assert_array_equal(res.steps, 10 * np.arange(12))
    assert np.all(res.coords[0] >= 0)


def test_pca_centres_the_trajectory_like_numpy_svd():
    # Checkpoints clustered far from the final point: without centring, the first direction
    # would point at the cluster's mean instead of along its spread.
    rng = np.random.default_rng(2)
    k, p = 8, 40
    final = rng.normal(size=p)
    spread = rng.normal(size=(k, 3)) * np.array([3.0, 1.0, 0.3])
    diff_KxP = 20.0 * rng.normal(size=p) + spread @ rng.normal(size=(3, p))
    traj = [{"w": jnp.asarray((final + diff_KxP[i]).reshape(8, 5), jnp.float32)}
            for i in range(k)]
    res = L.pca_directions(traj, final={"w": jnp.asarray(final.reshape(8, 5), jnp.float32)})
    # Independent reference: SVD of the centred matrix of theta_i - theta_final.
    theta_KxP = np.stack([np.asarray(t["w"], np.float64).ravel() for t in traj])
    diff_KxP = theta_KxP - np.float32(final).astype(np.float64)
    centred_KxP = diff_KxP - diff_KxP.mean(axis=0)
    _, sing, vt_KxP = np.linalg.svd(centred_KxP, full_matrices=False)
    basis_CxP = np.stack([np.asarray(d["w"], np.float64).ravel() for d in res.directions])
    signs_C = np.sign(np.sum(basis_CxP * vt_KxP[:2], axis=1))
    np.testing.assert_allclose(basis_CxP, signs_C[:, None] * vt_KxP[:2], atol=1e-5)
    np.testing.assert_allclose(res.explained_variance_ratio, sing[:2] ** 2 / np.sum(sing ** 2),
                               rtol=1e-6)
    np.testing.assert_allclose(res.coords, diff_KxP @ basis_CxP.T, rtol=1e-5, atol=1e-4)


def test_pca_ignores_biases():
    rng = np.random.default_rng(1)
    traj = [{"kernel": jnp.asarray(rng.normal(size=(4, 3))),
             "bias": jnp.asarray(rng.normal(size=3))} for _ in range(5)]
    res = L.pca_directions(traj)
    for d in res.directions:
        np.testing.assert_array_equal(d["bias"], 0.0)


def test_bad_inputs_name_the_field():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="normalization"):
        L.random_direction(params, 0, normalization="filters")
    with pytest.raises(ValueError, match="ignore"):
        L.random_direction(params, 0, ignore="bias")
    with pytest.raises(ValueError, match="seed"):
        L.random_direction(params, 0.5)
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        check_same_structure({"a": jnp.ones((2, 2))}, params)
    with pytest.raises(ValueError, match="'a' has shape"):
        L.normalize_direction({"a": jnp.ones((2, 3)), "b": jnp.ones(2)}, params)
    with pytest.raises(ValueError, match="trajectory"):
        L.pca_directions([params])
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        L.pca_directions([params, params, params])
