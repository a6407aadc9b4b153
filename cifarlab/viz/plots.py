"""Matplotlib figures for the report, the comparison and the data explorer.

Built on `matplotlib.figure.Figure` rather than pyplot: no global figure state and no GUI
backend (PNG output goes through Agg), so figures can be made from a training process, a
thread or a headless server alike.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from torchvision.utils import make_grid

from ..data.statistics import SplitStatistics
from ..fileio import atomic_path
from ..engine.calibration import Reliability

DPI = 100
OVERLAY_ALPHA = 0.45  # enough heat to read, enough image to see what it covers


def save_png(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return path


def _class_colors(k: int) -> list:
    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    return [cmap(i if k <= 20 else i / max(k - 1, 1)) for i in range(k)]


def _as_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 or float in [0, 1] → (H, W, 3) for imshow."""
    return image.permute(1, 2, 0).cpu().numpy()


def training_curves(runs: dict[str, list[dict]]) -> Figure:
    """Loss, accuracy and learning rate against epochs from metrics.jsonl records, one colour
    per run: train per log window (thin), train and validation per epoch (markers), and an
    adversarial run's held-out PGD accuracy per epoch (squares)."""
    figure = Figure(figsize=(14, 4), layout="constrained")
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    single = len(runs) == 1
    for i, (label, records) in enumerate(runs.items()):
        windows = [r for r in records if r.get("kind") == "step"]
        epochs = [r for r in records if r.get("kind") == "epoch"]
        prefix = "" if single else f"{label}: "
        color, val_color = f"C{i}", ("C1" if single else f"C{i}")
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            ax.plot([r["epoch"] for r in windows], [r[f"train_{key}"] for r in windows], color=color, alpha=0.35,
                    lw=0.8, label=f"{prefix}train (per log step)")  # fmt: skip
            ax.plot([r["epoch"] for r in epochs], [r[f"train_{key}"] for r in epochs], color=color, ls="--",
                    marker="o", ms=3, label=f"{prefix}train (epoch)")  # fmt: skip
            val = [r for r in epochs if f"val_{key}" in r]
            if val:
                ax.plot([r["epoch"] for r in val], [r[f"val_{key}"] for r in val], color=val_color, marker="o", ms=3,
                        label=f"{prefix}validation (epoch)")  # fmt: skip
        attacked = [r for r in epochs if "held_out_pgd_acc" in r]  # adversarial training's check
        if attacked:
            acc_ax.plot([r["epoch"] for r in attacked], [r["held_out_pgd_acc"] for r in attacked],
                        color="C3" if single else color, ls=":", marker="s", ms=3,
                        label=f"{prefix}held out under PGD-10 (epoch)")  # fmt: skip
        lr_records = windows or epochs
        lr_ax.plot([r["epoch"] for r in lr_records], [r["lr"] for r in lr_records], color=color, label=label)
    losses = [v for line in loss_ax.get_lines() for v in line.get_ydata()]
    spans_decades = len(losses) > 0 and max(losses) > 10 * max(min(losses), 1e-12)
    loss_ax.set(title="loss", xlabel="epoch", ylabel="cross-entropy", yscale="log" if spans_decades else "linear")
    acc_ax.set(title="accuracy", xlabel="epoch")
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    lr_ax.set(title="learning rate", xlabel="epoch")
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    lr_ax.grid(alpha=0.3)
    if not single:
        lr_ax.legend(fontsize=7)
    return figure


def confusion_matrices(matrix: list[list[int]], classes: list[str]) -> Figure:
    """Counts and row-normalized shares (rows: true class, columns: predicted)."""
    counts = np.array(matrix)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(classes)
    figure = Figure(figsize=(14, 6.5) if k <= 20 else (16, 8), layout="constrained")
    for ax, values, title, fmt in zip(figure.subplots(1, 2), (counts, shares), ("counts", "normalized by true class"),
                                      ("{:d}", "{:.0%}")):  # fmt: skip
        image = ax.imshow(values, cmap="Blues")
        figure.colorbar(image, ax=ax, shrink=0.8)
        ax.set(title=title, xlabel="predicted", ylabel="true")
        if k <= 20:
            ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(k), classes, fontsize=8)
        if k <= 12:
            threshold = values.max() / 2
            for (row, col), value in np.ndenumerate(values):
                ax.text(col, row, fmt.format(value), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")  # fmt: skip
    return figure


def per_class_accuracy(per_class: dict[str, dict], overall: float) -> Figure:
    names = list(per_class)
    accuracy = [per_class[n]["accuracy"] for n in names]
    figure = Figure(figsize=(8, 1 + 0.28 * len(names)), layout="constrained")
    ax = figure.subplots()
    ax.barh(range(len(names)), accuracy, color=_class_colors(len(names)))
    ax.axvline(overall, color="black", ls="--", lw=1, label=f"overall {overall:.1%}")
    ax.set_yticks(range(len(names)), names, fontsize=8 if len(names) <= 20 else 5)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), title="test accuracy per class (= recall)")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="lower right", fontsize=8)
    return figure


