"""Temperature scaling: the fit recovers a known miscalibration, never moves a prediction, and
is used by eval, predict and the report of a real (briefly trained) run; the scores match
hand-computed values; a run without held-out images is refused, never fitted on the test set."""

import json

import pytest
import torch
import torch.nn.functional as F

import cifarlab
from cifarlab.config import resolve
from cifarlab.data import make_splits
from cifarlab.engine.calibration import ECE_BINS, fit_temperature, probabilities, reliability, scores
from cifarlab.engine.checkpoint import load_checkpoint
from helpers import real_data_root
from test_bad_inputs import assert_refused, run_cli


def sampled(n: int = 20000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("factor", [0.4, 2.5])  # under- and overconfident
def test_fit_recovers_a_known_factor(factor):
    logits, labels = sampled()
    temperature = fit_temperature(logits * factor, labels)
    assert temperature == pytest.approx(factor, rel=0.05)
    # and it is the NLL minimum: nudging T either way fits worse
    nll = [F.cross_entropy(logits * factor / t, labels).item() for t in (temperature * 0.97, temperature,
                                                                        temperature * 1.03)]  # fmt: skip
    assert nll[1] < nll[0] and nll[1] < nll[2]


def test_temperature_never_changes_the_prediction():
    logits, _ = sampled(5000)
    ties = torch.tensor([[1.0, 1.0 + 1e-6, 0.0], [5.0, -3.0, 5.0 - 1e-7]], dtype=torch.float32)  # near ties
    for t in (0.01, 0.3, 1.0, 7.0, 100.0):
        assert torch.equal(probabilities(logits, t).argmax(1), logits.argmax(1))
        assert torch.equal(probabilities(ties, t).argmax(1), ties.argmax(1))


def test_scores_of_known_probabilities():
    labels = torch.arange(1000) % 2
    # confidence 0.8 everywhere, right on 80% of the images: perfectly calibrated
    right = torch.rand(1000, generator=torch.Generator().manual_seed(0)).argsort() < 800
    predicted = torch.where(right, labels, 1 - labels)
    p = torch.full((1000, 2), 0.2, dtype=torch.float64).scatter_(1, predicted[:, None], 0.8)
    assert reliability(p, labels).ece == pytest.approx(0.0, abs=1e-12)
    # confidence 0.99, right on half: overconfident by 0.49, all in the top bin
    half = torch.where(torch.arange(1000) < 500, labels, 1 - labels)
    overconfident = torch.full((1000, 2), 0.01, dtype=torch.float64).scatter_(1, half[:, None], 0.99)
    cal = reliability(overconfident, labels, bins=10)
    assert cal.ece == pytest.approx(0.49) and cal.counts.tolist() == [0] * 9 + [1000]
    assert cal.accuracy[-1] == pytest.approx(0.5) and cal.confidence[-1] == pytest.approx(0.99)
    # from logits: NLL = -mean log p(label), Brier = mean of (0.99 - y)^2 + (0.01 - (1 - y))^2
    logits = overconfident.log()
    s = scores(logits, labels)
    assert s["ece"] == pytest.approx(0.49)
    assert s["nll"] == pytest.approx(-(0.5 * torch.tensor(0.99).log() + 0.5 * torch.tensor(0.01).log()).item())
    assert s["brier"] == pytest.approx(0.5 * (2 * 0.01**2) + 0.5 * (2 * 0.99**2))
    # classwise: each class's probability is 0.99 or 0.01, and that class is the label half the time
    assert s["classwise_ece"] == pytest.approx(0.49)


def test_fit_refuses_non_finite_logits():
    with pytest.raises(cifarlab.CifarlabError, match="NaN/inf"):
        fit_temperature(torch.tensor([[1.0, float("nan")]]), torch.tensor([0]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root):
    """LeNet after a short run on real training images with a validation split and a
    calibration hold-out: `train` fits the temperature on the hold-out before its test."""
    root = real_data_root()
    out = tmp_path_factory.mktemp("calibrated") / "run"
    subset = ["data.train_subset=4000", "data.val_size=1000", "data.calib_size=1000"] if root else \
             ["data.val_size=100", "data.calib_size=100"]  # fmt: skip
    config = resolve("tutorial", sets=[f"data.data_dir={root or synthetic_root}", *subset, "train.batch_size=32",
                                       "optim.lr=0.02", "train.epochs=2", "train.report=false", f"train.out={out}"])  # fmt: skip
    return cifarlab.train(config, verbose=False)


def test_train_calibrates_on_the_hold_out_before_its_test(trained):
    record = json.loads((trained.dir / "checkpoints" / trained.test["checkpoint"] / "calibration.json").read_text())
    block = trained.test["calibration"]
    assert record["split"] == "calib" and record["images"] == len(make_splits(trained.config.data).calib)
    assert block["temperature"] == record["temperature"] and block["bins"] == ECE_BINS
    assert block["images"] == trained.test["num_images"]
    # the fit lowered the NLL on the held-out images it was fitted on
    assert record["after"]["nll"] < record["before"]["nll"]
    # accuracy, loss and everything else are the raw logits' figures: unchanged by T
    raw = cifarlab.evaluate(trained.dir, raw=True)
    assert raw["accuracy"] == trained.test["accuracy"] and "calibrated" not in raw["calibration"]
    assert raw["calibration"]["raw"] == pytest.approx(block["raw"])


def test_calibrate_refits_and_eval_predict_use_it(trained, tmp_path):
    record = cifarlab.calibrate(trained.dir, split="val", limit=100, verbose=False)
    assert record["split"] == "val" and record["images"] == 100
    checkpoint = load_checkpoint(trained.dir)
    assert checkpoint.temperature == record["temperature"]
    metrics = cifarlab.evaluate(trained.dir)
    assert metrics["calibration"]["temperature"] == record["temperature"]
    assert metrics["calibration"]["calibrated"]["nll"] != metrics["calibration"]["raw"]["nll"]
    # predict: calibrated probabilities by default, raw ones with --raw, the same classes
    image = tmp_path / "cat.png"
    from PIL import Image

    split = make_splits(trained.config.data).test
    Image.fromarray(split.images[0].permute(1, 2, 0).numpy()).save(image)
    calibrated = cifarlab.classify_images(trained.dir, [image], top_k=10)[0]
    raw = cifarlab.classify_images(trained.dir, [image], top_k=10, raw=True)[0]
    assert [c for c, _ in calibrated] == [c for c, _ in raw]
    expected = probabilities(torch.log(torch.tensor([p for _, p in raw], dtype=torch.float64))[None],
                             record["temperature"])[0]  # fmt: skip
    assert [p for _, p in calibrated] == pytest.approx(expected.tolist(), abs=1e-5)


def test_report_shows_raw_and_calibrated(trained):
    from cifarlab.viz.report import write_report

    html = write_report(trained.dir).read_text()
    section = html[html.index('<section id="calibration">') : html.index('<section id="cost">')]
    assert "calibrated" in section and "Brier" in section and "held-out val images" in section
    assert (trained.dir / "figures" / "calibration.png").is_file()


def test_a_run_without_held_out_images_is_refused(tmp_path, synthetic_root):
    out = tmp_path / "no-held-out"
    config = resolve("tutorial", sets=[f"data.data_dir={synthetic_root}", "data.val_size=0", "train.batch_size=50",
                                       "train.epochs=1", "train.report=false", f"train.out={out}"])  # fmt: skip
    run = cifarlab.train(config, verbose=False)
    assert "temperature" not in json.dumps(run.test["calibration"]["raw"])
    assert run.test["calibration"]["temperature"] is None and "calibrated" not in run.test["calibration"]
    assert_refused(["calibrate", out], tmp_path, "no held-out calibration or validation images")
    assert_refused(["calibrate", out, "--split", "val"], tmp_path, "no held-out val images")


def test_bad_calibrate_inputs(trained, tmp_path):
    assert_refused(["calibrate", tmp_path / "missing"], tmp_path, "missing")
    assert_refused(["calibrate", trained.dir, "--split", "test"], tmp_path, "invalid choice")
    assert_refused(["calibrate", trained.dir, "--limit", 10**6], tmp_path, "outside 1..")
    assert_refused(["calibrate", trained.dir, "--limit", 0], tmp_path, "outside 1..")
    # a damaged calibration.json: one line from eval, and calibrate replaces it
    path = trained.dir / "checkpoints" / trained.test["checkpoint"] / "calibration.json"
    path.write_text(json.dumps({"temperature": -1}))
    assert_refused(["eval", trained.dir], tmp_path, "not a valid calibration file")
    done = run_cli("calibrate", trained.dir, cwd=tmp_path)
    assert done.returncode == 0 and "temperature" in done.stdout, done.stderr
    assert json.loads(path.read_text())["temperature"] > 0
