"""The landscapes of a trained run (Li et al. 2018): line, plane, interpolation, PCA trajectory.

`analyse_run(cfg)` reads a run folder written by `research.train.train_and_evaluate` and writes,
under `cfg.output_dir()`: one resumable surface file per analysis (`line.npz`, `plane.npz`,
`interpolation.npz`, `pca.npz`), their figures, a GIF of the trajectory descending the PCA
plane, VTK files for ParaView, and `landscape.json` (the returned summary).

`fixed_subset` is the seeded evaluation subset of a split that every landscape of a run is
computed on. `state_functions(state)` is the grid evaluator's view of a `TrainState`: the
per-example metrics through the state's model adapter (`research.adapters.per_example_fn`) and,
for BatchNorm models, the training-mode update of the running statistics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import adapters
from research.io import atomic_write_json, remove_stale_temporaries
from research.landscape import directions as D
from research.landscape import plot as P
from research.landscape.config import LandscapeConfig, parse_grid
from research.landscape.evaluate import evaluate_grid
from research.landscape.surface import Surface
from research.sharding import make_mesh
from research.writers import log_image_files


def state_functions(state: Any) -> tuple[Callable, Callable | None]:
    """`fn` and `bn_update_fn` of `evaluate_grid` for a `research.train.TrainState`.

    Args:
        state: the trained state; its loss is `loss(outputs, y) -> per-example values`.

    Returns:
        (fn, bn_update_fn): `fn(params, batch)`, or `fn(params, batch_stats, batch)` for a model
        with BatchNorm statistics, returns per-example `loss`, `accuracy` for classification, and
        `objective` (loss plus penalty) when the loss has a non-zero penalty; `bn_update_fn` is
        None for a model without statistics.
    """
    loss = state.loss
    metrics = ({"accuracy": adapters.accuracy}
               if getattr(loss, "classification", hasattr(loss, "predict")) else None)
    penalty = getattr(loss, "penalty", None) if float(getattr(loss, "reg_rate", 0.0)) > 0 else None

    def fn(params, stats, batch):
        model_state = {**state.model_state, "batch_stats": stats} if stats is not None else {}
        out = adapters.per_example_fn(state.model, loss, model_state, metrics=metrics)(
            params, batch)
        out = dict(out) if isinstance(out, dict) else {"loss": out}
        if penalty is not None:
            out["objective"] = out["loss"] + penalty(
                jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params))
        return out

    if not state.batch_stats:
        return (lambda params, batch: fn(params, None, batch)), None

    def bn_update(params, stats, batch):
        # The dropout key is fixed: statistics at a grid point must not depend on the call.
        _, new = state.model(params, {**state.model_state, "batch_stats": stats}, batch["x"],
                             True, jax.random.key(0))
        return new["batch_stats"]

    return fn, bn_update


def fixed_subset(x: np.ndarray, y: np.ndarray, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded random subset of a split (all classes represented), the same in every run.

    Args:
        x: inputs of the split.
        y: labels of the split.
        n: number of examples (0 or >= len(x): the whole split, in order).
        seed: seed of the permutation.

    Returns:
        {"x": x_subset, "y": y_subset}.
    """
    if n <= 0 or n >= len(x):
        return {"x": np.asarray(x), "y": np.asarray(y)}
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return {"x": np.asarray(x)[idx], "y": np.asarray(y)[idx]}


def _split(cfg: LandscapeConfig, dataset) -> dict[str, np.ndarray]:
    x, y = ((dataset.x_train, dataset.y_train) if cfg.split == "train"
            else (dataset.x_test, dataset.y_test))
    # A fixed random subset: data sets are often stored class by class, so the first N
    # examples would cover only some classes.
    return fixed_subset(x, y, cfg.max_examples, seed=0)


