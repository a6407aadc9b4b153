"""The front door: every bad input is one `error: ...` line on stderr and a non-zero exit,
never a traceback, and leaves no new or half-written file behind.

Each case runs `python -m cifarlab ...` in a subprocess (cwd: the test's tmp folder, which
holds the case's inputs) and compares the folder's tree before and after. Read-only folders
and a full disk are real tmpfs mounts (the tests run as root, so chmod would not stop a
write); where mounting is not allowed those cases are skipped.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarlab.cli import main
from helpers import CIFAR10_CLASSES, write_run_checkpoint, write_source_checkpoint

MARKER = "pwned"  # what a hostile file would create if it ran code
TRAIN = ["train", "--recipe", "tutorial", "--epochs", "1", "--batch-size", "50", "--set", "data.val_size=100",
         "--no-report"]  # fmt: skip


class Hostile:
    """Unpickling this runs `touch pwned`, unless the loader refuses it."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


# ------------------------------------------------------------------------------ inputs
def copy_data(root: Path, tmp: Path) -> Path:
    """A writable copy of a CIFAR-10 folder (to damage one file of it); returns its root."""
    shutil.copytree(root / "cifar-10-batches-py", tmp / "data" / "cifar-10-batches-py")
    return tmp / "data"


def rewrite_batch(root: Path, tmp: Path, name: str, change) -> Path:
    data = copy_data(root, tmp)
    path = data / "cifar-10-batches-py" / name
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    change(batch)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)  # protocol 2 would spell an empty array's bytes as a refused global
    return data


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def checkpoint(tmp: Path, change_meta=lambda meta: meta, raw_meta: bytes | None = None) -> Path:
    """A LeNet checkpoint with the tutorial recipe's config, its meta.json changed or replaced."""
    from cifarlab.config import load_recipe

    folder = write_source_checkpoint(tmp / "ckpt", "lenet")
    meta_path = folder / "meta.json"
    meta = {**json.loads(meta_path.read_text()), "config": load_recipe("tutorial").to_dict()}
    meta_path.write_bytes(raw_meta if raw_meta is not None else json.dumps(change_meta(meta)).encode())
    return folder


def overflowing(folder: Path) -> Path:
    """The checkpoint with every weight × 1e30: finite on disk (as a diverging run may save
    it), NaN/inf once multiplied through the layers."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    save_file({k: v * 1e30 if v.is_floating_point() else v for k, v in weights.items()}, folder / "model.safetensors")
    return folder


def fake_run(tmp: Path, name: str = "run", eval_text: str | None = None, metrics_text: str = "") -> Path:
    """A finished-looking run directory (what compare and report read before anything else)."""
    from cifarlab.config import load_recipe

    run = tmp / name
    run.mkdir()
    (run / "config.yaml").write_text(load_recipe("tutorial").to_yaml())
    result = {"accuracy": 0.5, "loss": 1.0, "macro_f1": 0.5, "train_seconds": 1.0, "checkpoint": "best",
              "per_class": {c: {} for c in CIFAR10_CLASSES}, "confusion_matrix": [], "num_images": 10}  # fmt: skip
    (run / "eval.json").write_text(eval_text if eval_text is not None else json.dumps(result, indent=2))
    (run / "metrics.jsonl").write_text(metrics_text)
    return run


def image_folder(tmp: Path) -> Path:
    from PIL import Image

    root = tmp / "photos"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(root / name / f"{i}.png")
    (root / "bird").mkdir()  # the empty class
    return root


def pt_file(tmp: Path, obj, name: str = "weights.pt") -> Path:
    torch.save(obj, tmp / name)
    return tmp / name


# ------------------------------------------------------------------------------ machinery
def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` (but the fake HOME) with its size and mtime."""
    out = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if rel.parts[0] != "home":
            stat = path.lstat()  # a folder's mtime changes when a temporary file comes and goes: not compared
            out[str(rel)] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (0, 0)
    return out


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def assert_refused(args, cwd: Path, expected: str, allowed=()) -> str:
    """Run the CLI; check exit code, the one error line, and that no file appeared or changed."""
    before = tree(cwd)
    done = run_cli(*args, cwd=cwd)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1, done.stderr
    assert expected in errors[0], errors[0]
    after = {k: v for k, v in tree(cwd).items() if not any(k.startswith(a) for a in allowed)}
    assert after == {k: v for k, v in before.items() if not any(k.startswith(a) for a in allowed)}
    assert not (cwd / MARKER).exists()
    print(f"{' '.join(map(str, args))}\n  -> exit {done.returncode}: {errors[0]}")  # shown by pytest -rP
    return errors[0]


