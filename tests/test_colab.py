"""launch/colab.ipynb runs top to bottom on the CPU with its reduced settings (no install)."""

import os
import sys

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # the notebook end to end (~20-45 s); the studies it calls are tested in
# tests/test_twins_experiments.py and tests/test_theory_experiments.py
def test_notebook_runs_and_shows_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("EOS_COLAB_TEST", "1")
    monkeypatch.setenv("EOS_COLAB_RUNS", str(tmp_path))
    monkeypatch.setenv("EOS_JAX_CACHE", str(tmp_path / "cache"))  # MNIST-1D, generated here
    # `!python` in the notebook must be this interpreter (the kernel's PATH decides).
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("PYTHONPATH", ROOT)
    notebook = nbformat.read(os.path.join(ROOT, "launch", "colab.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=240, resources={"metadata": {"path": ROOT}}).execute()
    images = [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 2
    printed = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "rounding/seed accuracy-std ratio" in printed
    assert (tmp_path / "headline" / "summary.json").exists()
