"""End to end on the real CIFAR-10: the tutorial recipe (the classic PyTorch CIFAR-10 tutorial), cut down
to fit a test."""

import json

import pytest

from cifarlab.cli import main


@pytest.mark.slow
def test_tutorial_recipe_learns_real_cifar10(real_root, tmp_path, capsys):
    out = tmp_path / "tutorial"
    argv = ["train", "--recipe", "tutorial", "--data-dir", str(real_root), "--out", str(out),
            "--epochs", "1", "--train-subset", "30000", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["num_images"] == 10000 and result["checkpoint"] == "last"
    assert result["accuracy"] > 0.35  # chance is 0.10; the full recipe reaches ~0.55
    assert sum(c["support"] for c in result["per_class"].values()) == 10000
    assert f"accuracy {result['accuracy']:.2%}" in capsys.readouterr().out