def _pca_axes(coords_KxC: np.ndarray, margin: float, num: int,
              min_aspect: float = 0.5) -> list[np.ndarray]:
    """Grid axes covering the trajectory and theta*, plus `margin` on each side.

    The second principal component often spans a few percent of the first: drawn to scale
    (equal units on both axes, as distances should be), such a grid is a sliver, so every axis
    is widened about its centre to at least `min_aspect` times the longest one.
    """
    bounds = []
    for c in range(coords_KxC.shape[1]):
        lo, hi = min(coords_KxC[:, c].min(), 0.0), max(coords_KxC[:, c].max(), 0.0)
        pad = margin * max(hi - lo, 1e-6)
        bounds.append((lo - pad, hi + pad))
    longest = max(hi - lo for lo, hi in bounds)
    axes = []
    for lo, hi in bounds:
        half = max(hi - lo, min_aspect * longest) / 2
        centre = (lo + hi) / 2
        axes.append(np.linspace(centre - half, centre + half, num))
    return axes


def newest_finished_run(root: str = "runs") -> str:
    """The newest finished training run under `root`, at any depth (e.g. `runs/main/train`).

    A run folder is one with a `summary.json` whose `finished` is true; the newest is the one
    whose summary.json was written last.

    Args:
        root: the folder to search.

    Returns:
        The run folder.

    Raises:
        FileNotFoundError: when `root` holds no finished run.
    """
    found = []
    for folder, subdirs, files in os.walk(root):
        # Never descend into a run's own outputs (checkpoints, landscape, trajectory).
        if "summary.json" in files and "config.json" in files:
            subdirs.clear()
            path = os.path.join(folder, "summary.json")
            try:
                with open(path, encoding="utf-8") as f:
                    finished = bool(json.load(f).get("finished"))
            except (OSError, ValueError):
                continue
            if finished:
                found.append((os.path.getmtime(path), folder))
    if not found:
        raise FileNotFoundError(f"--run-dir: no finished training run under {root}/; train one "
                                "first (e.g. python -m experiments.playground) or name it with "
                                "--run-dir")
    return max(found)[1]




