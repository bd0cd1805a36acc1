"""One training run on the transformers Trainer: build, train (resuming), evaluate, record.

The Trainer gives AMP, gradient accumulation, checkpoint/resume and torchrun; qpeft adds callbacks only.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

from qpeft import adapters, backbones, metrics, records
from qpeft.errors import QpeftError

# hyperparameters a task's protocol provides and `trainer.<key>` may override
PROTOCOL_KEYS = (
    "lr",
    "epochs",
    "batch_size",
    "max_length",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "train_limit",
)


# trainer settings outside the protocol's that change a run's result (the rest: speed, logging, storage)
RESULT_TRAINER_KEYS = ("sampling", "scheduler", "grad_accum", "max_steps", "eval_limit", "precision")
SETTINGS_NAME = "settings.json"


def _settings(hp: dict, adapter_cfg: dict, trainer) -> dict:
    """What decides a run's result beyond its folder's name (task, backbone, adapter name, seed), as JSON."""
    trainer = {k: trainer.get(k) for k in RESULT_TRAINER_KEYS}
    return json.loads(json.dumps({"hyperparameters": hp, "adapter_cfg": adapter_cfg, "trainer": trainer}))


def run_settings(cfg: DictConfig, hp: dict, acfg: DictConfig) -> dict:
    """The settings of the run `cfg` asks for."""
    return _settings(hp, OmegaConf.to_container(acfg), cfg.trainer)


def stored_settings(run_dir: Path) -> dict | None:
    """The settings a run folder was started with: settings.json, or for records older than it the record."""
    path = run_dir / SETTINGS_NAME
    if path.exists():
        return json.loads(path.read_text())
    rec = records.read_record(run_dir / records.RECORD_NAME)
    if rec is None:
        return None
    return _settings(rec["hyperparameters"], rec["adapter_cfg"], rec.get("config", {}).get("trainer", {}))


def check_settings(run_dir: Path, settings: dict) -> None:
    """Stop before a finished run is returned, or a checkpoint resumed, under settings it was not made with."""
    if not (run_dir / records.RECORD_NAME).exists() and not any(run_dir.glob("checkpoint-*")):
        return  # nothing to protect: a fresh folder, or one whose run failed before its first checkpoint
    stored = stored_settings(run_dir)
    if stored is None or stored == settings:
        return
    diffs = [
        f"{group}.{key}: {stored[group].get(key)!r} there, {settings[group].get(key)!r} now"
        for group in settings
        for key in sorted(set(stored.get(group, {})) | set(settings[group]))
        if stored.get(group, {}).get(key) != settings[group].get(key)
    ]
    raise QpeftError(
        f"{run_dir} holds a run made with other settings ({'; '.join(diffs)}): give this variant its own "
        "folder with experiment_name=<name> (or output_root=...), or delete that folder to redo it"
    )


def hyperparameters(cfg: DictConfig) -> dict:
    """The task's protocol values (task.protocols[protocol]) with every non-null trainer.<key> on top."""
    protocols = cfg.task.get("protocols") or {}
    if cfg.protocol not in protocols:
        raise QpeftError(
            f"task {cfg.task.name} has no hyperparameters for protocol={cfg.protocol}: choose one of {sorted(protocols)}"
        )
    hp = OmegaConf.to_container(protocols[cfg.protocol], resolve=True)
    if hp.get("warmup_epochs") and hp.get("epochs"):
        # the protocol's warmup as a fraction of its own schedule (VTAB: 10 of 100 epochs -> 0.1), so a run
        # with fewer trainer.epochs keeps the same shape; trainer.warmup_steps / warmup_ratio override it
        hp["warmup_ratio"] = hp["warmup_epochs"] / hp["epochs"]
    for key in PROTOCOL_KEYS:
        if cfg.trainer.get(key) is not None:
            hp[key] = cfg.trainer[key]
    if cfg.adapter.get("lr") is not None:  # a per-adapter learning rate, when a method needs its own
        hp["lr"] = cfg.adapter.lr
    missing = [k for k in ("lr", "epochs", "batch_size") if hp.get(k) is None]
    if missing:
        raise QpeftError(f"no value for {missing}: set trainer.{missing[0]}=...")
    return hp


