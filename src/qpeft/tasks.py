"""Task families: how a task's data is loaded and its final metrics computed (GLUE, VTAB-1k).

A family is one class with `load` (train set, eval sets, collator) and `evaluate` (final metrics on every
eval split); `FAMILIES` maps `task.family` to it. Adding a family is one class here and its task files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from omegaconf import DictConfig
from transformers import DataCollatorWithPadding, Trainer

from qpeft import metrics
from qpeft.config import TrainerSettings
from qpeft.errors import QpeftError


class TaskFamily(ABC):
    """Data and metrics of one family of tasks; `task` is the `task` config group."""

    name: ClassVar[str]
    text: ClassVar[bool]  # tokenised text (length-grouped batches possible)

    def __init__(self, task: DictConfig):
        self.task = task

    @abstractmethod
    def load(
        self, preprocessor: Any, trainer: TrainerSettings, seed: int
    ) -> tuple[Any, dict[str, Any], Callable]:
        """(train set, {eval split: eval set}, collator)."""

    def compute_metrics(self, prediction) -> dict[str, float]:
        """Metrics of one Trainer prediction (the per-epoch evaluation)."""
        return metrics.compute(self.task, prediction.predictions, prediction.label_ids)

    def metric_suffix(self, split: str) -> str:
        return ""

    def evaluate(self, trainer: Trainer, evals: dict[str, Any]) -> dict[str, float]:
        """Final metrics on every eval split (keys suffixed where a task has several, MNLI's _matched ...)."""
        out = {}
        for split, ds in evals.items():
            pred = trainer.predict(ds, metric_key_prefix=f"final_{split}")
            suffix = self.metric_suffix(split)
            for k, v in self.compute_metrics(pred).items():
                out[f"{k}_{suffix}" if suffix else k] = v
        return out


class Glue(TaskFamily):
    name, text = "glue", True

    def load(self, preprocessor, trainer, seed):
        from qpeft.data import glue

        if trainer.max_length is None:
            raise QpeftError("no max length for a text task: set trainer.max_length=...")
        train, evals = glue.load(
            self.task,
            preprocessor,
            trainer.max_length,
            self.task.get("data_dir"),
            seed,
            trainer.train_limit,
            trainer.eval_limit,
        )
        return train, evals, DataCollatorWithPadding(preprocessor)

    def metric_suffix(self, split: str) -> str:
        from qpeft.data.glue import eval_name

        return eval_name(split)


class Vtab(TaskFamily):
    name, text = "vtab", False

    def load(self, preprocessor, trainer, seed):
        from qpeft.data import vtab

        try:
            train, evals = vtab.load_task(
                self.task, preprocessor, seed, trainer.train_limit, trainer.eval_limit
            )
        except (FileNotFoundError, ValueError) as e:  # the loader's messages name task.data_dir / the file
            raise QpeftError(str(e)) from None
        return train, evals, vtab.collate


FAMILIES: dict[str, type[TaskFamily]] = {cls.name: cls for cls in (Glue, Vtab)}


def family(task: DictConfig) -> TaskFamily:
    """The family object of task config `task`."""
    if task.family not in FAMILIES:
        raise QpeftError(f"task.family={task.family!r}: qpeft knows {', '.join(sorted(FAMILIES))}")
    return FAMILIES[task.family](task)
