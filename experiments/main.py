"""The main job (`make run`): procedural soundscapes, a CNN, its evaluation and loss landscape.

Generates the default procedural soundscape set (ten classes, nothing downloaded), computes
standardised log-mel features (cached), trains a small CNN with checkpoints and a saved parameter
trajectory, evaluates it (accuracy, balanced accuracy, macro-F1, per-class metrics, confusion
matrix), then computes the interpolation from initialisation to the trained weights, a 1D line
and a 2D filter-normalised plane (Li et al. 2018) and the PCA plane of the optimiser's
trajectory. Everything goes under `runs/<name>/`: the training run (config, metrics,
checkpoints), `figures/`, `landscape/` (surface files and plots), `results.json` and
`report.md`, which embeds the figures and tabulates the numbers. Re-running resumes: finished
training and finished grid points are not recomputed.

Command:
    make run                                   # = python -m experiments.main --preset cpu
    python -m experiments.main --preset gpu    # larger CNN, more data, the paper's grids
Run time: 1.4 minutes on a 2-core CPU in a clean clone with a cold feature cache (cpu preset:
data and features 6 s, training 18 s, landscapes 49 s), plus about 90 s for the first install;
under a minute with --preset tiny. The gpu preset computes its features with the JAX front end
on the device.
Expected result (cpu preset, measured): on the ten soundscape classes (720 training, 80 validation,
200 test clips), test accuracy 0.890 for the final state and 0.880 for the best state on validation
(step 242; validation accuracy 0.850), train 0.94 (session 12's VM). On session 13's 2-core VM
(AVX2, no AVX-512) the same run gives 0.885 and 0.890 (step 286), with or without that session's
chunked kernel gradients: CPU kernels round differently on other processors. A bowl-shaped
filter-normalised plane around the trained weights (cosine of the two random directions -0.003);
the first two principal components of the trajectory explain 81% + 14% of its movement, and
checkpoints lie up to 1.9 off that plane.
"""

from __future__ import annotations

import dataclasses
import os
import time

from research import metrics as M
from research.config import AudioDataConfig, ModelConfig, OptimConfig, TrainConfig, run_cli
from research.config import AudioRunConfig as RunConfig
from research.data import load_dataset
from research.io import atomic_write_json, atomic_write_text, is_writer
from research.landscape.analysis import analyse_run
from research.landscape.config import JobLandscapeConfig, job_landscape
from research.landscape.interactive import export_html
from research.sharding import initialize_distributed
from research.tables import markdown_table
from research.train import train_and_evaluate
from research.viz import (
    plot_confusion,
    plot_learning_curves,
    plot_spectrogram_examples,
    save_figure,
)
from research.writers import log_image_files, read_jsonl


