import dataclasses
import os

from experiments import playground
from research.config import PLAYGROUND_PRESETS


def test_playground_end_to_end_writes_figures(tmp_path):
    cfg = dataclasses.replace(PLAYGROUND_PRESETS["tiny"], workdir=str(tmp_path))
    summary = playground.main(cfg)
    fig_dir = tmp_path / "playground" / "figures"
    for name in ("decision_boundary.png", "decision_boundary.pdf", "neurons.png",
                 "loss_curves.png"):
        assert (fig_dir / name).stat().st_size > 5000, name
    assert summary["steps"] == 12  # 3 epochs x 4 steps: 45 training points (5 validation), batch 10
    assert os.path.exists(tmp_path / "playground" / "metrics.jsonl")


def test_playground_regression(tmp_path):
    base = PLAYGROUND_PRESETS["tiny"]
    cfg = dataclasses.replace(base, workdir=str(tmp_path), name="reg",
                              data=dataclasses.replace(base.data, dataset="reg-plane"))
    summary = playground.main(cfg)
    assert "accuracy" not in summary["test"] and summary["test"]["loss"] >= 0
    assert (tmp_path / "reg" / "figures" / "decision_boundary.png").exists()
