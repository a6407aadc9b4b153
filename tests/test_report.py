"""The run report, the comparison and the data explorer, made from real runs (the real CIFAR-10
when present, else the synthetic set) and checked as files, as numbers and in a real browser."""

from __future__ import annotations

import ast
import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

import cifarlab
from cifarlab.cli import main
from cifarlab.engine.metrics_log import read_metrics
from cifarlab.errors import CifarlabError
from cifarlab.models import register_model
from cifarlab.viz.analysis import most_confused_pairs
from cifarlab.viz.report import write_report
from helpers import real_data_root, write_cifar10

FIGURES = {"curves", "confusion", "per_class", "predictions", "mistakes", "gradcam", "filters", "embedding", "calibration"}
SECTIONS = {"summary", "curves", "errors", "predictions", "saliency", "filters", "embedding", "calibration", "robustness", "cost", "run"}


def train_cli(data_root: Path, out: Path, *extra: str) -> Path:
    """The tutorial's LeNet for 2 epochs on 2,000 images (real data) or the synthetic set,
    with a validation split so that the curves have validation points."""
    real = ["--train-subset", "2000", "--set", "data.val_size=1000"]
    subset = real if real_data_root() else ["--set", "data.val_size=100"]
    argv = ["train", "--recipe", "tutorial", "--data-dir", str(data_root), "--out", str(out), "--epochs", "2",
            "--set", "train.log_every=50", *subset, *extra]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return real_data_root() or write_cifar10(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory) -> Path:
    """`cifarlab train` with its defaults (report at the end) plus --tensorboard."""
    return train_cli(data_root, tmp_path_factory.mktemp("runs") / "lenet", "--tensorboard")


class _PageParser(HTMLParser):
    """Collects what the tests read from a page: numbers (data-key → data-value), images,
    section ids, external references."""

    def __init__(self):
        super().__init__()
        self.numbers, self.images, self.sections, self.external = {}, [], set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-key" in a:
            self.numbers[a["data-key"]] = ast.literal_eval(a["data-value"])
        if tag == "img":
            self.images.append(a)
        if tag == "section":
            self.sections.add(a["id"])
        if tag in ("script", "link", "iframe") or any(str(v).startswith(("http:", "https:", "//")) for v in a.values()):
            self.external.append((tag, a))


def parse(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text())
    return parser


def lookup(result: dict, key: str):
    value = result
    for part in key.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def assert_png(path_or_bytes) -> Image.Image:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(data)).verify()
    image = Image.open(io.BytesIO(data))
    assert image.width > 50 and image.height > 50
    return image


@pytest.mark.slow
def test_train_writes_a_self_contained_report_whose_numbers_are_eval_json(finished_run):
    result = json.loads((finished_run / "eval.json").read_text())
    figures = {p.stem: p for p in (finished_run / "figures").glob("*.png")}
    assert set(figures) == FIGURES
    page = parse(finished_run / "report.html")
    assert page.sections == SECTIONS and page.external == []
    # every figure is inlined, byte for byte the PNG beside the page
    inlined = {img["data-file"]: base64.b64decode(img["src"].removeprefix("data:image/png;base64,")) for img in page.images}
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert inlined.keys() == {f"{name}.png" for name in FIGURES}
    for name, path in figures.items():
        assert_png(path)
        assert inlined[path.name] == path.read_bytes()
    # the numbers shown are eval.json's, exactly
    from_eval = {k: v for k, v in page.numbers.items() if not k.startswith("report/")}
    expected_keys = {"accuracy", "loss", "macro_f1", "num_images", "train_seconds", "eval_seconds", "val_accuracy"}
    per_class = ("accuracy", "precision", "recall", "f1", "support")
    expected_keys |= {f"per_class/{c}/{m}" for c in result["per_class"] for m in per_class}
    assert expected_keys <= from_eval.keys()
    for key, value in from_eval.items():
        assert value == lookup(result, key), key
    # the most-confused table is the largest off-diagonal cells of the confusion matrix
    matrix = np.array(result["confusion_matrix"])
    np.fill_diagonal(matrix, 0)
    shown = sorted((v for k, v in from_eval.items() if k.startswith("confusion_matrix/")), reverse=True)
    assert shown == sorted(matrix.flatten(), reverse=True)[: len(shown)] and len(shown) == min(10, (matrix > 0).sum())
    model = cifarlab.load_model(finished_run)
    assert page.numbers["report/params"] == cifarlab.model_stats(model).params == 62006
    assert 0 <= page.numbers["report/ece"] <= 1
    text = (finished_run / "report.html").read_text()
    assert "they reproduce this accuracy exactly" in text  # the recomputed predictions agree with eval.json