@dataclasses.dataclass(frozen=True)
class Config:
    """The main job: a training run and the landscape analyses of it.

    Attributes:
        run: the training run (data, model, optimiser, loop); its folder is
            `workdir/name/train`.
        landscape: the landscape analyses of the trained run (the same settings as
            `python -m experiments.landscape` with the same preset); they go to
            `workdir/name/landscape`.
        name: name of the job; results go to `workdir/name`.
        workdir: parent folder.
        preset: named defaults to start from (cpu, gpu, tiny); the other options given override
            them. The landscape part uses the landscape preset of the same name.
        distributed: one process per host of a cluster (Open MPI, SLURM, a TPU pod):
            `jax.distributed.initialize()` first; process 0 alone writes files.
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    landscape: JobLandscapeConfig = dataclasses.field(default_factory=JobLandscapeConfig)
    name: str = "main"
    workdir: str = "runs"
    preset: str = "cpu"
    distributed: bool = False


def _job(run: RunConfig, preset: str) -> Config:
    # The landscape settings come from the one table of landscape presets.
    return Config(run=dataclasses.replace(run, preset=preset), landscape=job_landscape(preset),
                  preset=preset)


_SOUNDSCAPES = AudioDataConfig(dataset="soundscapes", n=100, train_ratio=0.8, feature="logmel",
                          sample_rate=16000, clip_seconds=1.0, n_fft=1024, hop_length=256,
                          n_mels=40)

PRESETS: dict[str, Config] = {
    "cpu": _job(
        RunConfig(data=_SOUNDSCAPES,
                  model=ModelConfig(kind="cnn", channels=(16, 32, 32), activation="relu",
                                    batch_norm=True, global_pool="mean"),
                  optim=OptimConfig(name="adam", learning_rate=3e-3, schedule="cosine"),
                  train=TrainConfig(epochs=15, batch_size=32, loss="softmax_ce",
                                    eval_batch_size=256, checkpoint_every=100,
                                    trajectory_every=25),
                  name="train"),
        "cpu"),
    "gpu": _job(
        RunConfig(data=dataclasses.replace(_SOUNDSCAPES, n=400, clip_seconds=2.0, n_mels=64,
                                           frontend="jax"),
                  model=ModelConfig(kind="cnn", channels=(32, 64, 128), activation="relu",
                                    batch_norm=True, global_pool="mean", depth=1,
                                    residual=True),
                  optim=OptimConfig(name="adam", learning_rate=2e-3, schedule="warmup_cosine",
                                    warmup_steps=100),
                  train=TrainConfig(epochs=30, batch_size=64, loss="softmax_ce",
                                    eval_batch_size=512, checkpoint_every=500,
                                    trajectory_every=50),
                  name="train"),
        "gpu"),
    "tiny": _job(
        RunConfig(data=dataclasses.replace(_SOUNDSCAPES, n=4, train_ratio=0.5,
                                           clip_seconds=0.5, n_fft=256, hop_length=128,
                                           n_mels=16),
                  model=ModelConfig(kind="cnn", channels=(4, 8), activation="relu",
                                    batch_norm=True),
                  optim=OptimConfig(name="adam", learning_rate=3e-3),
                  train=TrainConfig(epochs=2, batch_size=4, loss="softmax_ce",
                                    checkpoint_every=4, trajectory_every=2, progress=False),
                  name="train"),
        "tiny"),
}



def _rel(path: str, start: str) -> str:
    return os.path.relpath(path, start)


def write_report(out_dir: str, cfg: Config, summary: dict, data_info: dict,
                 land: dict, figures: dict, seconds: dict) -> str:
    """Write `report.md`: figures embedded, numbers in tables.

    Args:
        out_dir: the job's folder.
        cfg: the job's configuration.
        summary: the training summary (test/train metrics, class names).
        data_info: the data set's info dict.
        land: the landscape experiment's summary.
        figures: name -> figure path of the training figures.
        seconds: wall time of each stage.

    Returns:
        The report's path.
    """
    parts = [f"# {cfg.name}: a CNN on procedural soundscapes and its loss landscape\n",
             f"Preset `{cfg.preset}`; command `python -m experiments.main --preset "
             f"{cfg.preset}`.\n"]
    parts += _training_section(out_dir, cfg, summary, data_info, figures, seconds)
    parts += _landscape_section(out_dir, cfg, land)
    parts.append("\n## Run time\n")
    parts.append("Training: the run's own training seconds over all its pieces; the other "
                 "stages: this invocation (a rerun skips finished work).\n")
    parts.append(markdown_table(list(seconds), [[f"{v:.0f} s" for v in seconds.values()]]))
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, "\n".join(parts))
    return path


def _training_section(out_dir: str, cfg: Config, summary: dict, data_info: dict,
                      figures: dict, seconds: dict) -> list[str]:
    """The report's data, training and test-evaluation sections (markdown pieces)."""
    names = summary["class_names"]
    test, train = summary["test"], summary["train"]
    best = summary.get("best")
    pc = M.per_class(test["confusion"])
    cols = ["loss", "accuracy", "balanced_accuracy", "macro_f1"]
    final_name = f"final (step {summary['steps']})"
    best_name = f"best on validation (step {best['step']})" if best else ""
    eval_rows = [[final_name] + [test[c] for c in cols]]
    fit_rows = [["train", final_name] + [train[c] for c in cols]]
    if "val" in summary:
        fit_rows.append(["validation", final_name] + [summary["val"][c] for c in cols])
    if best:
        eval_rows.append([best_name] + [best["test"][c] for c in cols])
        fit_rows.append(["validation", best_name] + [best["val"][c] for c in cols])
    r = cfg.run
    return [
        "## Data\n",
        markdown_table(["data set", "classes", "train clips", "validation clips", "test clips",
                        "input", "split"],
                       [[r.data.dataset, len(names), data_info.get("n_train"),
                         data_info.get("n_val"), data_info.get("n_test"),
                         " x ".join(map(str, data_info.get("input_shape", []))),
                         data_info.get("split", "")]]),
        f"\n![examples]({_rel(figures['examples'], out_dir)})\n",
        "## Model and training\n",
        markdown_table(["model", "channels", "parameters", "optimiser", "epochs", "batch",
                        "steps", "train time (s)"],
                       [[r.model.kind, str(list(r.model.channels)), summary["params"],
                         f"{r.optim.name} lr {r.optim.learning_rate:g} ({r.optim.schedule})",
                         r.train.epochs, r.train.batch_size, summary["steps"],
                         f"{seconds['train']:.0f}"]]),
        "\nTraining time counts every resumed piece of the run (kept in the run folder), not "
        "a rerun that found the run finished. The learning curves show the test split for "
        "reference only; the best checkpoint is chosen on the validation split (held out from "
        "the training split), never on the test split.\n",
        f"\n![learning curves]({_rel(figures['curves'], out_dir)})\n",
        "## Training and validation splits\n",
        markdown_table(["split", "state", "loss", "accuracy", "balanced accuracy", "macro-F1"],
                       fit_rows),
        "\n## Evaluation (test split)\n",
        markdown_table(["state", "loss", "accuracy", "balanced accuracy", "macro-F1"],
                       eval_rows),
        f"\nPer class and confusion matrix: test split, {final_name} state.\n",
        markdown_table(["class", "precision", "recall", "F1", "support"],
                       [[n, pc["precision"][i], pc["recall"][i], pc["f1"][i], pc["support"][i]]
                        for i, n in enumerate(names)]),
        f"\n![confusion matrix]({_rel(figures['confusion'], out_dir)})\n",
    ]


