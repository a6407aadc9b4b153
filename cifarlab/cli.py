"""`cifarlab` command line: argument parsing and printing only; the work is done by the library."""

from __future__ import annotations

import argparse
import json
import sys
from typing import get_args

from . import __version__
from .config import CIFAR_DATASETS, ActiveConfig, ActiveStrategy, QuantBackend, QuantizeConfig, choices
from .errors import CifarlabError, describe_os_error

DATASET_HELP = f"{' | '.join(CIFAR_DATASETS)}, a class subset (cifar10:cat,dog), folder:PATH"


def _add_data_location(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding the dataset folder (default: $CIFARLAB_DATA, ./data, ~/.cache/cifarlab)")
    p.add_argument("--dataset", default="cifar10", help=f"{' | '.join(CIFAR_DATASETS)} (default: cifar10)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that makes a run (train, finetune)."""
    p.add_argument("--recipe", help="named recipe (see `cifarlab recipes`; default: the command's default recipe)")
    p.add_argument("--config", help="YAML file of settings applied over the recipe")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float,
                   help="peak learning rate (optim.lr) of the parameter groups without their own lr in optim.groups; "
                        "on fast, fast90 and finetune-fast only the BatchNorm and whitening biases (per 1024 "
                        "examples): the filters and the head have their own lr there")  # fmt: skip
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="run directory (default: runs/<recipe>, or runs/<recipe>-N when that is taken)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. optim.wd=0")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its saved settings (--out RUN is enough)")  # fmt: skip
    p.add_argument("--tensorboard", action="store_true", help="log live to RUN_DIR/tensorboard (train.tensorboard)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report at the end (train.report=false)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one `error:` line every other failure gets (argparse
    prints the usage block first); subcommand parsers are made of this class too."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifarlab", description=__doc__.split(":")[0])
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="find, check or download a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    for name, text in (("info", "where the data is and what it holds"), ("verify", "compare files with the official md5s")):
        _add_data_location(data_commands.add_parser(name, help=text))
    show = data_commands.add_parser("show", help="sample images per class and statistics, saved as a PNG")
    _add_data_location(show)
    show.add_argument("--out", metavar="FILE.png", help="where to save the picture (default: <dataset>_overview.png)")
    download = data_commands.add_parser("download", help="download the official archive (md5-checked)")
    _add_data_location(download)
    download.add_argument("--url", help="a mirror of the official archive (still md5-checked)")
    download.add_argument("--md5", help="expected md5 of the archive at --url (default: the official one)")

    models = commands.add_parser("models", help="registered models: parameters and MFLOPs per image")
    models.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    models.add_argument("--measure", action="store_true", help="also measure CPU train and inference images/s here")
    commands.add_parser("recipes", help="named training recipes and what they reach")

    train = commands.add_parser("train", help="train a model and test it once at the end")
    _add_run_options(train)
    train.add_argument("--model", help="model name (see `cifarlab models`)")
    train.add_argument("--train-subset", type=int, metavar="N", help="train on a stratified subset of N images")
    train.add_argument("--labels-per-class", type=int, metavar="N",
                       help="keep the labels of N images per class (val and calib come out of them); "
                            "with --semi the other training images are an unlabelled pool")  # fmt: skip
    train.add_argument("--semi", metavar="METHOD",
                       help=f"learn from the unlabelled pool too: {' | '.join(choices('semi.method'))} (see `fast-semi`)")
    train.add_argument("--teacher", metavar="RUN",
                       help="--semi selftrain: the finished run, with the same labels, whose confident predictions "
                            "label the pool")  # fmt: skip
    train.add_argument("--distill-from", metavar="RUN",
                       help="also learn this finished run's softened predictions (knowledge distillation; "
                            "optim.distill_weight, optim.distill_temperature)")  # fmt: skip
    train.add_argument("--dataset", help=DATASET_HELP)

    finetune = commands.add_parser("finetune", help="adapt a pretrained model to a new task, then test it once")
    _add_run_options(finetune)
    finetune.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                          help="a run or checkpoint, torchvision:<model>[:<weights>], timm:<name>, or a weights file with --arch")  # fmt: skip
    finetune.add_argument("--data", dest="target", required=True, metavar="TARGET", help=DATASET_HELP)
    finetune.add_argument("--strategy", choices=choices("finetune.strategy"),
                          help="linear: train the new head only; full: everything (layer-wise lr decay); gradual: unfreeze from the top")  # fmt: skip
    finetune.add_argument("--labels-per-class", type=int, metavar="N",
                          help="keep the labels of N images per class (val and calib come out of them)")
    finetune.add_argument("--arch", help="architecture of a weights-file source (`cifarlab models`, torchvision:<model>, timm:<name>)")
    finetune.add_argument("--input-size", type=int, metavar="PX", help="torchvision/timm nets: upsample images to PX×PX")
    finetune.add_argument("--cifar-stem", action="store_true", default=None,
                          help="torchvision ResNets: fresh 3×3 stride-1 stem, no max-pool (for 32×32 inputs)")  # fmt: skip

    prune = commands.add_parser("prune", help="make a trained net smaller (channels) or sparse, fine-tune it, test once")
    prune.add_argument("source", metavar="RUN", help="a run directory (its best checkpoint, else last) or checkpoint")
    prune.add_argument("--amount", type=float, metavar="A",
                       help="fraction to remove, 0 < A < 1: of the channels (unstructured: of all weights)")  # fmt: skip
    prune.add_argument("--macs-ratio", type=float, metavar="R", help="channels: keep this fraction of the MACs, 0 < R < 1")
    prune.add_argument("--method", default="channels",
                       help="channels (default): smaller layers, fewer MACs | unstructured: zeroed weights, same MACs")  # fmt: skip
    prune.add_argument("--allocation",
                       help="channels: uniform (default): every group loses the same share | global: the least "
                            "important channels of the whole net go, more from groups with many weak ones")  # fmt: skip
    prune.add_argument("--finetune-epochs", type=int, default=3, metavar="E",
                       help="epochs of the run's own recipe at 0.3× its lrs (a pruned run's: at its own) (default: 3)")  # fmt: skip
    prune.add_argument("--no-distill", dest="distill", action="store_false",
                       help="fine-tune on the labels alone, not also on the unpruned net's predictions")  # fmt: skip
    prune.add_argument("--out", help="run directory (default: runs/<RUN's name>-pruned, or -pruned-N when taken)")
    prune.add_argument("--data-dir", help="where the run's dataset is now, if it moved")
    prune.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the run's)")
    prune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any setting of the fine-tuning run, e.g. optim.lr=0.01")  # fmt: skip

    evaluate = commands.add_parser("eval", help="evaluate a run or checkpoint on val or test")
    evaluate.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument("--split", default="test", choices=["val", "test"])
    evaluate.add_argument(
        "--tta", nargs="?", const="flip-translate", default="none", choices=choices("train.tta"),
        help="test-time augmentation (bare --tta: flip-translate)",
    )  # fmt: skip
    evaluate.add_argument("--tta-share", type=float, default=1.0, metavar="S",
                          help="TTA views only for this share of each batch, least sure images first (default 1: all)")  # fmt: skip
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--raw", action="store_true", help="leave out the fitted temperature (raw probabilities only)")

    predict = commands.add_parser("predict", help="classify image files (any size; resized to 32×32)")
    predict.add_argument("source", metavar="CHECKPOINT")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--raw", action="store_true", help="raw softmax probabilities, without the fitted temperature")

    calibrate = commands.add_parser("calibrate", help="fit a temperature on held-out images so probabilities mean "
                                                      "what they say (eval, predict and report use it)")  # fmt: skip
    calibrate.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    calibrate.add_argument("--split", choices=["calib", "val"],
                           help="held-out images to fit on (default: the calibration hold-out, else validation)")
    calibrate.add_argument("--limit", type=int, metavar="N", help="a stratified subset of N of them (default: all)")
    calibrate.add_argument("--data-dir", help="where the run's dataset is now, if it moved")
    calibrate.add_argument("--device", default="auto")

    export = commands.add_parser("export", help="write a model as ONNX or a torch.export program (checked on test images)")
    export.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    export.add_argument("--format", default="onnx", help="onnx | pt2 (default: onnx)")
    export.add_argument("--out", metavar="FILE", help="default: RUN_DIR.onnx (or .pt2) beside the run")
    export.add_argument("--data-dir", help="where the run's dataset is now, if it moved (for the parity check)")

    quantize = commands.add_parser("quantize", help="an int8 copy of a run (ONNX), calibrated on training images, tested once")
    quantize.add_argument("source", metavar="RUN_DIR|CHECKPOINT")
    quantize.add_argument("--int8", action="store_true", help="8-bit integer weights and activations (the one precision so far)")
    quantize.add_argument("--calib", type=int, metavar="N",
                          help=f"training images that set the activation ranges (default: {QuantizeConfig.calib})")
    quantize.add_argument("--qat-epochs", type=int, metavar="E",
                          help="quantization-aware training epochs first (default: 0, none)")
    quantize.add_argument("--qat-lr", type=float, metavar="LR", help=f"QAT's peak SGD lr (default: {QuantizeConfig.qat_lr})")
    quantize.add_argument("--backend",
                          help=f"{' | '.join(get_args(QuantBackend))} (default: {QuantizeConfig.backend}; see compress/quantize.py)")
    quantize.add_argument("--out", metavar="DIR", help="output folder (default: runs/<run>-int8, or -int8-N when taken)")
    quantize.add_argument("--data-dir", help="where the run's dataset is now, if it moved")

    bench = commands.add_parser("bench", help="params, MACs, size, CPU latency and throughput, test accuracy of runs, "
                                             "side by side (table, JSON, plot)")  # fmt: skip
    bench.add_argument("sources", nargs="+", metavar="RUN_DIR|INT8_DIR|FILE.onnx",
                       help="the first is the baseline of the speed-up columns")
    bench.add_argument("--threads", type=int, metavar="T", help="CPU threads for PyTorch and ONNX Runtime (default: torch's)")
    bench.add_argument("--calls", type=int, default=200, metavar="N", help="batch-1 calls per variant (default: 200)")
    bench.add_argument("--batches", type=int, default=2, metavar="B", help="batches of 256 per timing round (default: 2)")
    bench.add_argument("--out", metavar="DIR", help="where bench.json and bench.png go (default: the first RUN_DIR)")
    bench.add_argument("--data-dir", help="where the runs' dataset is now, if it moved")

    robust = commands.add_parser("robustness", help="accuracy under the CIFAR-10-C corruptions and FGSM / PGD attacks "
                                                   "(robustness.json, heatmap, a report section)")  # fmt: skip
    robust.add_argument("source", metavar="RUN", help="a run directory (its best checkpoint, else last) or checkpoint")
    robust.add_argument("--corruptions", default="all", metavar="all|NAME,...",
                        help="which of the 19 corruptions (default: all; the mean is over the 15 standard ones)")
    robust.add_argument("--severities", default="1-5", metavar="1-5", help="e.g. 1-5, 3 or 1,3,5 (default: 1-5)")
    robust.add_argument("--attack", default="fgsm,pgd,pgd-l2", metavar="fgsm,pgd,pgd-l2|none",
                        help="attacks to run (default: all three)")
    robust.add_argument("--eps", default="8/255", help="L-inf radius of fgsm and pgd, pixels in [0, 1] (default: 8/255)")
    robust.add_argument("--eps-l2", default="0.5", help="L2 radius of pgd-l2 (default: 0.5)")
    robust.add_argument("--limit", type=int, metavar="N", help="only the first N test images (default: all)")
    robust.add_argument("--seed", type=int, default=0, help="seed of the corruptions' noise and the attacks' starts")
    robust.add_argument("--out", metavar="DIR", help="where robustness.json and .png go (default: the run's folder)")
    robust.add_argument("--data-dir", help="where the run's dataset is now, if it moved")
    robust.add_argument("--device", default="auto")

    active = commands.add_parser("active", help="simulated active learning: train, pick images to label, retrain from "
                                                "scratch, per round (accuracy vs labels)")  # fmt: skip
    active.add_argument("--start", type=int, metavar="N", help="labelled images of round 0, drawn at random")
    active.add_argument("--budget", type=int, metavar="K", help="images labelled per round after round 0")
    active.add_argument("--rounds", type=int, metavar="R", help="rounds after round 0 (R + 1 trainings)")
    active.add_argument("--strategy", metavar="S", help=" | ".join(get_args(ActiveStrategy)))
    active.add_argument("--recipe", help="recipe of every round's training (default: the default recipe)")
    active.add_argument("--seed", type=int, help="seed of the start set, the random picks and every round's training")
    active.add_argument("--epochs", type=int, help="epochs of every round (default: the recipe's)")
    active.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any setting of the rounds' training, e.g. data.val_size=100 (carved from the labels)")
    active.add_argument("--out", help="folder of the rounds (default: runs/active-<strategy>); with --compare: the PNG "
                                      "(default: active.png)")  # fmt: skip
    active.add_argument("--data-dir")
    active.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    active.add_argument("--compare", nargs="+", metavar="RESULT",
                        help="instead of running: plot active.json files (or their folders) per strategy, mean ± std "
                             "over those of the same strategy")  # fmt: skip

    labels = commands.add_parser("labels", help="audit the given labels of a dataset")
    label_commands = labels.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    audit = label_commands.add_parser("audit", help="rank the images whose given label the run's model most doubts "
                                                   "(confident learning; CSV and image grid)")  # fmt: skip
    audit.add_argument("source", metavar="RUN", help="a run directory (its best checkpoint, else last) or checkpoint")
    audit.add_argument("--split", default="test", choices=["train", "test"],
                       help="test (default): the run's model scores them as they are; train: out-of-fold, by --folds "
                            "new runs of the run's recipe")  # fmt: skip
    audit.add_argument("--folds", type=int, default=5, metavar="K",
                       help="train: K trainings, each on (K-1)/K of the run's training images (default: 5)")
    audit.add_argument("--epochs", type=int, help="train: epochs of each fold run (default: the run's)")
    audit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train: any setting of the fold runs")
    audit.add_argument("--top", type=int, default=20, metavar="N", help="images to print and draw (default: 20)")
    audit.add_argument("--out", metavar="DIR", help="where label-audit-<split>.csv/.png go (default: the run's folder)")
    audit.add_argument("--data-dir", help="where the run's dataset is now, if it moved")
    audit.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto; fold runs: the run's)")

    serve = commands.add_parser("serve", help="a local web page and JSON API: upload an image, see the top-5 classes, "
                                             "Grad-CAM and the model card")  # fmt: skip
    serve.add_argument("source", metavar="RUN|INT8_DIR|FILE.onnx", help="a run, a `cifarlab quantize` folder or an exported file")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every network)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000; 0 takes any free port")
    serve.add_argument("--data-dir", help="where the run's dataset is now, if it moved (for the test images to pick)")
    serve.add_argument("--device", default="auto")

    report = commands.add_parser("report", help="write RUN_DIR/report.html: curves, errors, Grad-CAM, calibration")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--data-dir", help="where the run's dataset is now, if it moved")
    report.add_argument("--device", default="auto")

    lr_find = commands.add_parser("lr-find", help="the lr range test: the loss as the lr grows, a plot and a suggested lr")
    lr_find.add_argument("--recipe", help="named recipe (default: the --model's recipe, else the default recipe)")
    lr_find.add_argument("--model", help="model name (see `cifarlab models`)")
    lr_find.add_argument("--config", help="YAML file of settings applied over the recipe")
    lr_find.add_argument("--start", type=float, default=1e-6, help="first optim.lr of the test (default: 1e-6)")
    lr_find.add_argument("--end", type=float, default=10.0, help="last optim.lr of the test (default: 10)")
    lr_find.add_argument("--steps", type=int, default=100, help="training steps, the lr growing exponentially (default: 100)")
    lr_find.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. train.batch_size=256")
    lr_find.add_argument("--data-dir")
    lr_find.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    lr_find.add_argument("--out", metavar="DIR", help="where lr_find.png and lr_find.json go (default: runs/<recipe>-lr-find)")

    sweep = commands.add_parser("sweep", help="hyperparameter search on Optuna: trials as runs, pruned on validation "
                                              "accuracy, the best tested once")  # fmt: skip
    sweep.add_argument("--recipe", required=True, help="the recipe every trial starts from")
    sweep.add_argument("--space", required=True, metavar="SPACE.yaml",
                       help="config keys and distributions, e.g. cifarlab/recipes/spaces/resnet20.yaml")
    sweep.add_argument("--trials", type=int, required=True, metavar="N",
                       help="the size of the study: every process started with the same command takes trials until it holds N")  # fmt: skip
    sweep.add_argument("--epochs", type=int, metavar="E", help="train.epochs of every trial (default: the recipe's)")
    sweep.add_argument("--storage", metavar="URL", help="Optuna storage, e.g. sqlite:///sweep.db (default: OUT/study.db)")
    sweep.add_argument("--study", metavar="NAME", help="study name (default: sweep-<recipe>)")
    sweep.add_argument("--pruner", default="median", choices=["median", "halving", "none"],
                       help="stop trials whose validation accuracy lags (default: median)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of every trial")
    sweep.add_argument("--data-dir")
    sweep.add_argument("--out", metavar="DIR", help="trials (DIR/trial-NNN) and the summary (default: runs/<study>)")

    compare = commands.add_parser("compare", help="overlay runs' curves and tabulate their final metrics (HTML + PNG)")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", default="compare.html", metavar="FILE.html", help="default: compare.html")
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
    elif args.data_command == "show":
        from .viz.dataset import show_dataset

        overview = show_dataset(args.dataset, args.data_dir, args.out)
        print(f"{args.dataset}: {locate(args.dataset, args.data_dir, download=False)}")
        for stats in overview.statistics:
            print(f"  {stats.summary(overview.classes)}")
        width = max(len(name) for name in overview.classes)
        print(f"  {'class':<{width}} " + " ".join(f"{s.name:>7}" for s in overview.statistics))
        for i, name in enumerate(overview.classes):
            print(f"  {name:<{width}} " + " ".join(f"{s.class_counts[i]:>7}" for s in overview.statistics))
        print(f"saved: {overview.path}")
    else:
        from .data.statistics import split_statistics

        folder = locate(args.dataset, args.data_dir, download=False)
        print(f"{args.dataset}: {folder}")
        for split in ("train", "test"):
            data = datasets.load_split(args.dataset, split, args.data_dir, download=False)
            print(f"  {split_statistics(data, split).summary(data.classes)}")
        print(f"  classes: {', '.join(data.classes)}")