def adapter_config(cfg: DictConfig, hp: dict) -> DictConfig:
    """The adapter settings with protocol defaults filled in (alpha, AdaLoRA's schedule)."""
    acfg = OmegaConf.create(OmegaConf.to_container(cfg.adapter, resolve=True))
    with open_dict(acfg):
        if acfg.get("alpha") is None and hp.get("alpha") is not None:
            acfg.alpha = hp["alpha"]
        if acfg.method == "adalora":
            for k, v in (hp.get("adalora") or {}).items():
                if acfg.get(k) is None:
                    acfg[k] = v
    return acfg


def versions() -> dict:
    """Library versions that decide results, recorded in every run."""
    import peft
    import timm
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "timm": timm.__version__,
        "qpeft": __import__("qpeft").__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
    }


def git_commit() -> str | None:
    """The commit of the qpeft checkout, with '+dirty' when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None


def run_id(cfg: DictConfig) -> str:
    """A stable id from the run's identity: the same for a rerun or a requeued job (W&B resumes it)."""
    ident = f"{cfg.task.name}/{cfg.backbone.name}/{cfg.adapter.name}/seed{cfg.seed}/{cfg.experiment_name}"
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


class NonFiniteLoss(QpeftError):
    """The training loss became NaN or infinite: the run's checkpoints hold no state worth resuming."""


class CsvLogger(TrainerCallback):
    """Append every Trainer log line (loss, lr, eval metrics) to metrics.csv in the run folder."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        loss = logs.get("loss", logs.get("train_loss"))  # train_loss: the run's mean, logged at the end
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(
                f"the training loss became {loss} at step {state.global_step}: lower trainer.lr"
            )
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "key", "value"])
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    w.writerow([row["step"], row["epoch"], k, v])


class StepHook(TrainerCallback):
    """Call the adapter's per-step hook after every optimizer step, before the gradients are zeroed."""

    def __init__(self, model, hook):
        self.model, self.hook = model, hook

    def on_optimizer_step(self, args, state, control, **kw):
        self.hook(self.model, state.global_step)


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