def _tiled_margins(rows: int) -> dict:
    """Fixed margins for grids of small images: two-line titles fit, and no layout engine has
    to measure every title (constrained layout takes seconds on 32 subplots)."""
    return dict(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (1.9 * rows), wspace=0.05, hspace=0.35)


def image_grid(images: torch.Tensor, titles: list[str], colors: list[str], columns: int = 8) -> Figure:
    """Small images with a coloured caption each (e.g. green right, red wrong)."""
    rows = -(-len(images) // columns)
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns, gridspec_kw=_tiled_margins(rows))).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, image, title, color in zip(axes, images, titles, colors):
        ax.imshow(_as_image(image), interpolation="nearest")
        ax.set_title(title, fontsize=7, color=color)
    return figure


def overlay(image: torch.Tensor, heat: torch.Tensor) -> np.ndarray:
    """A uint8 (3, H, W) image with its (H, W) saliency map in [0, 1] laid over it in the jet
    colours (red: most evidence), as uint8 (H, W, 3): the report's grid and `cifarlab serve`."""
    colours = colormaps["jet"](heat.numpy())[..., :3]
    pixels = image.permute(1, 2, 0).numpy() / 255
    return np.round(255 * ((1 - OVERLAY_ALPHA) * pixels + OVERLAY_ALPHA * colours)).astype(np.uint8)


def saliency_grid(images: torch.Tensor, maps: torch.Tensor, titles: list[str]) -> Figure:
    """Each image above its Grad-CAM overlay."""
    columns = len(images)
    figure = Figure(figsize=(1.6 * columns, 3.8))
    axes = figure.subplots(2, columns, squeeze=False, gridspec_kw=_tiled_margins(1))
    for col, (image, heat, title) in enumerate(zip(images, maps, titles)):
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(_as_image(image), interpolation="nearest")
        top.set_title(title, fontsize=7)
        bottom.imshow(overlay(image, heat), interpolation="nearest")
        top.axis("off")
        bottom.axis("off")
    return figure


def filter_grid(filters: torch.Tensor, limit: int = 64) -> Figure:
    """First-layer filters as RGB tiles, enlarged without smoothing."""
    shown = filters[:limit]
    out_channels, _, kh, kw = filters.shape
    grid = make_grid(shown, nrow=min(16, len(shown)), padding=1, pad_value=1.0)
    width = min(8.0, 1.0 + 0.5 * min(16, len(shown)))  # a few filters stay small, not stretched
    figure = Figure(figsize=(width, 0.8 + width * grid.shape[1] / grid.shape[2]), layout="constrained")
    ax = figure.subplots()
    ax.imshow(_as_image(grid), interpolation="nearest")
    ax.axis("off")
    more = f", the first {len(shown)} shown" if out_channels > len(shown) else ""
    ax.set_title(f"{out_channels} filters of {kh}×{kw}{more}", fontsize=9)
    return figure


def embedding_scatter(points: dict[str, np.ndarray], labels: torch.Tensor, classes: list[str]) -> Figure:
    colors = np.array(_class_colors(len(classes)))[labels.numpy()]
    figure = Figure(figsize=(6.5 * len(points), 6), layout="constrained")
    for ax, (method, xy) in zip(np.atleast_1d(figure.subplots(1, len(points))), points.items()):
        ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=5, linewidths=0)
        ax.set(title=f"{method} of penultimate features ({len(xy)} test images)", xticks=[], yticks=[])
    if len(classes) <= 20:
        handles = [ax.scatter([], [], color=c, s=20, label=n) for c, n in zip(_class_colors(len(classes)), classes)]
        figure.legend(handles=handles, loc="outside right center", fontsize=8)
    return figure


