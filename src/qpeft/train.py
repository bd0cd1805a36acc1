"""One training run, top to bottom: check the settings, claim the run folder, build, train (resuming), evaluate,
record. The transformers Trainer gives AMP, gradient accumulation, checkpoint/resume and torchrun; qpeft adds
callbacks only. The pieces: config (settings), run_folder (lock, guard, checkpoints), tasks (data, metrics),
hf_trainer (TrainingArguments, optimiser), callbacks, provenance, records, wandb_log, distributed (several
processes: every rank runs this file, rank 0 alone writes the run folder and decides for all)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from omegaconf import OmegaConf
from transformers import PrinterCallback, set_seed

from qpeft import adapters, backbones, distributed, hf_trainer, provenance, records, tasks, wandb_log
from qpeft.callbacks import CsvLogger, LogLines, NonFiniteLoss, StepHook, Throughput
from qpeft.config import RunSpec, run_spec
from qpeft.errors import QpeftError
from qpeft.guard import run_settings
from qpeft.run_folder import METRICS_NAME, RunFolder


def summary_line(record: dict, path, retrained: bool = True) -> str:
    """The line a finished run prints (again when it is asked for and returned without retraining)."""
    # an undefined metric (NaN) is null in a record's JSON form
    shown = ", ".join(f"{k} {'nan' if v is None else f'{v:.4f}'}" for k, v in record["metrics"].items())
    head = "done" if retrained else "finished already, not retrained"
    n = record["adapter_params"]
    lora = (record.get("adapter_extra") or {}).get("lora_r8_params")
    beside = f" (LoRA r=8 on the same matrices: {lora:,}, {lora / n:,.0f}x more)" if lora and n else ""
    return (
        f"[qpeft] {head}: {record['task']} | {record['backbone']} | {record['adapter_tag']} | seed {record['seed']}: "
        f"{shown} | adapter params {n:,}{beside} | record {path}"
    )


def build_model(spec: RunSpec):
    """(model, preprocessor) with the protocol's classifier dropout / drop-path."""
    bb = spec.backbone
    num_labels = spec.task.get("num_labels") or spec.task.get("num_classes")
    dropout = spec.trainer.cls_dropout
    overrides = {bb.dropout_key: dropout} if bb.get("dropout_key") and dropout is not None else {}
    if spec.trainer.drop_path is not None and bb.kind in ("timm", "timm_config"):
        bb = OmegaConf.merge(bb, {"drop_path": spec.trainer.drop_path})
    return backbones.build(bb, num_labels, overrides)


def train(cfg) -> dict | None:
    """Run (or resume, or return if finished) the run `cfg` describes; its record, or None when another process
    is running it. In a multi-process run every rank calls this and gets the same answer."""
    spec = run_spec(cfg)
    distributed.slurm_env()
    ranks = distributed.start(cpu=hf_trainer.use_cpu(spec.trainer))
    folder = RunFolder(spec.run_dir)
    settings = run_settings(spec.cfg)
    try:
        state, done = distributed.from_main(lambda: open_run(folder, settings))
        if state == "busy":
            if ranks.main:
                print(f"[qpeft] another process is running {folder.path}, skipping", flush=True)
            return None
        if state == "done":
            if ranks.main:
                print(summary_line(done, folder.record_path, retrained=False), flush=True)
            return done
        return _train(spec, folder, settings, ranks, provenance.code_state())
    finally:
        folder.release()


def open_run(folder: RunFolder, settings: dict) -> tuple[str, dict | None]:
    """Rank 0's decision: ("busy", None) if another job holds the folder, ("done", record) if it holds a
    finished run, else ("train", None) with the folder claimed; a QpeftError if it was made with other settings."""
    if not folder.claim():
        return "busy", None
    folder.check_settings(settings)
    done = folder.finished_record()
    return ("done", done) if done is not None else ("train", None)


def _quiet(*args, **kwargs) -> None:
    """print() for ranks other than 0: the run's lines appear once."""


