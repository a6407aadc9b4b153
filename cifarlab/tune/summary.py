"""What a sweep writes into OUT: trials.csv (and the same table printed), best.yaml (the best
trial as a config file for `cifarlab train --config`), sweep.json (the figures), history.png,
importances.png and sweep.html (all of it on one self-contained page)."""

from __future__ import annotations

import csv
import io
import warnings
from html import escape
from pathlib import Path

import yaml

from ..fileio import write_json, write_text
from ..engine.metrics import read_result
from .sweep import PRUNERS, Sweep, TrialState, best_layer, best_trial, optuna, short

ORPHANED = "its process ended while it ran"  # the one failure recorded without a reason (sweep._fail_orphans)


def trial_rows(sweep: Sweep) -> list[dict]:
    """One row per trial taken (waiting ones aside), in trial order: its outcome, the
    validation accuracy it was scored (complete) or stopped (pruned) at, its parameters."""
    rows = []
    for t in sweep.study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        reason = t.user_attrs.get("reason") or (ORPHANED if t.state == TrialState.FAIL else "")
        rows.append({
            "trial": t.number, "state": t.state.name.lower(), "baseline": bool(t.user_attrs.get("baseline")),
            "val_accuracy": t.value if t.state == TrialState.COMPLETE else last if t.state == TrialState.PRUNED else None,
            "epochs": len(t.intermediate_values), "seconds": seconds, **t.params, "reason": reason,
            "run": str(sweep.settings.folder / f"trial-{t.number:03d}"),
        })  # fmt: skip
    return rows


def figures(sweep: Sweep, rows: list[dict]) -> dict:
    """The sweep in numbers (sweep.json): counts, wall time, the best trial against the
    recipe's own values (trial 0, where the space holds them), and the best trial's test."""
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["val_accuracy"], default=None)
    baseline = next((r for r in rows if r["baseline"]), None)
    starts = [t.datetime_start for t in sweep.study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in sweep.study.get_trials(deepcopy=False) if t.datetime_complete]
    s = sweep.settings
    test = _test_result(sweep)
    return {
        "study": s.study_name, "storage": s.storage_url, "recipe": s.recipe, "space": sweep.space_file,
        "epochs": s.epochs, "sets": s.sets, "pruner": s.pruner, "trials": s.trials,
        "counts": {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail", "running")},
        "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        "best": _brief(best, sweep.space_file), "baseline": _brief(baseline, sweep.space_file),
        "test": None if test is None else {"trial": test["trial"], "accuracy": test["accuracy"], "loss": test["loss"],
                                           "checkpoint": test["checkpoint"], "tta": test["tta"]},
        "selection": "best validation accuracy of each trial (its `best` checkpoint); the test set is used once, "
                     "on the chosen trial, when the study is complete",
    }  # fmt: skip


def _test_result(sweep: Sweep) -> dict | None:
    """The best trial's eval.json, once the study is complete and it has been tested."""
    best = best_trial(sweep.study)
    run_dir = sweep.settings.folder / f"trial-{best.number:03d}" if best else None
    return {**read_result(run_dir), "trial": best.number} if run_dir and (run_dir / "eval.json").is_file() else None


def _brief(row: dict | None, space: dict) -> dict | None:
    return None if row is None else {"trial": row["trial"], "val_accuracy": row["val_accuracy"],
                                     "params": {k: row[k] for k in space}}  # fmt: skip


def format_table(rows: list[dict], keys: list[str]) -> str:
    header = ["trial", "state", "val acc", "epochs", "seconds", *keys, "reason"]
    lines = [[f"{r['trial']}{'*' if r['baseline'] else ''}", r["state"],
              "" if r["val_accuracy"] is None else f"{r['val_accuracy']:.2%}", str(r["epochs"]),
              "" if r["seconds"] is None else f"{r['seconds']:.0f}", *(short(r[k]) for k in keys), r["reason"]]
             for r in rows]  # fmt: skip
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    text = [" ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    text += [" ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text + (["* the recipe's own values"] if any(r["baseline"] for r in rows) else []))


def write_summary(sweep: Sweep) -> tuple[list[dict], dict, dict[str, Path]]:
    """Write every file of the summary from the study as it is now (under the sweep's lock:
    the process that writes last writes the latest state); returns (rows, figures, {what: path})."""
    from ..viz import page, plots  # matplotlib loads only when a figure is drawn

    folder, keys = sweep.settings.folder, list(sweep.space_file)
    rows = trial_rows(sweep)
    numbers = figures(sweep, rows)
    paths = {"table": folder / "trials.csv", "figures": folder / "sweep.json", "history": folder / "history.png"}
    write_text(paths["table"], _csv(rows, keys))
    write_json(paths["figures"], numbers)
    plots.save_png(plots.sweep_history(rows), paths["history"])
    importances = _importances(sweep)
    if importances:
        paths["importances"] = plots.save_png(plots.param_importances(importances), folder / "importances.png")
    if numbers["best"] is not None:
        paths["best"] = folder / "best.yaml"
        write_text(paths["best"], _best_yaml(sweep, numbers))
    paths["page"] = folder / "sweep.html"
    write_text(paths["page"], _page(sweep, rows, numbers, paths, page))
    return rows, numbers, paths


def _csv(rows: list[dict], keys: list[str]) -> str:
    columns = ["trial", "state", "baseline", "val_accuracy", "epochs", "seconds", *keys, "reason", "run"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: r[c] for c in columns} for r in rows)
    return buffer.getvalue()


