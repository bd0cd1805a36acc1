"""Reference points with no injected modules: full fine-tuning, head only (linear probe), BitFit (biases).

Nothing is injected, so the trained model is already "merged": merge and unmerge do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from qpeft.adapters.base import (
    AdapterSettings,
    Method,
    freeze_except_head,
    in_head,
    option,
    register,
    target_modules,
)


@dataclass
class SimpleSettings(AdapterSettings):
    """full and head_only: no options of their own."""


@dataclass
class BitFitSettings(AdapterSettings):
    bitfit_scope: Literal["all", "targets"] = option(
        "all", 'all biases outside the head, or "targets" (only the target modules\' biases)'
    )


class _NothingInjected(Method):
    """A method that only chooses which backbone weights train."""

    def merge(self, model: nn.Module) -> None:
        """Nothing to fold: the trained weights are the model's own."""

    def unmerge(self, model: nn.Module) -> None:
        """Nothing to undo."""

    head: list[str] = []  # set by apply

    def adapter_bytes(self, model: nn.Module) -> int | None:
        """Bytes of the trained weights outside the head (what a saved file of them holds)."""
        return sum(
            p.numel() * p.element_size()
            for n, p in model.named_parameters()
            if p.requires_grad and not in_head(n, self.head)
        )


@register("full")
class FullMethod(_NothingInjected):
    """Full fine-tuning: every parameter trains."""

    settings_class = SimpleSettings

    def apply(self, model: nn.Module, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
        self.head = list(head)
        model.requires_grad_(True)
        return model


@register("head_only")
class HeadOnlyMethod(_NothingInjected):
    """Linear probe: only the head trains."""

    settings_class = SimpleSettings

    def apply(self, model: nn.Module, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
        self.head = list(head)
        freeze_except_head(model, head)
        return model


@register("bitfit")
class BitFitMethod(_NothingInjected):
    """BitFit (Ben Zaken et al., 2022): the biases train, everything else is frozen (the head trains)."""

    settings_class = BitFitSettings

    def apply(self, model: nn.Module, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
        self.head = list(head)
        freeze_except_head(model, head)
        scoped = self.settings.bitfit_scope == "targets"
        allowed = set(target_modules(model, targets, head)) if scoped else None
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 1)[0]
            if name.endswith("bias") and not in_head(name, head) and (allowed is None or owner in allowed):
                p.requires_grad = True
        return model
