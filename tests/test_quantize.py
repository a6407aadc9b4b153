"""`cifarlab quantize --int8`: a trained net (real CIFAR-10 when present) quantized by each
backend agrees with its float model, the folder loads back without unpickling anything and
repeats its eval.json, eval and predict run on it, and bad inputs write nothing."""

import json
import os
import pickle

import pytest
import torch

import cifarlab
from cifarlab.config import QuantizeConfig, from_dict, resolve
from cifarlab.data import make_splits
from cifarlab.engine.checkpoint import load_checkpoint
from cifarlab.engine.inference import checkpoint_loader
from cifarlab.engine.metrics import metrics_from_logits, predict
from cifarlab.run import quantize
from helpers import real_data_root, write_run_checkpoint
from test_bad_inputs import assert_refused, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    """LeNet after 125 SGD steps on 4,000 real training images: a net whose decisions mean
    something, made in seconds."""
    root = real_data_root()
    out = tmp_path_factory.mktemp("trained") / "run"
    subset = ["data.train_subset=4000"] if root else []
    config = resolve("tutorial", sets=[f"data.data_dir={root or synthetic_root}", "data.val_size=0", *subset,
                                       "train.batch_size=32", "optim.lr=0.01", "train.epochs=1", "train.report=false",
                                       f"train.out={out}"])  # fmt: skip
    cifarlab.train(config, verbose=False)
    return out


@pytest.fixture(scope="module")
def int8_folder(trained, tmp_path_factory):
    settings = QuantizeConfig(calib=500, out=str(tmp_path_factory.mktemp("int8") / "int8"))
    return quantize(trained, settings, verbose=False).dir


@pytest.fixture
def data_root(synthetic_root):
    return real_data_root() or synthetic_root


def read(path):
    return json.loads(path.read_text())


@pytest.fixture
def no_unpickling(monkeypatch):
    """Within `with no_unpickling():` any pickle load or torch.load fails the test."""
    from contextlib import contextmanager

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    @contextmanager
    def banned():
        with monkeypatch.context() as m:
            for module, name in ((pickle, "Unpickler"), (pickle, "load"), (pickle, "loads"), (torch, "load"),
                                 (torch.serialization, "load")):  # fmt: skip
                m.setattr(module, name, refuse)
            yield

    return banned


def float_and_int8_logits(float_run, int8_folder, images: int):
    fp32, int8 = load_checkpoint(float_run), load_checkpoint(int8_folder)
    config = fp32.config()
    test = make_splits(config.data).test
    loader = checkpoint_loader(fp32, config, test.subset(torch.arange(min(images, len(test)))), torch.device("cpu"))
    return predict(fp32.model, loader)[0], predict(int8.model, loader)[0]


@pytest.mark.slow  # training, calibration and two passes over the test set: tens of seconds
@pytest.mark.parametrize("backend", ["onnxruntime", "pt2e"])
def test_int8_agrees_with_float(backend, trained, tmp_path):
    import onnx

    run = quantize(trained, QuantizeConfig(backend=backend, calib=500, out=str(tmp_path / "int8")), verbose=False)
    assert sorted(p.name for p in run.dir.iterdir()) == ["eval.json", "meta.json", "model.onnx"]
    fp32, int8 = float_and_int8_logits(trained, run.dir, 1000)
    agreement = (fp32.argmax(1) == int8.argmax(1)).double().mean().item()
    assert agreement >= 0.95, agreement
    result = read(run.dir / "eval.json")
    assert result["accuracy"] >= result["float_accuracy"] - 0.02 and result["agreement_with_float"] >= 0.95
    meta, source = read(run.dir / "meta.json"), read(trained / "checkpoints" / "last" / "meta.json")
    assert meta["quantization"] == {"int8": "U8S8 QDQ", "backend": backend, "calib": 500, "qat_epochs": 0, "qat_lr": 0.001}
    assert {k: meta[k] for k in ("model", "classes", "mean", "std", "config")} == {k: source[k] for k in
                                                                                 ("model", "classes", "mean", "std", "config")}  # fmt: skip
    initializers = onnx.load(run.dir / "model.onnx").graph.initializer
    weights = [t for t in initializers if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert len(weights) == 5  # LeNet's 2 convolutions and 3 linear layers hold int8 weights


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "pt2e"])
def test_the_fast_recipe_net_quantizes(backend, synthetic_root, tmp_path):
    """airbench (padding="same" in a Conv2d subclass, GELU, BatchNorm after pooling) is where
    ONNX Runtime's symbolic shape inference failed and pt2e quantized 2 layers of 8: now all 7
    convolutions and the head hold int8 weights with either backend (synthetic data: the
    mechanism, not the accuracy, is tested here)."""
    import onnx

    source = write_run_checkpoint(tmp_path / "ckpt", synthetic_root, "airbench", sets=["data.val_size=0"])
    run = quantize(source, QuantizeConfig(backend=backend, calib=100, out=str(tmp_path / "int8")), verbose=False)
    initializers = onnx.load(run.dir / "model.onnx").graph.initializer
    assert len([t for t in initializers if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]) == 8
    assert run.test["num_images"] == len(make_splits(load_checkpoint(source).config().data).test)


