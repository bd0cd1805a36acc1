"""Reference points with no injected modules: full fine-tuning, head only (linear probe), BitFit (biases)."""

from __future__ import annotations

from torch import nn

from qpeft.adapters import freeze_except_head, in_head, target_modules


def apply(model: nn.Module, cfg, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
    """Choose which backbone weights train: all (full), none (head_only) or the biases (bitfit)."""
    freeze_except_head(model, head)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad = True
    elif cfg.method == "bitfit":
        scope = cfg.get("bitfit_scope", "all")  # all biases, or only those of the target modules
        allowed = set(target_modules(model, targets, head)) if scope == "targets" else None
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 1)[0]
            if name.endswith("bias") and not in_head(name, head) and (allowed is None or owner in allowed):
                p.requires_grad = True
    elif cfg.method != "head_only":
        raise ValueError(f"qpeft.adapters.simple does not implement '{cfg.method}'")
    return model
