import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from cifarlab.config import DataConfig
from cifarlab.data import load_split, locate, make_splits, stratified_indices, verify
from cifarlab.data.unpickle import load_restricted_pickle
from cifarlab.errors import CifarlabError
from helpers import CIFAR10_CLASSES, write_cifar10


class _Exploit:
    """Unpickling this runs os.system: the classic malicious pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        load_restricted_pickle(evil)
    assert not marker.exists()
    # the plain unpickler would have run it: the test's exploit is real
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_malicious_batch_file_gives_clear_error(tmp_path):
    root = write_cifar10(tmp_path / "d", per_batch=20, test=20)
    marker = tmp_path / "pwned"
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(CifarlabError, match="not a valid CIFAR file.*refused"):
        load_split("cifar10", "train", root)
    assert not marker.exists()


def test_synthetic_layout_loads(synthetic_root):
    train = load_split("cifar10", "train", synthetic_root)
    test = load_split("cifar10", "test", synthetic_root)
    assert train.images.shape == (500, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and len(test) == 200
    assert train.classes == CIFAR10_CLASSES


def test_real_cifar10_matches_published_facts(real_root):
    train = load_split("cifar10", "train", real_root)
    test = load_split("cifar10", "test", real_root)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.labels.bincount().tolist() == [5000] * 10
    assert train.labels[:10000].bincount().tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    mean = train.images.double().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.49139968, 0.48215841, 0.44653091], dtype=torch.float64), atol=1e-7)
    # first image of data_batch_1 is a frog starting 59, 43, 50 (R plane, row-major)
    assert train.labels[0] == 6 and train.images[0, 0, 0, :3].tolist() == [59, 43, 50]
    assert test.images[0, 0, 0, :3].tolist() == [158, 159, 165] and test.classes[test.labels[0]] == "cat"


def test_real_cifar100_fine_and_coarse(real_root):
    fine = load_split("cifar100", "test", real_root)
    coarse = load_split("cifar100-coarse", "test", real_root)
    assert len(fine.classes) == 100 and len(coarse.classes) == 20
    assert fine.labels.bincount().tolist() == [100] * 100
    assert coarse.labels.bincount().tolist() == [500] * 20
    assert torch.equal(fine.images, coarse.images)


def test_truncated_file_is_reported(tmp_path):
    root = write_cifar10(tmp_path / "d", per_batch=50, test=20)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CifarlabError, match="data_batch_3' is truncated or corrupt.*cifarlab data download"):
        load_split("cifar10", "train", root)


def test_wrong_content_is_reported(tmp_path):
    root = write_cifar10(tmp_path / "d", per_batch=50, test=20)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((20, 100), np.uint8), "labels": [0] * 20}, protocol=2))
    with pytest.raises(CifarlabError, match=r"not a uint8 array of shape \(N, 3072\)"):
        load_split("cifar10", "test", root)


def test_missing_file_and_missing_dataset(tmp_path):
    root = write_cifar10(tmp_path / "d", per_batch=50, test=20)
    (root / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(CifarlabError, match="missing data file .*data_batch_5"):
        load_split("cifar10", "train", root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CifarlabError, match="cifar10 not found.*cifarlab data download"):
        locate("cifar10", tmp_path / "empty", download=False)
    with pytest.raises(CifarlabError, match="does not exist"):
        locate("cifar10", tmp_path / "nowhere")


def test_lookup_order(tmp_path, monkeypatch):
    env_root = write_cifar10(tmp_path / "env", per_batch=10, test=10)
    local_root = write_cifar10(tmp_path / "data", per_batch=10, test=10).parent / "data"
    monkeypatch.chdir(tmp_path)
    assert locate("cifar10", download=False).resolve() == (local_root / "cifar-10-batches-py").resolve()
    monkeypatch.setenv("CIFARLAB_DATA", str(env_root))
    assert locate("cifar10", download=False) == env_root / "cifar-10-batches-py"


def test_verify_detects_md5_mismatch(tmp_path):
    root = write_cifar10(tmp_path / "d", per_batch=10, test=10)
    _, checks = verify("cifar10", root)
    assert {c.status for c in checks} == {"md5 mismatch"}  # synthetic files are not the official ones


def test_verify_real_files_ok_and_corruption_caught(real_root, tmp_path):
    _, checks = verify("cifar10", real_root)
    assert [c.status for c in checks] == ["ok"] * 7
    copy = tmp_path / "copy" / "cifar-10-batches-py"
    shutil.copytree(real_root / "cifar-10-batches-py", copy)
    with open(copy / "data_batch_4", "r+b") as f:  # flip one pixel byte
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 1]))
    (copy / "test_batch").unlink()
    status = {c.file: c.status for c in verify("cifar10", copy.parent)[1]}
    assert status["data_batch_4"] == "md5 mismatch" and status["test_batch"] == "missing"
    assert status["data_batch_1"] == "ok"


def test_stratified_split_is_deterministic_balanced_and_disjoint():
    labels = torch.arange(1000) % 10
    rest, picked = stratified_indices(labels, 100, seed=3)
    assert labels[picked].bincount().tolist() == [10] * 10
    assert len(set(rest.tolist()) | set(picked.tolist())) == 1000 and len(rest) == 900
    rest2, picked2 = stratified_indices(labels, 100, seed=3)
    assert torch.equal(picked, picked2) and torch.equal(rest, rest2)
    assert not torch.equal(picked, stratified_indices(labels, 100, seed=4)[1])


def test_stratified_split_keeps_proportions_of_unbalanced_labels():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    _, picked = stratified_indices(labels, 101, seed=0)
    assert len(picked) == 101
    assert labels[picked].bincount().tolist() == [61, 30, 10]  # 60.6, 30.3, 10.1 → largest remainder


def test_make_splits_defaults_and_zero_val(synthetic_root):
    splits = make_splits(DataConfig(data_dir=str(synthetic_root)))
    assert len(splits.val) == 50 and len(splits.train) == 450  # default 10%
    assert splits.mean == (0.4914, 0.4822, 0.4465)
    no_val = make_splits(DataConfig(data_dir=str(synthetic_root), val_size=0, train_subset=100))
    assert no_val.val is None and len(no_val.train) == 100
    assert no_val.train.labels.bincount().tolist() == [10] * 10
    with pytest.raises(CifarlabError, match="larger than"):
        make_splits(DataConfig(data_dir=str(synthetic_root), train_subset=451))
