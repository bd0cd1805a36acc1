"""The composed config, checked: protocol values reach `trainer` / `adapter` through interpolation, and every
setting is typed and validated before any model or data is loaded.

A task file carries the hyperparameters of every protocol it belongs to (`task.protocols.<name>`); the config
picks one with `protocol=` and the trainer / adapter files read it through the `protocol` resolver:

    trainer.lr: ${protocol:lr}              # task.protocols[protocol].lr, or null when the protocol has none
    trainer.scheduler: ${protocol:scheduler,linear}

so `python run.py --cfg job --resolve ...` prints exactly what trains and a command-line value (which replaces
the interpolation) always wins.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qpeft.errors import QpeftError
from qpeft.settings import build_dataclass

_MISSING = object()


def _protocol_value(key: str, default: Any = None, *, _root_: DictConfig) -> Any:
    """`${protocol:key[,default]}`: the value of `key` (dotted) in the selected protocol of the task."""
    protocols = _root_.task.get("protocols") or {}
    name = _root_.get("protocol")
    if name not in protocols:
        raise QpeftError(
            f"task {_root_.task.name} has no hyperparameters for protocol={name}: "
            f"choose protocol= one of {sorted(protocols)}"
        )
    values = protocols[name]
    if key == "warmup_ratio" and values.get("warmup_ratio") is None and values.get("warmup_epochs"):
        # a protocol's warm-up in epochs, as a fraction of its own schedule (VTAB: 10 of 100 epochs -> 0.1),
        # so a run with fewer trainer.epochs keeps the same shape
        return values.warmup_epochs / values.epochs
    value = OmegaConf.select(values, key, default=_MISSING)
    return default if value is _MISSING or value is None else value


def _coalesce(*values: Any) -> Any:
    """`${coalesce:a,b,...}`: the first value that is not null (trainer.lr: adapter.lr, else the protocol's)."""
    return next((v for v in values if v is not None), None)


def register_resolvers() -> None:
    """Register qpeft's OmegaConf resolvers (idempotent; run.py and the tests call it before composing)."""
    OmegaConf.register_new_resolver("protocol", _protocol_value, replace=True)
    OmegaConf.register_new_resolver("coalesce", _coalesce, replace=True)


register_resolvers()

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@contextlib.contextmanager
def hydra_configs():
    """Hydra's compose API on qpeft's configs: initialised here unless it already is (tests, a caller's own)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        yield


# ---------------------------------------------------------------------------------------------------------
# Typed settings (qpeft.settings builds them): one error sentence per wrong value.


def _need(ok: bool, setting: str, rule: str) -> None:
    if not ok:
        raise QpeftError(f"{setting} {rule}")


SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)


@dataclass
class TrainerSettings:
    """`trainer.*`: optimisation and evaluation. Values the task protocol gives arrive by interpolation."""

    lr: float | None = field(default=None, metadata={"help": "peak learning rate (AdamW)"})
    epochs: float | None = field(default=None, metadata={"help": "training epochs"})
    batch_size: int | None = field(default=None, metadata={"help": "per-device training batch size"})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size"})
    max_length: int | None = field(default=None, metadata={"help": "text tasks: tokens per example"})
    warmup_steps: int | None = field(default=None, metadata={"help": "linear warm-up steps"})
    warmup_ratio: float | None = field(default=None, metadata={"help": "warm-up as a fraction of the run"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    scheduler: str = field(default="linear", metadata={"help": "transformers learning-rate schedule"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    sampling: Literal["random", "group_by_length"] = field(default="random", metadata={"help": "batching"})
    max_steps: int = field(default=-1, metadata={"help": "> 0 stops after this many optimizer steps"})
    train_limit: int | None = field(default=None, metadata={"help": "first N training examples (shuffled)"})
    eval_limit: int | None = field(default=None, metadata={"help": "first N evaluation examples"})
    heldout: int | None = field(
        default=None,
        metadata={
            "help": "GLUE: hold out N training examples (disjoint from the trained ones, same seeded "
            "shuffle) and score them at the end as metrics `<name>_heldout`: the split to choose values on"
        },
    )
    heldout_clean: bool = field(
        default=True,
        metadata={
            "help": "with heldout: drop every training example that shares text with a held-out one (one "
            "contains the other, word for word): no part of a held-out example is trained on"
        },
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = field(default="auto", metadata={"help": "AMP"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int | None = field(default=1, metadata={"help": "checkpoints kept"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep resume checkpoints after the run"})
    logging_steps: int = field(default=20, metadata={"help": "log every N steps"})
    eval_every_epoch: bool = field(default=True, metadata={"help": "evaluate after every epoch"})
    eval_steps: int | None = field(
        default=None,
        metadata={"help": "score every eval set every N optimizer steps: the record's learning curve"},
    )
    num_workers: int = field(default=0, metadata={"help": "data loader workers"})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations (non-reentrant)"}
    )
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "device"})
    cls_dropout: float | None = field(default=None, metadata={"help": "classifier dropout (protocol)"})
    drop_path: float | None = field(default=None, metadata={"help": "ViT stochastic depth (protocol)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing (E2E: 0.1)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = none)"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})

    def __post_init__(self) -> None:
        _need(self.lr is not None and self.lr > 0, f"trainer.lr={self.lr}", "must be a positive number")
        _need(
            self.epochs is not None and self.epochs > 0,
            f"trainer.epochs={self.epochs}",
            "must be a positive number",
        )
        _need(
            self.batch_size is not None and self.batch_size >= 1,
            f"trainer.batch_size={self.batch_size}",
            "must be a positive integer",
        )
        for name in ("eval_batch_size", "grad_accum", "save_steps", "logging_steps"):
            _need(getattr(self, name) >= 1, f"trainer.{name}={getattr(self, name)}", "must be >= 1")
        for name in (
            "max_length",
            "train_limit",
            "eval_limit",
            "heldout",
            "threads",
            "save_total_limit",
            "eval_steps",
        ):
            value = getattr(self, name)
            _need(value is None or value >= 1, f"trainer.{name}={value}", "must be null or >= 1")
        _need(
            self.warmup_steps is None or self.warmup_steps >= 0,
            f"trainer.warmup_steps={self.warmup_steps}",
            "must be >= 0",
        )
        _need(
            self.warmup_ratio is None or 0 <= self.warmup_ratio < 1,
            f"trainer.warmup_ratio={self.warmup_ratio}",
            "must lie in [0, 1)",
        )
        _need(self.weight_decay >= 0, f"trainer.weight_decay={self.weight_decay}", "must be >= 0")
        _need(
            self.max_steps == -1 or self.max_steps >= 1,
            f"trainer.max_steps={self.max_steps}",
            "must be -1 (the whole schedule) or >= 1",
        )
        _need(self.num_workers >= 0, f"trainer.num_workers={self.num_workers}", "must be >= 0")
        _need(
            self.scheduler in SCHEDULERS,
            f"trainer.scheduler={self.scheduler!r}",
            f"is not a schedule: choose one of {', '.join(SCHEDULERS)}",
        )
        _need(self.max_grad_norm >= 0, f"trainer.max_grad_norm={self.max_grad_norm}", "must be >= 0")
        _need(self.adam_epsilon > 0, f"trainer.adam_epsilon={self.adam_epsilon}", "must be > 0")
        for name in ("cls_dropout", "drop_path", "label_smoothing"):
            value = getattr(self, name)
            _need(value is None or 0 <= value < 1, f"trainer.{name}={value}", "must lie in [0, 1)")


def resolved(node: DictConfig, where: str) -> dict:
    """A config node as a plain dict with every interpolation resolved; a failing one becomes a QpeftError."""
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as e:
        inner: BaseException | None = e
        while inner is not None:  # a resolver's own QpeftError, wrapped by OmegaConf
            if isinstance(inner, QpeftError):
                raise QpeftError(str(inner)) from None
            inner = inner.__cause__ or inner.__context__
        raise QpeftError(f"{where}: {str(e).splitlines()[0]}") from None


def trainer_settings(cfg: DictConfig) -> TrainerSettings:
    """`cfg.trainer`, resolved and checked."""
    return build_dataclass(TrainerSettings, resolved(cfg.trainer, "trainer"), "trainer")


# hyperparameters a task protocol provides; the record's `hyperparameters` holds the protocol's values with the
# effective trainer values on top (the layout records and settings.json have always had), a null override too
PROTOCOL_KEYS = (
    "lr",
    "epochs",
    "batch_size",
    "max_length",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "train_limit",
    "heldout",
    "heldout_clean",
    "eval_steps",
    "scheduler",
    "cls_dropout",
    "drop_path",
)


@dataclass
class RunSpec:
    """One run, fully resolved and checked: what `train` needs, nothing read from the raw config later."""

    cfg: DictConfig  # the composed config (recorded resolved)
    task: DictConfig
    backbone: DictConfig
    adapter: dict  # the adapter group, resolved (the record's adapter_cfg)
    adapter_settings: Any  # the same, checked: qpeft.adapters.AdapterSettings of its method
    trainer: TrainerSettings
    hyperparameters: dict
    seed: int
    protocol: str
    experiment: str
    run_dir: str


def run_spec(cfg: DictConfig) -> RunSpec:
    """Resolve and check every setting of the composed config `cfg` (no model, no data)."""
    from qpeft.adapters import settings_from_config

    adapter = resolved(cfg.adapter, "adapter")
    adapter_settings = settings_from_config(adapter)  # first: adapter.lr feeds trainer.lr
    trainer = trainer_settings(cfg)
    protocol = cfg.protocol
    hp = dict(resolved(cfg.task.protocols[protocol], f"task.protocols.{protocol}"))
    for key in PROTOCOL_KEYS:
        value = getattr(trainer, key)
        # a key the protocol sets takes the run's value, null included (trainer.train_limit=null: all the data)
        if key in hp or value != TrainerSettings.__dataclass_fields__[key].default:
            hp[key] = value
    image_backbone = cfg.backbone.kind in ("timm", "timm_config")
    if (cfg.task.family == "vtab") != image_backbone:
        reads, needs = ("images", "text") if image_backbone else ("text", "images")
        raise QpeftError(
            f"backbone={cfg.backbone.name} reads {reads}, task {cfg.task.name} ({cfg.task.family}) is {needs}: "
            f"choose a backbone for {needs} (or drop backbone= to get the task family's default)"
        )
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise QpeftError(f"seed={cfg.seed!r} must be an integer")
    return RunSpec(
        cfg=cfg,
        task=cfg.task,
        backbone=cfg.backbone,
        adapter=adapter,
        adapter_settings=adapter_settings,
        trainer=trainer,
        hyperparameters=hp,
        seed=int(cfg.seed),
        protocol=protocol,
        experiment=str(cfg.experiment_name),
        run_dir=str(cfg.run_dir),
    )