def _landscape_section(out_dir: str, cfg: Config, land: dict) -> list[str]:
    """The report's loss-landscape section: settings, a table of analyses, their figures."""
    lc = cfg.landscape
    parts = [
        "## Loss landscape (Li et al. 2018)\n",
        f"Evaluated on {lc.max_examples or 'all'} training examples (a fixed random subset "
        f"when not all), {lc.normalization} normalisation, biases and BatchNorm parameters "
        f"ignored ({lc.ignore}), BatchNorm statistics: {lc.bn_policy} (interpolation: "
        f"{lc.interpolation_bn_policy}).\n",
    ]
    rows = []
    if "line" in land:
        rows.append(["1D line", lc.line, land["line"]["loss_at_origin"], ""])
    if "plane" in land:
        rows.append(["2D plane", f"{lc.plane_x} x {lc.plane_y}", land["plane"]["loss_at_origin"],
                     f"cosine of the directions {land['plane']['cosine']:.2e}"])
    if "interpolation" in land:
        rows.append(["interpolation", lc.interpolation, "", "0 = init, 1 = trained"])
    if "pca" in land:
        evr = land["pca"]["explained_variance_ratio"]
        rows.append(["PCA plane", f"{lc.pca_num} x {lc.pca_num}", "",
                     f"explained variance {100 * evr[0]:.1f}% + {100 * evr[1]:.1f}%, "
                     f"max distance from plane {land['pca']['max_distance_from_plane']:.3g}"])
    parts.append(markdown_table(["analysis", "grid", "loss at trained weights", "notes"], rows))
    for key, title in (("interpolation", "Interpolation from initialisation"),
                       ("line", "1D filter-normalised line"),
                       ("plane", "2D filter-normalised plane"),
                       ("pca", "Optimiser trajectory over its PCA plane")):
        pngs = [f for f in land.get(key, {}).get("figures", []) if f.endswith((".png", ".gif"))]
        if pngs:
            parts.append(f"\n### {title}\n")
            parts += [f"![{key}]({_rel(p, out_dir)})\n" for p in pngs]
        html = land.get(key, {}).get("html")
        if html:
            parts.append(f"[Interactive 3D view]({_rel(html, out_dir)}) (one self-contained "
                         "HTML file: rotate, zoom, hover for values, linear/log10 toggle; "
                         "works offline)\n")
    return parts