def _models(args) -> None:
    import torch

    from .models import check_model_name, create_model, describe_model, list_models, model_stats
    from .models.measure import measure_throughput

    names = args.names or list_models()
    for name in names:
        check_model_name(name)  # an unknown name fails here, before any measuring
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
    print("Also: torchvision:<name> and timm:<name> (if installed) build those libraries' nets, e.g. for `cifarlab finetune`.")
    if args.measure:
        print(f"img/s: this CPU, {torch.get_num_threads()} threads, fp32, channels_last, batch 64; train = forward, "
              "backward and SGD step.")


def _recipes() -> None:
    from .config import DEFAULT_RECIPE, list_recipes

    for name, description in list_recipes().items():
        print(f"{name}{' (default)' if name == DEFAULT_RECIPE else ''}\n    {description}")


def _run_flags(args, **sections) -> dict:
    """The flags a run command was given, as config sections (unset flags left out)."""
    flags = {
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
                  "out": args.out, "tensorboard": args.tensorboard or None, "report": False if args.no_report else None},
        "optim": {"lr": args.lr},
        "data": {"data_dir": args.data_dir},
    }  # fmt: skip
    for section, values in sections.items():
        flags[section] = {**flags.get(section, {}), **values}
    return {section: {k: v for k, v in values.items() if v is not None} for section, values in flags.items()}