def _importances(sweep: Sweep) -> dict[str, float]:
    """Optuna's parameter importances over the complete trials; empty when there are too few
    (or nothing varied) for it to say anything (Optuna warns then, and its figures are equal)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            return optuna.importance.get_param_importances(sweep.study)
    except (ValueError, RuntimeError, UserWarning):
        return {}


def _best_yaml(sweep: Sweep, numbers: dict) -> str:
    best = numbers["best"]
    test = numbers["test"]
    tested = f", test accuracy {test['accuracy']:.2%}" if test and test["trial"] == best["trial"] else ""
    header = (f"# The best trial ({best['trial']}) of the sweep '{numbers['study']}': validation accuracy "
              f"{best['val_accuracy']:.2%}{tested}.\n# Train it: cifarlab train --config best.yaml\n")  # fmt: skip
    return header + yaml.safe_dump(best_layer(sweep.settings, best["params"]), sort_keys=False)


def _page(sweep: Sweep, rows: list[dict], numbers: dict, paths: dict[str, Path], page) -> str:
    keys = list(sweep.space_file)
    best, baseline, test, counts = numbers["best"], numbers["baseline"], numbers["test"], numbers["counts"]
    cards = [
        page.card("trials (complete / pruned / failed)", "counts", counts,
                  f"{counts['complete']} / {counts['pruned']} / {counts['fail']}"),
        page.card("best validation accuracy", "best", best and best["val_accuracy"],
                  "—" if best is None else f"{best['val_accuracy']:.2%} (trial {best['trial']})"),
        page.card("the recipe's own values (trial 0)", "baseline", baseline and baseline["val_accuracy"],
                  "—" if baseline is None else f"{baseline['val_accuracy']:.2%}"),
        page.card("test accuracy of the best trial", "test", test and test["accuracy"],
                  "not tested yet" if test is None else f"{test['accuracy']:.2%}"),
        page.card("wall time", "wall_seconds", numbers["wall_seconds"],
                  "—" if numbers["wall_seconds"] is None else f"{numbers['wall_seconds']:.0f} s"),
    ]  # fmt: skip
    table_rows = [[page.cell(f"{r['trial']}{' (recipe)' if r['baseline'] else ''}"), page.cell(r["state"]),
                   page.number(f"trials/{r['trial']}/val_accuracy", r["val_accuracy"],
                               "" if r["val_accuracy"] is None else f"{r['val_accuracy']:.2%}"),
                   page.cell(r["epochs"]), *(page.cell(short(r[k])) for k in keys), page.cell(r["reason"])]
                  for r in rows]  # fmt: skip
    images = page.image(paths["history"], "optimization history")
    if "importances" in paths:
        images += page.image(paths["importances"], "parameter importances")
    else:
        images += page.note("parameter importances need more complete trials")
    s = sweep.settings
    return page.render(
        "sweep.html",
        title=escape(f"Sweep {s.study_name}: recipe {s.recipe}"),
        subtitle=escape(f"{s.trials} trials of {s.epochs or 'the recipe’s'} epochs; pruner: {s.pruner} "
                        f"({PRUNERS[s.pruner]}); space: {s.space}"),  # fmt: skip
        cards="".join(cards),
        table=page.table(["trial", "state", "val acc", "epochs", *keys, "reason"], table_rows, numeric_from=2),
        images=images,
        footer=page.footer(),
    )