@pytest.mark.slow
def test_int8_folder_loads_without_unpickling_and_repeats_its_test(int8_folder, no_unpickling):
    result = read(int8_folder / "eval.json")
    config = from_dict(read(int8_folder / "meta.json")["config"])
    test = make_splits(config.data).test  # (the CIFAR files are pickles: read before the ban)
    with no_unpickling():
        checkpoint = load_checkpoint(int8_folder)
        logits, labels = predict(checkpoint.model, checkpoint_loader(checkpoint, config, test, torch.device("cpu")))
    metrics = metrics_from_logits(logits, labels, checkpoint.classes)
    assert metrics["confusion_matrix"] == result["confusion_matrix"] and metrics["loss"] == result["loss"]


def test_loading_a_pt2_unpickles(tmp_path, no_unpickling):
    """Why int8 models are kept as ONNX: torch.export.load reads part of every .pt2 with pickle."""
    from cifarlab.models import create_model

    program = torch.export.export(create_model("lenet").eval(), (torch.randn(2, 3, 32, 32),))
    torch.export.save(program, tmp_path / "lenet.pt2")
    with no_unpickling(), pytest.raises(AssertionError, match="something was unpickled"):
        torch.export.load(tmp_path / "lenet.pt2")


@pytest.mark.slow  # subprocesses
def test_eval_and_predict_on_an_int8_folder(int8_folder, tmp_path):
    from PIL import Image

    done = run_cli("eval", int8_folder, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == read(int8_folder / "eval.json")["accuracy"]
    config = load_checkpoint(int8_folder).config()
    image = make_splits(config.data).test.images[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "first.png")
    done = run_cli("predict", int8_folder, "first.png", "--top-k", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("first.png: ") and done.stdout.count("%") == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "pt2e"])
def test_quantization_aware_training(backend, trained, tmp_path):
    run = quantize(trained, QuantizeConfig(backend=backend, calib=200, qat_epochs=1, out=str(tmp_path / "qat")),
                   verbose=False)  # fmt: skip
    assert run.test["accuracy"] >= run.test["float_accuracy"] - 0.03
    assert read(run.dir / "meta.json")["quantization"]["qat_epochs"] == 1


@pytest.mark.slow
def test_one_calibration_image_is_enough_for_pt2e(trained, tmp_path):
    run = quantize(trained, QuantizeConfig(backend="pt2e", calib=1, out=str(tmp_path / "one")), verbose=False)
    assert read(run.dir / "meta.json")["quantization"]["calib"] == 1 and run.test["num_images"] > 0


# ------------------------------------------------------------------------------ bad inputs
QUANTIZE = ["quantize", "ckpt", "--int8"]
CASES = {
    "no-precision": (["quantize", "ckpt"], "choose the precision: --int8"),
    "unknown-backend": ([*QUANTIZE, "--backend", "tensorrt"], "--backend='tensorrt' is not allowed; choose one of"),
    "calib-0": ([*QUANTIZE, "--calib", "0"], "--calib=0 is out of range; it must be > 0"),
    "calib-too-many": ([*QUANTIZE, "--calib", "100000"], "--calib=100000 is more than the 500 training images"),
    "qat-epochs-negative": ([*QUANTIZE, "--qat-epochs", "-1"], "--qat-epochs=-1 is out of range"),
    "missing-run": (["quantize", "nowhere", "--int8"], "'nowhere' does not exist"),
    "run-without-checkpoints": (["quantize", "run", "--int8"], "run 'run' has no checkpoint yet"),
    "out-not-empty": ([*QUANTIZE, "--out", "run"], "--out 'run' exists and is not an empty folder"),
    "corrupt-onnx": (["eval", "broken"], "is not an ONNX model ONNX Runtime can run"),
}


def make_inputs(tmp, synthetic_root):
    write_run_checkpoint(tmp / "ckpt", synthetic_root)
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    write_run_checkpoint(tmp / "broken", synthetic_root)
    (tmp / "broken" / "model.onnx").write_bytes(b"not protobuf")


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("case", list(CASES))
def test_bad_quantize_input(case, synthetic_root, tmp_path):
    make_inputs(tmp_path, synthetic_root)
    args, expected = CASES[case]
    assert_refused(args, tmp_path, expected)


@pytest.mark.slow
@pytest.mark.parametrize("args", [QUANTIZE, ["eval", "broken"], ["export", "ckpt"]])
def test_missing_onnxruntime_is_one_line(args, synthetic_root, tmp_path, monkeypatch):
    make_inputs(tmp_path, synthetic_root)
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    monkeypatch.setenv("PYTHONPATH", f"{shadow.parent}{os.pathsep}{os.environ['PYTHONPATH']}")
    assert_refused(args, tmp_path, "needs the onnxruntime package, which is not installed: pip install 'cifarlab[compress]'",
                   allowed=("shadow",))  # fmt: skip
