"""Optimiser parameter groups for Quantum-PEFT: the circuit parameters get their own learning rate.

Under Adam a parameter moves about lr per step whatever its gradient's scale; an angle moves about lr
radians, so at LoRA's lr (~1e-3) a few hundred steps leave U and V near their random start. `circuit_lr` lets
the circuits move without scaling the step of lam (as peft's create_loraplus_optimizer gives LoRA's B its own
lr). Angles carry no weight decay: they are periodic, so pulling them to 0 means nothing.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names

from qpeft.tuner.layer import QuantumHub

# the Trainer's rule for which parameters decay (transformers.Trainer.get_decay_parameter_names)
_NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def circuit_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The circuit parameters (Pauli angles; Taylor's B and S) of every Quantum-PEFT adapter in `model`."""
    return [
        p
        for hub in model.modules()
        if isinstance(hub, QuantumHub)
        for state in hub.quantum_adapters.values()
        for p in state.banks.parameters()
    ]


def quantum_param_groups(
    model: nn.Module, lr: float, circuit_lr: float | None = None, weight_decay: float = 0.0
) -> list[dict]:
    """Parameter groups of the trainable parameters of `model`, for any torch optimiser:

    - circuit parameters: lr `circuit_lr` (None: `lr`), no weight decay;
    - the other trainable parameters (lam, a classifier head, ...): lr `lr`, `weight_decay`, except biases and
      norm weights (no decay, as the transformers Trainer does).
    Empty groups are left out."""
    circuits = {id(p) for p in circuit_parameters(model)}
    decay = set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY))
    groups: dict[str, list] = {"circuit": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = "circuit" if id(p) in circuits else "decay" if name in decay else "no_decay"
        groups[kind].append(p)
    settings = {
        "circuit": {"lr": lr if circuit_lr is None else circuit_lr, "weight_decay": 0.0},
        "decay": {"lr": lr, "weight_decay": weight_decay},
        "no_decay": {"lr": lr, "weight_decay": 0.0},
    }
    return [{"params": ps, **settings[k]} for k, ps in groups.items() if ps]


def create_quantum_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    *,
    lr: float,
    circuit_lr: float | None = None,
    weight_decay: float = 0.0,
    **kwargs,
) -> torch.optim.Optimizer:
    """An optimiser over `quantum_param_groups(model, lr, circuit_lr, weight_decay)`; kwargs go to
    `optimizer_cls`. With the transformers Trainer: `Trainer(..., optimizers=(optimizer, None))`."""
    return optimizer_cls(quantum_param_groups(model, lr, circuit_lr, weight_decay), lr=lr, **kwargs)
