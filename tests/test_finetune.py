"""Fine-tuning: head surgery, strategies (frozen, per-layer lrs, held layers), sources
(cifarlab checkpoints, torchvision weights files), targets (class subsets, image folders)."""

import functools
import json
import os
import pickle
import re
import urllib.error
from importlib.util import find_spec

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file

import cifarlab
from cifarlab.cli import main
from cifarlab.config import DataConfig, resolve
from cifarlab.data import channel_stats, make_splits
from cifarlab.engine.optim import build_optimizers, set_learning_rates
from cifarlab.errors import CifarlabError
from cifarlab.models import create_model, list_models
from cifarlab.models.external import ResizeInputs
from cifarlab.transfer import finetune_config, pretrained_model
from cifarlab.transfer.surgery import depth_groups, fresh_keys, load_source
from helpers import per_model, write_source_checkpoint


def small_finetune(source, target, strategy, data_root, out, *sets, **kwargs):
    sets = [f"data.data_dir={data_root}", f"train.out={out}", "train.epochs=1", "train.batch_size=20",
            "train.tta=none", *sets]  # fmt: skip
    return cifarlab.finetune(source, target, strategy, sets=sets, verbose=False, **kwargs)


# ------------------------------------------------------------------------------ head surgery
@pytest.mark.parametrize("name, options", per_model([(n, {}) for n in list_models()] + [
    ("torchvision:resnet18", {}), ("torchvision:resnet18", {"cifar_stem": True}), ("torchvision:mobilenet_v3_small", {}),
]))  # fmt: skip
def test_head_surgery_keeps_every_weight_but_the_head(name, options):
    torch.manual_seed(0)
    weights = create_model(name, num_classes=10).state_dict()  # the source: 10 classes, default options
    torch.manual_seed(1)
    model = create_model(name, num_classes=7, **options)
    fresh = fresh_keys(model, 7, name, {})
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    load_source(model, weights, fresh, "source")
    state = model.state_dict()
    heads = {k.rpartition(".")[0] for k in fresh if state[k].ndim > 1 and state[k].shape[0] == 7}
    assert len(heads) == 1, f"one module makes the 7 logits, got {heads}"  # the replaced head ...
    (head,) = heads
    stem = {k for k in fresh if not k.startswith(f"{head}.")}
    assert stem == ({"conv1.weight"} if options else set())  # ... plus a replaced stem, nothing else
    for k, v in state.items():  # fresh keys keep their new initialization, all others are the source's
        assert torch.equal(v, initial[k] if k in fresh else weights[k]), k
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def record_first_call(calls: dict[str, int], name: str, module, args) -> None:
    calls.setdefault(name, len(calls))


