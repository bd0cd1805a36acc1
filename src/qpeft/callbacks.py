"""The Trainer callbacks qpeft adds: metrics.csv, the methods' step hook, step timing, log lines."""

from __future__ import annotations

import csv
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from qpeft.errors import QpeftError


class NonFiniteLoss(QpeftError):
    """The training loss became NaN or infinite: the run's checkpoints hold no state worth resuming."""


class StepLrs(TrainerCallback):
    """The distinct lrs of the optimiser groups in the last optimizer step, smallest first.

    The Trainer logs only the first group's lr; with groups of their own (adapter.adapter_lr, circuit_lr) that is
    one of several, so metrics.csv adds their range (learning_rate_min, learning_rate_max) and the progress line
    shows it. Read here, after optimizer.step() and before the scheduler steps: the lrs the step used, as the
    Trainer's own learning_rate is (at on_log the groups already hold the next step's)."""

    step_lrs: tuple[float, ...] = ()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
        self.step_lrs = (
            tuple(sorted({g["lr"] for g in optimizer.param_groups})) if optimizer is not None else ()
        )


class CsvLogger(StepLrs):
    """Append every Trainer log line (loss, lr, eval metrics) to metrics.csv (rank 0); stop on a non-finite loss
    (every rank: the logged loss is already averaged over the ranks, so all stop at the same step)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs:
            return
        loss = logs.get("loss", logs.get("train_loss"))  # train_loss: the run's mean, logged at the end
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(
                f"the training loss became {loss} at step {state.global_step}: lower trainer.lr"
            )
        if not state.is_world_process_zero:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "key", "value"])
            epoch = logs.get("epoch", state.epoch)
            for k, v in logs.items():
                if k not in ("step", "epoch"):
                    w.writerow([state.global_step, epoch, k, v])
            lrs = self.step_lrs
            if "learning_rate" in logs and len(lrs) > 1:  # the Trainer's learning_rate is the first group's
                w.writerow([state.global_step, epoch, "learning_rate_min", lrs[0]])
                w.writerow([state.global_step, epoch, "learning_rate_max", lrs[-1]])


class LogLines(StepLrs):
    """Progress as one line per logging step (for log files: `nohup`, SLURM), used when stderr is no terminal."""

    def __init__(self, total_steps: int):
        self.total = total_steps
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, optimizer=None, **kw):
        if not logs or not state.is_world_process_zero:
            return
        items = {k: v for k, v in logs.items() if k != "epoch"}
        lrs = self.step_lrs
        if "learning_rate" in items and len(lrs) > 1:
            items["learning_rate"] = f"{lrs[0]:.4g}..{lrs[-1]:.4g} ({len(optimizer.param_groups)} groups)"
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items.items())
        elapsed = time.time() - self.start
        print(
            f"[qpeft] step {state.global_step}/{state.max_steps or self.total} epoch {state.epoch or 0:.2f} "
            f"{elapsed / 60:.1f} min | {shown}",
            file=sys.stderr,
            flush=True,
        )


class StepHook(TrainerCallback):
    """Call a method's per-step hook after every optimizer step, before the gradients are zeroed."""

    def __init__(self, hook: Callable[[int], None]):
        self.hook = hook

    def on_optimizer_step(self, args, state, control, **kw):
        self.hook(state.global_step)


class Throughput(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, optimizer), for samples/s and step time."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)

    def step_time(self) -> float | None:
        """Median step time after the first steps (warm-up) are dropped."""
        t = self.times[min(5, len(self.times) // 4) :]
        return statistics.median(t) if t else None