def _busy_cores_warning(threads: int) -> str | None:
    """A warning when a CPU run's torch threads exceed the cores other processes leave idle: OpenMP threads then
    wait at every barrier for a descheduled peer (here a 2-thread run beside a 1-thread job took 10x longer per
    step than on the idle machine). None on a GPU machine, with one thread, or when the load leaves room."""
    if threads <= 1 or torch.cuda.is_available():
        return None
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]  # runnable processes, a 1-min average: one started seconds ago adds little
    if load + threads <= cores + 0.5:
        return None
    return (
        f"[qpeft] warning: {threads} torch threads on {cores} cores with load {load:.1f} from other processes: "
        f"threads that share busy cores stall each other; set trainer.threads to the idle cores (e.g. 1)"
    )


def learning_curve(
    log_history: list[dict], family: tasks.TaskFamily, metric: str, splits
) -> list[dict] | None:
    """The main metric of every eval split at each step the Trainer evaluated (trainer.eval_steps), named as in
    the record's metrics (`accuracy`, `accuracy_heldout`); None when it never evaluated during training."""
    points: dict[int, dict] = {}
    for entry in log_history:
        for split in splits:
            value = entry.get(f"eval_{split}_{metric}")
            if value is not None:
                suffix = family.metric_suffix(split)
                points.setdefault(entry["step"], {})[f"{metric}_{suffix}" if suffix else metric] = value
    return [{"step": step, **values} for step, values in sorted(points.items())] or None


@dataclass
class Built:
    """What `build` made: the adapted model and its method, the task's data, the step budget, the counts."""

    model: torch.nn.Module
    method: adapters.Method
    family: tasks.TaskFamily
    train_ds: Any
    evals: dict
    collator: Any
    total_steps: int
    head: list[str]
    n_adapter: int
    n_head: int


def build(spec: RunSpec, ranks: distributed.Ranks, say: Callable[..., None], folder: RunFolder) -> Built:
    """Threads, seed, the backbone, the data, then the adapter on the backbone; says what it built."""
    t = spec.trainer
    if t.threads:
        torch.set_num_threads(t.threads)
    busy = _busy_cores_warning(torch.get_num_threads())
    if busy:
        say(busy, file=sys.stderr)
    provenance.reset_peak_memory()
    method = adapters.get_method(spec.adapter["method"])(spec.adapter_settings)
    family = tasks.family(spec.task, spec.hyperparameters)
    if ranks.distributed and not family.scored_from_logits:
        raise QpeftError(
            f"task family {family.name} is scored from decoded text, which qpeft runs in one process only: "
            "run it without torchrun (hydra.launcher.tasks_per_node=1)"
        )
    set_seed(spec.seed)

    model, preprocessor = build_model(spec)
    positions = backbones.max_positions(model)
    if family.text and t.max_length and positions and t.max_length > positions:
        raise QpeftError(
            f"trainer.max_length={t.max_length} is above the {positions} positions of backbone={spec.backbone.name}: "
            f"set trainer.max_length={positions} or lower"
        )
    preprocessor = family.preprocessor(model, preprocessor)
    train_ds, evals, collator = family.load(preprocessor, t, spec.seed)
    steps_per_epoch = math.ceil(len(train_ds) / (t.batch_size * t.grad_accum))
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    head = list(spec.backbone.head)
    targets = list(spec.adapter_settings.targets or spec.backbone.targets)
    model = method.apply(model, targets, head, total_steps)
    built = Built(
        model,
        method,
        family,
        train_ds,
        evals,
        collator,
        total_steps,
        head,
        n_adapter=method.adapter_params(model, head),
        n_head=adapters.head_params(model, head),
    )
    procs = f" on {ranks.world_size} processes" if ranks.distributed else ""
    say(
        f"[qpeft] {spec.task.name} | {spec.backbone.name} | {spec.adapter['name']} | seed {spec.seed}: adapter "
        f"params {built.n_adapter:,}, head params {built.n_head:,}, train {len(train_ds):,} examples, "
        f"{total_steps:,} steps{procs} -> {folder.path}",
        flush=True,
    )
    return built


