"""QuantumConfig: the settings of a Quantum-PEFT adapter, a peft `PeftConfig` (saved as adapter_config.json)."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from qpeft.errors import QpeftError


class QuantumPeftType(str, enum.Enum):
    """The peft type of Quantum-PEFT. peft accepts string peft types for methods defined outside its PeftType
    enum (peft PR 2635); a str enum like PeftType also has the `.value` that transformers' load_adapter reads,
    and equals (and hashes as) the plain string "QUANTUM" written to adapter_config.json."""

    QUANTUM = "QUANTUM"


PEFT_TYPE = QuantumPeftType.QUANTUM


class QuantumConfigError(QpeftError, ValueError):
    """A QuantumConfig setting that cannot work; the message names the setting."""


@dataclass
class QuantumConfig(PeftConfig):
    """Quantum-PEFT (Koike-Akino et al., ICLR 2025): for every target matrix W0 (d_out x d_in),

        W = W0 + s * U diag(lam * mask) V^T,

    U (d_out x K) and V (d_in x K) with orthonormal columns from quantum-circuit mappings of a few angles,
    lam (K,) trainable and zero at init (the adapted model starts as the pretrained one, exactly).
    See docs/method.md for what each choice follows ([paper]) or adds ([ours]).
    """

    r: int | str = field(
        default=8,
        metadata={"help": "Rank K of every update (<= min(d_out, d_in)), or 'full' for min(d_out, d_in)."},
    )
    mapping: Literal["pauli", "taylor"] = field(
        default="pauli",
        metadata={
            "help": "'pauli': RY/CZ circuit of `depth` entangling layers; 'taylor': Lie-algebra map by a "
            "truncated Taylor series of `order` terms."
        },
    )
    depth: int = field(
        default=1, metadata={"help": "Pauli mapping: the circuit's entangling layers L (>= 0)."}
    )
    order: int = field(default=8, metadata={"help": "Taylor mapping: series order (>= 1)."})
    alpha: float = field(
        default=16.0, metadata={"help": "Update scale numerator: s = alpha / K (see `scaling`)."}
    )
    scaling: Literal["rank", "sqrt_rank", "none", "width", "width_sqrt"] = field(
        default="rank",
        metadata={
            "help": "Step-size rule: s = alpha / K ('rank', the paper's), alpha / sqrt(K) ('sqrt_rank'), alpha "
            "('none'), (alpha / K) sqrt(d_out / 3) per matrix ('width': a step of lr on lam moves dW as far "
            "as LoRA r=K's first steps do under Adam; docs/method.md 'Step sizes under AdamW') or "
            "(alpha / sqrt(K)) sqrt(d_out / 3) ('width_sqrt': as far as rank-stabilised LoRA's, alpha / sqrt(r))."
        },
    )
    init: Literal["uniform", "small"] | None = field(
        default=None,
        metadata={
            "help": "Circuit init: 'uniform' angles U[-pi, pi) (Taylor: N(0, 1/n)) or 'small' N(0, 0.01^2); "
            "None: uniform for pauli, small for taylor."
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: lam = 0, the adapted model starts as the pretrained one. False: lam ~ N(0, 0.1^2), a "
            "non-identity start for tests (peft's convention)."
        },
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input, as LoRA's."})
    fold: Literal["float32", "never"] = field(
        default="float32",
        metadata={
            "help": "'float32': a wide update (full rank, large batch, no dropout) is folded into the weight, "
            "x (W + dW)^T, where that costs fewer flops than x V and its product with U, in float32 / float64 "
            "without autocast (qpeft.tuner.fold); 'never': always the low-rank path. ('autocast', of older "
            "configs, reads as 'float32'.)"
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Names (suffix match) or a regex of the nn.Linear / Conv1D modules to adapt; None: peft's "
            "LoRA defaults for known architectures."
        },
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    fan_in_fan_out: bool = field(
        default=False,
        metadata={"help": "True for weights stored (in, out), like GPT-2's Conv1D (set automatically)."},
    )
    bias: Literal["none", "all", "quantum_only"] = field(
        default="none", metadata={"help": "Biases to train."}
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "As in LoraConfig."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "As in LoraConfig."})
    rank_mask: int | str | None = field(
        default=None,
        metadata={
            "help": "None: all K entries of lam active; an int K': lam[:K'] active; 'adaptive': AdaLoRA-style "
            "pruning by call to model.base_model.update_rank_mask(global_step) after each optimizer step."
        },
    )
    target_rank: int | None = field(
        default=None,
        metadata={"help": "Adaptive mask: mean active entries per matrix at the end (default K // 2)."},
    )
    total_step: int | None = field(default=None, metadata={"help": "Adaptive mask: total optimizer steps."})
    mask_beta: float = field(
        default=0.85, metadata={"help": "Adaptive mask: EMA factor of |lam * grad lam|."}
    )
    mask_warmup: float = field(
        default=0.1, metadata={"help": "Adaptive mask: first pruning at this fraction."}
    )
    mask_final: float = field(
        default=0.8, metadata={"help": "Adaptive mask: budget reached at this fraction."}
    )
    mask_interval: int = field(default=10, metadata={"help": "Adaptive mask: steps between re-selections."})
    quant_bits: int | None = field(
        default=None,
        metadata={
            "help": "Pauli mapping: angles on a uniform n-bit grid (1..16); saved bit-packed. lam is not "
            "quantised."
        },
    )
    module_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Set when the adapter is injected, not by hand: the adapted modules in the order of the "
            "adapter's rows (circuits, lam). Saved with the adapter and checked when it is loaded."
        },
    )
    layers: int | None = field(
        default=None,
        metadata={"help": "The old name of `depth`: configs saved before it still load. Not saved."},
    )
    quant_mode: Literal["qat", "ptq"] = field(
        default="qat",
        metadata={
            "help": "'qat': train through the rounding (straight-through); 'ptq': train in full precision. "
            "Both evaluate, merge and save the quantised angles."
        },
    )

    def __post_init__(self) -> None:
        # read from an adapter_config.json (it names a peft_version) written before module_names was recorded
        self._saved_without_module_names = self.peft_version is not None and self.module_names is None
        super().__post_init__()
        if self.module_names is not None:
            self.module_names = list(self.module_names)
        if self.layers is not None:  # the old name of depth
            self.depth, self.layers = self.layers, None
        self.peft_type = PEFT_TYPE
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if isinstance(self.r, str) and self.r.isdigit():
            self.r = int(self.r)
        if not (self.r == "full" or (isinstance(self.r, int) and self.r >= 1)):
            raise QuantumConfigError(f"QuantumConfig.r={self.r!r}: use a positive integer or 'full'")
        if self.mapping not in ("pauli", "taylor"):
            raise QuantumConfigError(f"QuantumConfig.mapping={self.mapping!r}: choose 'pauli' or 'taylor'")
        if self.init is None:
            self.init = "uniform" if self.mapping == "pauli" else "small"
        if self.init not in ("uniform", "small"):
            raise QuantumConfigError(f"QuantumConfig.init={self.init!r}: choose 'uniform' or 'small'")
        for name, low in (("depth", 0), ("order", 1)):
            value = getattr(self, name)
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            # bool is an int, and 2.0 is not: a circuit has a whole number of layers, a series of terms
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise QuantumConfigError(
                    f"QuantumConfig.{name}={getattr(self, name)!r}: use an integer >= {low}"
                )
            setattr(self, name, value)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha >= 0:
            raise QuantumConfigError(f"QuantumConfig.alpha={self.alpha!r}: use a number >= 0 (s = alpha / K)")
        if self.target_modules is not None and len(self.target_modules) == 0:
            raise QuantumConfigError(
                "QuantumConfig.target_modules is empty: name the modules to adapt, or None for peft's defaults"
            )
        if self.scaling not in ("rank", "sqrt_rank", "none", "width", "width_sqrt"):
            raise QuantumConfigError(
                f"QuantumConfig.scaling={self.scaling!r}: choose rank, sqrt_rank, none, width or width_sqrt"
            )
        if self.quant_mode not in ("qat", "ptq"):
            raise QuantumConfigError(f"QuantumConfig.quant_mode={self.quant_mode!r}: choose qat or ptq")
        if self.quant_bits is not None:
            if self.mapping != "pauli":
                raise QuantumConfigError(
                    "QuantumConfig.quant_bits applies to periodic angles: use it with mapping='pauli'"
                )
            if not 1 <= int(self.quant_bits) <= 16:
                raise QuantumConfigError(f"QuantumConfig.quant_bits={self.quant_bits}: use 1..16 or None")
            self.quant_bits = int(self.quant_bits)
        if isinstance(self.rank_mask, str) and self.rank_mask.isdigit():
            self.rank_mask = int(self.rank_mask)
        if self.rank_mask is not None and self.rank_mask != "adaptive":
            if not isinstance(self.rank_mask, int) or self.rank_mask < 1:
                raise QuantumConfigError(
                    f"QuantumConfig.rank_mask={self.rank_mask!r}: use None, 'adaptive' or a positive int"
                )
        if self.rank_mask == "adaptive" and not self.total_step:
            raise QuantumConfigError("QuantumConfig.rank_mask='adaptive' needs total_step (optimizer steps)")
        if (
            self.fold == "autocast"
        ):  # folding under autocast too: removed, its step was 2.52x LoRA's on an H200
            warnings.warn(
                "QuantumConfig.fold='autocast' is no longer offered: read as 'float32'", stacklevel=3
            )
            self.fold = "float32"
        if self.fold not in ("float32", "never"):
            raise QuantumConfigError(f"QuantumConfig.fold={self.fold!r}: choose float32 or never")
        if not 0.0 <= self.dropout < 1.0:
            raise QuantumConfigError(f"QuantumConfig.dropout={self.dropout}: use a value in [0, 1)")

    def to_dict(self) -> dict:
        """What adapter_config.json holds: the method's settings, not `fold` (a runtime choice: a loaded adapter
        folds by default) nor the old name `layers`."""
        out = super().to_dict()
        out.pop("fold", None)
        out.pop("layers", None)
        return out

    def check_module_names(self, names: list[str], adapter_name: str) -> None:
        """Record `names` (the modules an injection adapted, in row order) or, for a loaded adapter, check them
        against the saved ones: the rows of an adapter file belong to the modules it names, not to positions."""
        if self.module_names is None:
            if self._saved_without_module_names:
                warnings.warn(
                    f"adapter '{adapter_name}' was saved before Quantum-PEFT recorded its module names "
                    "(adapter_config.json has no module_names): its rows are assigned to the matched modules in "
                    "injection order, unchecked. Save it again to record them.",
                    stacklevel=3,
                )
            self.module_names = list(names)
            return
        if list(self.module_names) == list(names):
            return
        saved, here = list(self.module_names), list(names)
        missing = [n for n in saved if n not in here]
        extra = [n for n in here if n not in saved]
        if missing or extra:
            detail = f"saved for modules this model lacks: {missing}; modules it matched that were not saved: {extra}"
        else:
            row = next(i for i, (a, b) in enumerate(zip(saved, here)) if a != b)
            detail = (
                f"the same modules in another order: row {row} is {saved[row]!r} saved, {here[row]!r} here"
            )
        raise QuantumConfigError(
            f"QuantumConfig.module_names of adapter '{adapter_name}' do not fit this model: {detail}"
        )

    def rank_for(self, d_out: int, d_in: int, name: str) -> int:
        """K of one matrix: `r`, or min(d_out, d_in) for 'full'; an error names the setting when r is too big."""
        limit = min(d_out, d_in)
        if self.r == "full":
            return limit
        if self.r > limit:
            raise QuantumConfigError(
                f"QuantumConfig.r={self.r} exceeds min(d_out, d_in)={limit} of {name} ({d_out}x{d_in}); "
                f"set QuantumConfig.r <= {limit} or QuantumConfig.r='full'"
            )
        return self.r

    def scale(self, k: int, d_out: int) -> float:
        """s of a rank-K update of a d_out x d_in matrix under the step-size rule `scaling`.

        'width': LoRA's B (zero at init) moves about lr per entry per Adam step, so ||d(dW)||_F is about
        (alpha / r) lr sqrt(d_out r / 3) (A's entries are U(-1/sqrt(d_in), 1/sqrt(d_in))); a step of lr on lam
        moves s U diag(lam) V^T by s lr sqrt(K). Equal at r = K: s = (alpha / K) sqrt(d_out / 3).
        'width_sqrt': the same against rank-stabilised LoRA (scale alpha / sqrt(r), Kalajdzievski 2023), whose
        step does not shrink as r grows: s = (alpha / sqrt(K)) sqrt(d_out / 3)."""
        if self.scaling == "width":
            return self.alpha / k * (d_out / 3) ** 0.5
        if self.scaling == "width_sqrt":
            return self.alpha / k**0.5 * (d_out / 3) ** 0.5
        return {"rank": self.alpha / k, "sqrt_rank": self.alpha / k**0.5, "none": self.alpha}[self.scaling]