def _start(args, config, source=None) -> None:
    from .run import train

    if args.print_config:
        print(config.to_yaml(), end="")
        return
    train(config, resume=args.resume, source=source)


def _saved(args, flags):
    """With --resume, the run's saved config (with the given settings); else None."""
    from .run import saved_config

    return saved_config(args.recipe, args.config, flags, args.set) if args.resume else None


def _train(args) -> None:
    from .config import resolve

    flags = _run_flags(args, model={"name": args.model}, semi={"method": args.semi, "teacher": args.teacher},
                       optim={"distill_from": args.distill_from},
                       data={"train_subset": args.train_subset, "labels_per_class": args.labels_per_class,
                             "dataset": args.dataset})  # fmt: skip
    _start(args, _saved(args, flags) or resolve(args.recipe, args.config, flags, args.set))


def _finetune(args) -> None:
    from .transfer import finetune_config

    flags = _run_flags(
        args,
        finetune={"source": args.source, "strategy": args.strategy, "arch": args.arch, "input_size": args.input_size,
                  "cifar_stem": args.cifar_stem},
        data={"dataset": args.target, "labels_per_class": args.labels_per_class},
    )  # fmt: skip
    saved = _saved(args, flags)
    _start(args, *((saved, None) if saved else finetune_config(flags, args.recipe, args.config, args.set)))