def make_trainer(
    spec: RunSpec, built: Built, folder: RunFolder, ranks: distributed.Ranks, run_id: str, wandb_on: bool
) -> tuple[hf_trainer.Trainer, Throughput]:
    """The Trainer, with qpeft's callbacks and the method's optimiser groups."""
    t, family, model = spec.trainer, built.family, built.model
    throughput = Throughput()
    callbacks = [CsvLogger(folder.path / METRICS_NAME), throughput]
    log_file = not sys.stderr.isatty()  # nohup / SLURM: one line per logging step, no progress bars
    if log_file:
        callbacks.append(LogLines(built.total_steps))
        transformers.utils.logging.disable_progress_bar()
    callbacks.append(StepHook(lambda step: built.method.on_step(model, step)))
    args = hf_trainer.training_args(
        t,
        folder.path,
        spec.seed,
        family.text,
        run_id,
        wandb_on,
        keep_logits=family.scored_from_logits,
        world_size=ranks.world_size,
        token_loss=spec.backbone.get("task_type") == "causal_lm",
    )
    trainer = hf_trainer.Trainer(
        model=model,
        args=args,
        train_dataset=built.train_ds,
        eval_dataset=family.trainer_evals(built.evals),
        data_collator=built.collator,
        compute_metrics=family.compute_metrics if family.scored_from_logits else None,
        callbacks=callbacks,
    )
    if log_file:
        trainer.remove_callback(PrinterCallback)  # LogLines prints the same logs with the step count
    hf_trainer.use_param_groups(trainer, built.method.optimizer_groups(model, t.lr, t.weight_decay))
    return trainer, throughput


def start_wandb(spec: RunSpec, folder: RunFolder, run_id: str):
    """One W&B run per run (rank 0; the Trainer's WandbCallback logs from rank 0 only); None when it is off."""
    tag = spec.adapter["name"]
    return wandb_log.start(
        spec.cfg.logger,
        folder.path,
        run_id,
        name=f"{spec.task.name}/{spec.backbone.name}/{tag}/seed{spec.seed}",
        config=OmegaConf.to_container(spec.cfg, resolve=True),
        tags=[
            f"method:{spec.adapter['method']}",
            f"backbone:{spec.backbone.name}",
            f"task:{spec.task.name}",
            f"seed:{spec.seed}",
        ],
        job_type=spec.task.name,
    )


@dataclass
class Outcome:
    """What training and the final evaluation gave, for the record."""

    final: dict
    facts: dict
    adapter_file: Path | None
    resumed_from: str | None
    wall_time_s: float


def make_record(
    spec: RunSpec,
    built: Built,
    trainer: hf_trainer.Trainer,
    throughput: Throughput,
    outcome: Outcome,
    ranks: distributed.Ranks,
    run_id: str,
    settings: dict,
    code: provenance.CodeState | None,
) -> records.Record:
    """The run's record: what ran (settings, code, versions, data), what it gave, and what it cost."""
    t, model, train_ds = spec.trainer, built.model, built.train_ds
    main = spec.task.main_metric
    step_time = throughput.step_time()
    samples_per_step = t.batch_size * t.grad_accum  # batch_size: the global batch, over all ranks
    cols = getattr(train_ds, "column_names", None) or []
    mean_tokens = float(np.mean([len(x) for x in train_ds["input_ids"]])) if "input_ids" in cols else None
    peak, peak_kind = provenance.peak_memory()
    peak, ranks_seen = distributed.max_over_ranks(peak)  # the busiest rank's peak, not rank 0's alone
    if ranks_seen > 1:
        peak_kind = f"{peak_kind}_max_of_{ranks_seen}_ranks"
    final = outcome.final
    return records.Record(
        run_id=run_id,
        experiment=spec.experiment,
        task=spec.task.name,
        task_family=spec.task.family,
        task_group=spec.task.get("group"),
        backbone=spec.backbone.name,
        adapter=spec.adapter["method"],
        adapter_tag=spec.adapter["name"],
        adapter_cfg=spec.adapter,
        seed=spec.seed,
        protocol=spec.protocol,
        hyperparameters=spec.hyperparameters,
        metrics=final,
        metrics_unavailable=built.family.unavailable_metrics(final) or None,  # E2E without Java
        main_metric=main,
        score=final[main],
        adapter_params=built.method.adapter_params(model, built.head),  # AdaLoRA: the final budget
        head_params=built.n_head,
        total_params=sum(p.numel() for p in model.parameters()),
        train_samples=len(train_ds),
        eval_samples={k: len(v) for k, v in built.evals.items()},
        optimizer_steps=trainer.state.global_step,
        step_time_s=step_time,
        train_samples_per_s=samples_per_step / step_time if step_time else None,
        train_tokens_per_s=samples_per_step * mean_tokens / step_time if step_time and mean_tokens else None,
        peak_mem_bytes=peak,
        peak_mem_kind=peak_kind,
        wall_time_s=outcome.wall_time_s,
        resumed_from=outcome.resumed_from,
        world_size=ranks.world_size if ranks.distributed else None,
        config=OmegaConf.to_container(spec.cfg, resolve=True),
        versions=provenance.versions(),
        git_commit=code.label if code else None,
        code_diff_sha256=code.diff_sha256 if code else None,
        # what was read: the held-out slice's facts, and the content hash the settings guard compares
        data={**(built.family.data_facts or {}), "fingerprint": settings["data"]}
        if settings["data"]
        else built.family.data_facts,
        curve=learning_curve(trainer.state.log_history, built.family, main, built.evals)
        if t.eval_steps
        else None,
        argv=sys.argv,
        finished_at=datetime.now(timezone.utc).isoformat(),
        adapter_extra=outcome.facts,
        adapter_file_bytes=outcome.adapter_file.stat().st_size if outcome.adapter_file else None,
    )


