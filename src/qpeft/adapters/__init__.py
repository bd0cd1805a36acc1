"""Adapters: one module per method behind one interface (see docs/design.md).

Each module defines ``apply(model, cfg, targets, head, total_steps) -> model`` and may define
``on_step``, ``merge``, ``unmerge``, ``record_extra`` and its own ``adapter_params``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import nn

# adapter name (the `adapter.method` setting) -> module under qpeft.adapters
METHODS = {
    "quantum": "quantum",
    "quantum_taylor": "quantum",
    "lora": "peft_methods",
    "adalora": "peft_methods",
    "oft": "peft_methods",
    "boft": "peft_methods",
    "full": "simple",
    "head_only": "simple",
    "bitfit": "simple",
}


def get(method: str) -> ModuleType:
    """The module that implements `method`; a clear error lists the valid names."""
    if method not in METHODS:
        raise ValueError(f"unknown adapter '{method}': choose adapter= one of {sorted(METHODS)}")
    return importlib.import_module(f"qpeft.adapters.{METHODS[method]}")


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
        raise ValueError(
            f"no module matches adapter.targets={targets}; set adapter.targets to names in the model "
            "(e.g. 'query', 'attention.output.dense', 'qkv')"
        )
    return found


def freeze_except_head(model: nn.Module, head: list[str]) -> None:
    """Freeze every parameter but those of the head modules (trained by every method)."""
    for n, p in model.named_parameters():
        p.requires_grad = in_head(n, head)


def adapter_params(model: nn.Module, head: list[str]) -> int:
    """Adapter-only trainable parameters: the head (classifier, pooler) is counted apart.

    The generic count; a method module whose count differs (AdaLoRA) defines its own.
    """
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not in_head(n, head))


def head_params(model: nn.Module, head: list[str]) -> int:
    """Trainable parameters inside the head modules."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and in_head(n, head))


def check_settings(values: dict) -> None:
    """Refuse an unknown method before anything is built (the methods check their own settings in apply)."""
    from qpeft.errors import QpeftError

    if values.get("method") not in METHODS:
        raise QpeftError(f"adapter.method={values.get('method')!r}: choose one of {sorted(METHODS)}")
