"""The one interface every fine-tuning method keeps, its settings base class, and the registry.

A method is a `Method` subclass registered under its `adapter.method` name, with a settings dataclass
(`settings_class`) whose fields are exactly the keys of its configs/adapter/*.yaml file. The trainer builds
the settings with `settings_from_config` (types, ranges and choices checked before any model is loaded),
makes `get_method(name)(settings)`, and then only calls the methods below: no optional functions, no
`hasattr`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from torch import nn

from qpeft.errors import QpeftError
from qpeft.settings import build_dataclass


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A settings field with its help text (the meaning shown in the YAML comment)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def require(ok: bool, key: str, value: Any, must: str) -> None:
    """Raise QpeftError "adapter.<key>=<value> ...: <must>" unless `ok`."""
    if not ok:
        raise QpeftError(f"adapter.{key}={value!r} is out of range: {must}")


def check_fraction(key: str, value: float | None, *, open_top: bool = True) -> None:
    """A probability-like setting in [0, 1) (or [0, 1] with open_top=False); None passes."""
    if value is None:
        return
    ok = 0 <= value < 1 if open_top else 0 <= value <= 1
    require(ok, key, value, f"set adapter.{key} in [0, 1{')' if open_top else ']'}")


@dataclass
class AdapterSettings:
    """What every method's settings hold; each method's class adds its own fields (all with defaults)."""

    method: str = field(metadata={"help": "the method (a name in qpeft.adapters.METHODS)"})
    name: str = field(metadata={"help": "the run-folder tag of this setting, e.g. lora_r8"})
    targets: list[str] = field(
        metadata={"help": "module names to adapt (peft's target_modules rule); default backbone.targets"}
    )
    lr: float | None = option(None, "a learning rate for this adapter, over the task protocol's")

    def __post_init__(self) -> None:
        if self.lr is not None:
            require(self.lr > 0, "lr", self.lr, "a learning rate must be > 0 (or null for the protocol's)")
        require(bool(self.targets), "targets", self.targets, "name at least one module to adapt")


@dataclass
class OwnLrSettings(AdapterSettings):
    """Settings of a method whose trained parameters may take their own learning rate, apart from the
    classifier head's: VeRA's and FourierFT's papers list the two lrs apart; LoRA, TinyLoRA and Quantum-PEFT
    take it so that a study can tune every method's lr on the same footing (docs/frontier.md). Each method
    builds its own optimiser groups from it."""

    adapter_lr: float | None = option(
        None, "lr of the adapter's own parameters (the head keeps trainer.lr); null: trainer.lr for all"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapter_lr is not None:
            require(
                self.adapter_lr > 0, "adapter_lr", self.adapter_lr, "set adapter.adapter_lr > 0 (or null)"
            )


class Method(ABC):
    """One fine-tuning method: inject into a model, count, step, merge, group the optimiser, report.

    An instance holds the checked settings of one run; the model it adapts is passed to every call.
    """

    name: ClassVar[str]  # the adapter.method value, set by @register
    settings_class: ClassVar[type[AdapterSettings]]

    def __init__(self, settings: AdapterSettings):
        if not isinstance(settings, self.settings_class):
            raise TypeError(
                f"{type(self).__name__} takes {self.settings_class.__name__}, got {type(settings)}"
            )
        self.settings = settings

    @abstractmethod
    def apply(self, model: nn.Module, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
        """Freeze the backbone, inject the method into the `targets` modules, keep `head` trainable; return
        the model to train. Settings that cannot fit this model (a rank above a layer's width) raise
        QpeftError naming the setting."""

    def adapter_params(self, model: nn.Module, head: list[str]) -> int:
        """Adapter-only parameters as the published tables count them: trainable, outside the head."""
        return trainable_outside_head(model, head)

    def on_step(self, model: nn.Module, global_step: int) -> None:
        """Called after every optimizer step, before the gradients are zeroed (AdaLoRA's budget)."""
        return None  # most methods have no per-step work

    def merge(self, model: nn.Module) -> None:
        """Fold the adapter into the base weights (inference without the adapter's extra cost)."""
        raise QpeftError(f"adapter={self.name} cannot merge into the base weights")

    def unmerge(self, model: nn.Module) -> None:
        """Undo `merge`."""
        raise QpeftError(f"adapter={self.name} cannot merge into the base weights")

    def optimizer_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        """The optimiser's parameter groups when the method needs its own (lr, weight decay per group);
        None: the Trainer's default (one lr; decay on all but biases and norms)."""
        return None

    def record_facts(self, model: nn.Module) -> dict:
        """Method-specific facts for the run record (AdaLoRA's budget, Quantum-PEFT's circuit layout)."""
        return {}

    def adapter_bytes(self, model: nn.Module) -> int | None:
        """Bytes of the saved adapter file's tensors (head apart), where the method knows them."""
        return None

    def save_adapter(self, model: nn.Module, directory: Path) -> Path | None:
        """Write the trained adapter as its library loads it (peft: adapter_config.json + safetensors) into
        `directory`; the safetensors file's path, or None for a method without a separate adapter file."""
        return None


METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make `cls` the method of `adapter.method=<name>`."""

    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"adapter method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def get_method(name: str) -> type[Method]:
    """The class of `adapter.method=name`; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise QpeftError(
            f"unknown adapter method {name!r}: choose adapter= one of {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def settings_from_config(values: Mapping[str, Any], prefix: str = "adapter") -> AdapterSettings:
    """The checked settings of the method named by values["method"] (types, unknown keys, ranges).

    `values` is a plain mapping or an OmegaConf config (resolved here)."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if "method" not in values:
        raise QpeftError(f"{prefix}.method is not set: choose one of {', '.join(sorted(METHODS))}")
    cls = get_method(values["method"])
    return build_dataclass(cls.settings_class, dict(values), prefix)


# --- helpers shared by the methods: the target rule, the head, the generic counts ---------------------------


def is_target(name: str, targets: list[str]) -> bool:
    """peft's `target_modules` rule: the qualified name equals a target or ends with '.' + target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def in_head(name: str, head: list[str]) -> bool:
    """True if the parameter or module `name` lies inside one of the `head` modules."""
    parts = name.split(".")
    for h in head:
        hp = h.split(".")
        if any(parts[i : i + len(hp)] == hp for i in range(len(parts) - len(hp) + 1)):
            return True
    return False


def target_modules(model: nn.Module, targets: list[str], head: list[str]) -> dict[str, nn.Module]:
    """The modules to adapt, by qualified name; an empty match is an error naming the setting."""
    found = {n: m for n, m in model.named_modules() if n and is_target(n, targets) and not in_head(n, head)}
    if not found:
        raise QpeftError(
            f"no module matches adapter.targets={targets}; set adapter.targets to names in the model "
            "(e.g. 'query', 'attention.output.dense', 'qkv')"
        )
    return found


def freeze_except_head(model: nn.Module, head: list[str]) -> None:
    """Freeze every parameter but those of the head modules (trained by every method)."""
    for n, p in model.named_parameters():
        p.requires_grad = in_head(n, head)


def trainable_outside_head(model: nn.Module, head: list[str]) -> int:
    """Trainable parameters whose name does not pass through a head module (the generic adapter count)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not in_head(n, head))


def head_params(model: nn.Module, head: list[str]) -> int:
    """Trainable parameters inside the head modules."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and in_head(n, head))
