"""Knowledge distillation (`optim.distill_from`): the loss is the softened KL to the teacher
mixed with the labels' cross-entropy, the teacher sees the pixels the way it learnt them, all
weight on the teacher leaves the labels out of training, a resumed run checks its teacher, and
bad settings (a teacher that cannot teach this run) are one error line."""

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import cifarlab
from cifarlab.data import make_splits
from cifarlab.data import splits as splits_module
from cifarlab.errors import CifarlabError
from cifarlab.engine.checkpoint import load_checkpoint
from cifarlab.engine.distill import Teacher
from helpers import train_until, write_run_checkpoint, write_source_checkpoint
from test_bad_inputs import assert_refused, checkpoint

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)  # the student's normalization; the teacher's is other


def test_the_loss_mixes_the_labels_loss_with_the_softened_kl_on_the_pixels_as_the_teacher_saw_them(synthetic_root,
                                                                                                    tmp_path):  # fmt: skip
    folder = write_source_checkpoint(tmp_path / "teacher", "lenet")  # normalized with mean (0.5, 0.4, 0.3), std 0.2
    config = cifarlab.resolve_config("tutorial", sets=[
        f"data.data_dir={synthetic_root}", f"data.mean={list(MEAN)}", f"data.std={list(STD)}",
        f"optim.distill_from={folder}", "optim.distill_weight=0.7", "optim.distill_temperature=3"])  # fmt: skip
    teacher = Teacher(config, make_splits(config.data), torch.device("cpu"))
    pixels = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    model = load_checkpoint(folder).model
    with torch.no_grad():  # the teacher's logits on the pixels normalized its own way
        own = model((pixels - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)
    ce = torch.tensor(2.5)
    assert torch.allclose(teacher.loss(own, x, ce), 0.3 * ce, atol=1e-5)  # the same predictions: no divergence

    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    p, log_q = F.softmax(own / 3, dim=1), F.log_softmax(logits / 3, dim=1)
    expected = 0.3 * ce + 0.7 * 9 * (p * (p.log() - log_q)).sum(1).mean()  # T² × KL(teacher ‖ net), over the batch
    assert torch.allclose(teacher.loss(logits, x, ce), expected, atol=1e-5)


def teacher_run_config(data_root, out, teacher, *sets):
    return cifarlab.resolve_config("tutorial", sets=[
        f"data.data_dir={data_root}", f"train.out={out}", "train.batch_size=20", "train.log_every=1",
        "train.report=false", f"optim.distill_from={teacher}", *sets])  # fmt: skip


@pytest.mark.parametrize("weight, same", [(1.0, True), (0.5, False)])
def test_with_all_weight_on_the_teacher_the_labels_play_no_part(weight, same, synthetic_root, tmp_path, monkeypatch):
    """Shuffle every training label: with distill_weight=1 the weights after 5 steps are
    bit-identical (and not those after 1: the teacher moved them); with 0.5 they are not (the
    labels count)."""
    teacher = write_source_checkpoint(tmp_path / "teacher", "resnet20")
    sets = [f"optim.distill_weight={weight}", "optim.lr=0.05"]
    first = train_until(teacher_run_config(synthetic_root, tmp_path / "a", teacher, *sets), step=5)
    early = train_until(teacher_run_config(synthetic_root, tmp_path / "early", teacher, *sets), step=1)
    assert not all(torch.equal(first.weights[k], early.weights[k]) for k in first.weights)
    real_load_split = splits_module.load_split

    def load_with_labels_shuffled(dataset, split, *args, **kwargs):
        data = real_load_split(dataset, split, *args, **kwargs)
        if split == "train":
            shuffled = data.labels[torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(1))]
            assert (data.labels != shuffled).float().mean() > 0.8
            data.labels[:] = shuffled
        return data

    monkeypatch.setattr(splits_module, "load_split", load_with_labels_shuffled)
    second = train_until(teacher_run_config(synthetic_root, tmp_path / "b", teacher, *sets), step=5)
    assert all(torch.equal(first.weights[k], second.weights[k]) for k in first.weights) == same


def with_teacher(config, path):
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, distill_from=str(path)))