def _prune(args) -> None:
    from .run import prune

    prune(args.source, args.method, args.amount, args.macs_ratio, args.finetune_epochs, args.out, args.data_dir,
          args.device, args.set, args.distill, args.allocation)  # fmt: skip


def _eval(args) -> None:
    from .engine import evaluate
    from .engine.metrics import format_report

    metrics = evaluate(args.source, split=args.split, tta=args.tta, data_dir=args.data_dir, device=args.device,
                       raw=args.raw, tta_share=args.tta_share)  # fmt: skip
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        share = f", TTA for {args.tta_share:.0%} of each batch" if args.tta != "none" and args.tta_share < 1 else ""
        print(f"{metrics['checkpoint']} on {args.split} ({metrics['num_images']} images, tta={args.tta}{share}):")
        print(format_report(metrics, list(metrics["per_class"])))


def _predict(args) -> None:
    from .engine import classify_images

    if args.top_k < 1:
        raise CifarlabError("--top-k must be at least 1")
    for path, top in zip(args.images, classify_images(args.source, args.images, args.top_k, args.device, args.raw)):
        print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in top))


def _calibrate(args) -> None:
    from .run import calibrate

    calibrate(args.source, args.split, args.limit, args.data_dir, args.device)


def _export(args) -> None:
    from .compress import export_model

    done = export_model(args.source, args.format, args.out, args.data_dir)
    print(f"{done.format}: {done.path} ({done.parity.summary()})")


