"""The TensorFlow Deep Learning Playground's data sets and input features, reproduced.

Formulas follow tensorflow/playground `dataset.ts`: classification sets have labels -1/+1 and
500 points by default, regression sets 1200 points over [-6, 6]^2. As in the Playground, the
circle, xor and regression sets store the clean point and compute the label from a
noise-jittered copy, while gauss and spiral add the noise to the point itself.
"""

from __future__ import annotations

import numpy as np

from research.config import DataConfig

CLASSIFICATION = ("circle", "xor", "gauss", "spiral")
REGRESSION = ("reg-plane", "reg-gauss")
DOMAIN = 6.0  # the Playground draws and samples the plane over [-6, 6]^2

_GAUSS_BUMPS = np.array([[-4, 2.5, 1], [0, 2.5, -1], [4, 2.5, 1],
                         [-4, -2.5, -1], [0, -2.5, 1], [4, -2.5, -1]], np.float64)


def _circle(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    radius = 5.0
    half = n // 2
    r_N = np.concatenate([rng.uniform(0, radius * 0.5, half),
                          rng.uniform(radius * 0.7, radius, n - half)])
    angle_N = rng.uniform(0, 2 * np.pi, n)
    p_Nx2 = np.stack([r_N * np.sin(angle_N), r_N * np.cos(angle_N)], axis=1)
    jitter_Nx2 = rng.uniform(-radius, radius, (n, 2)) * noise
    inside_N = np.linalg.norm(p_Nx2 + jitter_Nx2, axis=1) < radius * 0.5
    return p_Nx2, np.where(inside_N, 1.0, -1.0)


def _xor(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    p_Nx2 = rng.uniform(-5, 5, (n, 2))
    p_Nx2 = p_Nx2 + np.where(p_Nx2 > 0, 0.3, -0.3)
    q_Nx2 = p_Nx2 + rng.uniform(-5, 5, (n, 2)) * noise
    return p_Nx2, np.where(q_Nx2[:, 0] * q_Nx2[:, 1] >= 0, 1.0, -1.0)


def _gauss(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    variance = 0.5 + (4.0 - 0.5) * noise / 0.5
    half = n // 2
    pos_Nx2 = rng.normal(2.0, np.sqrt(variance), (half, 2))
    neg_Nx2 = rng.normal(-2.0, np.sqrt(variance), (n - half, 2))
    labels = np.concatenate([np.ones(half), -np.ones(n - half)])
    return np.concatenate([pos_Nx2, neg_Nx2]), labels


def _spiral(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    half = n // 2
    points, labels = [], []
    for delta, label, count in ((0.0, 1.0, half), (np.pi, -1.0, n - half)):
        frac_N = np.arange(count) / count
        r_N = 5.0 * frac_N
        t_N = 1.75 * frac_N * 2 * np.pi + delta
        p_Nx2 = np.stack([r_N * np.sin(t_N), r_N * np.cos(t_N)], axis=1)
        points.append(p_Nx2 + rng.uniform(-1, 1, (count, 2)) * noise)
        labels.append(np.full(count, label))
    return np.concatenate(points), np.concatenate(labels)


def reg_gauss_label(q_Nx2: np.ndarray) -> np.ndarray:
    """The reg-gauss target: the strongest of six signed bumps `sign * clip(1 - d/2, 0, 1)`."""
    d_NxK = np.linalg.norm(q_Nx2[:, None, :] - _GAUSS_BUMPS[None, :, :2], axis=2)
    v_NxK = _GAUSS_BUMPS[None, :, 2] * np.clip(1.0 - d_NxK / 2.0, 0.0, 1.0)
    pick_N = np.argmax(np.abs(v_NxK), axis=1)
    return v_NxK[np.arange(len(q_Nx2)), pick_N]


def _reg_plane(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    p_Nx2 = rng.uniform(-DOMAIN, DOMAIN, (n, 2))
    q_Nx2 = p_Nx2 + rng.uniform(-DOMAIN, DOMAIN, (n, 2)) * noise
    return p_Nx2, (q_Nx2[:, 0] + q_Nx2[:, 1]) / 10.0


def _reg_gauss(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    p_Nx2 = rng.uniform(-DOMAIN, DOMAIN, (n, 2))
    q_Nx2 = p_Nx2 + rng.uniform(-DOMAIN, DOMAIN, (n, 2)) * noise
    return p_Nx2, reg_gauss_label(q_Nx2)


_GENERATORS = {"circle": _circle, "xor": _xor, "gauss": _gauss, "spiral": _spiral,
               "reg-plane": _reg_plane, "reg-gauss": _reg_gauss}


def make_dataset(name: str, n: int = 500, noise: float = 0.0,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate one of the Playground's data sets.

    Args:
        name: circle, xor, gauss, spiral, reg-plane or reg-gauss.
        n: number of points (the Playground uses 500 for classification, 1200 for regression).
        noise: noise level in [0, 0.5].
        seed: random seed.

    Returns:
        points_Nx2 (float64) and labels_N: -1/+1 for classification, a float for regression.
    """
    if name not in _GENERATORS:
        raise ValueError(f"dataset: unknown Playground data set {name!r}; "
                         f"choose one of {', '.join(_GENERATORS)}")
    if not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise: must be in [0, 0.5], got {noise!r}")
    if n < 2:
        raise ValueError(f"n: need at least 2 points, got {n}")
    return _GENERATORS[name](np.random.default_rng(seed), n, noise)


def input_features(points_Nx2: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """The Playground's input features of points, in the order given.

    Args:
        points_Nx2: points (x1, x2).
        features: names among x1, x2, x1^2, x2^2, x1*x2, sin_x1, sin_x2.

    Returns:
        x_NxD, float32.
    """
    x1, x2 = points_Nx2[:, 0], points_Nx2[:, 1]
    table = {"x1": x1, "x2": x2, "x1^2": x1 * x1, "x2^2": x2 * x2, "x1*x2": x1 * x2,
             "sin_x1": np.sin(x1), "sin_x2": np.sin(x2)}
    for f in features:
        if f not in table:
            raise ValueError(f"features: unknown input feature {f!r}; "
                             f"choose from {', '.join(table)}")
    return np.stack([table[f] for f in features], axis=1).astype(np.float32)


def split(points_Nx2: np.ndarray, labels_N: np.ndarray, train_ratio: float,
          seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and split as the Playground does (the first `train_ratio` of a shuffle trains)."""
    order = np.random.default_rng([seed, 1]).permutation(len(points_Nx2))
    cut = int(np.floor(len(order) * train_ratio))
    tr, te = order[:cut], order[cut:]
    return points_Nx2[tr], labels_N[tr], points_Nx2[te], labels_N[te]


def load(cfg: DataConfig):
    """The configured Playground set as a `Dataset` (labels -1/+1 become class ids 0/1).

    Args:
        cfg: data configuration (dataset, n, noise, train_ratio, features, seed).

    Returns:
        A `research.data.Dataset` whose `info` keeps the raw 2D points for plotting.
    """
    from research.data import Dataset, holdout

    points, labels = make_dataset(cfg.dataset, cfg.n, cfg.noise, cfg.seed)
    p_tr, l_tr, p_te, l_te = split(points, labels, cfg.train_ratio, cfg.seed)
    # The validation split comes out of the training split; the test split is the Playground's.
    keep, held = holdout(l_tr, cfg.val_fraction, cfg.seed, cfg.dataset in CLASSIFICATION)
    p_tr, l_tr, p_va, l_va = p_tr[keep], l_tr[keep], p_tr[held], l_tr[held]
    if cfg.dataset in CLASSIFICATION:
        y_tr, y_va, y_te = ((v > 0).astype(np.int32) for v in (l_tr, l_va, l_te))
        class_names = ("-1", "+1")
    else:
        y_tr, y_va, y_te = (v.astype(np.float32) for v in (l_tr, l_va, l_te))
        class_names = ()
    info = {"source": "playground", "dataset": cfg.dataset, "n": cfg.n, "noise": cfg.noise,
            "features": list(cfg.features), "points_train": p_tr.tolist(),
            "points_val": p_va.tolist(), "points_test": p_te.tolist(),
            "split": (f"the Playground's shuffle: {cfg.train_ratio:g} of the points for "
                      f"training, of which {cfg.val_fraction:g} (per class) held out for "
                      "validation; the rest test")}
    return Dataset(input_features(p_tr, cfg.features), y_tr, input_features(p_te, cfg.features),
                   y_te, class_names, info, x_val=input_features(p_va, cfg.features), y_val=y_va)


def model_scores(state, points_Nx2: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """A trained model's output on points, on the Playground's [-1, 1] colour scale.

    Args:
        state: a `TrainState` (its `apply_fn`, variables and `loss.scores` are used).
        points_Nx2: points in the plane.
        features: the input features the model was trained on.

    Returns:
        scores_N.
    """
    out = state.apply_fn(state.variables(), input_features(points_Nx2, features))
    return np.asarray(state.loss.scores(out))


def hidden_activations(state, points_Nx2: np.ndarray,
                       features: tuple[str, ...]) -> list[np.ndarray]:
    """Every hidden layer's activations `a_NxW` of an MLP state on points (sown by `MLP`)."""
    _, inter = state.apply_fn(state.variables(), input_features(points_Nx2, features),
                              mutable=["intermediates"])
    layers = inter["intermediates"]
    return [np.asarray(layers[f"hidden_{i}"][0]) for i in range(len(layers))]
