"""docs/quickstart.ipynb runs top to bottom in quick mode (CIFARLAB_QUICK=1) on the real data, in a
Jupyter kernel of this interpreter, and leaves a trained, tested and fine-tuned run behind."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from helpers import CIFAR10_CLASSES, REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from jupyter_client.manager import KernelManager  # noqa: E402 - nbclient brings it

NOTEBOOK = REPO / "docs" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_quickstart_notebook_runs_in_quick_mode(real_root, tmp_path, monkeypatch):
    if not (real_root / "cifar-100-python").is_dir():
        pytest.skip("the notebook fine-tunes on CIFAR-100, not found beside CIFAR-10")
    monkeypatch.setenv("CIFARLAB_QUICK", "1")
    monkeypatch.setenv("CIFARLAB_DATA", str(real_root))  # found as cifarlab finds data (conftest unsets it)
    Path(os.environ["HOME"]).mkdir(exist_ok=True)  # IPython keeps its profile in HOME (in tmp_path)
    kernel = KernelManager(kernel_name="python3")
    assert kernel.format_kernel_cmd()[0] == sys.executable, "the python3 kernelspec runs another interpreter"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Runs in tmp_path, so runs/ is written there; a cell that raises fails the test with its traceback.
    nbclient.NotebookClient(notebook, km=kernel, timeout=900, resources={"metadata": {"path": str(tmp_path)}}).execute()

    trained = json.loads((tmp_path / "runs" / "fast90" / "eval.json").read_text())
    assert trained["num_images"] == 10000 and trained["accuracy"] > 0.3  # chance is 0.10
    assert (tmp_path / "runs" / "fast90" / "report.html").is_file()
    tuned = json.loads((tmp_path / "runs" / "finetune-fast" / "eval.json").read_text())
    assert len(tuned["per_class"]) == 100 and tuned["accuracy"] > 0.03  # chance is 0.01

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 5  # data, curves, confusion, Grad-CAM, image
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert f"(eval.json: {trained['accuracy']:.2%})" in text  # evaluate repeats the run's test
    predicted = re.search(r"^top 3: (\S+) ", text, re.MULTILINE)
    assert predicted and predicted.group(1) in CIFAR10_CLASSES
