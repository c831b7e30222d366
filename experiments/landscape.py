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

from typing import Any

from research.config import run_cli
from research.landscape.analysis import analyse_run
from research.landscape.config import LANDSCAPE_PRESETS, LandscapeConfig


def main(cfg: LandscapeConfig) -> dict[str, Any]:
    """Compute and plot the landscapes a config asks for.

    Args:
        cfg: the landscape configuration (`run_dir` names the trained run; '' takes the newest
            finished run under runs/).

    Returns:
        A summary: per analysis, the surface file, figures, and headline numbers.
    """
    return analyse_run(cfg)


if __name__ == "__main__":
    run_cli(main, LANDSCAPE_PRESETS, "paper", __doc__.split("\n\n")[0])
