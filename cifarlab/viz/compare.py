"""`cifarlab compare RUN_A RUN_B ...`: the runs' training curves overlaid and their final
metrics side by side, in one self-contained HTML page plus its PNG."""

from __future__ import annotations

from html import escape
from pathlib import Path

from ..config import Config, from_dict, read_yaml
from ..engine.metrics import read_result
from ..errors import CifarlabError
from ..fileio import write_text
from ..models import create_model, model_stats
from . import page, plots
from .report import read_records


def compare_runs(run_dirs: list[str | Path], out: str | Path = "compare.html") -> Path:
    """Write `out` (HTML) and the curves beside it as `<out stem>.png`; returns the HTML's path."""
    out = Path(out)
    if out.suffix.lower() != ".html":
        raise CifarlabError(f"--out '{out}' must end in .html (the curves are written beside it as .png)")
    runs = [Path(d) for d in run_dirs]
    results = [read_result(d) for d in runs]  # every check before anything is written
    configs = [from_dict(read_yaml(d / "config.yaml")) for d in runs]
    labels = _labels(runs)
    curves = plots.save_png(plots.training_curves({l: read_records(d) for l, d in zip(labels, runs)}),
                            out.with_suffix(".png"))  # fmt: skip
    rows = [_row(label, result, config) for label, result, config in zip(labels, results, configs)]
    header = ["run", "model", "epochs", "test accuracy", "test loss", "macro F1", "best val accuracy", "params",
              "MFLOPs", "train time (s)", "hardware"]  # fmt: skip
    html = page.render(
        "compare.html",
        title=escape(f"Comparison of {len(runs)} runs"),
        subtitle=escape(", ".join(str(r) for r in runs)),
        table=page.table(header, rows, numeric_from=2),
        curves=page.image(curves, "training curves of all runs"),
        footer=page.footer(),
    )
    write_text(out, html)
    return out


def _labels(runs: list[Path]) -> list[str]:
    """Folder names, or whole paths where two runs share a folder name."""
    names = [r.name for r in runs]
    return [name if names.count(name) == 1 else str(run) for name, run in zip(names, runs)]


def _row(label: str, result: dict, config: Config) -> list[str]:
    model = create_model(config.model.name, len(result["per_class"]), config.model.resized, **config.model.options)
    stats = model_stats(model)
    val = result.get("val_accuracy")
    key = f"runs/{label}"
    return [
        page.cell(label),
        page.cell(config.model.name),
        page.number(f"{key}/epochs", config.train.epochs, str(config.train.epochs)),
        page.number(f"{key}/accuracy", result["accuracy"], f"{result['accuracy']:.2%}"),
        page.number(f"{key}/loss", result["loss"], f"{result['loss']:.4f}"),
        page.number(f"{key}/macro_f1", result["macro_f1"], f"{result['macro_f1']:.4f}"),
        page.number(f"{key}/val_accuracy", val, "—" if val is None else f"{val:.2%}"),
        page.number(f"{key}/params", stats.params, f"{stats.params:,}"),
        page.number(f"{key}/mflops", stats.mflops, f"{stats.mflops:,.1f}"),
        page.number(f"{key}/train_seconds", result["train_seconds"], f"{result['train_seconds']:,.1f}"),
        page.cell(result.get("hardware", {}).get("gpu") or result.get("hardware", {}).get("cpu", "?")),
    ]
