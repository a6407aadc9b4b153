"""`cifarlab bench`: one table for a run and its pruned, int8 and exported variants, whose
figures are those of the files and tests it names; the report shows it; bad inputs write nothing."""

import json
import os

import pytest

import cifarlab
from cifarlab.config import QuantizeConfig, resolve
from cifarlab.models import create_model, model_stats
from test_bad_inputs import assert_refused, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def variants(tmp_path_factory, synthetic_root):
    """A LeNet run (one epoch on synthetic images), its int8 copy, its ONNX export and its
    channel-pruned run: the four kinds of variant bench reads."""
    root = tmp_path_factory.mktemp("bench")
    run = root / "lenet"
    config = resolve("tutorial", sets=[f"data.data_dir={synthetic_root}", "data.val_size=0", "train.epochs=1",
                                       "train.batch_size=32", "train.report=false", f"train.out={run}"])  # fmt: skip
    cifarlab.train(config, verbose=False)
    int8 = cifarlab.quantize(run, QuantizeConfig(calib=100, out=str(root / "lenet-int8")), verbose=False).dir
    onnx = cifarlab.export_model(run, "onnx", root / "lenet.onnx").path
    pruned = cifarlab.prune(run, amount=0.5, finetune_epochs=1, out=str(root / "lenet-pruned"),
                            sets=["train.report=false"], verbose=False).dir  # fmt: skip
    return root, [run, int8, onnx, pruned]


def test_bench_rows_are_the_variants_measured(variants):
    root, paths = variants
    done = run_cli("bench", *paths, "--calls", 10, "--threads", 1, cwd=root)  # 10 calls over 4 rounds
    assert done.returncode == 0, done.stderr
    table = json.loads((paths[0] / "bench.json").read_text())
    rows = table["rows"]
    assert [r["label"] for r in rows] == ["lenet", "lenet-int8", "lenet.onnx", "lenet-pruned"]
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("pytorch", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "fp32"), ("pytorch", "fp32")]
    assert table["threads"] == 1 and all(r["calls"] == 10 for r in rows)
    assert table["batch"] == 200  # the synthetic test set is smaller than a batch of 256: its throughput counts 200
    for r in rows:
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"] and r["images_per_s"] > 0
        assert r["label"] in done.stdout
    # accuracy: each variant's own one test (the export, which has none, is tested here and
    # must match its run: the export keeps the logits within 1e-3)
    for r, path in zip(rows, [paths[0], paths[1], None, paths[3]]):
        if path is not None:
            assert r["test_accuracy"] == json.loads((path / "eval.json").read_text())["accuracy"]
    assert abs(rows[2]["test_accuracy"] - rows[0]["test_accuracy"]) <= 0.01
    # cost: the architecture's numbers and the files' sizes
    full = model_stats(create_model("lenet"))
    assert rows[0]["params"] == full.params and rows[0]["macs"] == round(full.mflops * 1e6 / 2)
    prune_record = json.loads((paths[3] / "prune.json").read_text())
    assert rows[3]["macs"] == prune_record["macs_after"] < rows[0]["macs"]
    assert rows[3]["params"] == prune_record["params_after"] < rows[0]["params"]
    assert rows[0]["file_bytes"] == os.path.getsize(paths[0] / "checkpoints" / "last" / "model.safetensors")
    assert rows[1]["file_bytes"] == os.path.getsize(paths[1] / "model.onnx") < rows[0]["file_bytes"] / 2
    assert rows[0]["speedup_throughput"] == rows[0]["speedup_latency"] == 1.0
    assert rows[1]["speedup_throughput"] == pytest.approx(rows[1]["images_per_s"] / rows[0]["images_per_s"])
    assert rows[3]["accuracy_change"] == pytest.approx(rows[3]["test_accuracy"] - rows[0]["test_accuracy"])
    assert (paths[0] / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    done = run_cli("report", paths[0], cwd=root)
    assert done.returncode == 0, done.stderr
    html = (paths[0] / "report.html").read_text()
    for r in rows:
        assert f'data-key="bench/{r["label"]}/images_per_s" data-value="{r["images_per_s"]!r}"' in html


def test_report_without_bench_says_how(variants):
    root, paths = variants
    pruned = paths[3]
    assert run_cli("report", pruned, cwd=root).returncode == 0
    assert f"cifarlab bench {pruned}" in (pruned / "report.html").read_text()


@pytest.mark.parametrize("args, expected", [
    (["bench", "missing"], "does not exist"),
    (["bench", "lenet", "--threads", "0"], "--threads must be at least 1"),
    (["bench", "lenet", "--calls", "0"], "--calls and --batches must be at least 1"),
    (["bench", "lenet", "--out", "lenet.onnx"], "is a file"),
    (["bench", "lenet", "empty"], "'empty' is neither a run directory nor a checkpoint folder"),
])  # fmt: skip
def test_bench_bad_inputs(variants, args, expected):
    root, _ = variants
    (root / "empty").mkdir(exist_ok=True)
    assert_refused(args, root, expected)


def test_report_with_corrupt_bench_json(variants, tmp_path):
    root, paths = variants
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoints", "config.yaml", "eval.json", "metrics.jsonl"):
        os.symlink(paths[0] / name, run / name)
    (run / "bench.json").write_text('{"rows": [{"label": "x"}]}')
    assert_refused(["report", run], tmp_path, "is not a cifarlab bench.json")
