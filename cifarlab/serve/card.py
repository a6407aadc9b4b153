"""The model card on the page: what answers (net, runtime, precision), how it scored when it
was tested once (eval.json: overall and per class), what it costs (parameters and MACs of its
architecture; latency and throughput when `cifarlab bench` measured it: bench.json) and what
its probabilities mean (calibrated or raw). Numbers carry their exact values for programs
(viz/page.py), as in the run report."""

from __future__ import annotations

from html import escape
from pathlib import Path

from ..compress.bench import architecture_stats
from ..viz import page
from ..viz.report import read_bench
from .classifier import Classifier
from .text import EN


def card_html(classifier: Classifier) -> str:
    source, result = classifier.source, classifier.test_result
    stats = architecture_stats(classifier.checkpoint)
    macs = stats.mflops / 2  # a multiply-add is 2 FLOPs
    cards = [page.card(EN["card_params"], "params", stats.params, f"{stats.params:,}"),
             page.card(EN["card_macs"], "mmacs", macs, f"{macs:,.1f}")]  # fmt: skip
    parts = []
    if result is not None:
        cards.insert(0, page.card(EN["card_accuracy"], "accuracy", result["accuracy"], f"{result['accuracy']:.2%}"))
        parts.append(_per_class_table(result))
        parts.append(_caption(EN["card_tested"].format(images=result.get("num_images", 0), tta=result.get("tta", "none"))))
    else:
        parts.append(page.note(EN["card_untested"].format(source=source)))
    measured = _bench_row(source)
    if measured is not None:
        row, table = measured
        cards.append(page.card(EN["card_latency"], "latency_ms_p50", row["latency_ms_p50"], f"{row['latency_ms_p50']:.2f}"))
        cards.append(page.card(EN["card_throughput"], "images_per_s", row["images_per_s"], f"{row['images_per_s']:,.0f}"))
        parts.append(_caption(EN["card_bench"].format(cpu=table["hardware"].get("cpu", "?"), threads=table["threads"])))
    else:
        parts.append(page.note(EN["card_no_bench"].format(source=source)))
    return f'<div class="cards">{"".join(cards)}</div>' + "".join(parts)


def probabilities_note(classifier: Classifier) -> str:
    """What the page's probabilities are: calibrated (with which temperature) or raw."""
    temperature = classifier.checkpoint.temperature
    return EN["raw"] if temperature is None else EN["calibrated"].format(temperature=temperature)


def _caption(text: str) -> str:
    return f'<p class="caption">{escape(text)}</p>'


def _per_class_table(result: dict) -> str:
    rows = [[page.cell(name), page.number(f"per_class/{name}/accuracy", c["accuracy"], f"{c['accuracy']:.2%}"),
             page.number(f"per_class/{name}/support", c["support"], f"{c['support']:,}")]
            for name, c in result["per_class"].items()]  # fmt: skip
    header = [EN["card_class"], EN["card_accuracy"], EN["card_images"]]
    return f"<h3>{escape(EN['card_per_class'])}</h3>" + page.table(header, rows)


def _bench_row(source: Path) -> tuple[dict, dict] | None:
    """This model's row of the bench.json beside it (a run's, or the folder holding the file),
    and the table; None when it was not measured. A row is this model's when its path is
    this one, or, when bench ran from elsewhere, when its label is this folder's name."""
    table = read_bench(source if source.is_dir() else source.parent)
    if table is None:
        return None
    for row in table["rows"]:
        if Path(row.get("path", "")).resolve() == source.resolve() or row["label"] == source.name:
            return row, table
    return None