def _quantize(args) -> None:
    from .run import quantize

    if not args.int8:
        raise CifarlabError("choose the precision: --int8 (the only one so far)")
    given = {"backend": args.backend, "calib": args.calib, "qat_epochs": args.qat_epochs, "qat_lr": args.qat_lr,
             "out": args.out}  # fmt: skip
    run = quantize(args.source, QuantizeConfig(**{k: v for k, v in given.items() if v is not None}), args.data_dir)
    result = run.test
    print(f"int8 ({result['backend']}): {run.dir}")
    print(f"test accuracy {result['accuracy']:.2%} (float: {result['float_accuracy']:.2%}); the same top-1 class as "
          f"the float model on {result['agreement_with_float']:.2%} of {result['num_images']} images (tta={result['tta']})")


def _bench(args) -> None:
    from .compress.bench import format_table
    from .run import bench

    table, folder = bench(args.sources, args.out, args.threads, args.calls, args.batches, args.data_dir)
    print(format_table(table))
    print(f"written: {folder / 'bench.json'}, {folder / 'bench.png'}")


def _robustness(args) -> None:
    from .robust import ATTACKS, EXTRA, STANDARD, RobustnessConfig, settings
    from .run import robustness

    config = RobustnessConfig(
        corruptions=settings.names(args.corruptions, STANDARD + EXTRA), severities=settings.severities(args.severities),
        attacks=settings.names(args.attack, ATTACKS, none_allowed=True), eps=settings.fraction(args.eps, "--eps"),
        eps_l2=settings.fraction(args.eps_l2, "--eps-l2"), limit=args.limit, seed=args.seed, out=args.out,
    )  # fmt: skip
    result, folder = robustness(args.source, config, args.data_dir, args.device)
    mean = result["summary"]["mean_corrupted_accuracy"]
    if mean is not None:
        print(f"mean corrupted accuracy {mean:.2%} over {result['summary']['splits']} standard splits "
              f"(clean {result['clean_accuracy']:.2%}); {result['seconds']:.0f} s in all")  # fmt: skip
    print(f"written: {folder / 'robustness.json'}" + (f", {folder / 'robustness.png'}" if result["corruptions"] else ""))