@pytest.mark.parametrize("name", list_models())
def test_depth_groups_follow_the_forward_pass_from_stem_to_head(name):
    """Layer-wise lrs and gradual unfreezing count layers from the head down, so `depth_groups` must
    list every parameter once, in the order the forward pass reaches them, the head last: each
    parameter is timed by the first call of the module that holds it (on the meta device)."""
    with torch.device("meta"):
        model = create_model(name).eval()
    first_call, owner = {}, {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owner[f"{module_name}.{param_name}".lstrip(".")] = module_name
        module.register_forward_pre_hook(functools.partial(record_first_call, first_call, module_name))
    model(torch.zeros(1, 3, 32, 32, device="meta"))
    order = depth_groups(model)
    assert sorted(n for layer in order for n in layer) == sorted(owner)  # every parameter, once
    def time(module_name: str) -> int:  # a module used through its parent's call (MHA's out_proj): the parent's
        while module_name not in first_call:
            module_name = module_name.rpartition(".")[0]
        return first_call[module_name]

    times = [[time(owner[n]) for n in layer] for layer in order]
    assert all(max(a) < min(b) for a, b in zip(times, times[1:])), order
    head = {k for k in fresh_keys(model, 10, name, {}) if k in owner}
    assert set(order[-1]) == head and len(order) >= 4


def test_vit_blocks_are_layers_of_their_own():
    order = depth_groups(create_model("vit_lite_7_4"))
    blocks = [layer for layer in order if layer[0].startswith("encoder.layers.")]
    assert len(blocks) == 7 and all(len({n.split(".")[2] for n in layer if n.startswith("encoder.layers.")}) == 1 for layer in blocks)


# --------------------------------------------------------------------------------- strategies
@pytest.mark.slow
@pytest.mark.parametrize("arch, strategy, trained", [
    ("resnet20", "linear", ("head.2.",)),
    ("resnet20", "gradual", ("head.2.", "blocks.8.")),  # 2 epochs: the head from epoch 0, the block below from 1
    ("airbench", "linear", ("head.",)),  # the finetune-fast recipe: its optimizer groups of frozen roles are fine
])  # fmt: skip
def test_frozen_and_held_parameters_get_no_updates(synthetic_root, tmp_path, arch, strategy, trained):
    source = write_source_checkpoint(tmp_path / "source", arch)
    sets = ["finetune.freeze_bn=true", "train.epochs=2", "finetune.unfreeze_every=1", "optim.weight_decay=0.01"]
    run = small_finetune(source, "cifar10:cat,dog", strategy, synthetic_root, tmp_path / "run", *sets)
    before = load_file(source / "model.safetensors")
    after = load_file(run.dir / "checkpoints" / "last" / "model.safetensors")
    assert after.keys() == before.keys() and next(v for k, v in after.items() if k.startswith(trained[0])).shape[0] == 2
    parameters = {name for name, _ in create_model(arch).named_parameters()}
    for key in before:  # the rest, BatchNorm statistics included (freeze_bn), is bit for bit the source's
        assert torch.equal(before[key], after[key]) != (key in parameters and key.startswith(trained)), key
    assert run.test["num_images"] == 40 and set(run.test["per_class"]) == {"cat", "dog"}


def test_layer_wise_lr_decay_and_unfreezing_schedule(tmp_path):
    source = write_source_checkpoint(tmp_path / "source", "resnet20")
    flags = {"finetune": {"source": str(source), "strategy": "gradual"}}
    sets = ["finetune.layer_decay=0.5", "finetune.unfreeze_every=2", "optim.lr=0.1", "optim.weight_decay=0.001"]
    config, opened = finetune_config(flags, "finetune", sets=sets)
    model, param_options = pretrained_model(config, 3, opened)
    (optimizer,) = build_optimizers(model, config.optim, batch_size=128, param_options=param_options)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    # depth below the head: resnet20 is stem, blocks.0 … blocks.8, head
    depth = {"stem.": 10, **{f"blocks.{i}.": 9 - i for i in range(9)}, "head.": 0}
    for name, param in model.named_parameters():
        d = next(d for prefix, d in depth.items() if name.startswith(prefix))
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(0.1 * 0.5**d), name
        assert group.get("start_epoch", 0) == 2 * d, name
        assert group["weight_decay"] == (0.001 if param.ndim > 1 or name.startswith("head.") else 0.0), name
    # at epoch 4 (10 steps per epoch): blocks.8 and 7 train; blocks.6 is held, its gradients dropped
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    set_learning_rates([optimizer], step=40, total_steps=1000, steps_per_epoch=10, cfg=config.optim)
    for block, active in ((8, True), (7, True), (6, False)):
        conv = model.blocks[block].conv1.weight
        assert (group_of[id(conv)]["lr"] > 0) == active and (conv.grad is not None) == active


# ------------------------------------------------------------------------------------ sources
@pytest.mark.slow
def test_torchvision_weights_file_offline(synthetic_root, tmp_path):
    torch.manual_seed(0)
    imagenet_like = torchvision.models.resnet18()  # stands for downloaded ImageNet weights
    torch.save(imagenet_like.state_dict(), tmp_path / "resnet18.pth")
    run = small_finetune(tmp_path / "resnet18.pth", "cifar10:cat,dog", "full", synthetic_root, tmp_path / "run",
                         "finetune.input_size=48", arch="torchvision:resnet18")  # fmt: skip
    assert run.config.recipe == "finetune" and run.config.model.name == "torchvision:resnet18"
    assert run.config.model.options == {"input_size": 48}
    assert run.config.data.mean == [0.485, 0.456, 0.406]  # the weights' normalization, not CIFAR's
    # eval/predict rebuild the same net from meta.json alone: torchvision's resnet18, 2 classes, upsampling
    model = cifarlab.load_model(run.dir)
    assert model.fc.out_features == 2 and isinstance(model.conv1, torch.nn.Conv2d)
    (hook,) = model._forward_pre_hooks.values()
    assert isinstance(hook, ResizeInputs) and hook.size == 48
    assert cifarlab.evaluate(run.dir)["accuracy"] == run.test["accuracy"]


def test_torchvision_download_failure_says_how_to_work_offline(synthetic_root, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(CifarlabError, match=r"ResNet18_Weights.IMAGENET1K_V1 .*no network.*--arch torchvision:resnet18"):
        small_finetune("torchvision:resnet18:IMAGENET1K_V1", "cifar10:cat,dog", "linear", synthetic_root, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_timm_weights_file(synthetic_root, tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    run = small_finetune(tmp_path / "resnet18.pth", "cifar10:cat,dog", "linear", synthetic_root, tmp_path / "run",
                         arch="timm:resnet18")  # fmt: skip
    assert run.test["num_images"] == 40 and cifarlab.load_model(run.dir).fc.out_features == 2


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_sources_and_targets_give_clear_errors(synthetic_root, tmp_path, capsys):
    torch.save(create_model("resnet20").state_dict(), tmp_path / "resnet20.pt")
    save_file(create_model("simple_cnn").state_dict(), tmp_path / "cnn.safetensors")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": _Exploit(tmp_path / "pwned")}, protocol=2))
    checkpoint = write_source_checkpoint(tmp_path / "source", "lenet")
    cases = [
        (["--from", str(tmp_path / "resnet20.pt"), "--arch", "resnet18"],
         r"do not fit the model; missing: blocks\.2\.shortcut.*unexpected: blocks\.8\."),
        (["--from", str(tmp_path / "cnn.safetensors"), "--arch", "lenet"],
         r"shape mismatch: 0\.weight \(64, 3, 3, 3\) vs \(6, 3, 5, 5\)"),
        (["--from", str(tmp_path / "resnet20.pt")], "name the architecture it was saved from with --arch"),
        (["--from", str(tmp_path / "evil.pt"), "--arch", "resnet20"], "holds code or objects other than tensors.*refused"),
        (["--from", str(tmp_path / "nowhere")], "'.*nowhere' does not exist; give a run directory"),
        (["--from", "torchvision:resnet9000"], "unknown torchvision model 'resnet9000'"),
        (["--from", "torchvision:resnet18:NOPE"], "no weights 'NOPE' for resnet18; it has: IMAGENET1K_V1"),
        (["--from", str(checkpoint), "--arch", "lenet"], "records its architecture"),
        (["--from", str(checkpoint), "--input-size", "64"], "'lenet' is made for them already"),
        (["--from", str(checkpoint), "--data", "cifar10:cat,dgo"], "unknown class.*'dgo'.*cifar10 has: airplane"),
        (["--from", str(checkpoint), "--data", "cifar10:cat"], "two or more comma-separated names"),
        (["--from", str(checkpoint), "--labels-per-class", "51"], "class 'airplane' has only 50 training images"),
        (["--from", str(checkpoint), "--data", f"folder:{tmp_path / 'no-folder'}"], "image folder .* does not exist"),
    ]  # fmt: skip
    if find_spec("timm") is None:
        cases.append((["--from", "timm:resnet18"], "need the timm package: pip install timm"))
    for args, message in cases:
        argv = ["finetune", "--data", "cifar10", *args, "--data-dir", str(synthetic_root), "--out", str(tmp_path / "r")]
        assert main(argv) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert re.search(message, err), (message, err)
        assert not (tmp_path / "r").exists()  # nothing half-written
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------ targets
def test_class_subset_and_labels_per_class(synthetic_root):
    splits = make_splits(DataConfig("cifar10:dog,cat", str(synthetic_root), val_size=10, labels_per_class=20))
    assert splits.classes == ["dog", "cat"] and splits.mean == (0.4914, 0.4822, 0.4465)
    assert splits.train.labels.bincount().tolist() == [15, 15] and splits.val.labels.bincount().tolist() == [5, 5]
    assert len(splits.unlabelled) == 60 and splits.unlabelled.labels is None  # val comes out of the 20 labels per class
    assert splits.test.labels.bincount().tolist() == [20, 20]  # synthetic: 20 test images per class
    everything = make_splits(DataConfig("cifar10", str(synthetic_root), val_size=10))
    dogs = everything.test.images[everything.test.labels == 5]
    assert torch.equal(splits.test.images[splits.test.labels == 0], dogs)


def write_image_folder(root, per_class=8):
    """3 classes of coloured noise in 5 formats and sizes, plus 2 corrupt files and a non-image."""
    formats = [("png", "RGB", (40, 30)), ("jpg", "L", (64, 64)), ("bmp", "RGB", (20, 20)),
               ("webp", "RGBA", (100, 50)), ("png", "P", (33, 33))]  # fmt: skip
    rng = torch.Generator().manual_seed(0)
    for c, (name, colour) in enumerate([("circle", (200, 40, 40)), ("square", (40, 200, 40)), ("stripes", (40, 40, 200))]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ext, mode, (w, h) = formats[(i + c) % len(formats)]
            noise = torch.randint(-30, 31, (h, w, 3), generator=rng)
            pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).convert(mode).save(root / name / f"{i}.{ext}")
    (root / "circle" / "broken.png").write_bytes(b"not an image at all")
    (root / "square" / "truncated.jpg").write_bytes((root / "square" / "0.jpg").read_bytes()[:200])
    (root / "stripes" / "notes.txt").write_text("not an image file: ignored")
    return root


def test_image_folder_mixed_formats_and_corrupt_files(tmp_path, capsys):
    root = write_image_folder(tmp_path / "shapes")
    splits = make_splits(DataConfig(f"folder:{root}", image_size=24, val_size=3))
    err = capsys.readouterr().err
    assert "skipped 2 of 26 image files" in err and "broken.png" in err and "truncated.jpg" in err
    assert splits.classes == ["circle", "square", "stripes"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (19, 3, 2)  # 24 readable: 10% test, then 3 val
    assert splits.train.images.shape[1:] == (3, 24, 24) and splits.train.images.dtype == torch.uint8
    assert splits.mean == channel_stats(splits.train.images)[0]  # its own statistics, not CIFAR's
    red = splits.train.images[splits.train.labels == 0].double().mean((0, 2, 3))
    assert red[0] > 150 and red[1] < 90  # the circles' colour survived every format
    # given splits: test/ is used as it is, val carved from train/
    given = tmp_path / "given"
    write_image_folder(given / "train")
    write_image_folder(given / "test", per_class=2)
    splits = make_splits(DataConfig(f"folder:{given}", val_size=3))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (21, 3, 6)


def test_finetune_on_an_image_folder_then_eval_and_predict(tmp_path, capsys):
    root = write_image_folder(tmp_path / "shapes")
    source = write_source_checkpoint(tmp_path / "source", "lenet")
    out = tmp_path / "run"
    argv = ["finetune", "--from", str(source), "--data", f"folder:{root}", "--strategy", "full", "--epochs", "2",
            "--batch-size", "4", "--set", "data.val_size=3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "eval.json").read_text())
    assert set(result["per_class"]) == {"circle", "square", "stripes"} and result["num_images"] == 2
    config = resolve(config_file=str(out / "config.yaml"))
    assert config.data.mean == [0.5, 0.4, 0.3]  # the source's normalization
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 3
    assert main(["predict", str(out), str(root / "square" / "2.webp"), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("circle", "square", "stripes"))
    # nothing readable: one clear error, no run
    for path in root.rglob("*.*"):
        path.write_bytes(b"garbage")
    assert main([*argv[:-1], str(tmp_path / "run2")]) == 2
    assert "no readable image" in capsys.readouterr().err and not (tmp_path / "run2").exists()