def _say_if_unfinished(run_dir: str, step: int, total_steps: int) -> None:
    """Tell the user (on stderr) when the run's training has not finished."""
    path = os.path.join(run_dir, "summary.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("finished"):
                return
        why = "its summary.json says it is not finished"
    else:
        why = "it has no summary.json"
    print(f"warning: the training run in {run_dir} is unfinished ({why}); evaluating its newest "
          f"checkpoint, at step {step} of {total_steps}. Run the training again to finish it.",
          file=sys.stderr)


def _at_origin(s: Surface) -> float | None:
    idx = tuple(int(np.argmin(np.abs(a))) for a in s.axes)
    if any(abs(a[i]) > 1e-12 for a, i in zip(s.axes, idx)):
        return None
    return float(s.values["loss"][idx])


def _check_inputs(cfg: LandscapeConfig) -> None:
    """Fail before any computation when an analysis cannot run."""
    if not os.path.isdir(cfg.run_dir):
        raise FileNotFoundError(f"--run-dir: the run folder {cfg.run_dir} does not exist")
    if not os.path.isfile(os.path.join(cfg.run_dir, "config.json")):
        raise FileNotFoundError(f"--run-dir: {cfg.run_dir} is not a training run's folder "
                                "(it has no config.json)")
    if "pca" in cfg.plots and not os.path.isdir(os.path.join(cfg.run_dir, "trajectory")):
        raise FileNotFoundError(f"--plots pca: {cfg.run_dir} has no trajectory/; train with "
                                "--train.trajectory-every K, or leave pca out of --plots")
    if "interpolation" in cfg.plots and not os.path.exists(
            os.path.join(cfg.run_dir, "init_params.npz")):
        raise FileNotFoundError(f"--plots interpolation: {cfg.run_dir} has no init_params.npz")


@dataclasses.dataclass
class _Run:
    """One run under analysis: what every analysis reads, and how it evaluates and saves."""

    cfg: LandscapeConfig
    run_cfg: Any
    state: Any
    dataset: Any
    out: str

    def __post_init__(self):
        self.data = _split(self.cfg, self.dataset)
        self.fn, self.bn_update = state_functions(self.state)
        self.mesh = make_mesh(self.cfg.grid_devices, self.cfg.data_devices)

    def evaluate(self, name, directions, axes, bn_policy, settings, info, origin=None,
                 state_dirs=None, extras=None) -> Surface:
        cfg, state = self.cfg, self.state
        kw: dict[str, Any] = {}
        if state.batch_stats:
            kw = {"model_state": state.batch_stats, "bn_policy": bn_policy}
            if bn_policy == "recompute":
                kw.update(bn_update_fn=self.bn_update,
                          bn_data={"x": self.dataset.x_train, "y": self.dataset.y_train})
            if bn_policy == "interpolate":
                kw.update(model_state=state_dirs[0], state_directions=state_dirs[1])
        base_settings = {"split": cfg.split, "max_examples": cfg.max_examples}
        base_info = {"run_dir": os.path.abspath(cfg.run_dir), "split": cfg.split,
                     "title": cfg.title or (f"{self.run_cfg.name}: {self.run_cfg.model.kind} "
                                            f"on {self.run_cfg.data.dataset}")}
        return evaluate_grid(
            self.fn, state.params if origin is None else origin, directions, axes, self.data,
            batch_size=cfg.batch_size, points_per_call=cfg.points_per_call, dtype=cfg.dtype,
            mesh=self.mesh, path=os.path.join(self.out, f"{name}.npz"),
            settings={**base_settings, **settings}, info={**base_info, **info}, extras=extras,
            progress=cfg.progress, overwrite=cfg.overwrite, **kw)

    def save(self, fig, stem) -> list[str]:
        return P.save_figure(fig, os.path.join(self.out, stem), self.cfg.formats)


def _line(run: _Run) -> dict[str, Any]:
    cfg = run.cfg
    d = D.random_direction(run.state.params, cfg.seed, cfg.normalization, cfg.ignore)
    s = run.evaluate("line", [d], [parse_grid(cfg.line)], cfg.bn_policy,
                     {"normalization": cfg.normalization, "ignore": cfg.ignore,
                      "seeds": [cfg.seed]}, {})
    figs = run.save(P.plot_1d(s, log=cfg.log), "line_1d")
    return {"surface": os.path.join(run.out, "line.npz"), "figures": figs,
            "loss_at_origin": _at_origin(s)}


def _plane(run: _Run) -> dict[str, Any]:
    cfg, params = run.cfg, run.state.params
    d1 = D.random_direction(params, cfg.seed, cfg.normalization, cfg.ignore)
    d2 = D.random_direction(params, cfg.seed + 1, cfg.normalization, cfg.ignore)
    raw_cos = D.cosine(d1, d2)
    if cfg.orthogonalize:
        d2 = D.orthogonalize(d1, d2)
    s = run.evaluate("plane", [d1, d2], [parse_grid(cfg.plane_x), parse_grid(cfg.plane_y)],
                     cfg.bn_policy, {"normalization": cfg.normalization, "ignore": cfg.ignore,
                                     "seeds": [cfg.seed, cfg.seed + 1],
                                     "orthogonalize": cfg.orthogonalize},
                     {"cosine_before_orthogonalization": raw_cos})
    log = True if cfg.log else None
    figs = run.save(P.plot_contour(s, log=log), "plane_contour")
    figs += run.save(P.plot_contour(s, kind="filled", log=log), "plane_filled")
    figs += run.save(P.plot_contour(s, kind="heatmap", log=log), "plane_heatmap")
    figs += run.save(P.plot_surface_3d(s, log=log), "plane_3d")
    if cfg.vtk:
        figs.append(P.export_vtp(s, os.path.join(run.out, "plane.vtp"), log=cfg.log))
    return {"surface": os.path.join(run.out, "plane.npz"), "figures": figs,
            "cosine": s.info["cosine"], "loss_at_origin": _at_origin(s)}


def _interpolation(run: _Run) -> dict[str, Any]:
    from research.checkpoint import load_init_params
    from research.train import build_state

    cfg, state = run.cfg, run.state
    init = load_init_params(cfg.run_dir)
    D.check_same_structure(init, state.params, "init_params", "params")
    d = D.interpolation_direction(init, state.params)
    policy = cfg.interpolation_bn_policy
    state_dirs = None
    if state.batch_stats and policy == "interpolate":
        init_stats = build_state(run.run_cfg, run.dataset)[0].batch_stats
        state_dirs = (init_stats, [D.interpolation_direction(init_stats, state.batch_stats)])
    s = run.evaluate("interpolation", [d], [parse_grid(cfg.interpolation)], policy,
                     {"direction": "init->trained"},
                     {"model_labels": ["initial", "trained"],
                      "axis_labels": ["\u03b1 (0: initial, 1: trained)"]},
                     origin=init, state_dirs=state_dirs)
    figs = run.save(P.plot_interpolation(s, log=cfg.log), "interpolation")
    return {"surface": os.path.join(run.out, "interpolation.npz"), "figures": figs}


def _pca(run: _Run) -> dict[str, Any]:
    from research.checkpoint import load_trajectory

    cfg = run.cfg
    pca = D.pca_directions(load_trajectory(cfg.run_dir), final=run.state.params,
                           ignore=cfg.ignore)
    evr = pca.explained_variance_ratio
    s = run.evaluate("pca", list(pca.directions), _pca_axes(pca.coords, cfg.pca_margin,
                                                            cfg.pca_num), cfg.bn_policy,
                     {"ignore": cfg.ignore, "trajectory_steps": [int(t) for t in pca.steps]},
                     {"explained_variance_ratio": evr.tolist(),
                      "axis_labels": [f"PC1 ({100 * evr[0]:.1f}% of variance)",
                                      f"PC2 ({100 * evr[1]:.1f}% of variance)"]},
                     extras={"trajectory": pca.coords, "trajectory_steps": pca.steps,
                             "trajectory_distance": pca.distances})
    log = True if cfg.log else None
    figs = run.save(P.plot_trajectory(s, log=log), "pca_trajectory")
    figs += run.save(P.plot_trajectory(s, kind="filled", log=log), "pca_trajectory_filled")
    figs += run.save(P.plot_surface_3d(s, log=log), "pca_3d")
    if cfg.animate:
        figs.append(P.animate_trajectory(s, os.path.join(run.out, "pca_descent.gif"), log=log))
    if cfg.vtk:
        figs.append(P.export_vtp(s, os.path.join(run.out, "pca.vtp"), log=cfg.log))
    return {"surface": os.path.join(run.out, "pca.npz"), "figures": figs,
            "explained_variance_ratio": evr.tolist(),
            "max_distance_from_plane": float(pca.distances.max())}


ANALYSES = {"line": _line, "plane": _plane, "interpolation": _interpolation, "pca": _pca}


def analyse_run(cfg: LandscapeConfig) -> dict[str, Any]:
    """Compute and plot the landscapes a config asks for.

    Args:
        cfg: the landscape configuration (`run_dir` names the trained run, '' the newest
            finished run under runs/; `plots` the analyses: line, plane, interpolation, pca).

    Returns:
        A summary (also written to `landscape.json`): per analysis, the surface file, figures,
        and headline numbers.
    """
    from research.train import load_run

    if not cfg.run_dir:
        cfg = dataclasses.replace(cfg, run_dir=newest_finished_run("runs"))
        print(f"landscape: the newest finished run is {cfg.run_dir} (choose another with "
              "--run-dir)", flush=True)
    _check_inputs(cfg)
    run_cfg, state, dataset = load_run(cfg.run_dir)
    _say_if_unfinished(cfg.run_dir, int(state.step),
                       len(dataset.x_train) // run_cfg.train.batch_size * run_cfg.train.epochs)
    out = cfg.output_dir()
    os.makedirs(out, exist_ok=True)
    remove_stale_temporaries(out)
    run = _Run(cfg, run_cfg, state, dataset, out)
    summary: dict[str, Any] = {"run_dir": cfg.run_dir, "out_dir": out}
    for name, analyse in ANALYSES.items():
        if name in cfg.plots:
            summary[name] = analyse(run)
    atomic_write_json(os.path.join(out, "landscape.json"), summary)
    if getattr(run_cfg.train, "tensorboard", False):
        pngs = [p for part in summary.values() if isinstance(part, dict)
                for p in part.get("figures", []) if p.endswith(".png")]
        log_image_files(os.path.join(cfg.run_dir, "tensorboard"),
                        {f"landscape/{os.path.splitext(os.path.basename(p))[0]}": p
                         for p in pngs}, int(state.step))
    return summary


__all__ = ["ANALYSES", "analyse_run", "fixed_subset", "state_functions"]