def _active(args) -> None:
    from .run import active, compare_active

    if args.compare:
        summary, path = compare_active(args.compare, args.out or "active.png")
        for strategy, points in summary.items():
            print(f"{strategy}: " + ", ".join(f"{p['labelled']} labels {p['mean']:.2%}" + (f" ± {p['std']:.2%}" if p["n"] > 1 else "")
                                               for p in points))  # fmt: skip
        print(f"plot: {path}")
        return
    missing = [f"--{name}" for name in ("start", "budget", "rounds", "strategy") if getattr(args, name) is None]
    if missing:
        raise CifarlabError(f"cifarlab active needs {', '.join(missing)} (or --compare RESULT... to plot earlier results)")
    settings = ActiveConfig(args.start, args.budget, args.rounds, args.strategy)
    result, folder = active(settings, args.recipe, args.set, args.seed, args.epochs, args.out, args.data_dir, args.device)
    for r in result["rounds"]:
        print(f"round {r['round']}: {r['labelled']} labels, test accuracy {r['test_accuracy']:.2%}")
    print(f"written: {folder / 'active.json'}, {folder / 'active.png'}")


def _labels(args) -> None:
    from .run import audit_labels

    found, table, picture = audit_labels(args.source, args.split, args.folds, args.top, args.epochs, args.out,
                                         args.data_dir, args.device, args.set)  # fmt: skip
    print(f"{len(found.index)} of {found.audited} {args.split} images flagged by confident learning, most doubted first:")
    print(f"  {'rank':>4} {'index':>6}  {'given':<12} {'suspected':<12} label quality")
    top = slice(args.top)
    rows = zip(found.index[top].tolist(), found.given[top].tolist(), found.suspected[top].tolist(), found.quality[top].tolist())
    for rank, (i, g, s, q) in enumerate(rows, 1):
        print(f"  {rank:>4} {i:>6}  {found.classes[g]:<12} {found.classes[s]:<12} {q:.4f}")
    print(f"written: {table}" + (f", {picture}" if picture else ""))

