"""CIFAR-10/100 in the official "python version" layout: find, parse, validate, verify.

A split is held once as a uint8 tensor (N, 3, 32, 32) plus int64 labels; everything
downstream (splits, loader, evaluation) indexes into it. A name may pick a class subset:
`cifar10:cat,dog` is a 2-class dataset (labels 0, 1 in that order).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CifarlabError, first_line
from .unpickle import RefusedGlobal, load_restricted_pickle


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # folder the archive extracts to
    url: str
    archive_md5: str
    train_files: tuple[tuple[str, str], ...]  # (file name, official md5)
    test_files: tuple[tuple[str, str], ...]
    meta_file: tuple[str, str]
    official_sizes: dict[str, int]  # bytes of the official files, where confirmed: such a file must match its md5
    label_key: str  # key of the labels in each batch
    names_key: str  # key of the class names in the meta file
    num_classes: int
    mean: tuple[float, float, float]  # published training-set statistics, 0..1 scale
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


_CIFAR10 = dict(
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    train_files=(
        ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        ("data_batch_4", "634d18415352ddfa80567beed471001a"),
        ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ),
    test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    official_sizes={"data_batch_1": 31035704, "data_batch_2": 31035320, "data_batch_3": 31035999,
                    "data_batch_4": 31035696, "data_batch_5": 31035623, "test_batch": 31035526, "batches.meta": 158},
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
_CIFAR100 = dict(
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
    official_sizes={"meta": 1473},  # train/test: official sizes not confirmed here (the shared copy is a rebuild)
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)
DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(name="cifar10", **_CIFAR10),
    "cifar100": DatasetSpec(
        name="cifar100", label_key="fine_labels", names_key="fine_label_names", num_classes=100, **_CIFAR100
    ),
    "cifar100-coarse": DatasetSpec(
        name="cifar100-coarse", label_key="coarse_labels", names_key="coarse_label_names", num_classes=20,
        **_CIFAR100,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a dataset, or of the dataset a class subset is taken from."""
    try:
        return DATASETS[name.partition(":")[0]]
    except KeyError:
        raise CifarlabError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}") from None