def reliability_diagram(raw: Reliability, calibrated: Reliability | None = None, temperature: float | None = None) -> Figure:
    """Accuracy against confidence per bin (a calibrated model's bars reach its red marks, on
    the diagonal), raw and, with a fitted temperature, calibrated; and how many images fall in
    each bin."""
    panels = [("raw probabilities", raw)] + ([(f"calibrated (T = {temperature:.3f})", calibrated)] if calibrated else [])
    figure = Figure(figsize=(5.5 * (len(panels) + 1), 4.5), layout="constrained")
    *diagrams, histogram = figure.subplots(1, len(panels) + 1)
    for diagram, (name, cal) in zip(diagrams, panels):
        centers, width, filled = (cal.edges[:-1] + cal.edges[1:]) / 2, np.diff(cal.edges), cal.counts > 0
        diagram.bar(centers[filled], cal.accuracy[filled], width[filled], color="C0", edgecolor="white",
                    label="accuracy")  # fmt: skip
        diagram.hlines(cal.confidence[filled], cal.edges[:-1][filled], cal.edges[1:][filled], color="C3", lw=2,
                       label="mean confidence")  # fmt: skip
        diagram.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="perfect calibration")
        diagram.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
                    title=f"{name}: ECE {cal.ece:.2%}")  # fmt: skip
        diagram.legend(loc="upper left", fontsize=8)
    for index, (name, cal) in enumerate(panels):
        centers = (cal.edges[:-1] + cal.edges[1:]) / 2
        histogram.step(centers, cal.counts / cal.counts.sum(), where="mid", color=f"C{index}", label=name)
    histogram.set(xlim=(0, 1), xlabel="confidence (max probability)", title="share of test images per bin")
    histogram.yaxis.set_major_formatter(PercentFormatter(1.0))
    histogram.legend(loc="upper left", fontsize=8)
    return figure


def dataset_overview(samples: torch.Tensor, classes: list[str], statistics: list[SplitStatistics]) -> Figure:
    """Sample images (a row per class, from `samples` (classes, per_class, 3, H, W)) beside the
    class counts per split and each split's per-channel mean and std."""
    k, per_class = samples.shape[:2]
    height = max(6.0, 0.35 * k + 1.5)
    figure = Figure(figsize=(15, height), layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=[1.3, 1])
    grid = make_grid(samples.flatten(0, 1), nrow=per_class, padding=2, pad_value=255)
    ax = left.subplots()
    ax.imshow(_as_image(grid), interpolation="nearest")
    row_height = grid.shape[1] / k
    ax.set_yticks([row_height * (i + 0.5) for i in range(k)], classes, fontsize=9 if k <= 20 else 6)
    ax.set_xticks([])
    ax.set_title(f"{per_class} training images per class", fontsize=10)
    counts_ax, text_ax = right.subplots(2, 1, height_ratios=[3, 1])
    offsets = np.linspace(-0.2, 0.2, len(statistics))
    for offset, stats in zip(offsets, statistics):
        counts_ax.barh(np.arange(k) + offset, stats.class_counts, height=0.8 / len(statistics), label=stats.name)
    counts_ax.set_yticks(range(k), classes, fontsize=8 if k <= 20 else 5)
    counts_ax.invert_yaxis()
    counts_ax.set(title="images per class", xlabel="images")
    counts_ax.legend(fontsize=8)
    text_ax.axis("off")
    lines = [f"{s.name}: {s.images:,} images\n  mean  " + "  ".join(f"{v:.4f}" for v in s.mean)
             + "\n  std   " + "  ".join(f"{v:.4f}" for v in s.std) for s in statistics]  # fmt: skip
    text_ax.text(0, 1, "per-channel statistics (R G B, 0..1)\n\n" + "\n".join(lines), va="top", family="monospace",
                 fontsize=9)  # fmt: skip
    return figure


def compression_tradeoff(rows: list[dict]) -> Figure:
    """Test accuracy against batch-1 latency (p50, with the p99 as a whisker) and against
    batch-256 throughput, one point per variant of `cifarlab bench`."""
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    latency, throughput = figure.subplots(1, 2)
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        p50, p99 = r["latency_ms_p50"], r["latency_ms_p99"]
        latency.errorbar([p50], [r["test_accuracy"]], xerr=[[0], [p99 - p50]], fmt="o", color=color, capsize=3,
                         label=f"{r['label']} ({r['runtime']} {r['precision']})")  # fmt: skip
        throughput.plot([r["images_per_s"]], [r["test_accuracy"]], "o", color=color)
        for ax, x in ((latency, p50), (throughput, r["images_per_s"])):
            ax.annotate(r["label"], (x, r["test_accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    latency.set(xlabel="latency at batch 1, ms (p50; whisker to p99)", ylabel="test accuracy",
                title="accuracy vs latency (left is faster)")  # fmt: skip
    throughput.set(xlabel="images/s at batch 256", ylabel="test accuracy", title="accuracy vs throughput (right is faster)")
    for ax in (latency, throughput):
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    latency.legend(loc="lower right", fontsize=8)
    return figure


def corruption_heatmap(table: dict[str, dict[str, float]], clean: float) -> Figure:
    """Accuracy per corruption (rows, in the order measured) × severity (columns), each cell
    labelled, on one colour scale from 0 to the clean accuracy."""
    names = list(table)
    severities = list(next(iter(table.values())))
    values = np.array([[table[name][s] for s in severities] for name in names])
    figure = Figure(figsize=(1.2 * len(severities) + 3.5, 0.32 * len(names) + 1.4), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=max(clean, values.max()), aspect="auto")
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.1%}", ha="center", va="center", fontsize=8,
                color="black" if value > 0.6 * max(clean, 1e-9) else "white")  # fmt: skip
    ax.set(xticks=range(len(severities)), xticklabels=severities, yticks=range(len(names)), yticklabels=names,
           xlabel="severity", title=f"accuracy under corruption (clean: {clean:.1%})")  # fmt: skip
    figure.colorbar(image, ax=ax, format=PercentFormatter(1.0))
    return figure