def _serve(args) -> None:
    from .serve import serve

    serve(args.source, args.host, args.port, args.data_dir, args.device)


def _report(args) -> None:
    from .viz.report import write_report

    print(f"report: {write_report(args.run_dir, data_dir=args.data_dir, device=args.device)}")


def _compare(args) -> None:
    from .viz.compare import compare_runs

    path = compare_runs(args.run_dirs, args.out)
    print(f"comparison: {path} (curves: {path.with_suffix('.png')})")


def _lr_find(args) -> None:
    from .config import resolve
    from .tune.lr_find import lr_find, recipe_lrs

    flags = {"model": {"name": args.model}, "data": {"data_dir": args.data_dir}, "train": {"device": args.device}}
    flags = {section: {k: v for k, v in values.items() if v is not None} for section, values in flags.items()}
    found = lr_find(resolve(args.recipe, args.config, flags, args.set), args.start, args.end, args.steps, args.out)
    result, config = found.result, found.config
    print(f"lr range test of {config.recipe} ({config.model.name}): {len(result.lrs)} steps of optim.lr from "
          f"{args.start:g} to {args.end:g}; {result.stop}")
    own = [key.split(".")[2] for key in recipe_lrs(config) if key != "optim.lr"]
    if own:
        print(f"note: in {config.recipe} the {', '.join(own)} group(s) have lrs of their own; the test scaled every "
              f"group by the same factor as optim.lr, and the suggestion scales them all together")  # fmt: skip
    if result.suggestion is None:
        print(f"no suggestion: {result.note}")
    else:
        print(f"suggested optim.lr = {found.sets[0].partition('=')[2]} ({found.factor:.3g}× the recipe's {config.optim.lr:g}): "
              f"{result.note}")
        print("use it: " + " ".join(f"--set {line}" for line in found.sets))
    print(f"plot: {found.folder / 'lr_find.png'} (and lr_find.json)")


