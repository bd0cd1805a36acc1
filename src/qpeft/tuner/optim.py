"""Optimiser parameter groups for Quantum-PEFT: the circuit parameters get their own learning rate.

Under Adam a parameter moves about lr per step whatever its gradient's scale; an angle moves about lr
radians, so at LoRA's lr (~1e-3) a few hundred steps leave U and V near their random start. `circuit_lr` lets
the circuits move without scaling the step of lam (as peft's create_loraplus_optimizer gives LoRA's B its own
lr): a number, or "width" for the rule of `width_circuit_lr` (one lr per circuit bank, from its shape).
Angles carry no weight decay: they are periodic, so pulling them to 0 means nothing.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names

from qpeft.errors import QpeftError
from qpeft.quantum import PauliStiefel, TaylorStiefel
from qpeft.tuner.hub import QuantumHub

# the Trainer's rule for which parameters decay (transformers.Trainer.get_decay_parameter_names)
_NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def decay_parameter_names(model: nn.Module) -> set[str]:
    """The parameters the transformers Trainer decays: all but those of LayerNorms and those named like a bias
    or a norm (the rule of `Trainer.get_decay_parameter_names`, transformers 5; tested equal)."""
    return set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY))


def circuit_banks(model: nn.Module) -> list[nn.Module]:
    """The circuit banks (PauliStiefel / TaylorStiefel, one per factor dimension n and rank K) of every
    Quantum-PEFT adapter in `model`."""
    return [
        bank
        for hub in model.modules()
        if isinstance(hub, QuantumHub)
        for state in hub.quantum_adapters.values()
        for bank in state.banks.values()
    ]


def circuit_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The circuit parameters (Pauli angles; Taylor's B and S) of every Quantum-PEFT adapter in `model`."""
    return [p for bank in circuit_banks(model) for p in bank.parameters()]


def factor_step_gain(bank: nn.Module) -> float:
    """||dU||_F / ||U||_F when every circuit parameter of one factor moves by 1 with random sign (Adam's first
    step is lr * sign(grad)), to first order:

    - Pauli: each of the P angles enters as RY(theta / 2), and dU/dtheta_i (norm ||U||_F / 2) are nearly
      orthogonal for different i, so the gain is sqrt(P) / 2 (tests/test_step_rule.py checks it on circuits);
    - Taylor: U = exp(A) E_K moves by A E_K to first order, whose n x K generator entries each move by 1: the
      gain is sqrt(n K) / sqrt(K) = sqrt(n)."""
    if isinstance(bank, PauliStiefel):
        return math.sqrt(bank.circuit.num_params) / 2
    if isinstance(bank, TaylorStiefel):
        return math.sqrt(bank.n)
    raise TypeError(f"not a circuit bank: {type(bank).__name__}")


def width_circuit_lr(bank: nn.Module, lr: float) -> float:
    """The circuit lr of one bank (factors of dimension n) under the 'width' rule: LoRA's A (entries
    U(-1/sqrt(n), 1/sqrt(n)), so ||A||_F = sqrt(r / 3)) changes by lr sqrt(3 n) of its norm per Adam step; a
    circuit step of c changes U by c * factor_step_gain of its norm. Equal relative steps:
    c = lr sqrt(3 n) / gain (Pauli: lr sqrt(12 n / P); Taylor: lr sqrt(3))."""
    n = bank.circuit.n if isinstance(bank, PauliStiefel) else bank.n
    gain = factor_step_gain(bank)
    return lr * math.sqrt(3 * n) / gain if gain > 0 else lr  # gain 0: n = 1, a circuit without angles


def circuit_lrs(model: nn.Module, lr: float, circuit_lr: float | Literal["width"] | None) -> dict[int, float]:
    """The lr of each circuit parameter, by id."""
    if circuit_lr == "width":
        return {id(p): width_circuit_lr(bank, lr) for bank in circuit_banks(model) for p in bank.parameters()}
    if isinstance(circuit_lr, str):
        raise QpeftError(f"circuit_lr={circuit_lr!r}: use a number, 'width' or None")
    value = lr if circuit_lr is None else float(circuit_lr)
    return {id(p): value for p in circuit_parameters(model)}


def quantum_param_groups(
    model: nn.Module,
    lr: float,
    circuit_lr: float | Literal["width"] | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Parameter groups of the trainable parameters of `model`, for any torch optimiser:

    - circuit parameters: lr `circuit_lr` (None: `lr`; "width": `width_circuit_lr` of their bank, one group
      per distinct lr), no weight decay;
    - the other trainable parameters (lam, a classifier head, ...): lr `lr`, `weight_decay`, except biases and
      norm weights (no decay, as the transformers Trainer does).
    Empty groups are left out."""
    lr_of = circuit_lrs(model, lr, circuit_lr)
    decay = decay_parameter_names(model)
    circuit_groups: dict[float, list] = {}
    groups: dict[str, list] = {"decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in lr_of:
            circuit_groups.setdefault(lr_of[id(p)], []).append(p)
        else:
            groups["decay" if name in decay else "no_decay"].append(p)
    settings = {
        "decay": {"lr": lr, "weight_decay": weight_decay},
        "no_decay": {"lr": lr, "weight_decay": 0.0},
    }
    return [{"params": ps, "lr": c, "weight_decay": 0.0} for c, ps in circuit_groups.items()] + [
        {"params": ps, **settings[k]} for k, ps in groups.items() if ps
    ]


def create_quantum_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    *,
    lr: float,
    circuit_lr: float | Literal["width"] | None = None,
    weight_decay: float = 0.0,
    **kwargs,
) -> torch.optim.Optimizer:
    """An optimiser over `quantum_param_groups(model, lr, circuit_lr, weight_decay)`; kwargs go to
    `optimizer_cls`. With the transformers Trainer: `Trainer(..., optimizers=(optimizer, None))`."""
    return optimizer_cls(quantum_param_groups(model, lr, circuit_lr, weight_decay), lr=lr, **kwargs)
