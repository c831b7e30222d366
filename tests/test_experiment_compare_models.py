import dataclasses
import json

import pytest

from experiments import compare_models


def test_compare_models_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the experiment caches features under the working folder
    cfg = dataclasses.replace(compare_models.PRESETS["tiny"], workdir=str(tmp_path))
    out = compare_models.main(cfg)
    r = out["results"]["soundscapes"]
    assert set(r) == {"mlp", "cnn"} and r["cnn"]["classes"] == 10
    saved = json.loads((tmp_path / "compare_models" / "results.json").read_text())
    assert saved["results"]["soundscapes"]["mlp"]["accuracy"] == pytest.approx(
        r["mlp"]["accuracy"])
    table = (tmp_path / "compare_models" / "results.md").read_text()
    assert f"{r['cnn']['accuracy']:.3f}" in table
    # each model trained on its own features: MFCC statistics are vectors, log-mel images
    mlp_cfg = json.loads((tmp_path / "compare_models" / "soundscapes_mlp" / "config.json")
                         .read_text())
    assert mlp_cfg["data"]["feature"] == "mfcc_stats" and mlp_cfg["model"]["kind"] == "mlp"
    assert (tmp_path / "compare_models" / "accuracy.png").stat().st_size > 0


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="Config.tasks"):
        compare_models.Config(tasks=("esc50",))
