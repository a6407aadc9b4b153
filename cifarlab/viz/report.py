"""`cifarlab report RUN_DIR`: one self-contained `report.html` for a finished run, with its
figures as PNGs in `RUN_DIR/figures/`.

Headline numbers come from eval.json unchanged; the pictures that need logits or features
(predictions, mistakes, Grad-CAM, embedding, calibration) come from the run's checkpoint,
evaluated again on the test split rebuilt from the run's saved config.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path

import torch

from ..config import Config
from ..engine.calibration import ECE_BINS, probabilities, reliability, scores
from ..engine.checkpoint import Checkpoint, load_checkpoint
from ..engine.metrics import read_result
from ..engine.metrics_log import read_metrics
from ..engine.runtime import select_device
from ..errors import CifarlabError
from ..fileio import read_json, write_text
from ..models import model_stats
from . import analysis, page, plots
from .model_parts import first_layer_filters
from .saliency import grad_cam

PREDICTIONS, MISTAKES, SALIENCY_IMAGES = 32, 24, 10


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []


def write_report(run_dir: str | Path, data_dir: str | None = None, device: str = "auto") -> Path:
    """Write RUN_DIR/report.html (atomically) and RUN_DIR/figures/*.png; returns the page's path."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    result = read_result(run_dir)
    records = read_records(run_dir)
    bench = read_bench(run_dir)
    robust = _read_robustness(run_dir)
    dev = select_device(device)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / result["checkpoint"], dev)
    config = checkpoint.config()
    config_text = config.to_yaml()  # as the run was trained, before a --data-dir override
    if data_dir is not None:
        config.data.data_dir = data_dir
    predictions = analysis.predict_test_split(checkpoint, config, dev)
    figures = _Figures(run_dir / "figures")
    classes = predictions.classes

    fields = dict(
        title=escape(f"{run_dir.name}: {config.model.name} on {config.data.dataset}"),
        subtitle=escape(f"{run_dir.resolve()} · {config.train.epochs} epochs · test accuracy "
                        f"{result['accuracy']:.2%}"),  # fmt: skip
        cards=_cards(result, predictions),
        checkpoint=escape(result["checkpoint"]),
        recomputed=escape(_recomputed_note(predictions, result)),
        curves=_curves(run_dir.name, records, figures),
        confusion=figures.add("confusion", plots.confusion_matrices(result["confusion_matrix"], classes), "confusion"),
        per_class_figure=figures.add("per_class", plots.per_class_accuracy(result["per_class"], result["accuracy"]),
                                     "accuracy per class"),  # fmt: skip
        per_class_table=_per_class_table(result),
        confused_table=_confused_table(result, classes),
        predictions=_predictions(predictions, figures),
        mistakes=_mistakes(predictions, figures),
        saliency=_saliency(checkpoint, predictions, figures, dev),
        filters=_filters(checkpoint, figures),
        embedding=_embedding(predictions, figures),
        calibration=_calibration(run_dir, checkpoint, predictions, figures),
        bins=str(ECE_BINS),
        robustness=_robustness(run_dir, robust, figures),
        cost=_cost(run_dir, bench, figures),
        run_table=_run_table(result, checkpoint, config, run_dir),
        config=escape(config_text),
    )
    seconds = time.perf_counter() - started
    fields["footer"] = page.footer(f" in {seconds:.1f} s on {dev}")
    path = run_dir / "report.html"
    write_text(path, page.render("report.html", **fields))
    return path


class _Figures:
    """Saves each figure as figures/NAME.png and returns its inline <img>."""

    def __init__(self, folder: Path):
        self.folder = folder

    def add(self, name: str, figure, alt: str) -> str:
        return page.image(plots.save_png(figure, self.folder / f"{name}.png"), alt)


def _curves(name: str, records: list[dict], figures: _Figures) -> str:
    if not records:
        return page.note("The run has no metrics.jsonl, so there are no training curves.")
    return figures.add("curves", plots.training_curves({name: records}), "training curves")


def _percent(value: float) -> str:
    return f"{value:.2%}"


def _cards(result: dict, predictions: analysis.Predictions) -> str:
    cards = [page.card("test accuracy", "accuracy", result["accuracy"], _percent(result["accuracy"])),
             page.card("test loss", "loss", result["loss"], f"{result['loss']:.4f}"),
             page.card("macro F1", "macro_f1", result["macro_f1"], f"{result['macro_f1']:.4f}")]  # fmt: skip
    if "top5_accuracy" in result:
        top5 = result["top5_accuracy"]
        cards.append(page.card("top-5 accuracy", "top5_accuracy", top5, _percent(top5)))
    if result.get("val_accuracy") is not None:
        cards.append(page.card("best validation accuracy", "val_accuracy", result["val_accuracy"],
                               _percent(result["val_accuracy"])))  # fmt: skip
    cards.append(page.card("test images", "num_images", result["num_images"], f"{result['num_images']:,}"))
    ece = reliability(predictions.probabilities, predictions.labels).ece
    calibrated = " (calibrated)" if predictions.temperature else ""
    cards.append(page.card(f"calibration error (ECE){calibrated}", "report/ece", ece, _percent(ece)))
    return "".join(cards)


def _calibration(run_dir: Path, checkpoint: Checkpoint, predictions: analysis.Predictions, figures: _Figures) -> str:
    """Reliability diagrams and scores of the raw probabilities and, when a temperature was
    fitted on held-out images, of the calibrated ones (what eval, predict and this page show)."""
    logits, labels, fitted, temperature = predictions.logits, predictions.labels, checkpoint.calibration, checkpoint.temperature
    raw = reliability(probabilities(logits), labels)
    calibrated = reliability(probabilities(logits, temperature), labels) if fitted else None
    plot = figures.add("calibration", plots.reliability_diagram(raw, calibrated, temperature), "reliability diagram")
    columns = [("raw", scores(logits, labels))] + ([("calibrated", scores(logits, labels, temperature))] if fitted else [])
    rows = [[page.cell(name)] + [page.number(f"report/{column}/{key}", values[key], shown(values[key]))
                                 for column, values in columns]
            for name, key, shown in (("ECE (top label)", "ece", _percent), ("classwise ECE", "classwise_ece", _percent),
                                     ("NLL", "nll", "{:.4f}".format), ("Brier score", "brier", "{:.4f}".format))]  # fmt: skip
    table = page.table(["test images"] + [column for column, _ in columns], rows)
    if fitted:
        source = (f"Temperature T = {temperature:.4f}, fitted by minimizing the NLL on {fitted['images']:,} held-out "
                  f"{fitted['split']} images (TTA {fitted['tta']}), never on the test set; it changes no prediction.")
    else:
        source = (f"No temperature fitted: these are raw probabilities. `cifarlab calibrate {run_dir}` fits one on "
                  f"held-out images (the run's calibration hold-out or validation split).")  # fmt: skip
    return plot + table + page.note(source)


def _recomputed_note(predictions: analysis.Predictions, result: dict) -> str:
    accuracy = (predictions.logits.argmax(1) == predictions.labels).double().mean().item()
    if len(predictions.labels) == result["num_images"] and accuracy == result["accuracy"]:
        return "The pictures below use predictions recomputed from that checkpoint; they reproduce this accuracy exactly."
    return (
        f"Note: predictions recomputed from that checkpoint for the pictures below reach {accuracy:.2%} on "
        f"{len(predictions.labels):,} images (eval.json: {result['accuracy']:.2%} on {result['num_images']:,}); "
        f"a different data folder or non-deterministic GPU kernels explain a difference."
    )


def _per_class_table(result: dict) -> str:
    rows = []
    for name, c in result["per_class"].items():
        key = f"per_class/{name}"
        rows.append([page.cell(name), page.number(f"{key}/accuracy", c["accuracy"], _percent(c["accuracy"])),
                     page.number(f"{key}/precision", c["precision"], f"{c['precision']:.3f}"),
                     page.number(f"{key}/recall", c["recall"], f"{c['recall']:.3f}"),
                     page.number(f"{key}/f1", c["f1"], f"{c['f1']:.3f}"),
                     page.number(f"{key}/support", c["support"], str(c["support"]))])  # fmt: skip
    return page.table(["class", "accuracy", "precision", "recall", "F1", "images"], rows)


def _confused_table(result: dict, classes: list[str]) -> str:
    pairs = analysis.most_confused_pairs(result["confusion_matrix"], classes)
    rows = [[page.cell(p["true"]), page.cell(p["predicted"]),
             page.number(f"confusion_matrix/{classes.index(p['true'])}/{classes.index(p['predicted'])}", p["count"],
                         str(p["count"])),
             page.number(f"report/confused/{i}/share", p["share"], f"{p['share']:.1%}")]
            for i, p in enumerate(pairs)]  # fmt: skip
    return page.table(["true class", "taken for", "images", "of the class"], rows, numeric_from=2)


def _predictions(predictions: analysis.Predictions, figures: _Figures) -> str:
    index = torch.arange(min(PREDICTIONS, len(predictions.labels)))
    confidence, predicted = predictions.probabilities[index].max(1)
    classes, labels = predictions.classes, predictions.labels[index]
    titles = [f"{classes[p]} {c:.0%}" + ("" if p == t else f"\n(true: {classes[t]})")
              for p, c, t in zip(predicted.tolist(), confidence.tolist(), labels.tolist())]  # fmt: skip
    colors = ["green" if p == t else "red" for p, t in zip(predicted.tolist(), labels.tolist())]
    return figures.add("predictions", plots.image_grid(predictions.images[index], titles, colors), "test predictions")


def _mistakes(predictions: analysis.Predictions, figures: _Figures) -> str:
    index = analysis.top_loss_mistakes(predictions, MISTAKES)
    if len(index) == 0:
        return page.note("The model classified every test image correctly: there are no mistakes to show.")
    confidence, predicted = predictions.probabilities[index].max(1)
    classes = predictions.classes
    titles = [f"{classes[p]} {c:.0%}\ntrue: {classes[t]}"
              for p, c, t in zip(predicted.tolist(), confidence.tolist(), predictions.labels[index].tolist())]  # fmt: skip
    grid = plots.image_grid(predictions.images[index], titles, ["red"] * len(index))
    return figures.add("mistakes", grid, "top-loss mistakes")


def _saliency(checkpoint: Checkpoint, predictions: analysis.Predictions, figures: _Figures, device) -> str:
    index = analysis.one_per_class(predictions.labels, SALIENCY_IMAGES)
    images = predictions.images[index]
    predicted = predictions.logits[index].argmax(1)
    try:
        cam = grad_cam(checkpoint.model, predictions.loader.prepare(images), predicted.to(device))
    except CifarlabError as e:
        return page.note(str(e))
    classes, confidence = predictions.classes, predictions.probabilities[index].max(1).values
    titles = [f"{classes[t]}\n→ {classes[p]} {c:.0%}"
              for t, p, c in zip(predictions.labels[index].tolist(), predicted.tolist(), confidence.tolist())]  # fmt: skip
    figure = figures.add("gradcam", plots.saliency_grid(images, cam.maps, titles), "Grad-CAM overlays")
    return figure + (
        f'<p class="caption">The first test image of {len(index)} classes (true class, then → predicted class '
        f"and probability). Below each, Grad-CAM for the predicted class from layer <code>{escape(cam.layer)}</code>: "
        "red marks the regions whose features raised that class's score most. Maps are as coarse as that layer "
        "(upsampled bilinearly to 32×32).</p>"
    )


def _filters(checkpoint: Checkpoint, figures: _Figures) -> str:
    filters = first_layer_filters(checkpoint.model)
    if filters is None:
        return page.note("This model has no convolution on the RGB input, so there are no first-layer filters to show.")
    return figures.add("filters", plots.filter_grid(filters), "first-layer filters") + (
        '<p class="caption">The weights of the first convolution on the RGB input, each filter stretched to its own '
        "range so that its pattern shows whatever its size. Trained nets show edge, colour and colour-opponent "
        "detectors; noise means the layer has barely moved from its initialization.</p>"
    )


def _embedding(predictions: analysis.Predictions, figures: _Figures) -> str:
    if predictions.features is None:
        return page.note("This model has no nn.Linear classifier layer, so there are no penultimate features to embed.")
    points, labels = analysis.embeddings(predictions.features, predictions.labels)
    figure = figures.add("embedding", plots.embedding_scatter(points, labels, predictions.classes), "embedding")
    n, dims = len(labels), predictions.features.shape[1]
    return figure + (
        f'<p class="caption">The {dims}-dimensional input of the classifier layer for a stratified sample of {n:,} '
        f"test images, coloured by true class. PCA keeps the two directions of largest variance; t-SNE keeps "
        f"neighbourhoods (distances between clusters mean little). t-SNE is cheap here because the sample is capped "
        f"at {analysis.TSNE_POINTS:,} points, which keeps it to seconds on a CPU.</p>"
    )


BENCH_KEYS = {"label", "runtime", "precision", "params", "macs", "file_bytes", "latency_ms_p50", "latency_ms_p99",
              "images_per_s", "speedup_throughput", "test_accuracy"}  # fmt: skip


def read_bench(run_dir: Path) -> dict | None:
    """The run's bench.json (`cifarlab bench RUN ...`), checked before anything is written."""
    def valid(table) -> bool:
        rows = table.get("rows") if isinstance(table, dict) else None
        return (isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and BENCH_KEYS <= r.keys() for r in rows)
                and {"threads", "calls", "batch", "hardware"} <= table.keys())  # fmt: skip

    return _read_optional(run_dir / "bench.json", "bench results", valid, "cifarlab bench")


def _cost(run_dir: Path, table: dict | None, figures: _Figures) -> str:
    """The bench table and its trade-off plot, or how to make them."""
    if table is None:
        return page.note(f"No measurements yet: `cifarlab bench {run_dir} [its pruned, int8 or exported variants]` "
                         f"times them side by side and this section shows the table.")  # fmt: skip
    header = ["variant", "runtime", "params", "MMACs", "file MB", "latency p50 ms", "latency p99 ms", "images/s",
              "× throughput", "test accuracy"]  # fmt: skip
    plot = figures.add("bench", plots.compression_tradeoff(table["rows"]), "accuracy vs latency and throughput")
    caption = (f"Measured by `cifarlab bench` on {table['hardware'].get('cpu', '?')}, {table['threads']} thread(s): "
               f"latency over {table['calls']} single-image calls, throughput at batch {table['batch']}; "
               f"× throughput against the first row.")  # fmt: skip
    return page.table(header, [_cost_row(r) for r in table["rows"]], numeric_from=2) + plot + page.note(caption)


def _cost_row(r: dict) -> list[str]:
    key = f"bench/{r['label']}"
    return [
        page.cell(r["label"]),
        page.cell(f"{r['runtime']} {r['precision']}"),
        page.number(f"{key}/params", r["params"], f"{r['params']:,}"),
        page.number(f"{key}/macs", r["macs"], f"{r['macs'] / 1e6:,.1f}"),
        page.number(f"{key}/file_bytes", r["file_bytes"], f"{r['file_bytes'] / 1e6:.2f}"),
        page.number(f"{key}/latency_ms_p50", r["latency_ms_p50"], f"{r['latency_ms_p50']:.2f}"),
        page.number(f"{key}/latency_ms_p99", r["latency_ms_p99"], f"{r['latency_ms_p99']:.2f}"),
        page.number(f"{key}/images_per_s", r["images_per_s"], f"{r['images_per_s']:,.0f}"),
        page.number(f"{key}/speedup_throughput", r["speedup_throughput"], f"{r['speedup_throughput']:.2f}×"),
        page.number(f"{key}/test_accuracy", r["test_accuracy"], f"{r['test_accuracy']:.2%}"),
    ]


ROBUSTNESS_KEYS = {"clean_accuracy", "num_images", "corruptions", "summary", "attacks", "seconds", "hardware"}


def _read_robustness(run_dir: Path) -> dict | None:
    """The run's robustness.json (`cifarlab robustness RUN`), checked before anything is written."""
    def valid(result) -> bool:
        return (isinstance(result, dict) and ROBUSTNESS_KEYS <= result.keys()
                and isinstance(result["corruptions"], dict) and isinstance(result["attacks"], dict)
                and all(isinstance(row, dict) and row and all(isinstance(a, float) for a in row.values())
                        for row in result["corruptions"].values())
                and all(isinstance(a, dict) and {"accuracy", "eps", "steps"} <= a.keys()
                        for a in result["attacks"].values())
                and isinstance(result["summary"], dict) and "mean_corrupted_accuracy" in result["summary"])  # fmt: skip

    return _read_optional(run_dir / "robustness.json", "robustness results", valid, f"cifarlab robustness {run_dir}")


def _read_optional(path: Path, what: str, valid, command: str) -> dict | None:
    """An optional results file of the run (None when absent), checked by `valid` before the
    report writes anything: a damaged one is one error naming the command that remakes it."""
    if not path.is_file():
        return None
    content = read_json(path, what)
    if not valid(content):
        raise CifarlabError(f"'{path}' is not a cifarlab {path.name}; run `{command}` again")
    return content


def _robustness(run_dir: Path, result: dict | None, figures: _Figures) -> str:
    """Headline robustness figures, the attack table and the corruption heatmap, or how to make them."""
    if result is None:
        return page.note(f"Not measured yet: `cifarlab robustness {run_dir}` evaluates the model on the CIFAR-10-C "
                         f"corruptions and under FGSM / PGD attacks, and this section shows the results.")  # fmt: skip
    summary = result["summary"]
    mean = summary["mean_corrupted_accuracy"]
    rows = [[page.cell("clean accuracy"), page.number("robustness/clean_accuracy", result["clean_accuracy"],
                                                      _percent(result["clean_accuracy"]))]]  # fmt: skip
    if mean is not None:
        covered = "all 75 standard splits" if summary["complete"] else f"{summary['splits']} of the 75 standard splits"
        rows += [[page.cell(f"mean corrupted accuracy ({covered})"),
                  page.number("robustness/mean_corrupted_accuracy", mean, _percent(mean))],
                 [page.cell("relative drop from clean"),
                  page.number("robustness/relative_drop", summary["relative_drop"], _percent(summary["relative_drop"]))],
                 [page.cell("mCE (unnormalized: mean error)"), page.number("robustness/mce", summary["mce"],
                                                                          _percent(summary["mce"]))]]  # fmt: skip
    if summary.get("extra_mean_accuracy") is not None:
        rows.append([page.cell(f"extra corruptions, mean accuracy ({summary['extra_splits']} splits)"),
                     page.number("robustness/extra_mean_accuracy", summary["extra_mean_accuracy"],
                                 _percent(summary["extra_mean_accuracy"]))])  # fmt: skip
    for name, attack in result["attacks"].items():
        rows.append([page.cell(f"{name} (ε {attack['eps']:.4g}, {attack['steps']} step(s))"),
                     page.number(f"robustness/attacks/{name}", attack["accuracy"], _percent(attack["accuracy"]))])
    parts = [page.table(None, rows)]
    if result["corruptions"]:
        parts.append(figures.add("robustness", plots.corruption_heatmap(result["corruptions"], result["clean_accuracy"]),
                                 "accuracy per corruption and severity"))  # fmt: skip
    cpu = result["hardware"].get("gpu") or result["hardware"].get("cpu", "?")
    parts.append(page.note(f"Measured by `cifarlab robustness` on {result['num_images']:,} test images, "
                           f"{result['seconds']:,.0f} s on {cpu}; no test-time augmentation."))  # fmt: skip
    return "".join(parts)


def _run_table(result: dict, checkpoint: Checkpoint, config: Config, run_dir: Path) -> str:
    stats = model_stats(checkpoint.model)
    hardware = result.get("hardware", {})
    rows = [
        [page.cell("model"), page.cell(f"{config.model.name} {config.model.options or ''}".strip())],
        [page.cell("parameters"), page.number("report/params", stats.params, f"{stats.params:,}", css="")],
        [page.cell("MFLOPs per image"), page.number("report/mflops", stats.mflops, f"{stats.mflops:,.1f}", css="")],
        [page.cell("dataset"), page.cell(config.data.dataset)],
        [page.cell("epochs × batch size"), page.cell(f"{config.train.epochs} × {config.train.batch_size}")],
        [page.cell("optimizer"), page.cell(f"{config.optim.name}, lr {config.optim.lr}, {config.optim.schedule}")],
        [page.cell("training time (s)"),
         page.number("train_seconds", result["train_seconds"], f"{result['train_seconds']:,.1f}", css="")],
        [page.cell("test evaluation time (s)"),
         page.number("eval_seconds", result["eval_seconds"], f"{result['eval_seconds']:,.2f}", css="")],
        [page.cell("device"), page.cell(result.get("device", "?"))],
        [page.cell("hardware"), page.cell(", ".join(f"{k} {v}" for k, v in hardware.items()))],
        [page.cell("checkpoint"), page.cell(f"{result['checkpoint']} (test-time augmentation: {result.get('tta')})")],
        [page.cell("versions"), page.cell(", ".join(f"{k} {v}" for k, v in checkpoint.meta.get("versions", {}).items()))],
        [page.cell("run directory"), page.cell(run_dir.resolve())],
    ]
    return page.table(None, rows)

