"""Task families: how a task's data is loaded and its final metrics computed (GLUE, VTAB-1k, E2E NLG).

A family is one class with `load` (train set, eval sets, collator) and `evaluate` (final metrics on every
eval split); `FAMILIES` maps `task.family` to it. Adding a family is one class here and its task files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
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
    scored_from_logits: ClassVar[bool] = True  # False: scored from decoded text (the Trainer keeps no logits)
    data_facts: dict | None = None  # set by load: what the record says about the data (the held-out slice)

    def __init__(self, task: DictConfig, hyperparameters: dict):
        self.task = task
        self.hyperparameters = hyperparameters  # the protocol's values (E2E: its decoding settings)

    def preprocessor(self, model, preprocessor):
        """The tokenizer / transform to use with `model` (default: the backbone's own)."""
        return preprocessor

    def trainer_evals(self, evals: dict[str, Any]) -> dict[str, Any]:
        """The eval sets the Trainer sees after every epoch (default: the final ones)."""
        return evals

    def unavailable_metrics(self, final: dict[str, float]) -> list[str]:
        """Metrics of task.metrics that could not be computed on this machine (never estimated)."""
        return []

    @abstractmethod
    def load(
        self, preprocessor: Any, trainer: TrainerSettings, seed: int
    ) -> tuple[Any, dict[str, Any], Callable]:
        """(train set, {eval split: eval set}, collator)."""

    def check_heldout(self, trainer: TrainerSettings) -> None:
        if trainer.heldout:
            raise QpeftError(
                f"trainer.heldout is implemented for GLUE tasks only, not {self.name}: set trainer.heldout=null"
            )

    def compute_metrics(self, prediction) -> dict[str, float]:
        """Metrics of one Trainer prediction (the per-epoch evaluation)."""
        return metrics.compute(self.task, prediction.predictions, prediction.label_ids)

    def metric_suffix(self, split: str) -> str:
        return ""

    def evaluate(self, trainer: Trainer, evals: dict[str, Any], run_dir: Path) -> dict[str, float]:
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
        train, evals, self.data_facts = glue.load(
            self.task,
            preprocessor,
            trainer.max_length,
            self.task.get("data_dir"),
            seed,
            trainer.train_limit,
            trainer.eval_limit,
            trainer.heldout,
            trainer.heldout_clean,
        )
        return train, evals, DataCollatorWithPadding(preprocessor)

    def metric_suffix(self, split: str) -> str:
        from qpeft.data.glue import eval_name

        return eval_name(split)


class Vtab(TaskFamily):
    name, text = "vtab", False

    def load(self, preprocessor, trainer, seed):
        from qpeft.data import vtab

        self.check_heldout(trainer)
        try:
            train, evals = vtab.load_task(
                self.task, preprocessor, seed, trainer.train_limit, trainer.eval_limit
            )
        except (FileNotFoundError, ValueError) as e:  # the loader's messages name task.data_dir / the file
            raise QpeftError(str(e)) from None
        return train, evals, vtab.collate


class E2E(TaskFamily):
    """E2E NLG on a decoder (docs/e2e.md): causal-LM loss on the reference tokens, then beam search on every
    distinct meaning representation, scored with the official E2E metrics."""

    name, text, scored_from_logits = "e2e", True, False

    def preprocessor(self, model, preprocessor):
        from qpeft.data import e2e

        if preprocessor is None:  # tiny random decoders (tests): a vocabulary from the training text
            texts = [f"{mr} {ref}" for mr, ref in e2e.read_split(self.task, "train")]
            return e2e.word_tokenizer(texts, model.config.vocab_size)
        return preprocessor

    def load(self, preprocessor, trainer, seed):
        from qpeft.data import e2e

        self.check_heldout(trainer)
        self.tokenizer = preprocessor
        train, evals = e2e.load(
            self.task, preprocessor, trainer.max_length, seed, trainer.train_limit, trainer.eval_limit
        )
        return train, evals, e2e.CausalCollator(preprocessor.pad_token_id)

    def trainer_evals(self, evals):
        return {split: data.pairs for split, data in evals.items()}  # teacher-forced loss per epoch

    def evaluate(self, trainer, evals, run_dir):
        from qpeft import nlg

        decoding = self.hyperparameters.get("decoding") or {}
        batch = trainer.args.per_device_eval_batch_size
        return nlg.evaluate(trainer.model, self.tokenizer, evals, decoding, run_dir, batch)

    def unavailable_metrics(self, final):
        return [m for m in self.task.metrics if m not in final]


FAMILIES: dict[str, type[TaskFamily]] = {cls.name: cls for cls in (Glue, Vtab, E2E)}


def family(task: DictConfig, hyperparameters: dict) -> TaskFamily:
    """The family object of task config `task` under the protocol values `hyperparameters`."""
    if task.family not in FAMILIES:
        raise QpeftError(f"task.family={task.family!r}: qpeft knows {', '.join(sorted(FAMILIES))}")
    return FAMILIES[task.family](task, hyperparameters)