@pytest.mark.slow
def test_tensorboard_logs_what_metrics_jsonl_holds(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    records = read_metrics(finished_run / "metrics.jsonl")
    windows = [r for r in records if "images_per_s" in r]
    epochs = [r for r in records if "val_acc" in r]
    def logged(tag):  # (steps, values); TensorBoard keeps float32
        return [e.step for e in events.Scalars(tag)], pytest.approx([e.value for e in events.Scalars(tag)], rel=1e-6)

    assert logged("train_window/loss") == ([r["step"] for r in windows], [r["train_loss"] for r in windows])
    assert logged("epoch/val_accuracy") == ([r["step"] for r in epochs], [r["val_acc"] for r in epochs])
    test_accuracy = json.loads((finished_run / "eval.json").read_text())["accuracy"]
    assert logged("test/accuracy") == ([epochs[-1]["step"]], [test_accuracy])
    assert {"inputs/first_training_batch", "model/first_layer_filters"} <= set(events.Tags()["images"])


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


requires_chromium = pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (`apt-get install chromium`; .ci/run installs it)"
)
_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images], flags = document.body.dataset;
  flags.images = images.length;
  flags.decoded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  flags.sections = [...document.querySelectorAll("section[id]")].map((s) => s.id).join(" ");
});
</script>"""


def run_chromium(tmp_path: Path, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]  # fmt: skip
    done = subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@requires_chromium
def test_report_renders_in_chromium(finished_run, tmp_path):
    """Offline, every image decodes and every section is there; a screenshot shows a real page."""
    probed = tmp_path / "probed.html"  # the report plus a script that writes what the browser saw into the DOM
    probed.write_text((finished_run / "report.html").read_text().replace("</body>", _PROBE + "</body>"))
    dom = run_chromium(tmp_path, "--dump-dom", probed.as_uri())
    body = next(a for t, a in _tags(dom) if t == "body")
    assert int(body["data-images"]) == len(FIGURES) and body["data-decoded"] == body["data-images"]
    assert set(body["data-sections"].split()) == SECTIONS
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,5000", "--hide-scrollbars",
                 (finished_run / "report.html").as_uri())  # fmt: skip
    image = assert_png(shot).convert("RGB")
    assert image.size == (1280, 5000)
    pixels = np.asarray(image)
    assert (pixels.min(2) < 200).mean() > 0.05  # not a blank page: text and figures
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # photos and heatmaps, not just text


def _tags(html: str) -> list[tuple[str, dict]]:
    found = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: found.append((tag, dict(attrs)))
    parser.feed(html)
    return found


@pytest.mark.slow
def test_compare_overlays_runs_and_tabulates_their_eval_json(finished_run, data_root, tmp_path, capsys):
    other = train_cli(data_root, tmp_path / "seed1", "--seed", "1", "--lr", "0.002", "--epochs", "1", "--no-report")
    out = tmp_path / "cmp" / "both.html"
    assert main(["compare", str(finished_run), str(other), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert_png(out.with_suffix(".png"))
    page = parse(out)
    assert page.external == [] and len(page.images) == 1
    for run in (finished_run, other):
        result = json.loads((run / "eval.json").read_text())
        for key in ("accuracy", "loss", "macro_f1", "val_accuracy", "train_seconds"):
            assert page.numbers[f"runs/{run.name}/{key}"] == result[key]
    assert page.numbers["runs/seed1/epochs"] == 1 and page.numbers["runs/lenet/epochs"] == 2
    assert not (other / "report.html").exists()  # --no-report


def test_bad_run_directories_give_one_clear_error_and_write_nothing(synthetic_root, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text("")
    cases = [
        (["report", str(tmp_path / "nowhere")], "does not exist"),
        (["report", str(unfinished)], "has no eval.json: it is not a finished run"),
        (["compare", str(unfinished), str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.html")], "no eval.json"),
        (["compare", str(unfinished), "--out", str(tmp_path / "c.png")], "must end in .html"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics.jsonl", "unfinished"]
    (unfinished / "eval.json").write_text("{not json")
    with pytest.raises(CifarlabError, match=r"eval.json' is not valid JSON \(line 1"):
        write_report(unfinished)


def test_a_failing_report_leaves_the_finished_run_intact(synthetic_root, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("cifarlab.viz.report.write_report", broken)
    out = tmp_path / "run"
    assert main(["train", "--recipe", "tutorial", "--data-dir", str(synthetic_root), "--out", str(out), "--epochs", "1",
                 "--batch-size", "50"]) == 0  # fmt: skip
    assert "warning: no report (RuntimeError: disk full); retry with `cifarlab report" in capsys.readouterr().err
    assert json.loads((out / "eval.json").read_text())["num_images"] == 200 and not (out / "report.html").exists()
    monkeypatch.undo()  # the report is written when the finished run is resumed
    assert main(["train", "--recipe", "tutorial", "--data-dir", str(synthetic_root), "--out", str(out), "--epochs", "1",
                 "--batch-size", "50", "--resume"]) == 0  # fmt: skip
    assert (out / "report.html").is_file()


class _TokenNet(nn.Module):
    """A tiny vision transformer: 8×8 patches → 16 tokens → one encoder layer → mean → linear."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.patches = nn.Conv2d(3, width, 8, stride=8)
        self.encoder = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.encoder(self.patches(x).flatten(2).transpose(1, 2)).mean(1))


