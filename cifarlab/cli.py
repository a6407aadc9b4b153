"""`cifarlab` command line: argument parsing and printing only; the work is done by the library."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import CifarlabError


def _add_data_location(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding the dataset folder (default: $CIFARLAB_DATA, ./data, ~/.cache/cifarlab)")
    p.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | cifar100-coarse (default: cifar10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarlab", description=__doc__.split(":")[0])
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="find, check or download a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    for name, text in (("info", "where the data is and what it holds"), ("verify", "compare files with the official md5s")):
        _add_data_location(data_commands.add_parser(name, help=text))
    download = data_commands.add_parser("download", help="download the official archive (md5-checked)")
    _add_data_location(download)
    download.add_argument("--url", help="a mirror of the official archive (still md5-checked)")
    download.add_argument("--md5", help="expected md5 of the archive at --url (default: the official one)")

    models = commands.add_parser("models", help="registered models: parameters and MFLOPs per image")
    models.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    models.add_argument("--measure", action="store_true", help="also measure CPU train and inference images/s here")
    commands.add_parser("recipes", help="named training recipes and what they reach")

    train = commands.add_parser("train", help="train a model and test it once at the end")
    train.add_argument("--recipe", help="named recipe (see `cifarlab recipes`; default: the default recipe)")
    train.add_argument("--config", help="YAML file of settings applied over the recipe")
    train.add_argument("--model", help="model name (see `cifarlab models`)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--seed", type=int)
    train.add_argument("--train-subset", type=int, metavar="N", help="train on a stratified subset of N images")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    train.add_argument("--dataset", help="cifar10 | cifar100 | cifar100-coarse")
    train.add_argument("--data-dir")
    train.add_argument("--out", help="run directory (default: runs/<recipe>)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. optim.wd=0")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    evaluate = commands.add_parser("eval", help="evaluate a run or checkpoint on val or test")
    evaluate.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument("--split", default="test", choices=["val", "test"])
    evaluate.add_argument(
        "--tta", nargs="?", const="flip-translate", default="none", choices=["none", "flip", "flip-translate"],
        help="test-time augmentation (bare --tta: flip-translate)",
    )  # fmt: skip
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")

    predict = commands.add_parser("predict", help="classify image files (any size; resized to 32×32)")
    predict.add_argument("source", metavar="CHECKPOINT")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--device", default="auto")
    return parser


def _data(args) -> None:
    from .data import datasets, download, locate, verify

    if args.data_command == "download":
        root = download(args.dataset, args.data_dir, url=args.url, md5=args.md5)
        print(f"{args.dataset}: {root / datasets.get_spec(args.dataset).folder}")
    elif args.data_command == "verify":
        folder, checks = verify(args.dataset, args.data_dir)
        print(f"{args.dataset}: {folder}")
        for check in checks:
            print(f"  {check.file:<14} {check.status:<13} {check.md5 or ''}")
        bad = [c.file for c in checks if c.status != "ok"]
        if bad:
            raise CifarlabError(
                f"{len(bad)} file(s) differ from the official release: {', '.join(bad)}. If this is not a "
                f"deliberate subset, delete '{folder}' and run `cifarlab data download`."
            )
    else:
        folder = locate(args.dataset, args.data_dir, download=False)
        print(f"{args.dataset}: {folder}")
        for split in ("train", "test"):
            data = datasets.load_split(args.dataset, split, args.data_dir, download=False)
            images = data.images.double() / 255
            counts = data.labels.bincount(minlength=len(data.classes)).tolist()
            mean = ", ".join(f"{v:.4f}" for v in images.mean((0, 2, 3)).tolist())
            std = ", ".join(f"{v:.4f}" for v in images.std((0, 2, 3)).tolist())
            print(f"  {split}: {len(data)} images {tuple(data.images.shape[1:])} uint8, {len(data.classes)} classes, "
                  f"per class {min(counts)}..{max(counts)}; mean ({mean}) std ({std})")  # fmt: skip
        print(f"  classes: {', '.join(data.classes)}")


def _models(args) -> None:
    import torch

    from .models import create_model, describe_model, list_models, model_stats
    from .models.measure import measure_throughput

    names = args.names or list_models()
    for name in names:
        describe_model(name)  # an unknown name fails here, before any measuring
    speed_header = f" {'train img/s':>11} {'infer img/s':>11}" if args.measure else ""
    print(f"{'model':<19} {'params':>11} {'MFLOPs':>9}{speed_header}  description")
    for name in names:
        stats = model_stats(name)
        speed = ""
        if args.measure:
            throughput = measure_throughput(create_model(name))
            speed = f" {throughput.train:>11.1f} {throughput.infer:>11.1f}"
        print(f"{name:<19} {stats.params:>11,} {stats.mflops:>9.1f}{speed}  {describe_model(name)}", flush=True)
    print("MFLOPs: forward pass of one 32×32 image, counted by torch.utils.flop_counter (multiply-add = 2).")
    if args.measure:
        print(f"img/s: this CPU, {torch.get_num_threads()} threads, fp32, channels_last, batch 64; train = forward, "
              "backward and SGD step.")


def _recipes() -> None:
    from .config import DEFAULT_RECIPE, list_recipes

    for name, description in list_recipes().items():
        print(f"{name}{' (default)' if name == DEFAULT_RECIPE else ''}\n    {description}")


def _train(args) -> None:
    from .config import resolve
    from .engine import train

    flags = {
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
                  "out": args.out},
        "optim": {"lr": args.lr},
        "data": {"train_subset": args.train_subset, "dataset": args.dataset, "data_dir": args.data_dir},
    }  # fmt: skip
    flags = {section: {k: v for k, v in values.items() if v is not None} for section, values in flags.items()}
    config = resolve(args.recipe, args.config, flags, args.set)
    if args.print_config:
        print(config.to_yaml(), end="")
        return
    train(config, resume=args.resume)


def _eval(args) -> None:
    from .engine import evaluate
    from .engine.evaluate import format_report

    metrics = evaluate(args.source, split=args.split, tta=args.tta, data_dir=args.data_dir, device=args.device)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['checkpoint']} on {args.split} ({metrics['num_images']} images, tta={args.tta}):")
        print(format_report(metrics, list(metrics["per_class"])))


def _predict(args) -> None:
    from .engine import classify_images

    if args.top_k < 1:
        raise CifarlabError("--top-k must be at least 1")
    for path, top in zip(args.images, classify_images(args.source, args.images, args.top_k, args.device)):
        print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in top))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data":
            _data(args)
        elif args.command == "models":
            _models(args)
        elif args.command == "recipes":
            _recipes()
        elif args.command == "train":
            _train(args)
        elif args.command == "eval":
            _eval(args)
        elif args.command == "predict":
            _predict(args)
    except CifarlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; `cifarlab train ... --resume` continues from checkpoints/last", file=sys.stderr)
        return 130
    return 0