def reset_peak_memory() -> None:
    """Start this run's peak-memory count (a sweep runs many jobs in one process)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: "5" resets the peak resident set size (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory() -> tuple[int, str]:
    """Peak memory since reset_peak_memory: the CUDA allocator's peak on a GPU, else the peak resident set size
    (VmHWM; where /proc is missing, the process's lifetime peak, ru_maxrss)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "cpu_peak_rss"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_max_rss_process"


def load_data(cfg: DictConfig, hp: dict, preprocessor):
    """(train, {eval split: dataset}, collator) for the task's family."""
    task = cfg.task
    limit = hp.get("train_limit")
    if task.family == "glue":
        from qpeft.data import glue

        if hp.get("max_length") is None:
            raise QpeftError("no max length: set trainer.max_length=...")
        train, evals = glue.load(
            task,
            preprocessor,
            hp["max_length"],
            task.get("data_dir"),
            cfg.seed,
            limit,
            cfg.trainer.eval_limit,
        )
        return train, evals, DataCollatorWithPadding(preprocessor)
    if task.family == "vtab":
        from qpeft.data import vtab

        train, evals = vtab.load_task(task, preprocessor, cfg.seed, limit, cfg.trainer.eval_limit)
        return train, evals, vtab.collate
    raise QpeftError(f"unknown task.family '{task.family}'")


def training_args(cfg: DictConfig, hp: dict, run_dir: Path, wandb: bool) -> TrainingArguments:
    t = cfg.trainer
    use_cpu = t.device == "cpu" or not torch.cuda.is_available()
    bf16 = t.precision == "bf16" or (t.precision == "auto" and not use_cpu and torch.cuda.is_bf16_supported())
    ratio = hp.get("warmup_ratio") or 0.0
    if not 0 <= ratio < 1:
        raise QpeftError(f"warmup ratio {ratio} must lie in [0, 1): set trainer.warmup_ratio=...")
    warmup = hp.get("warmup_steps") or ratio  # transformers 5: warmup_steps < 1 is a fraction of the run
    if t.sampling not in ("random", "group_by_length"):
        raise QpeftError(f"trainer.sampling={t.sampling}: choose random or group_by_length")
    if t.sampling == "group_by_length" and cfg.task.family != "glue":
        raise QpeftError("trainer.sampling=group_by_length needs tokenised text: use random for image tasks")
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=hp["epochs"],
        max_steps=t.max_steps,
        learning_rate=hp["lr"],
        weight_decay=hp.get("weight_decay") or 0.0,
        warmup_steps=warmup,
        lr_scheduler_type=hp.get("scheduler", t.scheduler),
        train_sampling_strategy=t.sampling,
        eval_strategy="epoch" if t.eval_every_epoch else "no",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        fp16=t.precision == "fp16",
        use_cpu=use_cpu,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=False,
        label_names=["labels"],  # both collators (GLUE's, VTAB's) name the targets `labels`
        report_to=["wandb"] if wandb else [],
        run_name=run_id(cfg),
        torch_compile=t.torch_compile,
        # recompute each layer's activations in the backward (7B models); non-reentrant works with frozen
        # embeddings and with the quantum hub's factors computed once outside the layers
        gradient_checkpointing=bool(t.get("gradient_checkpointing", False)),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        disable_tqdm=False,
    )


def setup_wandb(cfg: DictConfig) -> bool:
    """W&B through the Trainer's integration, with a stable run id so a requeued job continues its run."""
    if not cfg.logger.get("wandb"):
        return False
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    os.environ["WANDB_PROJECT"] = cfg.logger.project
    os.environ["WANDB_RUN_ID"] = run_id(cfg)
    os.environ["WANDB_RESUME"] = "allow"
    os.environ["WANDB_DIR"] = str(Path(cfg.run_dir).resolve())
    if cfg.logger.get("entity"):
        os.environ["WANDB_ENTITY"] = cfg.logger.entity
    if cfg.logger.get("group"):
        os.environ["WANDB_RUN_GROUP"] = str(cfg.logger.group)
    return True


def evaluate(trainer: Trainer, task, evals: dict) -> dict[str, float]:
    """Final metrics on every eval split; MNLI's carry the suffix _matched / _mismatched, VTAB's none."""
    from qpeft.data.glue import eval_name

    out = {}
    for split, ds in evals.items():
        pred = trainer.predict(ds, metric_key_prefix=f"final_{split}")
        suffix = eval_name(split) if task.family == "glue" else ""  # VTAB: one eval split (test or val200)
        for k, v in metrics.compute(task, pred.predictions, pred.label_ids).items():
            out[f"{k}_{suffix}" if suffix else k] = v
    return out


def build_model(cfg: DictConfig, hp: dict):
    """(model, preprocessor) with the protocol's classifier dropout / drop-path (written into cfg.backbone)."""
    bb = cfg.backbone
    num_labels = cfg.task.get("num_labels") or cfg.task.get("num_classes")
    dropout = hp.get("cls_dropout")
    overrides = {bb.dropout_key: dropout} if bb.get("dropout_key") and dropout is not None else {}
    if cfg.task.family == "vtab" and hp.get("drop_path") is not None:
        with open_dict(bb):
            bb.drop_path = hp["drop_path"]
    return backbones.build(bb, num_labels, overrides)


