"""Semi-supervised training (`--labels-per-class N --semi fixmatch|pseudo|selftrain`): an honest
few-label split, a loss that cannot see the hidden labels, the confidence mask, exact resume,
a teacher's labels for the pool, bad inputs."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import cifarlab
from cifarlab.cli import main
from cifarlab.config import AugmentConfig, DataConfig, SemiConfig
from cifarlab.data import DeviceLoader, ImageSet, SemiLoader, load_split, make_splits
from cifarlab.data import splits as splits_module
from cifarlab.engine.metrics_log import read_metrics
from cifarlab.labels import SemiObjective, pseudo_labelled, pseudo_labels
from helpers import sure_of_the_pool, train_until

TINY = ["model.options.widths=[16, 32, 32]", "train.log_every=1", "train.report=false", "train.tta=none"]


def semi_config(data_root, out, *sets):
    return cifarlab.resolve_config("fast-semi", sets=[f"data.data_dir={data_root}", f"train.out={out}", *TINY, *sets])


# ------------------------------------------------------------------------------------ splits
def positions(images: torch.Tensor, full: torch.Tensor) -> set[int]:
    """Where each image is in the full training set (the synthetic images are all different)."""
    where = {bytes(image.numpy().tobytes()): i for i, image in enumerate(full)}
    return {where[bytes(image.numpy().tobytes())] for image in images}


def test_labelled_images_are_stratified_seeded_and_apart_from_val_and_the_pool(synthetic_root):
    cfg = DataConfig(data_dir=str(synthetic_root), labels_per_class=20, val_size=30, calib_size=10)
    splits = make_splits(cfg)
    full = load_split("cifar10", "train", str(synthetic_root)).images  # 500 images, 50 per class
    assert (splits.train.labels.bincount() + splits.val.labels.bincount() + splits.calib.labels.bincount()).tolist() == [20] * 10
    assert splits.val.labels.bincount().tolist() == [3] * 10 and len(splits.calib) == 10  # both out of the 200 labels
    assert splits.unlabelled.labels is None and len(splits.unlabelled) == 300
    train, val, calib, pool = (positions(s.images, full) for s in (splits.train, splits.val, splits.calib, splits.unlabelled))
    assert not (train & val or train & calib or val & calib or pool & (train | val | calib))
    assert train | val | calib == set(splits.labelled_positions.tolist()) and len(train | val | calib | pool) == 500
    assert torch.equal(splits.train.images, full[splits.train_positions])  # one set of positions: the training file's
    assert torch.equal(splits.unlabelled.images, full[splits.unlabelled_positions])  # the pool's too, val and calib carved
    again = make_splits(cfg)
    assert torch.equal(again.labelled_positions, splits.labelled_positions) and torch.equal(again.val.images, splits.val.images)
    other = make_splits(DataConfig(data_dir=str(synthetic_root), labels_per_class=20, split_seed=1))
    assert not torch.equal(other.labelled_positions, splits.labelled_positions)


# ------------------------------------------------------------------------------------ batches
def semi_loader(rank=0, world_size=1, method="fixmatch") -> SemiLoader:
    """24 labelled images whose labels are their ids, a pool of 100: 8 + 16 images a step."""
    images = torch.randint(0, 256, (124, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labelled = ImageSet(images[:24], torch.arange(24), ["c"] * 24)
    augment = AugmentConfig(translate=2, flip="alternating", cutout=4)
    loader = DeviceLoader(labelled, 8, (0.5,) * 3, (0.25,) * 3, augment, shuffle=True, drop_last=True, seed=3,
                          rank=rank, world_size=world_size)  # fmt: skip
    return SemiLoader(loader, ImageSet(images[24:], None, ["c"]), SemiConfig(method=method, unlabelled_ratio=2))


def test_unlabelled_views_share_images_not_draws_and_the_labelled_set_cycles():
    loader = semi_loader()
    (weak_order, weak), (strong_order, strong) = (view.epoch_plan(1) for view in loader.views)
    assert torch.equal(weak_order, strong_order) and not torch.equal(weak.dx, strong.dx)
    assert weak.policy is None and strong.policy is not None  # RandAugment (+ Cutout) on the strong view only
    epoch = list(loader.epoch(1))
    assert len(epoch) == len(loader) == 6 and all(len(views) == 2 and views[0].shape == (16, 3, 32, 32)
                                                  for _, _, views in epoch)  # fmt: skip
    cycled = torch.cat([y for e in range(2, 6) for _, y in loader.labelled.epoch(e)])  # steps 6..11: labelled epochs 2, 3
    assert torch.equal(torch.cat([y for _, y, _ in epoch]), cycled[:48])
    resumed = list(loader.epoch(1, start_batch=4))
    assert all(torch.equal(a, b) for step, again in zip(epoch[4:], resumed)
               for a, b in zip([step[0], step[1], *step[2]], [again[0], again[1], *again[2]]))  # fmt: skip
    assert len(semi_loader(method="pseudo").views) == 1


def test_every_rank_takes_its_slice_of_both_global_batches():
    whole = list(semi_loader().epoch(0))
    parts = [list(semi_loader(rank, 2).epoch(0)) for rank in (0, 1)]
    for step, (a, b) in enumerate(zip(*parts)):
        assert torch.equal(torch.cat([a[1], b[1]]), whole[step][1])
        assert torch.equal(torch.cat([a[2][1], b[2][1]]), whole[step][2][1])  # the strong view


# ------------------------------------------------------------------------------------ the loss
def test_threshold_masks_exactly_the_confident_images():
    logits = torch.tensor([[0.0, 0.0, -1e4], [0.0, 1e-3, -1e4], [0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, -1e-3, 0.0]])
    labels, mask = pseudo_labels(logits.softmax(1), threshold=0.5)
    assert mask.tolist() == [True, True, False, True, False]  # p = 0.5 exactly passes; 1/3 and ~0.4998 do not
    assert labels[mask].tolist() == [0, 1, 0]
    assert pseudo_labels(logits.softmax(1), threshold=1.0)[1].tolist() == [False, False, False, True, False]


@pytest.mark.parametrize("method", ["fixmatch", "pseudo"])
def test_unlabelled_loss_is_the_masked_mean_and_only_confident_images_get_gradients(method):
    objective = SemiObjective(SemiConfig(method=method, threshold=0.9, unlabelled_weight=2.0))
    x, y = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    weak = torch.tensor([[5.0, 0.0], [0.0, 0.5], [0.0, 4.0]])  # confident, not, confident
    strong = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    views = (weak, strong) if method == "fixmatch" else (weak.clone().requires_grad_(),)
    learner = views[-1]  # the view that learns the pseudo-labels: strong, or the weak view itself
    logits, loss, (loss_sum, confident, n) = objective(lambda t: t, F.cross_entropy, x, y, views)
    per_image = F.cross_entropy(learner.detach(), torch.tensor([0, 1, 1]), reduction="none") * torch.tensor([1, 0, 1])
    assert torch.allclose(loss, F.cross_entropy(x, y) + 2.0 * per_image.mean())
    assert (confident, n) == (2, 3) and torch.isclose(loss_sum, per_image.mean().double() * 3)
    loss.backward()
    assert learner.grad[1].abs().sum() == 0 and learner.grad[[0, 2]].abs().sum() > 0
    assert torch.equal(logits, x)


def test_hidden_labels_of_the_pool_do_not_change_training(real_root, tmp_path, monkeypatch):
    """Shuffle the labels of the unlabelled images in the data as read, with the labelled pick
    held fixed: training is bit-identical, and the unlabelled loss was on (images passed τ)."""
    sets = ["data.labels_per_class=4", "train.batch_size=20", "semi.unlabelled_ratio=2", "semi.threshold=0.105"]
    first = train_until(semi_config(real_root, tmp_path / "a", *sets), step=3)
    rates = [r["mask_rate"] for r in first.records if r["kind"] == "step"]
    assert 0 < sum(rates) and min(rates) < 1, rates
    picked = torch.tensor(json.loads((tmp_path / "a" / "labelled.json").read_text())["indices"])  # the run's record
    hidden = torch.ones(50000, dtype=torch.bool)
    hidden[picked] = False
    hidden = hidden.nonzero().flatten()
    real_load_split = splits_module.load_split

    def load_with_hidden_labels_shuffled(dataset, split, *args, **kwargs):
        data = real_load_split(dataset, split, *args, **kwargs)
        if split == "train":
            shuffled = hidden[torch.randperm(len(hidden), generator=torch.Generator().manual_seed(1))]
            assert (data.labels[hidden] != data.labels[shuffled]).float().mean() > 0.8
            data.labels[hidden] = data.labels[shuffled]
        return data

    monkeypatch.setattr(splits_module, "load_split", load_with_hidden_labels_shuffled)
    monkeypatch.setattr(splits_module, "per_class_indices", lambda labels, per_class, seed: (hidden, picked))
    second = train_until(semi_config(real_root, tmp_path / "b", *sets), step=3)
    assert all(torch.equal(first.weights[k], second.weights[k]) for k in first.weights)


# ------------------------------------------------------------------------------------ resume
def test_fixmatch_stopped_mid_epoch_resumes_bit_identically(synthetic_root, tmp_path):
    """100 labelled images, a pool of 400: 10 steps per epoch of 20 labelled + 40 unlabelled;
    stopped at step 7 of 20, `last` is at step 6, in the middle of the first epoch."""
    sets = ["data.labels_per_class=10", "train.batch_size=20", "semi.unlabelled_ratio=2", "train.epochs=2",
            "train.checkpoint_every=3", "semi.threshold=0.12"]  # fmt: skip
    reference = cifarlab.train(semi_config(synthetic_root, tmp_path / "reference", *sets), verbose=False)
    interrupted = semi_config(synthetic_root, tmp_path / "interrupted", *sets)
    train_until(interrupted, step=7)
    assert json.loads((tmp_path / "interrupted" / "checkpoints" / "last" / "meta.json").read_text())["step"] == 6
    resumed = cifarlab.train(interrupted, resume=True, verbose=False)
    for run in (reference, resumed):
        run.last = load_file(run.dir / "checkpoints" / "last" / "model.safetensors")  # the EMA model
        run.raw = torch.load(run.dir / "checkpoints" / "last" / "state.pt", weights_only=True)["train_model"]
        run.records = [{k: v for k, v in r.items() if k not in ("elapsed", "images_per_s")}
                       for r in read_metrics(run.dir / "metrics.jsonl")]  # fmt: skip
    assert all(torch.equal(reference.last[k], resumed.last[k]) for k in reference.last)
    assert all(torch.equal(reference.raw[k], resumed.raw[k]) for k in reference.raw)
    assert reference.records == resumed.records and 0 < reference.records[-2]["mask_rate"] < 1  # the last epoch's
    assert {k: v for k, v in reference.test.items() if "seconds" not in k} == {
        k: v for k, v in resumed.test.items() if "seconds" not in k}
    labelled = json.loads((reference.dir / "labelled.json").read_text())
    assert (labelled["labelled"], labelled["train"], labelled["unlabelled"], len(labelled["indices"])) == (100, 100, 400, 100)


# ------------------------------------------------------------------------------------ self-training
# fp32: the test recomputes the teacher's confidences in fp32 and expects the very same images above the threshold
TEACHER = ["data.labels_per_class=10", "train.batch_size=20", "train.epochs=2", "semi.method=none", "train.precision=fp32"]


@pytest.fixture(scope="module")
def teacher(synthetic_root, tmp_path_factory):
    """A labels-only run on 10 images per class of the synthetic set (a pool of 400)."""
    return cifarlab.train(semi_config(synthetic_root, tmp_path_factory.mktemp("teacher") / "run", *TEACHER),
                          verbose=False)  # fmt: skip


def test_selftraining_adds_the_pool_images_the_teacher_is_sure_of_with_its_predictions(synthetic_root, teacher,
                                                                                      tmp_path):  # fmt: skip
    threshold, sure, predicted = sure_of_the_pool(teacher.dir, 150, 250)  # computed here from the teacher's weights
    assert 150 <= sure.sum() <= 250

    sets = [*TEACHER[:3], "semi.method=selftrain", f"semi.threshold={threshold}", "train.checkpoint_every=3"]
    student = semi_config(synthetic_root, tmp_path / "student", *sets, f"semi.teacher={teacher.dir}")
    splits = make_splits(student.data)
    taught = pseudo_labelled(splits, student, torch.device("cpu"))
    full = load_split("cifar10", "train", str(synthetic_root))
    assert torch.equal(taught.train.images[:len(splits.train)], splits.train.images)
    assert torch.equal(taught.train.labels[:len(splits.train)], splits.train.labels)  # the true labels kept
    added = taught.train_positions[len(splits.train):]
    assert torch.equal(added, splits.unlabelled_positions[sure])  # exactly the sure ones, none of the labelled
    assert torch.equal(taught.train.images[len(splits.train):], full.images[added])
    assert torch.equal(taught.train.labels[len(splits.train):], predicted)  # labelled with the prediction
    assert (predicted != full.labels[added]).any()  # the hidden labels play no part (the teacher errs)

    run = cifarlab.train(student, verbose=False)  # an ordinary supervised run on them
    record = json.loads((run.dir / "labelled.json").read_text())
    assert (record["labelled"], record["train"], record["pseudo_labelled"]) == (100, 100 + int(sure.sum()), int(sure.sum()))
    assert record["indices"] == json.loads((teacher.dir / "labelled.json").read_text())["indices"]
    assert record["pseudo_positions"] == added.tolist() and record["pseudo_labels"] == predicted.tolist()

    # stopped, its teacher gone: the resumed student trains on the recorded labels, as if never stopped
    moved = shutil.copytree(teacher.dir, tmp_path / "moved-teacher")
    interrupted = semi_config(synthetic_root, tmp_path / "interrupted", *sets, f"semi.teacher={moved}")
    train_until(interrupted, step=7)
    shutil.rmtree(moved)
    resumed = cifarlab.train(interrupted, resume=True, verbose=False)
    weights = [load_file(r.dir / "checkpoints" / "last" / "model.safetensors") for r in (run, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert resumed.test["accuracy"] == run.test["accuracy"]


@pytest.mark.parametrize("sets, expected", [
    (["data.labels_per_class=12"], "learnt from other labels than this run (data.labels_per_class: 10 there, 12 here)"),
    (["data.split_seed=1"], "(data.split_seed: 0 there, 1 here): a teacher must have learnt from exactly"),
    (["semi.threshold=1.0"], "predicts no pool image at semi.threshold=1.0"),
])  # fmt: skip
def test_a_teacher_with_other_labels_or_no_sure_prediction_is_refused(synthetic_root, teacher, tmp_path, capsys,
                                                                      sets, expected):  # fmt: skip
    args = ["--labels-per-class", "10", "--semi", "selftrain", "--teacher", str(teacher.dir), "--batch-size", "20"]
    code = main(["train", "--data-dir", str(synthetic_root), "--out", str(tmp_path / "run"), "--no-report", *args,
                 *(a for s in sets for a in ("--set", s))])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("args, expected", [
    (["--labels-per-class", "51", "--semi", "fixmatch"], "data.labels_per_class=51, but class 'airplane' has only 50"),
    (["--semi", "fixmatch", "--recipe", "fast"], "semi.method=fixmatch needs data.labels_per_class"),
    (["--labels-per-class", "10", "--semi", "mixmatch"], "semi.method='mixmatch' is not allowed; choose one of"),
    (["--labels-per-class", "10", "--semi", "pseudo", "--set", "semi.threshold=0"], "semi.threshold=0.0 is out of range"),
    (["--labels-per-class", "10", "--semi", "pseudo", "--set", "semi.threshold=1.01"], "must be in (0, 1]"),
    (["--labels-per-class", "10", "--semi", "fixmatch", "--set", "semi.unlabelled_ratio=0"],
     "semi.unlabelled_ratio=0 is out of range"),
    (["--labels-per-class", "10", "--semi", "fixmatch", "--batch-size", "100", "--set", "semi.unlabelled_ratio=5"],
     "unlabelled_ratio × train.batch_size = 500 unlabelled images, more than the 400 of the pool"),
    (["--labels-per-class", "10", "--semi", "fixmatch", "--set", "augment.policy=augmix", "--set", "optim.jsd_weight=12"],
     "choose one of semi.method=fixmatch and optim.jsd_weight"),
    (["--labels-per-class", "10", "--semi", "pseudo", "--set", "train.adversarial=fgsm"],
     "choose one of semi.method=pseudo and train.adversarial=fgsm, not both"),
    (["--labels-per-class", "10", "--semi", "fixmatch", "--model", "airbench"],  # picks `fast`: label smoothing 0.2
     "optim.label_smoothing=0.2 keeps the model's confidence under semi.threshold=0.95"),
    (["--labels-per-class", "10", "--semi", "selftrain"], "semi.method=selftrain needs semi.teacher (--teacher RUN)"),
    (["--labels-per-class", "10", "--semi", "fixmatch", "--teacher", "runs/x"],
     "semi.teacher is used by semi.method=selftrain only, not fixmatch"),
    (["--labels-per-class", "10", "--semi", "selftrain", "--teacher", "nowhere"], "'nowhere' does not exist"),
    (["--labels-per-class", "50", "--semi", "selftrain", "--teacher", "nowhere"],
     "data.labels_per_class=50 leaves no unlabelled images for the teacher to label"),
    (["--labels-per-class", "10", "--semi", "fixmatch", "--set", "data.labelled_indices=labelled.json"],
     "choose one of data.labels_per_class and data.labelled_indices, not both"),
])  # fmt: skip
def test_bad_semi_input_is_one_error_line(args, expected, synthetic_root, tmp_path, capsys):
    code = main(["train", "--data-dir", str(synthetic_root), "--out", str(tmp_path / "run"), "--no-report", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not (tmp_path / "run").exists()  # nothing half-written