def active_learning_curves(summary: dict[str, list[dict]]) -> Figure:
    """Test accuracy against the number of labelled images, one line per strategy: the mean
    over seeds, with a band of ± one standard deviation where there are several."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    for i, (strategy, points) in enumerate(summary.items()):
        x = [p["labelled"] for p in points]
        mean, std = np.array([p["mean"] for p in points]), np.array([p["std"] for p in points])
        seeds = max(p["n"] for p in points)
        ax.plot(x, mean, "o-", color=f"C{i % 10}", label=f"{strategy} ({seeds} seed{'s' * (seeds > 1)})")
        if seeds > 1:
            ax.fill_between(x, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2)
    ax.set(xlabel="labelled training images", ylabel="test accuracy", title="active learning: accuracy vs labels")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return figure


def lr_range_curve(record: dict) -> Figure:
    """`cifarlab lr-find`: the training loss against the lr (log scale), raw and smoothed, with
    the suggestion and the minimum it came from marked, or why there is none. The y range stops
    a little above the first smoothed loss, so the divergence at the end does not flatten the rest."""
    lrs, raw, smoothed = record["lrs"], record["losses"], record["smoothed"]
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.plot(lrs, raw, color="C0", alpha=0.3, lw=0.8, label="loss of each step's batch")
    ax.plot(lrs, smoothed, color="C0", lw=1.8, label="smoothed")
    finite = [(v, lr) for v, lr in zip(smoothed, lrs) if v is not None and np.isfinite(v)]
    if finite:
        (low, at), top = min(finite), finite[0][0] * 1.3
        ax.set_ylim(low - 0.1 * (top - low), top)
    suggestion = record["suggestion"]
    if suggestion is not None:  # there is one only when some smoothed loss is finite
        ax.axvline(suggestion, color="C3", ls="--", label=f"suggested {record['reference']} = {suggestion:.3g}")
        ax.plot([at], [low], "v", color="C3", label=f"lowest smoothed loss (lr {at:.3g})")
    else:
        note = textwrap.fill(f"no suggestion: {record['note']}", 70)
        ax.text(0.02, 0.6, note, transform=ax.transAxes, fontsize=8, va="center", color="C3")
    ax.set(xscale="log", xlabel=f"{record['reference']} (every parameter group × the same factor)",
           ylabel="training loss", title=f"lr range test: {record['recipe']} ({record['model']}), {record['stop']}")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return figure


def sweep_history(rows: list[dict]) -> Figure:
    """A sweep's best validation accuracy per trial, in trial order: complete trials as dots,
    pruned ones as crosses at their last reported value, and the best so far as a line."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    ax = figure.subplots()
    for state, marker, color in (("complete", "o", "C0"), ("pruned", "x", "C7")):
        chosen = [r for r in rows if r["state"] == state and r["val_accuracy"] is not None]
        ax.plot([r["trial"] for r in chosen], [r["val_accuracy"] for r in chosen], marker, color=color, ls="none",
                label=f"{state} ({len(chosen)})")  # fmt: skip
    best, line = None, []
    for r in rows:
        if r["state"] == "complete":
            best = r["val_accuracy"] if best is None else max(best, r["val_accuracy"])
        line.append(best)
    ax.step([r["trial"] for r in rows], line, where="post", color="C3", label="best so far")
    failed = [r["trial"] for r in rows if r["state"] == "fail"]
    for x in failed:
        ax.axvline(x, color="C1", alpha=0.3, lw=1)
    if failed:
        ax.plot([], [], color="C1", alpha=0.3, label=f"failed ({len(failed)})")
    ax.set(xlabel="trial", ylabel="validation accuracy", title="optimization history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def param_importances(importances: dict[str, float]) -> Figure:
    """Optuna's importance of each searched setting (shares of 1), largest on top."""
    names = list(importances)
    figure = Figure(figsize=(8, 1.2 + 0.4 * len(names)), layout="constrained")
    ax = figure.subplots()
    ax.barh(range(len(names)), [importances[n] for n in names], color="C0")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlabel="importance (share of the validation accuracy's variation)", title="parameter importances")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    return figure