@register_model
def token_test_model(num_classes: int = 10) -> nn.Module:
    """Test-only transformer-style model (no spatial map reaches the head)."""
    return _TokenNet(num_classes)


def test_report_of_a_transformer_notes_that_grad_cam_does_not_apply(synthetic_root, tmp_path):
    out = tmp_path / "vit"
    config = cifarlab.resolve_config("tutorial", sets=[f"data.data_dir={synthetic_root}", f"train.out={out}",
                                                       "model.name=token_test_model", "train.epochs=1",
                                                       "train.batch_size=50"])  # fmt: skip
    cifarlab.train(config, verbose=False)
    html = (out / "report.html").read_text()
    saliency = html[html.index('<section id="saliency">') : html.index('<section id="filters">')]
    assert "Grad-CAM needs a convolutional feature map" in saliency and "<img" not in saliency
    assert not (out / "figures" / "gradcam.png").exists()
    assert {p.stem for p in (out / "figures").glob("*.png")} == FIGURES - {"gradcam"}  # the rest still works


def test_most_confused_pairs():
    matrix = [[5, 3, 0], [1, 7, 4], [0, 0, 9]]
    pairs = most_confused_pairs(matrix, ["a", "b", "c"], top=5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "c", 4), ("a", "b", 3), ("b", "a", 1)]
    assert pairs[0]["share"] == pytest.approx(4 / 12)


def test_curves_show_an_adversarial_runs_held_out_pgd_accuracy():
    from cifarlab.viz.plots import training_curves

    records = [{"kind": "epoch", "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "lr": 0.1,
                "held_out_pgd_acc": pgd} for e, pgd in ((1, 0.15), (2, 0.22), (3, 0.0))]  # fmt: skip
    acc_ax = training_curves({"run": records}).axes[1]
    (line,) = [ln for ln in acc_ax.get_lines() if "PGD" in ln.get_label()]
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [0.15, 0.22, 0.0]
    plain = [{k: v for k, v in r.items() if k != "held_out_pgd_acc"} for r in records]
    assert not [ln for ln in training_curves({"run": plain}).axes[1].get_lines() if "PGD" in ln.get_label()]


def test_data_show_saves_a_picture_and_prints_the_statistics(synthetic_root, tmp_path, capsys):
    out = tmp_path / "overview.png"
    assert main(["data", "show", "--data-dir", str(synthetic_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    image = assert_png(out)
    assert image.width > 800 and image.height > 400
    train = cifarlab.data.load_split("cifar10", "train", synthetic_root)
    pixels = train.images.double().numpy() / 255
    mean = ", ".join(f"{v:.4f}" for v in pixels.mean((0, 2, 3)))
    std = ", ".join(f"{v:.4f}" for v in pixels.std((0, 2, 3), ddof=1))
    assert f"train: 500 images (3, 32, 32) uint8, 10 classes, per class 50..50; mean ({mean}) std ({std})" in printed
    assert "test: 200 images" in printed
    lines = printed.splitlines()
    assert any(line.split() == ["airplane", "50", "20"] for line in lines)  # class, train count, test count
    assert main(["data", "show", "--data-dir", str(synthetic_root), "--out", str(tmp_path / "x.jpg")]) == 2