def _train(
    spec: RunSpec,
    folder: RunFolder,
    settings: dict,
    ranks: distributed.Ranks,
    code: provenance.CodeState | None,
) -> dict:
    say = print if ranks.main else _quiet
    start = time.time()
    built = build(spec, ranks, say, folder)
    model = built.model
    tag = spec.adapter["name"]
    run_id = provenance.run_id(spec.experiment, spec.task.name, spec.backbone.name, tag, spec.seed)
    wandb_run = start_wandb(spec, folder, run_id) if ranks.main else None
    trainer, throughput = make_trainer(spec, built, folder, ranks, run_id, wandb_run is not None)

    # train (resuming from the last complete checkpoint) and evaluate
    if ranks.main:
        folder.write_settings(settings)  # only now: a run refused while building leaves no settings behind
    last = distributed.from_main(folder.last_complete_checkpoint)
    if last:
        say(f"[qpeft] resuming from {last}", flush=True)
    if ranks.main:
        folder.start_metrics(last)  # one row per step and key: cut back to `last`, or set aside
    record = None
    try:
        trainer.train(resume_from_checkpoint=last)
        facts = built.method.record_facts(
            model
        )  # once: Quantum-PEFT's serialises the adapter for its file size
        distributed.check_same_state(model, facts)
        final = built.family.evaluate(trainer, built.evals, folder.path)
        main = spec.task.main_metric
        if main not in final:
            raise QpeftError(f"task.main_metric={main} is not among the computed metrics {sorted(final)}")
        # the trained adapter as its library loads it (peft / qpeft.QuantumConfig): folder adapter/
        adapter_file = built.method.save_adapter(model, folder.path / "adapter") if ranks.main else None
        outcome = Outcome(final, facts, adapter_file, last, time.time() - start)
        record = make_record(spec, built, trainer, throughput, outcome, ranks, run_id, settings, code)
    except NonFiniteLoss:
        if ranks.main:
            folder.drop_checkpoints()  # diverged weights: a retry must start afresh
        raise
    finally:
        wandb_log.finish(wandb_run, None if record is None else record.to_dict())

    if not ranks.main:
        return record.to_dict()
    if code and code.diff:  # before the record: a record never names a diff that is not there
        (folder.path / provenance.DIFF_NAME).write_text(code.diff)
    records.write_record(folder.record_path, record)
    if not spec.trainer.keep_checkpoints:
        folder.keep_trained_weights(model)
    record = record.to_dict()
    print(summary_line(record, folder.record_path), flush=True)
    print(
        json.dumps(  # the record's JSON form: an undefined metric is null, as in record.json
            {
                "task": spec.task.name,
                "adapter": tag,
                main: record["metrics"][main],
                "adapter_params": record["adapter_params"],
            }
        )
    )
    return record