def test_a_distilled_run_resumes_bit_identically_with_its_teacher_moved_but_not_changed(synthetic_root, tmp_path):
    """A 200-image run (a few-label run: its teacher learnt from the same 200 labels), stopped
    in its second epoch; its teacher then moves, and the resumed run, given the new path, ends
    as one that never stopped. Another teacher is refused."""
    sets = ["train.epochs=2", "optim.distill_weight=0.8", "data.train_subset=200", "train.checkpoint_every=4"]
    teacher = write_run_checkpoint(tmp_path / "teacher", synthetic_root, "resnet20", sets=["data.train_subset=200"])
    reference = cifarlab.train(teacher_run_config(synthetic_root, tmp_path / "reference", teacher, *sets), verbose=False)
    interrupted = teacher_run_config(synthetic_root, tmp_path / "interrupted", teacher, *sets)
    train_until(interrupted, step=15)  # `last` at step 12, in the second epoch
    moved = shutil.move(teacher, tmp_path / "moved")
    resumed = cifarlab.train(with_teacher(interrupted, moved), resume=True, verbose=False)
    a, b = (torch.load(r.dir / "checkpoints" / "last" / "state.pt", weights_only=True) for r in (reference, resumed))
    assert a.keys() == b.keys() and json.dumps(reference.test["accuracy"]) == json.dumps(resumed.test["accuracy"])
    assert all(torch.equal(x, y) for x, y in zip(_tensors(a), _tensors(b), strict=True))

    other = shutil.copytree(moved, tmp_path / "other")
    weights = load_file(other / "model.safetensors")
    save_file({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}, other / "model.safetensors")
    stopped = teacher_run_config(synthetic_root, tmp_path / "stopped", moved, *sets)
    train_until(stopped, step=5)
    with pytest.raises(CifarlabError, match="is not the net this run learnt from"):
        cifarlab.train(with_teacher(stopped, other), resume=True, verbose=False)
    with pytest.raises(CifarlabError, match="this run learnt from a teacher; resume it with that one"):
        cifarlab.train(dataclasses.replace(stopped, optim=dataclasses.replace(stopped.optim, distill_from=None)),
                       resume=True, verbose=False)  # fmt: skip


def test_active_learning_refuses_a_teacher(synthetic_root, tmp_path):
    """Its rounds may learn only from the labels bought so far; a teacher knows the others."""
    with pytest.raises(CifarlabError, match="leave out optim.distill_from"):
        cifarlab.active(cifarlab.ActiveConfig(start=100, budget=50, rounds=1, strategy="margin"), recipe="tutorial", out=tmp_path / "active",
                        data_dir=str(synthetic_root), sets=[f"optim.distill_from={tmp_path}"], verbose=False)  # fmt: skip
    assert not (tmp_path / "active").exists()


def _tensors(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in _tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in _tensors(item)]
    return []


def reordered_checkpoint(tmp):
    """Ten classes, but in another order: its outputs would teach the wrong ones."""
    return checkpoint(tmp, lambda meta: {**meta, "classes": meta["classes"][::-1]})


BAD = {
    "other-classes": (lambda t: reordered_checkpoint(t), [], "predicts other classes than this run"),
    "missing": (lambda t: t / "nope", [], "nope' does not exist"),
    "weight": (lambda t: checkpoint(t), ["optim.distill_weight=1.5"], "optim.distill_weight=1.5 is out of range"),
    "weight-0": (lambda t: checkpoint(t), ["optim.distill_weight=0"], "optim.distill_weight=0"),
    "temperature": (lambda t: checkpoint(t), ["optim.distill_temperature=0"], "optim.distill_temperature=0"),
    "semi": (lambda t: checkpoint(t), ["semi.method=fixmatch", "data.labels_per_class=10"],
             "choose one of semi.method=fixmatch and optim.distill_from"),
    "few-labels": (lambda t: checkpoint(t), ["data.labels_per_class=10"],
                   "learnt from other labels than this run (data.labels_per_class: None there, 10 here)"),
    "image-size": (lambda t: checkpoint(t, lambda meta: {**meta, "config": {**meta["config"], "data": {
        **meta["config"]["data"], "dataset": "folder:photos", "image_size": 64}}}), [],
        "learnt from 64-pixel images, this run trains on 32-pixel"),
    "low-res": (lambda t: checkpoint(t), ["model.name=resnet20", "train.low_res=24", "train.low_res_share=0.5"],
                "its model lenet does not take the 24×24 images this run trains on"),
}


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("case", list(BAD))
def test_bad_distillation_settings_are_one_error_line(case, synthetic_root, tmp_path):
    make, sets, expected = BAD[case]
    teacher = make(tmp_path)
    args = ["train", "--recipe", "tutorial", "--epochs", "1", "--data-dir", synthetic_root, "--out", tmp_path / "run",
            "--distill-from", teacher, *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    assert_refused(args, tmp_path, expected)
    assert not (tmp_path / "run").exists()
