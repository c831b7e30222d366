"""The README's "Use it with your own model" snippets run verbatim, each as a user would run it."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippets() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Use it with your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_three_complete_snippets():
    snippets = _snippets()
    assert len(snippets) == 3
    for code in snippets:
        assert "train_step_jit" in code and "evaluate_grid" in code
        assert "top_eigenvalue" in code and "per_example_fn" in code


@pytest.mark.parametrize("index", [0, 1, 2], ids=["linen-training-flag", "nnx", "function"])
def test_readme_snippet_runs(index, tmp_path):
    # A fresh interpreter, as a user runs it: none of the test suite's JAX settings apply.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _snippets()[index]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"loss at the centre (\S+) top eigenvalue (\S+)", out.stdout)
    assert m, out.stdout
    loss, lam = float(m.group(1)), float(m.group(2))
    assert 0.0 < loss < 0.5  # trained: far below chance (log 3 = 1.1)
    assert lam > 0.0  # a minimum curves upward along its top eigenvector