def apply_optimizer_overrides(trainer: Trainer, overrides: dict[int, dict]) -> None:
    """Rebuild the Trainer's optimiser with per-parameter settings (keyed by id) split into their own groups;
    the scheduler, built later by trainer.train, scales every group's lr alike."""
    opt = trainer.create_optimizer()
    groups = []
    for g in opt.param_groups:
        split: dict[tuple, list] = {}
        for p in g["params"]:
            split.setdefault(tuple(sorted(overrides.get(id(p), {}).items())), []).append(p)
        groups += [{**g, "params": ps, **dict(key)} for key, ps in split.items()]
    opt.param_groups = []  # no state yet: regroup in place
    for g in groups:
        opt.add_param_group(g)


def keep_trained_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """After the record: the trained parameters (adapter and head; masks and other buffers are not
    parameters) go to trained.safetensors and the checkpoints, needed only to resume, are removed (one
    of a non-peft method holds the whole model: ~700 MB for DeBERTaV3-base, per run)."""
    from safetensors.torch import save_file

    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(run_dir / "trained.safetensors"))
    for d in run_dir.glob("checkpoint-*"):
        shutil.rmtree(d, ignore_errors=True)


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """Newest checkpoint whose trainer_state.json (the Trainer writes it last) is whole; newer partial ones,
    left by a job killed mid-save, are removed so the resumed run rewrites them."""
    steps = sorted(
        (int(m.group(1)), d)
        for d in (run_dir.iterdir() if run_dir.is_dir() else [])
        if d.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", d.name))
    )
    for _, d in reversed(steps):
        try:
            json.loads((d / "trainer_state.json").read_text())
            return str(d)
        except (OSError, ValueError):
            print(f"[qpeft] {d} is incomplete (killed while saving); removing it", flush=True)
            shutil.rmtree(d, ignore_errors=True)
    return None