def subset_classes(name: str, classes: list[str]) -> list[int] | None:
    """Indices (into `classes`) of the classes named after the colon: 'cifar10:cat,dog' → [3, 5];
    None for a whole dataset."""
    base, colon, names = name.partition(":")
    if not colon:
        return None
    wanted = [c.strip() for c in names.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise CifarlabError(f"unknown class(es) {', '.join(map(repr, unknown))} in '{name}'; {base} has: {', '.join(classes)}")
    if len(set(wanted)) < len(wanted):
        raise CifarlabError(f"'{name}' names a class twice")
    return [classes.index(c) for c in wanted]


@dataclass
class ImageSet:
    """Images as uint8 (N, 3, 32, 32), labels as int64 (N,), and the class names. Labels are
    None for an unlabelled pool (semi-supervised training): what is not there cannot leak."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], None if self.labels is None else self.labels[index], self.classes)

    def select_classes(self, picked: list[int]) -> "ImageSet":
        """The images of the `picked` classes, relabelled 0..len(picked)-1 in that order."""
        new_label = torch.full((len(self.classes),), -1, dtype=torch.long)
        new_label[picked] = torch.arange(len(picked))
        keep = (new_label[self.labels] >= 0).nonzero().flatten()
        return ImageSet(self.images[keep], new_label[self.labels[keep]], [self.classes[i] for i in picked])


def search_roots(data_dir: str | Path | None) -> list[Path]:
    """Where to look for data: an explicit --data-dir alone, else $CIFARLAB_DATA, ./data, ~/.cache/cifarlab."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = [Path(os.environ["CIFARLAB_DATA"]).expanduser()] if os.environ.get("CIFARLAB_DATA") else []
    return roots + [Path("data"), default_download_root()]


def default_download_root() -> Path:
    return Path("~/.cache/cifarlab").expanduser()


def find_root(spec: DatasetSpec, data_dir: str | Path | None = None) -> Path | None:
    """The first search root that holds the dataset's folder, or None."""
    for root in search_roots(data_dir):
        if (root / spec.folder).is_dir():
            return root
    return None


def locate(name: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding the dataset's files, downloading it first if it is nowhere."""
    spec = get_spec(name)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise CifarlabError(f"data directory '{data_dir}' does not exist (`cifarlab data download --data-dir` creates it)")
    root = find_root(spec, data_dir)
    if root is None:
        tried = ", ".join(str(r) for r in search_roots(data_dir))
        if not download:
            raise CifarlabError(
                f"{spec.name} not found (looked for '{spec.folder}/' in: {tried}). "
                f"Run `cifarlab data download --dataset {spec.name}` or pass --data-dir."
            )
        from .download import download as fetch

        root = fetch(name, data_dir)
    return root / spec.folder


def _read_file(spec: DatasetSpec, path: Path) -> dict:
    """Parse one batch file, turning every failure into a message that says what to do."""
    fix = (
        f"Delete '{path.parent}' and run `cifarlab data download --data-dir {path.parent.parent}`, "
        f"or run `cifarlab data verify` to compare md5s."
    )
    if not path.is_file():
        raise CifarlabError(f"missing data file '{path}'. {fix}")
    if not _is_intact(spec, path):
        raise CifarlabError(f"'{path}' has the size of the official file but not its md5: it is damaged. {fix}")
    try:
        obj = load_restricted_pickle(path)
    except RefusedGlobal as e:
        raise CifarlabError(f"'{path}' is not a valid CIFAR file ({e}). {fix}") from None
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, ValueError, struct.error, ...)
        raise CifarlabError(f"'{path}' is truncated or corrupt ({type(e).__name__}: {first_line(e)}). {fix}") from None
    if not isinstance(obj, dict):
        raise CifarlabError(f"'{path}' is not a CIFAR batch (a {type(obj).__name__}, not a dict). {fix}")
    return obj


_INTACT: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files whose md5 this process checked


def _is_intact(spec: DatasetSpec, path: Path) -> bool:
    """A file with its official size must have its official md5, so a flipped bit in the pixels
    does not train silently. That costs one md5 pass (about 0.06 s per 30 MB file), once per
    file per process. Files of other sizes (a subset, the shared CIFAR-100 rebuild, synthetic
    test data) get only the shape and label checks of `load_split`; `cifarlab data verify`
    compares every md5."""
    stat = path.stat()
    if spec.official_sizes.get(path.name) != stat.st_size:
        return True
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _INTACT:
        if md5sum(path) != dict(spec.files)[path.name]:
            return False
        _INTACT.add(key)
    return True


def _all_classes(name: str, data_dir: str | Path | None, download: bool) -> list[str]:
    spec = get_spec(name)
    folder = locate(name, data_dir, download)
    path = folder / spec.meta_file[0]
    classes = _read_file(spec, path).get(spec.names_key)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CifarlabError(f"'{path}' has no class-name list '{spec.names_key}'")
    if len(classes) != spec.num_classes or len(set(classes)) < len(classes):
        raise CifarlabError(
            f"'{path}': '{spec.names_key}' must be {spec.num_classes} different names, got {len(classes)} "
            f"({len(set(classes))} different); the file is corrupt"
        )
    return classes


def load_classes(name: str, data_dir: str | Path | None = None, download: bool = True) -> list[str]:
    classes = _all_classes(name, data_dir, download)
    picked = subset_classes(name, classes)
    return classes if picked is None else [classes[i] for i in picked]


def load_split(name: str, split: str, data_dir: str | Path | None = None, download: bool = True) -> ImageSet:
    """Load the 'train' or 'test' split of a dataset as one ImageSet."""
    if split not in ("train", "test"):
        raise CifarlabError(f"unknown split '{split}'; choose 'train' or 'test'")
    spec = get_spec(name)
    classes = _all_classes(name, data_dir, download)
    folder = locate(name, data_dir, download=False)
    files = spec.train_files if split == "train" else spec.test_files
    images, labels = [], []
    for file_name, _ in files:
        path = folder / file_name
        batch = _read_file(spec, path)
        data, batch_labels = batch.get("data"), _as_labels(batch.get(spec.label_key))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise CifarlabError(f"'{path}': 'data' is not a uint8 array of shape (N, 3072); the file is corrupt")
        if len(data) == 0:
            raise CifarlabError(f"'{path}' holds no images; the file is corrupt")
        if batch_labels is None or batch_labels.shape != (len(data),):
            raise CifarlabError(f"'{path}': '{spec.label_key}' missing or not one integer label per image")
        if batch_labels.min() < 0 or batch_labels.max() >= len(classes):
            raise CifarlabError(f"'{path}': labels outside 0..{len(classes) - 1}; the file is corrupt")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    data = ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), classes)
    picked = subset_classes(name, classes)
    return data if picked is None else data.select_classes(picked)


def _as_labels(value) -> np.ndarray | None:
    """A batch's labels as an integer array, or None if they are not a flat list of integers."""
    try:
        labels = np.asarray(value)
    except ValueError:  # a ragged list
        return None
    return labels if labels.ndim == 1 and labels.dtype.kind in "iu" else None


def channel_stats(images: torch.Tensor, chunk: int = 5000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) std of uint8 images (N, 3, H, W), on a 0..1 scale. Sums in
    float64 over chunks, so 50,000 images never exist as one float copy (1.2 GB)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for part in images.split(chunk):
        x = part.double() / 255
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    n = images[:, 0].numel()
    mean = total / n
    std = ((squares - n * mean * mean) / (n - 1)).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FileCheck:
    file: str
    status: str  # "ok", "missing", "md5 mismatch"
    md5: str | None


def verify(name: str, data_dir: str | Path | None = None) -> tuple[Path, list[FileCheck]]:
    """Compare every file of a dataset with the official md5s."""
    spec = get_spec(name)
    folder = locate(name, data_dir, download=False)
    checks = []
    for file_name, expected in spec.files:
        path = folder / file_name
        if not path.is_file():
            checks.append(FileCheck(file_name, "missing", None))
            continue
        actual = md5sum(path)
        checks.append(FileCheck(file_name, "ok" if actual == expected else "md5 mismatch", actual))
    return folder, checks
