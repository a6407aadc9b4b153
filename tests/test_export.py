"""`cifarlab export`: ONNX and torch.export files that reproduce the model on test images
(real CIFAR-10 when present), carry the checkpoint's meta inside, and load back for eval;
a failed parity check, a bad format or a bad source writes nothing."""

import json
import zipfile

import pytest
import torch

from cifarlab.cli import main
from cifarlab.compress import export_model
from cifarlab.compress.export import MAX_ABS_DIFF
from cifarlab.engine.checkpoint import load_checkpoint
from helpers import real_data_root, write_run_checkpoint
from test_bad_inputs import assert_refused, tree


@pytest.fixture
def data_root(synthetic_root):
    return real_data_root() or synthetic_root


@pytest.mark.parametrize("model", ["lenet", *(pytest.param(m, marks=pytest.mark.slow) for m in ("resnet20", "airbench"))])
@pytest.mark.parametrize("format", ["onnx", "pt2"])
def test_export_reproduces_the_model(format, model, data_root, tmp_path):
    source = write_run_checkpoint(tmp_path / "ckpt", data_root, model)
    done = export_model(source, format)
    assert done.path == tmp_path / f"ckpt.{format}" and done.path.is_file()
    test_images = 512 if data_root == real_data_root() else 200
    assert done.parity.images == test_images and done.parity.agreement == 1.0
    assert done.parity.max_abs_diff <= MAX_ABS_DIFF
    meta = json.loads((source / "meta.json").read_text())
    if format == "onnx":  # it loads as a checkpoint: same classes, normalization and logits as the float one
        exported, original = load_checkpoint(done.path), load_checkpoint(source)
        assert {k: exported.meta[k] for k in meta} == meta and "(x - mean) / std" in exported.meta["input"]
        x = torch.randn(3, 3, 32, 32)  # a batch size the export never saw
        with torch.no_grad():
            assert (exported.model(x) - original.model(x)).abs().max() <= MAX_ABS_DIFF
    else:  # the .pt2 archive carries the meta as an extra file; cifarlab refuses to load a .pt2
        with zipfile.ZipFile(done.path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("extra/meta.json"))
            assert json.loads(archive.read(name))["classes"] == meta["classes"]
        assert main(["eval", str(done.path)]) == 2


@pytest.mark.slow  # two passes over the test set
def test_eval_of_an_onnx_export_equals_eval_of_the_run(data_root, tmp_path, capsys):
    source = write_run_checkpoint(tmp_path / "ckpt", data_root)
    assert main(["export", str(source), "--out", str(tmp_path / "net.onnx")]) == 0
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    results = []
    for path in (source, tmp_path / "net.onnx"):
        assert main(["eval", str(path), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], abs=1e-5)


def test_an_export_that_fails_parity_is_not_written(data_root, tmp_path, monkeypatch, capsys):
    """A wrong export (its first weight doubled) is refused with one line, and no file stays."""
    import cifarlab.compress.export as export

    original = export.onnx_proto

    def damaged(model, example):
        proto = original(model, example)
        weight = next(t for t in proto.graph.initializer if len(t.dims) == 4)
        weight.raw_data = (torch.frombuffer(bytearray(weight.raw_data), dtype=torch.float32) * 2).numpy().tobytes()
        return proto

    monkeypatch.setattr(export, "onnx_proto", damaged)
    source = write_run_checkpoint(tmp_path / "ckpt", data_root)
    before = tree(tmp_path)
    assert main(["export", str(source)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: the onnx export does not reproduce the model")
    assert tree(tmp_path) == before


def test_export_from_inside_a_run_writes_beside_it(synthetic_root, tmp_path, monkeypatch, capsys):
    source = write_run_checkpoint(tmp_path / "ckpt", synthetic_root)
    monkeypatch.chdir(source)
    assert main(["export", "."]) == 0
    assert (tmp_path / "ckpt.onnx").is_file() and not list(source.glob("*.onnx"))


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("args, expected", [
    (["--format", "tflite"], "unknown export format 'tflite'; choose one of: onnx, pt2"),
    (["--format", "pt2", "--out", "net.onnx"], "--out 'net.onnx' must end in .pt2"),
])  # fmt: skip
def test_bad_export_options(args, expected, synthetic_root, tmp_path):
    write_run_checkpoint(tmp_path / "ckpt", synthetic_root)
    assert_refused(["export", "ckpt", *args], tmp_path, expected)


@pytest.mark.slow
@pytest.mark.parametrize("source, expected", [
    ("nowhere", "'nowhere' does not exist"),
    ("run", "run 'run' has no checkpoint yet"),
])  # fmt: skip
def test_bad_export_sources(source, expected, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert_refused(["export", source], tmp_path, expected)