@pytest.fixture
def mount(tmp_path):
    """mount(name, options): a tmpfs at tmp_path/name (read-only or tiny); unmounted afterwards."""
    mounted = []

    def make(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", str(target)], check=True)


# ------------------------------------------------------------------------------ the cases
# id: (setup(tmp, synthetic_root) -> extra args, expected words in the error line)
CASES = {
    # options and names
    "lr-nan": (lambda t, r: [*TRAIN, "--lr", "nan"], "optim.lr=nan: NaN and infinity are not allowed"),
    "lr-inf": (lambda t, r: [*TRAIN, "--lr", "inf"], "optim.lr=inf: NaN and infinity"),
    "set-betas-nan": (lambda t, r: [*TRAIN, "--set", "optim.betas=[.nan, 0.9]"], "optim.betas=[nan, 0.9]"),
    "epochs-0": (lambda t, r: [*TRAIN, "--epochs", "0"], "train.epochs=0 is out of range"),
    "batch-size-negative": (lambda t, r: [*TRAIN, "--batch-size", "-1"], "train.batch_size=-1 is out of range"),
    "log-every-0": (lambda t, r: [*TRAIN, "--set", "train.log_every=0"], "train.log_every=0 is out of range"),
    "momentum-1.5": (lambda t, r: [*TRAIN, "--set", "optim.momentum=1.5"], "optim.momentum=1.5 is out of range"),
    "tta-share-2": (lambda t, r: [*TRAIN, "--set", "train.tta_share=2"], "train.tta_share=2.0 is out of range"),
    "eval-tta-share-0": (lambda t, r: ["eval", checkpoint(t), "--tta", "--tta-share", "0"],
                         "--tta-share=0.0 is out of range"),
    "low-res-32": (lambda t, r: [*TRAIN, "--set", "train.low_res=32", "--set", "train.low_res_share=0.5"],
                   "train.low_res=32 is out of range"),
    "low-res-every-epoch": (lambda t, r: [*TRAIN, "--set", "train.low_res=16", "--set", "train.low_res_share=1"],
                            "train.low_res_share=1.0 is out of range"),
    "low-res-fixed-size-model": (lambda t, r: [*TRAIN, "--data-dir", r, "--out", "run", "--epochs", "2", "--set",
                                               "train.low_res=16", "--set", "train.low_res_share=0.5"],
                                 "model lenet does not take 16×16 images"),
    "low-res-vit": (lambda t, r: [*TRAIN, "--model", "vit_lite_7_4", "--data-dir", r, "--out", "run", "--epochs", "2",
                                  "--set", "train.low_res=16", "--set", "train.low_res_share=0.5"],
                    "model vit_lite_7_4 does not take 16×16 images"),  # torchvision's ViT asserts its image size
    "drop-easy-all": (lambda t, r: [*TRAIN, "--set", "train.drop_easy=1", "--set", "train.drop_easy_share=0.5"],
                      "train.drop_easy=1.0 is out of range"),
    "drop-easy-every-epoch": (lambda t, r: [*TRAIN, "--set", "train.drop_easy=0.3", "--set", "train.drop_easy_share=1"],
                              "train.drop_easy_share=1.0 is out of range"),
    "drop-easy-semi": (lambda t, r: [*TRAIN, "--labels-per-class", "10", "--semi", "fixmatch", "--set",
                                     "train.drop_easy=0.3", "--set", "train.drop_easy_share=0.5"],
                       "train.drop_easy is not used with semi-supervised training"),
    "drop-easy-less-than-a-batch": (lambda t, r: [*TRAIN, "--data-dir", r, "--out", "run", "--epochs", "2", "--set",
                                                  "train.drop_easy=0.99", "--set", "train.drop_easy_share=0.5"],
                                    "training images, less than a batch"),
    "std-zero": (lambda t, r: [*TRAIN, "--set", "data.std=[0, 0, 0]"], "data.std must be three numbers"),
    "set-no-value": (lambda t, r: [*TRAIN, "--set", "lr"], "--set expects section.key=value"),
    "set-unknown-key": (lambda t, r: [*TRAIN, "--set", "optim.lrr=1"], "unknown key 'optim.lrr'"),
    "unknown-recipe": (lambda t, r: ["train", "--recipe", "nope"], "unknown recipe 'nope'"),
    "unknown-model": (lambda t, r: [*TRAIN, "--model", "resnet9000"], "unknown model 'resnet9000'"),
    "unknown-dataset": (lambda t, r: [*TRAIN, "--dataset", "cifar11"], "data.dataset='cifar11' is not allowed"),
    "unknown-class": (lambda t, r: [*TRAIN, "--data-dir", r, "--dataset", "cifar10:cat,unicorn", "--out", "run"],
                      "unknown class(es) 'unicorn'"),
    "epochs-not-a-number": (lambda t, r: [*TRAIN, "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    "unknown-command": (lambda t, r: ["trian"], "invalid choice: 'trian'"),
    "models-unknown-name": (lambda t, r: ["models", "nope"], "unknown model 'nope'"),
    "predict-top-k-0": (lambda t, r: ["predict", checkpoint(t), "x.png", "--top-k", "0"], "--top-k must be at least 1"),
    # paths
    "config-missing": (lambda t, r: [*TRAIN, "--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
    "config-folder": (lambda t, r: [*TRAIN, "--config", t], "is a folder, not a file"),
    "data-dir-missing": (lambda t, r: [*TRAIN, "--data-dir", "nowhere", "--out", "run"], "'nowhere' does not exist"),
    "out-is-a-file": (lambda t, r: [*TRAIN, "--data-dir", r, "--out", t / "config.txt"], "is a file, not a folder"),
    "out-under-a-file": (lambda t, r: [*TRAIN, "--data-dir", r, "--out", t / "config.txt" / "run"],
                         "is a file, not a folder"),
    "out-in-sys": (lambda t, r: [*TRAIN, "--data-dir", r, "--out", "/sys/cifarlab-run"], "/sys/cifarlab-run"),
    "eval-missing": (lambda t, r: ["eval", "no-run"], "'no-run' does not exist"),
    "predict-missing-image": (lambda t, r: ["predict", checkpoint(t), "nope.png"], "image 'nope.png' does not exist"),
    "compare-no-eval": (lambda t, r: ["compare", folder(t / "unfinished")], "has no eval.json"),
    "data-show-out-not-png": (lambda t, r: ["data", "show", "--data-dir", r, "--out", "a.txt"], "must end in .png"),
    "finetune-missing-source": (lambda t, r: ["finetune", "--from", "nope", "--data", "cifar10"], "does not exist"),
    # corrupt and truncated files
    "config-not-utf8": (lambda t, r: [*TRAIN, "--config", write(t / "c.yaml", b"optim:\n  lr: \xff\n")],
                        "is not UTF-8 text"),
    "config-bad-yaml": (lambda t, r: [*TRAIN, "--config", write(t / "c.yaml", b"optim:\n  lr: [1,\n")],
                        "is not valid YAML (line"),
    "config-a-list": (lambda t, r: [*TRAIN, "--config", write(t / "c.yaml", b"- 1\n")], "expected a mapping"),
    "meta-not-utf8": (lambda t, r: ["eval", checkpoint(t, raw_meta=b'{"model": "\xff"}')], "is not UTF-8 text"),
    "meta-invalid-json": (lambda t, r: ["eval", checkpoint(t, raw_meta=b'{\n"model": "lenet",\n}')],
                          "is not valid JSON (line 3"),
    "meta-a-list": (lambda t, r: ["eval", checkpoint(t, raw_meta=b"[1, 2]")], "a JSON list, not an object"),
    "meta-no-mean": (lambda t, r: ["eval", checkpoint(t, lambda m: {k: v for k, v in m.items() if k != "mean"})],
                     "missing mean"),
    "meta-string-mean": (lambda t, r: ["eval", checkpoint(t, lambda m: {**m, "mean": "0.5"})],
                         "'mean' must be three numbers"),
    "meta-std-zero": (lambda t, r: ["predict", checkpoint(t, lambda m: {**m, "std": [0, 0, 0]}), "x.png"],
                      "'std' must be > 0"),
    "weights-overflow-eval": (lambda t, r: ["eval", overflowing(checkpoint(t)), "--data-dir", r],
                              "gives NaN/inf outputs for 200 of 200 images"),
    "weights-overflow-predict": (lambda t, r: ["predict", overflowing(checkpoint(t)), image_folder(t) / "cat" / "0.png"],
                                 "gives NaN/inf outputs for 1 of 1 images"),
    "weights-overflow-export": (lambda t, r: ["export", overflowing(checkpoint(t)), "--data-dir", r],
                                "gives NaN/inf outputs for 200 of 200 images"),
    "weights-overflow-quantize": (lambda t, r: ["quantize", overflowing(checkpoint(t)), "--int8", "--calib", "10",
                                                "--data-dir", r], "gives NaN/inf outputs for 200 of 200 images"),
    "meta-duplicate-classes": (lambda t, r: ["eval", checkpoint(t, lambda m: {**m, "classes": ["a", "a"]})],
                               "names a class twice"),
    "meta-no-config": (lambda t, r: ["eval", checkpoint(t, lambda m: {k: v for k, v in m.items() if k != "config"})],
                       "has no saved config"),
    "safetensors-truncated": (lambda t, r: ["eval", truncated(checkpoint(t) / "model.safetensors")],
                              "is truncated or corrupt"),
    "pt-hostile": (lambda t, r: ["finetune", "--from", pt_file(t, {"w": Hostile()}), "--arch", "lenet", "--data",
                                 "cifar10", "--data-dir", r, "--out", "run"], "holds code or objects other than tensors"),
    "pt-truncated": (lambda t, r: ["finetune", "--from", truncated(pt_file(t, {"w": torch.ones(3)})), "--arch", "lenet",
                                   "--data", "cifar10", "--data-dir", r, "--out", "run"], "is truncated or corrupt"),
    "pt-wrong-shapes": (lambda t, r: ["finetune", "--from", pt_file(t, {"conv1.weight": torch.ones(3)}), "--arch",
                                      "lenet", "--data", "cifar10", "--data-dir", r, "--out", "run", "--epochs", "1"],
                        "do not fit the model"),
    "eval-json-corrupt": (lambda t, r: ["compare", fake_run(t, eval_text='{\n"accuracy": 0.5,\n')],
                          "is not valid JSON (line 3"),
    "resume-finished-eval-corrupt": (lambda t, r: ["train", "--out", fake_run(t, eval_text='{"accuracy": 0.5,'),
                                                   "--resume"], "eval.json' is not valid JSON (line 1"),
    "metrics-line-3-corrupt": (lambda t, r: ["compare", fake_run(t, metrics_text='{"step": 1}\n{"step": 2}\n{"st\n')],
                               "metrics.jsonl' is not valid JSON (line 3"),
    "cifar-truncated": (lambda t, r: ["data", "info", "--data-dir", damaged(r, t, "data_batch_1")],
                        "is truncated or corrupt"),
    "cifar-hostile": (lambda t, r: ["data", "info", "--data-dir", hostile_batch(r, t)], "refused to load global"),
    "cifar-string-labels": (lambda t, r: ["data", "info", "--data-dir", rewrite_batch(
        r, t, "data_batch_2", lambda b: b.update(labels=[str(x) for x in b["labels"]]))], "one integer label per image"),
    "cifar-empty-batch": (lambda t, r: ["data", "info", "--data-dir", rewrite_batch(
        r, t, "data_batch_3", lambda b: b.update(labels=[], data=b["data"][:0]))], "holds no images"),
    "cifar-wrong-shape": (lambda t, r: ["data", "info", "--data-dir", rewrite_batch(
        r, t, "test_batch", lambda b: b.update(data=b["data"][:, :1024]))], "not a uint8 array of shape (N, 3072)"),
    "cifar-11-classes": (lambda t, r: ["data", "info", "--data-dir", rewrite_batch(
        r, t, "batches.meta", lambda b: b["label_names"].append("unicorn"))], "must be 10 different names, got 11"),
    "cifar-duplicate-classes": (lambda t, r: ["data", "info", "--data-dir", rewrite_batch(
        r, t, "batches.meta", lambda b: b.update(label_names=["cat"] * 10))], "(1 different)"),
    # robustness
    "robustness-unknown-corruption": (lambda t, r: ["robustness", checkpoint(t), "--corruptions", "fog,rain"],
                                      "unknown corruption(s) 'rain'"),
    "robustness-severity-6": (lambda t, r: ["robustness", checkpoint(t), "--severities", "4-6"],
                              "--severities [6] out of range; severities are 1 to 5"),
    "robustness-severity-text": (lambda t, r: ["robustness", checkpoint(t), "--severities", "high"],
                                 "is not a list of severities"),
    "robustness-eps-0": (lambda t, r: ["robustness", checkpoint(t), "--eps", "0"], "--eps=0.0 is out of range"),
    "robustness-eps-text": (lambda t, r: ["robustness", checkpoint(t), "--eps", "8/two"], "--eps '8/two' is not a number"),
    "robustness-unknown-attack": (lambda t, r: ["robustness", checkpoint(t), "--attack", "cw"], "unknown attack(s) 'cw'"),
    "robustness-no-checkpoint": (lambda t, r: ["robustness", folder(folder(t / "run") / "checkpoints").parent],
                                 "has no checkpoint yet"),
    "robustness-limit-0": (lambda t, r: ["robustness", checkpoint(t), "--limit", "0"], "--limit=0 is out of range"),
    "robustness-limit-too-large": (lambda t, r: ["robustness", write_run_checkpoint(t / "ckpt", r), "--limit", "500"],
                                   "--limit=500 is more than the 200 test images"),
    # robust training
    "adversarial-eps-0": (lambda t, r: [*TRAIN, "--set", "train.adversarial_eps=0"],
                          "train.adversarial_eps=0.0 is out of range; it must be > 0"),
    "adversarial-unknown": (lambda t, r: [*TRAIN, "--set", "train.adversarial=cw"],
                            "train.adversarial='cw' is not allowed; choose one of: none, fgsm, nfgsm, pgd"),
    "adversarial-check-negative": (lambda t, r: [*TRAIN, "--set", "train.adversarial_check=-1"],
                                   "train.adversarial_check=-1 is out of range; it must be >= 0"),
    "noise-sigma-negative": (lambda t, r: [*TRAIN, "--set", "augment.noise_sigma=-0.1"],
                             "augment.noise_sigma=-0.1 is out of range; it must be in [0, 1]"),
    "impulse-amount-above-one": (lambda t, r: [*TRAIN, "--set", "augment.impulse_amount=1.5"],
                                 "augment.impulse_amount=1.5 is out of range; it must be in [0, 1]"),
    "contrast-above-one": (lambda t, r: [*TRAIN, "--set", "augment.contrast=1.2"],
                           "augment.contrast=1.2 is out of range; it must be in [0, 1]"),
    "unknown-activation": (lambda t, r: [*TRAIN, "--data-dir", r, "--model", "airbench", "--out", "run", "--set",
                                         "model.options.activation=relu6"],
                           "unknown activation 'relu6'; choose one of: gelu, silu"),
    "jsd-weight-negative": (lambda t, r: [*TRAIN, "--set", "optim.jsd_weight=-1"],
                            "optim.jsd_weight=-1.0 is out of range; it must be >= 0"),
    "jsd-without-augmix": (lambda t, r: [*TRAIN, "--set", "optim.jsd_weight=12"], "needs augment.policy=augmix"),
    "folder-empty-class": (lambda t, r: [*TRAIN, "--dataset", f"folder:{image_folder(t)}", "--out", "run"],
                           "bird hold no readable image"),
}


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncated(path: Path) -> Path:
    truncate(path)
    return path


def damaged(root: Path, tmp: Path, name: str) -> Path:
    data = copy_data(root, tmp)
    truncate(data / "cifar-10-batches-py" / name)
    return data


def hostile_batch(root: Path, tmp: Path) -> Path:
    data = copy_data(root, tmp)
    with open(data / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": Hostile()}, f, protocol=2)
    return data


@pytest.mark.slow  # a subprocess each (importing torch: a few seconds)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, synthetic_root, tmp_path):
    setup, expected = CASES[case]
    (tmp_path / "config.txt").write_text("a file where a folder is expected\n")
    args = setup(tmp_path, synthetic_root)
    assert_refused(args, tmp_path, expected)


# ------------------------------------------------------------------------------ read-only folders, full disk
@pytest.mark.slow
@pytest.mark.parametrize("command, written", [
    ([*TRAIN, "--out", "ro/run"], "ro/run"), (["data", "show", "--out", "ro/overview.png"], "ro/overview.png"),
    (["compare", "run", "--out", "ro/c.html"], "ro/c.png"),
])  # fmt: skip
def test_read_only_folder(command, written, mount, synthetic_root, tmp_path):
    mount("ro", "ro,size=64k")
    fake_run(tmp_path)
    assert_refused([*command, "--data-dir", synthetic_root] if command[0] != "compare" else command, tmp_path,
                   f"read-only file system: cannot write '{written}'")


@pytest.mark.slow
@pytest.mark.parametrize("size, written_by", [("64k", "model.safetensors"), ("600k", "state.pt")])
def test_full_disk(size, written_by, mount, synthetic_root, tmp_path):
    """safetensors and torch.save each report a full disk in their own words; both become one line.
    The run keeps its complete config.yaml and metrics.jsonl (it can be resumed), but no partial
    checkpoint."""
    disk = mount("disk", f"size={size}")
    message = assert_refused([*TRAIN, "--data-dir", synthetic_root, "--out", "disk/run", "--train-subset", "200"],
                             tmp_path, "no space left on device while writing", allowed=("disk/run",))  # fmt: skip
    assert written_by in message
    assert not list(disk.rglob("*.partial")) and not list(disk.rglob("*.tmp"))


def test_hostile_pt_never_runs(tmp_path):
    """The marker file of the hostile pickle is what the subprocess cases check for: make sure
    that loading it for real would have created it."""
    os.chdir(tmp_path)
    pickle.loads(pickle.dumps(Hostile()))
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("code, expected", [
    (errno.ENOSPC, "no space left on device while writing 'x/y'"), (errno.EACCES, "permission denied: 'x/y'"),
    (errno.EROFS, "read-only file system: cannot write 'x/y'"), (errno.EEXIST, "'x/y' already exists"),
])  # fmt: skip
def test_os_errors_reaching_the_cli_are_one_line(code, expected, monkeypatch, capsys):
    def fail():
        raise OSError(code, os.strerror(code), "x/y")

    monkeypatch.setattr("cifarlab.cli._recipes", fail)
    assert main(["recipes"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {expected}")


def test_bit_flip_in_an_official_file_is_caught(real_root, tmp_path):
    """A file with the official size but not the official md5 is refused before it is parsed."""
    from cifarlab.data import load_split
    from cifarlab.errors import CifarlabError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for path in (real_root / "cifar-10-batches-py").iterdir():
        (folder / path.name).symlink_to(path)
    (folder / "test_batch").unlink()
    data = bytearray((real_root / "cifar-10-batches-py" / "test_batch").read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one pixel
    (folder / "test_batch").write_bytes(data)
    with pytest.raises(CifarlabError, match="not its md5"):
        load_split("cifar10", "test", tmp_path)
    assert len(load_split("cifar10", "test", real_root)) == 10_000  # the intact file loads
