"""Where a recipe's time goes on this CPU: each phase of one whole run, its wall time, and the CPU
time of the main thread and of torch's other threads during it; plus the ops of a few profiled
training steps. Prints JSON.

    python benchmarks/where_time_goes.py --recipe fast --data-dir ../shared/data [--set KEY=VALUE]

The run is an ordinary `cifarlab.train` of the recipe (its honest path and its own timing in
`run`); the benchmark wraps the trainer's methods on the instance, so the code measured is the
code that trains. Phases: the loader's batches (augmentation included), the forward pass, each
optimizer's step (Muon's Newton-Schulz is in its step), the EMA, and what is left of a training
step (the backward pass with the step's bookkeeping); then the setup (the whitening init in it),
epoch ends, checkpoints, log lines, and the test evaluation with TTA after training.
`cores_busy` is the CPU time of all threads over the wall time: 2.0 means both cores worked
throughout, 1.0 that the phase ran on one (a phase of a few seconds in all is noise). Thread
CPU times come from /proc/self/task/*/schedstat (nanoseconds on the CPU), so this runs on Linux
only. torch.profiler records --profile-steps steps from the second epoch on; their op table is
per step, by self CPU time on the launching thread, and those steps' phase times include the
profiler's overhead. Time it alone on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

import cifarlab
from cifarlab.engine.runtime import hardware

MAIN = threading.get_native_id()


def thread_cpu() -> tuple[float, float]:
    """CPU seconds so far of the main thread and of all other threads of this process."""
    main = others = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:  # a thread that has just ended
            continue
        if int(tid) == MAIN:
            main += ns
        else:
            others += ns
    return main / 1e9, others / 1e9


class Phases:
    """Wall and per-thread CPU seconds, summed by phase; an inner phase's time is taken out of
    the phase around it, so the phases add up to the whole."""

    def __init__(self):
        self.totals = defaultdict(lambda: [0.0, 0.0, 0.0])  # wall, main cpu, other cpu
        self.stack: list[list] = []

    def clock(self) -> tuple[float, float, float]:
        return (time.perf_counter(), *thread_cpu())

    def enter(self) -> None:
        self.stack.append([self.clock(), (0.0, 0.0, 0.0)])

    def leave(self, name: str) -> None:
        start, inner = self.stack.pop()
        spent = [now - then for now, then in zip(self.clock(), start)]
        for i in range(3):
            self.totals[name][i] += spent[i] - inner[i]
        if self.stack:
            self.stack[-1][1] = tuple(a + b for a, b in zip(self.stack[-1][1], spent))

    def wrap(self, name: str, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            self.enter()
            try:
                return method(*args, **kwargs)
            finally:
                self.leave(name)

        return timed

    def batches(self, epoch):
        """The loader's `epoch`, with the making of each batch timed."""

        @functools.wraps(epoch)
        def timed(*args, **kwargs):
            iterator = epoch(*args, **kwargs)
            while True:
                self.enter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.leave("loader: batches and their augmentation")
                yield batch

        return timed

    def table(self) -> list[dict]:
        rows = [{"phase": name, "wall_seconds": round(wall, 2), "main_thread_cpu_seconds": round(main, 2),
                 "other_threads_cpu_seconds": round(other, 2), "cores_busy": round((main + other) / wall, 2) if wall else None}
                for name, (wall, main, other) in self.totals.items()]  # fmt: skip
        return sorted(rows, key=lambda r: -r["wall_seconds"])


class Instrument:
    """At fit start: wrap the trainer's parts in phases, and profile a few steps of epoch 2."""

    def __init__(self, phases: Phases, profile_steps: int):
        self.phases, self.profile_steps = phases, profile_steps
        self.profiler, self.ops = None, []

    def on_fit_start(self, trainer) -> None:
        p = self.phases
        p.leave("setup: data, model, optimizers, whitening init")  # entered before cifarlab.train
        for name, label in (("end_epoch", "epoch ends (evaluation, best checkpoint)"), ("log_window", "log lines"),
                            ("save_last", "checkpoints/last")):  # fmt: skip
            setattr(trainer, name, p.wrap(label, getattr(trainer, name)))
        trainer.forward = p.wrap("forward", trainer.forward)
        for optimizer in trainer.optimizers:
            kind = type(optimizer).__name__
            optimizer.step = p.wrap(f"optimizer step: {kind}", optimizer.step)
        if trainer.ema is not None:
            trainer.ema.update_parameters = p.wrap("EMA update", trainer.ema.update_parameters)
        trainer.train_loader.epoch = p.batches(trainer.train_loader.epoch)
        step = p.wrap("backward and the step's bookkeeping", trainer.train_step)
        first = trainer.steps_per_epoch  # the first step of epoch 2

        def train_step(*args, **kwargs):
            if trainer.step == first and self.profile_steps:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.__enter__()
            out = step(*args, **kwargs)
            if self.profiler is not None and trainer.step == first + self.profile_steps:
                self.profiler.__exit__(None, None, None)
                self.ops = top_ops(self.profiler, self.profile_steps)
                self.profiler = None
            return out

        trainer.train_step = train_step
        p.enter()  # around the rest of the run, closed when cifarlab.train returns

    def after_training(self) -> None:
        self.phases.leave("the rest: test evaluation with TTA after training, eval.json, the loop itself")


def top_ops(profiler, steps: int, count: int = 20) -> list[dict]:
    events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 2),
             "share": round(e.self_cpu_time_total / total, 4), "calls_per_step": round(e.count / steps, 1)}
            for e in events[:count]]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile-steps", type=int, default=5, help="steps of epoch 2 under torch.profiler (0: none)")
    parser.add_argument("--results", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    phases = Phases()
    instrument = Instrument(phases, args.profile_steps)
    with tempfile.TemporaryDirectory() as scratch:
        sets = [f"train.seed={args.seed}", f"train.out={Path(scratch) / 'run'}", "train.report=false", *args.set]
        if args.data_dir:
            sets.append(f"data.data_dir={args.data_dir}")
        config = cifarlab.resolve_config(args.recipe, sets=sets)
        start, cpu_start = time.perf_counter(), thread_cpu()
        phases.enter()
        run = cifarlab.train(config, callbacks=[instrument], verbose=False)
        instrument.after_training()
        wall, cpu = time.perf_counter() - start, [b - a for a, b in zip(cpu_start, thread_cpu())]
    result = {
        "recipe": args.recipe, "seed": args.seed, "sets": args.set, "accuracy": run.test["accuracy"],
        "run": {"train_seconds": round(run.test["train_seconds"], 1), "eval_seconds": round(run.test["eval_seconds"], 1)},
        "wall_seconds": round(wall, 1), "main_thread_cpu_seconds": round(cpu[0], 1),
        "other_threads_cpu_seconds": round(cpu[1], 1), "cores_busy": round(sum(cpu) / wall, 2),
        "phases": phases.table(), "profiled_steps": args.profile_steps, "top_ops": instrument.ops, "hardware": hardware(),
    }  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.results:
        args.results.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