def main(cfg: Config) -> dict:
    """Train, evaluate, analyse the landscape and write the report.

    Args:
        cfg: the job's configuration.

    Returns:
        The results written to results.json.
    """
    if cfg.distributed or cfg.run.distributed:
        # Before anything touches a device (the JAX feature front end does, in load_dataset).
        initialize_distributed()
    out_dir = os.path.join(cfg.workdir, cfg.name)
    run = dataclasses.replace(cfg.run, workdir=out_dir,
                              distributed=cfg.distributed or cfg.run.distributed)
    seconds = {}
    t0 = time.time()
    data = load_dataset(run.data)
    seconds["data"] = time.time() - t0
    t0 = time.time()
    _, summary = train_and_evaluate(run)
    # The run's own count, kept in its folder: a rerun finds the run finished and keeps it.
    seconds["train"] = summary.get("seconds", time.time() - t0)
    if not summary.get("finished"):
        print(f"training stopped at step {summary['steps']}; run again to resume")
        return {"summary": summary}

    fig_dir = os.path.join(out_dir, "figures")
    title = f"{cfg.name}: {run.model.kind} on {run.data.dataset}"
    figures = {
        "examples": save_figure(plot_spectrogram_examples(
            data.x_train, data.y_train, data.class_names, sample_rate=run.data.sample_rate,
            hop_length=run.data.hop_length, standardization=data.info.get("standardization")),
            os.path.join(fig_dir, "examples"), ("png", "pdf"))[0],
        "curves": save_figure(plot_learning_curves(
            read_jsonl(os.path.join(run.run_dir(), "metrics.jsonl")), title=title),
            os.path.join(fig_dir, "learning_curves"), ("png", "pdf"))[0],
        "confusion": save_figure(plot_confusion(summary["test"]["confusion"], data.class_names,
                                                f"{title}: confusion matrix (test split, "
                                                "final state)"),
                                 os.path.join(fig_dir, "confusion"), ("png", "pdf"))[0],
    }
    if run.train.tensorboard:
        log_image_files(os.path.join(run.run_dir(), "tensorboard"),
                        {f"figures/{k}": p for k, p in figures.items()}, summary["steps"])
    t0 = time.time()
    land_cfg = dataclasses.replace(cfg.landscape, run_dir=run.run_dir(),
                                   out_dir=os.path.join(out_dir, "landscape"),
                                   title=cfg.landscape.title or title)
    land = analyse_run(land_cfg)
    for key in ("plane", "pca"):
        if key in land:
            try:  # plotly is a dependency, but a bare accelerator host may lack it
                land[key]["html"] = export_html(
                    land[key]["surface"], os.path.join(land_cfg.output_dir(), f"{key}.html"),
                    log=True if cfg.landscape.log else None)
            except ImportError as e:
                print(f"skipping the interactive {key} page: {e}")
    seconds["landscape"] = time.time() - t0
    report = write_report(out_dir, cfg, summary, data.info, land, figures, seconds)
    results = {"test": summary["test"], "train": summary["train"], "val": summary.get("val"),
               "best": summary.get("best"),
               "per_class": M.per_class(summary["test"]["confusion"]),
               "class_names": summary["class_names"], "params": summary["params"],
               "landscape": land, "figures": figures, "seconds": seconds, "report": report}
    atomic_write_json(os.path.join(out_dir, "results.json"), results)
    t = summary["test"]
    if not is_writer():  # every process of a multi-process run has the same numbers
        return results
    print(f"final state, test split: accuracy {t['accuracy']:.3f}, balanced "
          f"{t['balanced_accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}; report: {report}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return results



if __name__ == "__main__":
    run_cli(main, PRESETS, "cpu", __doc__.split("\n\n")[0])