def claim_run(run_dir: Path):
    """An exclusive lock on the run folder, held until the process ends (the kernel drops it if the process
    dies), or None if another live process holds it: the same sweep launched twice splits the jobs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def train(cfg: DictConfig) -> dict | None:
    """Run (or resume, or skip if finished) the run described by `cfg`; returns its record, or None when
    another process is running it."""
    run_dir = Path(cfg.run_dir)
    record_path = run_dir / records.RECORD_NAME
    lock = claim_run(run_dir)
    if lock is None:
        print(f"[qpeft] another process is running {run_dir}, skipping", flush=True)
        return None
    try:
        return _train(cfg, run_dir, record_path)
    finally:
        lock.close()


def _train(cfg: DictConfig, run_dir: Path, record_path: Path) -> dict:
    hp = hyperparameters(cfg)
    acfg = adapter_config(cfg, hp)
    settings = run_settings(cfg, hp, acfg)
    check_settings(run_dir, settings)
    done = records.read_record(record_path)
    if done is not None:
        print(f"[qpeft] finished already, skipping: {record_path}", flush=True)
        return done
    records.write_record(run_dir / SETTINGS_NAME, settings)
    start = time.time()
    if cfg.trainer.get("threads"):
        torch.set_num_threads(cfg.trainer.threads)
    reset_peak_memory()
    method = adapters.get(acfg.method)
    set_seed(cfg.seed)

    bb = cfg.backbone
    model, preprocessor = build_model(cfg, hp)
    train_ds, evals, collator = load_data(cfg, hp, preprocessor)

    steps_per_epoch = math.ceil(len(train_ds) / (hp["batch_size"] * cfg.trainer.grad_accum))
    total_steps = cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else steps_per_epoch * hp["epochs"]
    head = list(bb.head)
    targets = list(acfg.get("targets") or bb.targets)
    model = method.apply(model, acfg, targets, head, total_steps)
    n_adapter = getattr(method, "adapter_params", adapters.adapter_params)(model, head)
    n_head = adapters.head_params(model, head)
    n_total = sum(p.numel() for p in model.parameters())
    print(
        f"[qpeft] {cfg.task.name} | {bb.name} | {acfg.name} | seed {cfg.seed}: adapter params {n_adapter:,}, "
        f"head params {n_head:,}, train {len(train_ds):,} examples, {total_steps:,} steps -> {run_dir}",
        flush=True,
    )

    wandb = setup_wandb(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    throughput = Throughput()
    callbacks = [CsvLogger(run_dir / "metrics.csv"), throughput]
    if hasattr(method, "on_step"):
        callbacks.append(StepHook(model, method.on_step))
    trainer = Trainer(
        model=model,
        args=training_args(cfg, hp, run_dir, wandb),
        train_dataset=train_ds,
        eval_dataset=evals,
        data_collator=collator,
        compute_metrics=lambda p: metrics.compute(cfg.task, p.predictions, p.label_ids),
        callbacks=callbacks,
    )
    if hasattr(method, "optimizer_overrides"):
        apply_optimizer_overrides(trainer, method.optimizer_overrides(model, acfg))
    last = last_complete_checkpoint(run_dir)
    if last:
        print(f"[qpeft] resuming from {last}", flush=True)
    try:
        trainer.train(resume_from_checkpoint=last)
        final = evaluate(trainer, cfg.task, evals)
    except NonFiniteLoss:
        for d in run_dir.glob("checkpoint-*"):  # diverged weights: a retry must start afresh
            shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        if wandb:
            import wandb as wb

            wb.finish()

    n_adapter = getattr(method, "adapter_params", adapters.adapter_params)(
        model, head
    )  # AdaLoRA: final budget
    step_time = throughput.step_time()
    samples_per_step = hp["batch_size"] * cfg.trainer.grad_accum * trainer.args.world_size
    cols = getattr(train_ds, "column_names", None) or []
    mean_tokens = float(np.mean([len(x) for x in train_ds["input_ids"]])) if "input_ids" in cols else None
    peak, peak_kind = peak_memory()
    main = cfg.task.main_metric
    if main not in final:
        raise QpeftError(f"task.main_metric={main} is not among the computed metrics {sorted(final)}")
    record = {
        "schema": records.SCHEMA,
        "run_id": run_id(cfg),
        "experiment": cfg.experiment_name,
        "task": cfg.task.name,
        "task_family": cfg.task.family,
        "task_group": cfg.task.get("group"),
        "backbone": bb.name,
        "adapter": acfg.method,
        "adapter_tag": acfg.name,
        "adapter_cfg": OmegaConf.to_container(acfg),
        "seed": cfg.seed,
        "protocol": cfg.protocol,
        "hyperparameters": hp,
        "metrics": final,
        "main_metric": main,
        "score": final[main],
        "adapter_params": n_adapter,
        "head_params": n_head,
        "total_params": n_total,
        "train_samples": len(train_ds),
        "eval_samples": {k: len(v) for k, v in evals.items()},
        "optimizer_steps": trainer.state.global_step,
        "step_time_s": step_time,
        "train_samples_per_s": samples_per_step / step_time if step_time else None,
        "train_tokens_per_s": samples_per_step * mean_tokens / step_time
        if step_time and mean_tokens
        else None,
        "peak_mem_bytes": peak,
        "peak_mem_kind": peak_kind,
        "wall_time_s": time.time() - start,
        "resumed_from": last,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": versions(),
        "git_commit": git_commit(),
        "argv": sys.argv,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    if hasattr(method, "record_extra"):
        record["adapter_extra"] = method.record_extra(model)
    records.write_record(record_path, record)
    if not cfg.trainer.keep_checkpoints:
        keep_trained_weights(model, run_dir)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
    print(f"[qpeft] done: {shown} | adapter params {n_adapter:,} | record {record_path}", flush=True)
    print(
        json.dumps(
            {"task": cfg.task.name, "adapter": acfg.name, main: final[main], "adapter_params": n_adapter}
        )
    )
    return record
