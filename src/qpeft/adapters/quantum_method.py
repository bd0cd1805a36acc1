"""Quantum-PEFT (Pauli and Taylor mappings) behind the Method interface; the adapter is adapters/quantum.py.

The settings classes are the one place the harness's Quantum-PEFT options live: their defaults, their checks when
the config is composed (docs/method.md says what each means), and `quantum_config`, which hands them to the
peft tuner's `QuantumConfig`. What depends on the model (a rank above a layer's width, an int rank_mask above the
rank) the tuner checks when it is injected; its error names the harness's setting (`quantum.as_setting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from qpeft.adapters import quantum
from qpeft.adapters.base import Method, OwnLrSettings, check_fraction, option, register, require
from qpeft.errors import QpeftError
from qpeft.tuner import QuantumConfig, quantum_param_groups


@dataclass
class QuantumCommonSettings(OwnLrSettings):
    """Options both mappings share."""

    rank: int | Literal["full"] = option(8, 'K: an int <= min(d_out, d_in), or "full" = min(d_out, d_in)')
    alpha: float | None = option(16.0, "s = alpha / K under scaling=rank (null: 16)")
    scaling: Literal["rank", "sqrt_rank", "none", "width", "width_sqrt"] | None = option(
        "rank",
        "null = rank | s = alpha / K (rank, the paper's) | alpha / sqrt(K) | alpha (none) | (alpha / K) sqrt(d_out / 3) per "
        "matrix (width: lam's Adam step moves dW as LoRA r=K's does; docs/method.md 'Step sizes under AdamW') | "
        "(alpha / sqrt(K)) sqrt(d_out / 3) (width_sqrt: as rank-stabilised LoRA's does)",
    )
    init: Literal["uniform", "small"] | None = option(
        None, "start of the circuit parameters: uniform | small (null: the mapping's default)"
    )
    rank_mask: int | Literal["adaptive"] | None = option(
        None, "null | int K' (fixed, lam[:K'] active) | adaptive (AdaLoRA-style importance)"
    )
    target_rank: int | None = option(None, "adaptive only: final mean active rank per matrix (null = K // 2)")
    mask_beta: float = option(0.85, "adaptive only: EMA of |lam * grad|, in [0, 1)")
    mask_warmup: float = option(0.1, "adaptive only: fraction of steps before pruning starts, in [0, 1]")
    mask_final: float = option(
        0.8, "adaptive only: fraction of steps at which the budget reaches target_rank"
    )
    mask_interval: int = option(10, "adaptive only: steps between mask updates (>= 1)")
    quant_bits: int | None = option(None, "null | n bits per angle, 1..16 (Pauli mapping only)")
    quant_mode: Literal["qat", "ptq"] = option(
        "qat", "qat (straight-through while training) | ptq (at eval/merge/save)"
    )
    dropout: float = option(0.0, "dropout on the adapter input, as LoRA's, in [0, 1)")
    fold: Literal["float32", "never"] = option(
        "float32",
        "wide updates (full rank, large batch) as x (W + dW)^T when that costs fewer flops, in float32 without "
        "autocast | never (docs/method.md section 4)",
    )
    circuit_lr: float | Literal["width"] | None = option(
        None,
        "learning rate of the circuit parameters (null = lr; width = lr sqrt(3 n) / gain per bank of factor "
        "dimension n, docs/method.md 'Step sizes under AdamW'); no weight decay",
    )
    adapter_lr: float | None = option(
        None,
        "lr of lam, and the lr circuit_lr derives from (null / width), the head keeping trainer.lr; null: "
        "trainer.lr for all (as VeRA's and FourierFT's adapter_lr)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank != "full":
            require(self.rank >= 1, "rank", self.rank, "set adapter.rank >= 1 or adapter.rank=full")
        if self.alpha is not None:
            require(self.alpha > 0, "alpha", self.alpha, "set adapter.alpha > 0")
        if isinstance(self.rank_mask, int):
            require(self.rank_mask >= 1, "rank_mask", self.rank_mask, "use null, adaptive or an int >= 1")
            if isinstance(self.rank, int):
                require(
                    self.rank_mask <= self.rank,
                    "rank_mask",
                    self.rank_mask,
                    f"keeps lam[:rank_mask] of K = adapter.rank ({self.rank}): set it <= {self.rank}",
                )
        if self.target_rank is not None:
            require(self.target_rank >= 1, "target_rank", self.target_rank, "set adapter.target_rank >= 1")
        check_fraction("mask_beta", self.mask_beta)
        check_fraction("mask_warmup", self.mask_warmup, open_top=False)
        check_fraction("mask_final", self.mask_final, open_top=False)
        require(
            self.mask_warmup <= self.mask_final,
            "mask_warmup",
            self.mask_warmup,
            f"pruning must start before it ends: set it <= adapter.mask_final ({self.mask_final})",
        )
        require(
            self.mask_interval >= 1, "mask_interval", self.mask_interval, "set adapter.mask_interval >= 1"
        )
        if self.quant_bits is not None:
            require(
                1 <= self.quant_bits <= 16, "quant_bits", self.quant_bits, "use null or 1..16 bits per angle"
            )
        check_fraction("dropout", self.dropout)
        if self.circuit_lr is not None and self.circuit_lr != "width":
            require(
                self.circuit_lr > 0, "circuit_lr", self.circuit_lr, "set adapter.circuit_lr > 0 (or null)"
            )

    def _mapping(self) -> dict[str, Any]:
        """The QuantumConfig fields of the mapping (each subclass's)."""
        raise NotImplementedError

    def quantum_config(self, module_names: list[str], total_steps: int) -> QuantumConfig:
        """The tuner's config of these settings for the given modules: `adapter.*` -> `QuantumConfig` fields."""
        try:
            return QuantumConfig(
                r=self.rank,
                alpha=16.0 if self.alpha is None else float(self.alpha),
                scaling=self.scaling or "rank",
                init=self.init,
                dropout=float(self.dropout),
                fold=self.fold,
                target_modules=list(module_names),
                rank_mask=self.rank_mask,
                target_rank=self.target_rank,
                total_step=total_steps,
                mask_beta=self.mask_beta,
                mask_warmup=self.mask_warmup,
                mask_final=self.mask_final,
                mask_interval=self.mask_interval,
                quant_bits=self.quant_bits,
                quant_mode=self.quant_mode,
                **self._mapping(),
            )
        except ValueError as e:  # QuantumConfig names its field; the harness user sets adapter.<setting>
            raise quantum.AdapterConfigError(quantum.as_setting(str(e))) from e


@dataclass
class QuantumSettings(QuantumCommonSettings):
    """The Pauli mapping: U, V from RY / CZ circuits."""

    layers: int = option(
        1, "L entangling layers (0: one RY per wire, no entangler); (2L+1) log2(N) - 2L angles"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.layers >= 0, "layers", self.layers, "set adapter.layers >= 0 (0 = no entangling layer)")

    def _mapping(self) -> dict[str, Any]:
        return {"mapping": "pauli", "depth": self.layers}


@dataclass
class QuantumTaylorSettings(QuantumCommonSettings):
    """The Taylor mapping: U = exp(A) E_K by a truncated Taylor series."""

    order: int = option(8, "Taylor order (orthogonality error ~ ||A||^(order+1) / (order+1)!)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.order >= 1, "order", self.order, "set adapter.order >= 1")
        if self.quant_bits is not None:
            raise QpeftError(
                "adapter.quant_bits applies to periodic angles (adapter=quantum): set adapter.quant_bits=null"
            )

    def _mapping(self) -> dict[str, Any]:
        return {"mapping": "taylor", "order": self.order}


@register("quantum")
class QuantumMethod(Method):
    """Quantum-PEFT, Pauli mapping: dW = (alpha / K) U diag(lam) V^T with U, V from quantum circuits."""

    settings_class = QuantumSettings

    def apply(self, model: nn.Module, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
        return quantum.apply(model, self.settings, targets, head, total_steps)

    def on_step(self, model: nn.Module, global_step: int) -> None:
        quantum.on_step(model, global_step)

    def merge(self, model: nn.Module) -> None:
        quantum.merge(model)

    def unmerge(self, model: nn.Module) -> None:
        quantum.unmerge(model)

    def optimizer_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        """The circuit parameters in their own group (circuit_lr, no weight decay); the rest as the Trainer
        groups them (weight decay on all but biases and norms). With adapter_lr, lam and the circuits' base lr
        are adapter_lr and the head's parameters are moved back to `lr`."""
        adapter_lr = self.settings.adapter_lr
        base = lr if adapter_lr is None else adapter_lr
        groups = quantum_param_groups(model, base, self.settings.circuit_lr, weight_decay)
        return groups if adapter_lr is None else quantum.others_at(groups, model, lr)

    def adapter_params(self, model: nn.Module, head: list[str]) -> int:
        """Trainable outside the head, less the lam entries a rank mask keeps at zero (the adaptive mask: its
        final budget, as AdaLoRA's count)."""
        return super().adapter_params(model, head) - quantum.masked_lam_entries(model)

    def record_facts(self, model: nn.Module) -> dict:
        return quantum.record_extra(model)

    def adapter_bytes(self, model: nn.Module) -> int | None:
        return quantum.adapter_file_bytes(model)

    def save_adapter(self, model: nn.Module, directory: Path) -> Path | None:
        return quantum.save_adapter(model, directory)


@register("quantum_taylor")
class QuantumTaylorMethod(QuantumMethod):
    """Quantum-PEFT, Taylor mapping: U, V = exp(A) E_K by a truncated Taylor series."""

    settings_class = QuantumTaylorSettings
