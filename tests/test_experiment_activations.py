import dataclasses
import json

from experiments import activations


def test_activations_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the experiment caches features under the working folder
    cfg = dataclasses.replace(activations.PRESETS["tiny"], workdir=str(tmp_path))
    results = activations.main(cfg)
    assert set(results["xor"]) == {"tanh", "relu"}
    assert set(results["soundscapes (MFCC stats)"]) == {"tanh", "relu"}
    audio_cfg = json.loads((tmp_path / "activations" / "audio_soundscapes_relu" / "config.json")
                           .read_text())
    assert audio_cfg["data"]["feature"] == "mfcc_stats"
    assert audio_cfg["model"]["activation"] == "relu"
    out = tmp_path / "activations"
    for name in ("boundaries.png", "boundaries.pdf", "curves.png", "results.md"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["accuracy"] == results
    # one resumable run folder per combination
    assert (out / "xor_tanh" / "summary.json").exists()
    assert (out / "xor_relu" / "metrics.jsonl").exists()
