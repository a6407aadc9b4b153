"""Labels: training on an explicit labelled set, simulated active learning (each strategy on
inputs whose answer is known, and a real round end to end), the confident-learning audit (on
planted label flips scored by a real small model) and the commands' bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cifarlab import run as run_module
from cifarlab.cli import main
from cifarlab.config import ActiveConfig, DataConfig, from_dict, read_yaml, resolve
from cifarlab.data import label_differences, make_splits, training_file, write_labelled_indices
from cifarlab.errors import CifarlabError
from cifarlab.labels import strategies
from cifarlab.labels.strategies import k_center_greedy, select
from helpers import write_run_checkpoint

# LeNet, one epoch on the synthetic set (500 training images): a round takes a second or two
TINY = ["train.epochs=1", "train.batch_size=20", "train.log_every=1000"]


def tiny_config(root: Path, *sets: str):
    return resolve("tutorial", sets=[f"data.data_dir={root}", *TINY, *sets])


# ------------------------------------------------------------------------------ data.labelled_indices
def test_a_run_trains_on_exactly_the_listed_images_with_validation_carved_from_them(synthetic_root, tmp_path):
    listed = torch.arange(3, 500, 5)  # 100 images
    write_labelled_indices(tmp_path / "labelled.json", listed.flip(0))  # written sorted, whatever the order
    splits = make_splits(tiny_config(synthetic_root, f"data.labelled_indices={tmp_path / 'labelled.json'}",
                                     "data.val_size=10").data)  # fmt: skip
    assert len(splits.train) == 90 and len(splits.val) == 10
    train_file = training_file(tiny_config(synthetic_root).data)
    assert set(splits.train_positions.tolist()) < set(listed.tolist())
    assert torch.equal(splits.train.images, train_file.images[splits.train_positions])
    val_rows = [i for i in listed.tolist() if i not in set(splits.train_positions.tolist())]
    assert torch.equal(splits.val.images, train_file.images[val_rows])
    assert len(splits.test) == 200  # the test set is untouched


def test_a_few_labels_runs_record_lists_the_same_labels_for_another_run(synthetic_root, tmp_path):
    few = tiny_config(synthetic_root, "data.labels_per_class=5", "data.val_size=10")
    record = run_module._labelled_record(few, make_splits(few.data))
    (tmp_path / "labelled.json").write_text(json.dumps(record))
    again = make_splits(tiny_config(synthetic_root, f"data.labelled_indices={tmp_path / 'labelled.json'}",
                                    "data.val_size=10").data)  # fmt: skip
    assert torch.equal(again.labelled_positions, torch.tensor(record["indices"])) and len(again.labelled_positions) == 50


@pytest.mark.parametrize("content, message", [
    ([1, 2, 2], "names an image twice"), ([0, 500], "position 500 is outside the training file's 0..499"),
    ([], "non-empty JSON list of integers"), ({"labelled": 1}, "non-empty JSON list of integers"),
])  # fmt: skip
def test_a_bad_labelled_indices_file_is_one_error(content, message, synthetic_root, tmp_path):
    (tmp_path / "labelled.json").write_text(json.dumps(content))
    with pytest.raises(CifarlabError, match=message):
        make_splits(tiny_config(synthetic_root, f"data.labelled_indices={tmp_path / 'labelled.json'}").data)


def test_labelled_indices_exclude_the_other_subsets(synthetic_root):
    with pytest.raises(CifarlabError, match="choose one of data.train_subset and data.labelled_indices"):
        tiny_config(synthetic_root, "data.train_subset=100", "data.labelled_indices=x.json")


# ------------------------------------------------------------------------------ strategies
def peaked(rows: int, classes: int = 4) -> torch.Tensor:
    p = torch.full((rows, classes), 0.02)
    p[:, 0] = 1 - 0.02 * (classes - 1)
    return p


def test_entropy_and_margin_pick_the_most_uncertain_rows_each_in_its_own_sense():
    p = peaked(10)
    p[3] = torch.tensor([0.25, 0.25, 0.25, 0.25])  # most spread: the top entropy; margin 0
    p[6] = torch.tensor([0.40, 0.20, 0.20, 0.20])  # spread, but a clear favourite: margin 0.2
    p[8] = torch.tensor([0.49, 0.49, 0.01, 0.01])  # two-way tie: margin 0, low entropy
    assert strategies.entropy(p)[6] > strategies.entropy(p)[8]
    assert set(select("entropy", 2, 10, p).tolist()) == {3, 6}
    assert set(select("margin", 2, 10, p).tolist()) == {3, 8}


def test_coreset_picks_the_farthest_point_first_then_covers_what_is_left():
    labelled = torch.zeros(1, 2)
    pool = torch.tensor([[1.0, 0], [5, 0], [0, 3], [5, 0.1], [-4, 0]])
    picks = k_center_greedy(pool, labelled, 3).tolist()
    assert picks[0] == 3  # |(5, 0.1)| is the largest distance to the labelled point
    assert picks[1] == 4  # then (-4, 0): 4 from the origin, where (0, 3) is 3 and (5, 0) is 0.1 from a centre
    assert picks[2] == 2


def test_coreset_blocks_match_the_unblocked_greedy_and_never_pick_twice(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    pool, labelled = torch.randn(300, 8, generator=generator), torch.randn(40, 8, generator=generator)
    whole = k_center_greedy(pool, labelled, 25)
    monkeypatch.setattr(strategies, "DISTANCE_BLOCK", 7)
    assert torch.equal(k_center_greedy(pool, labelled, 25), whole)
    duplicates = torch.ones(6, 3)  # every point at distance 0 from the first pick
    assert sorted(k_center_greedy(duplicates, torch.zeros(1, 3), 6).tolist()) == list(range(6))


@pytest.mark.parametrize("strategy", strategies.STRATEGIES)
def test_every_strategy_picks_k_distinct_pool_rows(strategy):
    generator = torch.Generator().manual_seed(1)
    p = torch.rand(50, 10, generator=generator).softmax(1)
    features, labelled = torch.randn(50, 16, generator=generator), torch.randn(5, 16, generator=generator)
    picks = select(strategy, 12, 50, p, features, labelled, torch.Generator().manual_seed(0))
    assert len(picks) == 12 and len(set(picks.tolist())) == 12 and 0 <= picks.min() and picks.max() < 50


def test_random_picks_repeat_with_the_seed():
    pick = lambda seed: select("random", 10, 1000, generator=torch.Generator().manual_seed(seed)).tolist()  # noqa: E731
    assert pick(3) == pick(3) != pick(4)


# ------------------------------------------------------------------------------ one round, end to end
def test_one_round_labels_exactly_k_new_pool_images(synthetic_root, tmp_path):
    from cifarlab.run import active

    sets = [f"data.data_dir={synthetic_root}", *TINY, "data.val_size=10"]  # validation carved from the labels
    result, folder = active(ActiveConfig(start=100, budget=30, rounds=1, strategy="margin"), "tutorial", sets,
                            out=tmp_path / "al", verbose=False)  # fmt: skip
    before = set(json.loads((folder / "labelled-00.json").read_text()))
    after = set(json.loads((folder / "labelled-01.json").read_text()))
    chosen = after - before
    assert len(before) == 100 and len(after) == 130 and len(chosen) == 30 and before < after
    round0 = make_splits(from_dict(read_yaml(folder / "round-00" / "config.yaml")).data)
    validation = before - set(round0.train_positions.tolist())
    assert len(validation) == 10
    assert [r["labelled"] for r in result["rounds"]] == [100, 130]
    assert json.loads((folder / "active.json").read_text()) == result
    assert (folder / "active.png").stat().st_size > 0
    for n in (0, 1):
        assert (folder / f"round-{n:02d}" / "eval.json").is_file()


# ------------------------------------------------------------------------------ label audit
@pytest.mark.slow  # trains a LeNet on 5,000 real images (about 10 s)
def test_audit_flags_planted_label_flips_far_above_chance(real_root, tmp_path):
    """50 of 500 real test images get a wrong label; a 35%-accurate LeNet's probabilities put
    flipped ones among the top 50 flagged several times more often than chance (10%)."""
    import cifarlab
    from cifarlab.data import load_split
    from cifarlab.engine.checkpoint import load_checkpoint
    from cifarlab.labels.audit import checkpoint_probabilities, find_issues

    config = resolve("tutorial", sets=[f"data.data_dir={real_root}", "data.train_subset=5000", "train.epochs=3",
                                       "train.batch_size=32", "optim.lr=0.01", "augment.flip=random",
                                       "train.report=false", f"train.out={tmp_path / 'run'}"])  # fmt: skip
    run = cifarlab.train(config, verbose=False)
    test = load_split("cifar10", "test", real_root).subset(torch.arange(500))
    probs = checkpoint_probabilities(load_checkpoint(run.dir), config, test, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    flipped = torch.randperm(500, generator=generator)[:50]
    labels = test.labels.clone()
    labels[flipped] = (labels[flipped] + torch.randint(1, 10, (50,), generator=generator)) % 10
    ranked, quality = find_issues(labels, probs)
    precision = torch.isin(ranked[:50], flipped).double().mean().item()
    assert precision >= 0.25, f"top-50 precision {precision:.0%} (chance 10%)"
    assert torch.isin(flipped, ranked).double().mean() >= 0.5  # most flips are flagged at all
    assert quality[flipped].mean() < quality[~torch.isin(torch.arange(500), flipped)].mean()


def test_audit_writes_the_ranked_csv_and_grid_for_test_and_out_of_fold_train(synthetic_root, tmp_path, capsys):
    from cifarlab.run import train

    run = train(tiny_config(synthetic_root, "data.train_subset=100", f"train.out={tmp_path / 'run'}",
                            "train.report=false"), verbose=False)  # fmt: skip
    assert main(["labels", "audit", str(run.dir), "--top", "3"]) == 0
    rows = list(csv.DictReader(open(run.dir / "label-audit-test.csv")))
    assert rows and [r["rank"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert {int(r["index"]) for r in rows} <= set(range(200))
    assert [float(r["label_quality"]) for r in rows] == sorted(float(r["label_quality"]) for r in rows)
    assert (run.dir / "label-audit-test.png").is_file()
    assert "flagged by confident learning" in capsys.readouterr().out

    assert main(["labels", "audit", str(run.dir), "--split", "train", "--folds", "2", "--out", str(tmp_path / "a")]) == 0
    trained_on = set(make_splits(run.config.data).train_positions.tolist())
    rows = list(csv.DictReader(open(tmp_path / "a" / "label-audit-train.csv")))
    assert rows and {int(r["index"]) for r in rows} <= trained_on
    folds = tmp_path / "a" / "label-audit-train-folds"
    fold_sets = [set(json.loads((folds / f"fold-{f:02d}-train.json").read_text())) for f in (1, 2)]
    assert fold_sets[0] | fold_sets[1] == trained_on and not fold_sets[0] & fold_sets[1]  # each image held out once
    assert all((folds / f"fold-{f:02d}" / "eval.json").is_file() for f in (1, 2))


# ------------------------------------------------------------------------------ bad inputs
ACTIVE = ["active", "--recipe", "tutorial", "--set", "train.epochs=1"]


@pytest.mark.parametrize("args, message", [
    ([*ACTIVE, "--start", "100", "--budget", "300", "--rounds", "2", "--strategy", "margin"],
     "--budget=300 × --rounds=2 after --start=100 needs 700 images, more than the 500 training images"),
    ([*ACTIVE, "--start", "100", "--budget", "10", "--rounds", "1", "--strategy", "bald"],
     "--strategy='bald' is not allowed; choose one of: random, entropy, margin, coreset"),
    ([*ACTIVE, "--start", "100", "--budget", "10", "--rounds", "0", "--strategy", "random"], "--rounds=0 is out of range"),
    ([*ACTIVE, "--start", "600", "--budget", "10", "--rounds", "1", "--strategy", "random"],
     "--start=600 is more than the 500 training images"),
    ([*ACTIVE, "--start", "100"], "cifarlab active needs --budget, --rounds, --strategy"),
    ([*ACTIVE, "--start", "100", "--budget", "10", "--rounds", "1", "--strategy", "random", "--set", "data.train_subset=200"],
     "active learning chooses each round's training images itself; leave out data.train_subset"),
    (["active", "--compare", "config.json"], "'config.json' is not a `cifarlab active` result"),
    (["active", "--compare", "no-accuracy.json"], "'no-accuracy.json' is not a `cifarlab active` result"),
    (["active", "--compare", "no-rounds.json"], "'no-rounds.json' is not a `cifarlab active` result"),
    (["labels", "audit", "run"], "run 'run' has no checkpoint yet"),
    (["labels", "audit", "ckpt", "--split", "train", "--folds", "1"], "--folds=1 is out of range"),
    (["labels", "audit", "ckpt", "--top", "0"], "--top=0 is out of range"),
])  # fmt: skip
def test_bad_input_is_one_error_line_and_writes_nothing(args, message, synthetic_root, tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "no-accuracy.json").write_text('{"strategy": "random", "rounds": [{"labelled": 100, "test_accuracy": null}]}')
    (tmp_path / "no-rounds.json").write_text('{"strategy": "random", "rounds": []}')
    write_run_checkpoint(tmp_path / "ckpt", synthetic_root)
    files = lambda: sorted(p for p in tmp_path.rglob("*") if p.relative_to(tmp_path).parts[0] != "home")  # noqa: E731 (home: caches)
    before = files()
    data = ["--data-dir", str(synthetic_root)] if args[0] == "active" or "ckpt" in args else []
    assert main([*args, *data]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert files() == before


def test_active_checks_its_flags_before_reading_the_data(tmp_path, capsys):
    args = [*ACTIVE, "--start", "10", "--budget", "10", "--rounds", "1", "--strategy", "bald"]
    assert main([*args, "--data-dir", str(tmp_path / "no-data")]) == 2  # no data there: reading it would fail first
    assert "--strategy='bald' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "no-data").exists()


def test_labelled_indices_files_are_the_same_labels_when_they_list_the_same_positions(tmp_path):
    """A teacher's labelled_indices file is compared by what it lists, not by where it lies."""
    files = {"given": "[5, 1, 3]", "copy/moved": "[1, 3, 5]", "record": '{"indices": [3, 5, 1]}', "other": "[1, 3, 6]",
             "corrupt": "[1, 3"}  # fmt: skip
    for name, text in files.items():
        (tmp_path / f"{name}.json").parent.mkdir(exist_ok=True)
        (tmp_path / f"{name}.json").write_text(text)

    def data(name: str) -> DataConfig:
        return DataConfig(labelled_indices=str(tmp_path / f"{name}.json"))

    assert label_differences(data("given"), data("copy/moved")) == []
    assert label_differences(data("record"), data("given")) == []
    for name in ("other", "corrupt", "missing"):
        assert label_differences(data("given"), data(name)) == [
            f"data.labelled_indices: {tmp_path / 'given.json'} there, {tmp_path / name}.json here"]
    (tmp_path / "given.json").write_text("[1, 3, 6]")  # rewritten in place: no longer what the copy lists
    assert label_differences(data("given"), data("copy/moved")) != []