def _sweep(args) -> None:
    from .tune.summary import format_table, write_summary
    from .tune.sweep import SweepSettings, sweep

    done = sweep(SweepSettings(args.recipe, args.space, args.trials, args.epochs, args.storage, args.study,
                               args.pruner, args.out, args.set, args.data_dir))  # fmt: skip
    with done.locked():
        rows, numbers, paths = write_summary(done)
    print(format_table(rows, list(done.space_file)))
    best, test, running = numbers["best"], numbers["test"], numbers["counts"]["running"]
    if running:
        print(f"{running} trial(s) still running (in other processes, or left by one that was killed on another "
              f"machine): the best is tested once the study is complete; run the same command again then")  # fmt: skip
    if best is not None:
        print(f"best: trial {best['trial']}, validation accuracy {best['val_accuracy']:.2%}"
              + (f"; test accuracy {test['accuracy']:.2%} (tested once)" if test else ""))  # fmt: skip
    print("written: " + ", ".join(str(p) for p in paths.values()))


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
        elif args.command == "finetune":
            _finetune(args)
        elif args.command == "prune":
            _prune(args)
        elif args.command == "eval":
            _eval(args)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "calibrate":
            _calibrate(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "quantize":
            _quantize(args)
        elif args.command == "robustness":
            _robustness(args)
        elif args.command == "active":
            _active(args)
        elif args.command == "labels":
            _labels(args)

        elif args.command == "serve":
            _serve(args)
        elif args.command == "report":
            _report(args)
        elif args.command == "bench":
            _bench(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "lr-find":
            _lr_find(args)
        elif args.command == "sweep":
            _sweep(args)
    except (CifarlabError, OSError) as e:  # OSError: a write into a bad place, a full disk
        message = describe_os_error(e) if isinstance(e, OSError) else str(e)
        print("error: " + " ".join(message.split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        again = ("run the same command again to continue the study" if args.command == "sweep"
                 else "`cifarlab train ... --resume` continues from checkpoints/last")  # fmt: skip
        print(f"interrupted; {again}", file=sys.stderr)
        return 130
    return 0
