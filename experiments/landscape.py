"""Loss landscapes of a trained run (Li et al. 2018): line, plane, interpolation, PCA trajectory.

Computes a 1D line and a 2D plane along random filter-normalised directions, the interpolation
from initialisation to the trained model, and the optimiser's trajectory over its PCA plane.
Reads a run folder written by `research.train.train_and_evaluate` (e.g. by the Playground
experiment) and writes, under `<run_dir>/landscape/`: one resumable surface file per analysis
(`line.npz`, `plane.npz`, `interpolation.npz`, `pca.npz`), their figures (PNG and PDF), a GIF of
the trajectory descending the PCA plane, VTK files for ParaView, and `landscape.json`.

Commands:
    python -m experiments.playground --preset cpu
    python -m experiments.landscape                 # the newest finished run under runs/
    python -m experiments.landscape --run-dir runs/playground                # the paper's grids
    python -m experiments.landscape --preset cpu --run-dir runs/playground --plots line plane
Without `--run-dir` it takes the newest finished run under `runs/` and prints which. Presets:
`paper` (the paper's grids, the default), `cpu` (21 x 21 planes on 256 examples, log levels; the
same settings as `python -m experiments.main --preset cpu`), `gpu`, `tiny`. When the run has
TensorBoard logs (`<run_dir>/tensorboard`), the PNG figures are added to them as images.
Run time: with the paper's grids (51 x 51 plane, 401-point interpolation) about a minute for the
Playground's `cpu` run on a 2-core CPU; seconds with `--preset tiny`. Re-running resumes;
`--overwrite` replaces surface files computed with other settings instead of stopping.
Expected result: a bowl around the trained model on the filter-normalised plane (loss rising by
orders of magnitude towards the corners), a monotone interpolation curve from initialisation, and
a trajectory whose first two principal components explain most of its variance.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from typing import Any

import numpy as np

from research import landscape as L
from research.config import run_cli
from research.io import atomic_write_json, remove_stale_temporaries
from research.landscape.config import LANDSCAPE_PRESETS, LandscapeConfig, parse_grid
from research.reproductions import fixed_subset
from research.sharding import make_mesh


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


def _evaluate_grid(overwrite: bool, path: str, **kwargs):
    """`evaluate_grid`, replacing a surface file that refuses the settings when `overwrite`."""
    if "overwrite" in inspect.signature(L.evaluate_grid).parameters:
        return L.evaluate_grid(path=path, overwrite=overwrite, **kwargs)
    try:
        return L.evaluate_grid(path=path, **kwargs)
    except L.SurfaceMismatchError:
        # An engine without `overwrite=`: the refusing file is removed and the grid computed anew.
        if not overwrite:
            raise
        os.remove(path)
        return L.evaluate_grid(path=path, **kwargs)


def main(cfg: LandscapeConfig) -> dict[str, Any]:
    """Compute and plot the landscapes a config asks for.

    Args:
        cfg: the landscape configuration (`run_dir` names the trained run; '' takes the newest
            finished run under runs/).

    Returns:
        A summary: per analysis, the surface file, figures, and headline numbers.
    """
    from research.checkpoint import load_init_params, load_trajectory
    from research.train import build_state, load_run

    if not cfg.run_dir:
        cfg = dataclasses.replace(cfg, run_dir=newest_finished_run("runs"))
        print(f"landscape: the newest finished run is {cfg.run_dir} (choose another with "
              "--run-dir)", flush=True)
    # Fail before any computation when an analysis cannot run.
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
    run_cfg, state, dataset = load_run(cfg.run_dir)
    _say_if_unfinished(cfg.run_dir, int(state.step),
                       len(dataset.x_train) // run_cfg.train.batch_size * run_cfg.train.epochs)
    out = cfg.output_dir()
    os.makedirs(out, exist_ok=True)
    remove_stale_temporaries(out)
    data = _split(cfg, dataset)
    has_bn = bool(state.batch_stats)
    fn, bn_update = L.linen_functions(state.apply_fn, state.loss, with_state=has_bn)
    mesh = make_mesh(cfg.grid_devices, cfg.data_devices)
    params = state.params
    base_settings = {"split": cfg.split, "max_examples": cfg.max_examples}
    base_info = {"run_dir": os.path.abspath(cfg.run_dir), "split": cfg.split,
                 "title": cfg.title or (f"{run_cfg.name}: {run_cfg.model.kind} on "
                                        f"{run_cfg.data.dataset}")}

    def evaluate(name, directions, axes, bn_policy, settings, info, origin=None,
                 state_dirs=None, extras=None):
        kw: dict[str, Any] = {}
        if has_bn:
            kw = {"model_state": state.batch_stats, "bn_policy": bn_policy}
            if bn_policy == "recompute":
                kw.update(bn_update_fn=bn_update,
                          bn_data={"x": dataset.x_train, "y": dataset.y_train})
            if bn_policy == "interpolate":
                kw.update(model_state=state_dirs[0], state_directions=state_dirs[1])
        return _evaluate_grid(
            cfg.overwrite, os.path.join(out, f"{name}.npz"), fn=fn,
            params=params if origin is None else origin, directions=directions, axes=axes,
            data=data, batch_size=cfg.batch_size, points_per_call=cfg.points_per_call,
            dtype=cfg.dtype, mesh=mesh, settings={**base_settings, **settings},
            info={**base_info, **info}, extras=extras, progress=cfg.progress, **kw)

    def save(fig, stem):
        return L.save_figure(fig, os.path.join(out, stem), cfg.formats)

    dir_settings = {"normalization": cfg.normalization, "ignore": cfg.ignore}
    summary: dict[str, Any] = {"run_dir": cfg.run_dir, "out_dir": out}

    if "line" in cfg.plots:
        d = L.random_direction(params, cfg.seed, cfg.normalization, cfg.ignore)
        s = evaluate("line", [d], [parse_grid(cfg.line)], cfg.bn_policy,
                     {**dir_settings, "seeds": [cfg.seed]}, {})
        figs = save(L.plot_1d(s, log=cfg.log), "line_1d")
        summary["line"] = {"surface": os.path.join(out, "line.npz"), "figures": figs,
                           "loss_at_origin": _at_origin(s)}

    if "plane" in cfg.plots:
        d1 = L.random_direction(params, cfg.seed, cfg.normalization, cfg.ignore)
        d2 = L.random_direction(params, cfg.seed + 1, cfg.normalization, cfg.ignore)
        raw_cos = L.cosine(d1, d2)
        if cfg.orthogonalize:
            d2 = L.orthogonalize(d1, d2)
        s = evaluate("plane", [d1, d2], [parse_grid(cfg.plane_x), parse_grid(cfg.plane_y)],
                     cfg.bn_policy, {**dir_settings, "seeds": [cfg.seed, cfg.seed + 1],
                                     "orthogonalize": cfg.orthogonalize},
                     {"cosine_before_orthogonalization": raw_cos})
        log = True if cfg.log else None
        figs = save(L.plot_contour(s, log=log), "plane_contour")
        figs += save(L.plot_contour(s, kind="filled", log=log), "plane_filled")
        figs += save(L.plot_contour(s, kind="heatmap", log=log), "plane_heatmap")
        figs += save(L.plot_surface_3d(s, log=log), "plane_3d")
        if cfg.vtk:
            figs.append(L.export_vtp(s, os.path.join(out, "plane.vtp"), log=cfg.log))
        summary["plane"] = {"surface": os.path.join(out, "plane.npz"), "figures": figs,
                            "cosine": s.info["cosine"], "loss_at_origin": _at_origin(s)}

    if "interpolation" in cfg.plots:
        init = load_init_params(cfg.run_dir)
        L.directions.check_same_structure(init, params, "init_params", "params")
        d = L.interpolation_direction(init, params)
        policy = cfg.interpolation_bn_policy
        state_dirs = None
        if has_bn and policy == "interpolate":
            init_stats = build_state(run_cfg, dataset)[0].batch_stats
            state_dirs = (init_stats, [L.interpolation_direction(init_stats, state.batch_stats)])
        s = evaluate("interpolation", [d], [parse_grid(cfg.interpolation)], policy,
                     {"direction": "init->trained"},
                     {"model_labels": ["initial", "trained"],
                      "axis_labels": ["\u03b1 (0: initial, 1: trained)"]},
                     origin=init, state_dirs=state_dirs)
        figs = save(L.plot_interpolation(s, log=cfg.log), "interpolation")
        summary["interpolation"] = {"surface": os.path.join(out, "interpolation.npz"),
                                    "figures": figs}

    if "pca" in cfg.plots:
        traj = load_trajectory(cfg.run_dir)
        pca = L.pca_directions(traj, final=params, ignore=cfg.ignore)
        evr = pca.explained_variance_ratio
        axes = _pca_axes(pca.coords, cfg.pca_margin, cfg.pca_num)
        s = evaluate("pca", list(pca.directions), axes, cfg.bn_policy,
                     {"ignore": cfg.ignore, "trajectory_steps": [int(t) for t in pca.steps]},
                     {"explained_variance_ratio": evr.tolist(),
                      "axis_labels": [f"PC1 ({100 * evr[0]:.1f}% of variance)",
                                      f"PC2 ({100 * evr[1]:.1f}% of variance)"]},
                     extras={"trajectory": pca.coords, "trajectory_steps": pca.steps,
                             "trajectory_distance": pca.distances})
        log = True if cfg.log else None
        figs = save(L.plot_trajectory(s, log=log), "pca_trajectory")
        figs += save(L.plot_trajectory(s, kind="filled", log=log), "pca_trajectory_filled")
        figs += save(L.plot_surface_3d(s, log=log), "pca_3d")
        if cfg.animate:
            figs.append(L.animate_trajectory(s, os.path.join(out, "pca_descent.gif"), log=log))
        if cfg.vtk:
            figs.append(L.export_vtp(s, os.path.join(out, "pca.vtp"), log=cfg.log))
        summary["pca"] = {"surface": os.path.join(out, "pca.npz"), "figures": figs,
                          "explained_variance_ratio": evr.tolist(),
                          "max_distance_from_plane": float(pca.distances.max())}

    atomic_write_json(os.path.join(out, "landscape.json"), summary)
    if run_cfg.train.tensorboard:
        _log_figures(cfg.run_dir, summary, int(state.step))
    return summary


def _log_figures(run_dir: str, summary: dict[str, Any], step: int) -> None:
    """Add the PNG figures to the run's TensorBoard logs, as images tagged landscape/<name>."""
    from research.writers import TensorBoardWriter

    pngs = [p for part in summary.values() if isinstance(part, dict)
            for p in part.get("figures", []) if p.endswith(".png")]
    writer = TensorBoardWriter(os.path.join(run_dir, "tensorboard"))
    try:
        for p in pngs:
            writer.image_file(f"landscape/{os.path.splitext(os.path.basename(p))[0]}", p, step)
    finally:
        writer.close()


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


def _at_origin(s: L.Surface) -> float | None:
    idx = tuple(int(np.argmin(np.abs(a))) for a in s.axes)
    if any(abs(a[i]) > 1e-12 for a, i in zip(s.axes, idx)):
        return None
    return float(s.values["loss"][idx])


if __name__ == "__main__":
    run_cli(main, LANDSCAPE_PRESETS, "paper", __doc__.split("\n\n")[0])
