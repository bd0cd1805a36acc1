"""Methods through Hugging Face peft (pinned): LoRA, AdaLoRA, OFT, BOFT, VeRA, FourierFT, TinyLoRA.

Each is one `PeftMethod` subclass: a settings dataclass (the keys of configs/adapter/<method>.yaml) and a
`peft_config` that turns the settings into peft's config after checking them against the target layers'
shapes. `PeftMethod` owns the rest: the head (classifier, and DeBERTa's pooler) goes to peft's
`modules_to_save`, so it trains with every method as in the reference AdaLoRA code; Hugging Face models get
peft's task-specific wrapper (SEQ_CLS / CAUSAL_LM); any other module (the timm `ImageClassifier`) gets
`PeftModel` with a forward that goes through the tuner, so AdaLoRA's orthogonal regulariser (added to
`outputs.loss` inside `AdaLoraModel.forward`) is kept: plain `PeftModel.forward` calls the wrapped model
directly and skips it. A meta model (parameter tables) gets every new tensor on meta too.

AdaLoRA parameter count (the convention of the AdaLoRA paper, Table 1 and Table 7): a triplet
(P column, lambda, Q row) of a `d_out x d_in` matrix costs `d_in + d_out + 1`; the count is the final
budget, `sum_m r_m * (d_in_m + d_out_m + 1)` over the adapted matrices with their final ranks `r_m`.
Before any allocation the final ranks are unknown and the nominal final budget is used: `target_r` per
matrix, i.e. b(T) = target_r * n_matrices triplets. `record_facts` also logs the allocated count (every
lora_A / lora_B / lora_E parameter, what the optimizer holds) and the rank pattern.

BOFT: `FastBoftLinear`, a subclass of peft's BOFT Linear, is put in place of each target layer before peft
injects (peft then only calls its `update_layer`): it keeps the requested butterfly factor without peft's
compiled CUDA kernel and computes the same rotation block by block (see the class).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import peft
import torch
from peft import (
    AdaLoraConfig,
    BOFTConfig,
    FourierFTConfig,
    LoraConfig,
    OFTConfig,
    PeftModel,
    TinyLoraConfig,
    VeraConfig,
    get_peft_model,
    get_peft_model_state_dict,
)
from peft.tuners.adalora import AdaLoraLayer, AdaLoraModel
from peft.tuners.boft import layer as boft_layer
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from qpeft.adapters.base import (
    AdapterSettings,
    Method,
    OwnLrSettings,
    check_fraction,
    in_head,
    option,
    register,
    require,
    target_modules,
)
from qpeft.errors import QpeftError
from qpeft.tuner.optim import decay_parameter_names


class PeftModelThroughTuner(PeftModel):
    """`PeftModel` whose forward goes through the tuner (`base_model`), so AdaLoRA adds its regulariser."""

    def forward(self, *args, **kwargs):
        with self._enable_peft_forward_hooks(*args, **kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k not in self.special_peft_forward_args}
            return self.base_model(*args, **kwargs)


def dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a target layer: nn.Linear or transformers' Conv1D (GPT-2, weight stored d_in x d_out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise QpeftError(
        f"adapter.targets matches a {type(module).__name__}; peft methods here adapt nn.Linear and Conv1D layers "
        "only: narrow adapter.targets"
    )


def task_type(model: nn.Module) -> str | None:
    """peft's task type: SEQ_CLS / CAUSAL_LM for Hugging Face models, None for anything else (timm)."""
    if not isinstance(model, PreTrainedModel):
        return None
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    return None


class PeftMethod(Method):
    """A method that peft injects: wrapping, head as modules_to_save, merge/unmerge and counts via peft."""

    conv1d_ok: ClassVar[bool] = True  # whether peft's implementation takes GPT-2's Conv1D layers
    layers_in_place: ClassVar[bool] = False  # whether `prepare` puts the tuner layers in place (BOFT)

    @abstractmethod
    def peft_config(self, layers: dict[str, nn.Module], total_steps: int, common: dict) -> peft.PeftConfig:
        """peft's config for these settings; `layers` are the target modules (checked against the settings),
        `common` the keyword arguments every peft config takes (targets, head, task type, fan_in_fan_out)."""

    def apply(self, model: nn.Module, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
        """Inject the method into the target modules; the head modules stay trainable (modules_to_save)."""
        layers = target_modules(model, targets, head)
        for module in layers.values():
            dims(module)  # only Linear / Conv1D
        conv1d = [n for n, m in layers.items() if isinstance(m, Conv1D)]
        if conv1d and not self.conv1d_ok:
            raise QpeftError(
                f"peft {peft.__version__} cannot apply {self.name} to transformers Conv1D layers ({conv1d[0]}, "
                "GPT-2 style): choose another adapter= for this backbone, or adapter.targets of nn.Linear layers"
            )
        common = dict(
            target_modules=list(targets),
            modules_to_save=list(head) or None,
            task_type=task_type(model),
            fan_in_fan_out=bool(conv1d),  # GPT-2 c_attn
        )
        config = self.peft_config(layers, total_steps, common)
        self.prepare(model, layers)
        # a meta model (parameter tables): every new tensor on meta too (no gigabytes of CPU memory for
        # full-size shapes)
        on_meta = any(p.is_meta for p in model.parameters())
        with torch.device("meta") if on_meta else contextlib.nullcontext(), warnings.catch_warnings():
            if self.layers_in_place:  # peft warns on finding tuner layers: here they are ours, put in place
                warnings.filterwarnings(
                    "ignore", message="You are trying to modify a model with PEFT for a second"
                )
            if (
                config.task_type is None
            ):  # what get_peft_model builds for None, with a forward through the tuner
                return PeftModelThroughTuner(model, config)
            return get_peft_model(model, config)

    def prepare(self, model: nn.Module, layers: dict[str, nn.Module]) -> None:
        """Before peft injects: a method may put its own layer classes in place (BOFT)."""

    def merge(self, model: nn.Module) -> None:
        """Fold the adapter into the base weights (peft's merge_adapter)."""
        model.base_model.merge_adapter()

    def unmerge(self, model: nn.Module) -> None:
        """Undo `merge` (peft's unmerge_adapter)."""
        model.base_model.unmerge_adapter()

    def save_adapter(self, model: nn.Module, directory: Path) -> Path | None:
        """peft's save_pretrained: adapter_config.json + adapter_model.safetensors (the head, peft's
        modules_to_save, included: the file loads back into a working classifier)."""
        model.save_pretrained(str(directory))
        return Path(directory) / "adapter_model.safetensors"

    def adapter_bytes(self, model: nn.Module) -> int | None:
        """Bytes of what peft's save_pretrained writes for the adapter (projections included where saved),
        the head (modules_to_save) apart; from shapes, so it works on meta models."""
        head = model.peft_config["default"].modules_to_save or []
        state = get_peft_model_state_dict(model)
        return sum(t.numel() * t.element_size() for k, t in state.items() if not in_head(k, list(head)))


def _check_dropout(key: str, value: float) -> None:
    check_fraction(key, value)


def _alpha(alpha: float | None) -> None:
    if alpha is not None:
        require(alpha > 0, "alpha", alpha, "set adapter.alpha > 0 (or null for the protocol's)")


def _smallest_width(layers: dict[str, nn.Module]) -> tuple[int, str]:
    """The smallest of d_in, d_out over the target layers, and the layer it belongs to."""
    return min((min(dims(m)), name) for name, m in layers.items())


# --- a learning rate of the adapter's own ----------------------------------------------------------------


class OwnLrMethod(PeftMethod):
    """A peft method with `adapter.adapter_lr`: its parameters in their own optimiser groups at that lr."""

    settings_class: ClassVar[type[OwnLrSettings]]

    def optimizer_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        """With adapter_lr set: the adapter's parameters at adapter_lr, the head's (peft's modules_to_save) at
        `lr`; weight decay by the Trainer's rule in both (all but biases and norms). None: the Trainer's."""
        adapter_lr = self.settings.adapter_lr
        if adapter_lr is None:
            return None
        head = list(model.peft_config["default"].modules_to_save or [])
        decay = decay_parameter_names(model)
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                key = (lr if in_head(name, head) else adapter_lr, weight_decay if name in decay else 0.0)
                groups.setdefault(key, []).append(p)
        return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


# --- LoRA ------------------------------------------------------------------------------------------------


@dataclass
class LoraSettings(OwnLrSettings):
    r: int = option(8, "LoRA rank r (1 <= r <= the smallest target width)")
    alpha: float | None = option(None, "scale alpha / r; null = the task protocol's alpha (none: alpha = r)")
    dropout: float = option(0.0, "dropout on the adapter input, in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.r >= 1, "r", self.r, "set adapter.r >= 1")
        _alpha(self.alpha)
        _check_dropout("dropout", self.dropout)


@register("lora")
class LoraMethod(OwnLrMethod):
    """LoRA (Hu et al., 2022): dW = (alpha / r) B A."""

    settings_class = LoraSettings

    def peft_config(self, layers, total_steps, common):
        s = self.settings
        smallest, where = _smallest_width(layers)
        if s.r > smallest:
            raise QpeftError(
                f"adapter.r={s.r} is larger than the layer {where} allows ({smallest}): set adapter.r <= {smallest}"
            )
        return LoraConfig(r=s.r, lora_alpha=s.alpha or s.r, lora_dropout=s.dropout, **common)


# --- AdaLoRA ---------------------------------------------------------------------------------------------


@dataclass
class AdaLoraSettings(AdapterSettings):
    target_r: int | None = option(8, "average final rank per matrix: b(T) = target_r * n_matrices")
    init_r: int | None = option(
        12, "initial rank per matrix (null and no protocol value: ceil(1.5 * target_r))"
    )
    tinit: int | float | None = option(
        None, "budget warm-up steps; a value in (0, 1) is a fraction of the run"
    )
    tfinal: int | float | None = option(
        None, "final fine-tuning steps at the final budget; (0, 1) = fraction"
    )
    deltaT: int | None = option(None, "steps between two allocations")
    orth_reg: float | None = option(None, "weight of the orthogonal regulariser (peft's orth_reg_weight)")
    beta1: float = option(0.85, "EMA of the sensitivity, in [0, 1)")
    beta2: float = option(0.85, "EMA of the uncertainty, in [0, 1)")
    alpha: float | None = option(None, "null = the task protocol's alpha (none: init_r)")
    dropout: float = option(0.0, "dropout on the adapter input, in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_r is not None:
            require(self.target_r >= 1, "target_r", self.target_r, "set adapter.target_r >= 1")
        if self.init_r is not None:
            require(self.init_r >= 1, "init_r", self.init_r, "set adapter.init_r >= 1")
        if self.target_r is not None and self.init_r is not None:
            require(
                self.target_r <= self.init_r,
                "target_r",
                self.target_r,
                f"AdaLoRA prunes from init_r down: set adapter.target_r <= adapter.init_r ({self.init_r})",
            )
        for key in ("tinit", "tfinal"):
            value = getattr(self, key)
            if value is not None:
                require(value >= 0, key, value, f"set adapter.{key} >= 0 (steps, or a fraction in (0, 1))")
        if self.deltaT is not None:
            require(self.deltaT >= 1, "deltaT", self.deltaT, "set adapter.deltaT >= 1")
        if self.orth_reg is not None:
            require(self.orth_reg >= 0, "orth_reg", self.orth_reg, "set adapter.orth_reg >= 0")
        check_fraction("beta1", self.beta1)
        check_fraction("beta2", self.beta2)
        _alpha(self.alpha)
        _check_dropout("dropout", self.dropout)


def _schedule_step(value: float | None, total_steps: int, key: str) -> int:
    """AdaLoRA's tinit / tfinal: a value in (0, 1) is a fraction of total_steps, anything else a step count."""
    if value is None:
        raise QpeftError(f"adapter.{key} is not set and the task protocol gives none: set adapter.{key}=...")
    return int(round(value * total_steps)) if 0 < value < 1 else int(value)


def _adalora(model: nn.Module) -> AdaLoraModel | None:
    tuner = getattr(model, "base_model", None)
    return tuner if isinstance(tuner, AdaLoraModel) else None


def rank_pattern(model: nn.Module) -> dict[str, int] | None:
    """AdaLoRA's current rank per adapted layer (from peft's `rank_pattern`); None before any allocation."""
    tuner = _adalora(model)
    pattern = tuner.peft_config[tuner.trainable_adapter_name].rank_pattern if tuner else None
    if not pattern:
        return None
    out = {}
    for key, mask in pattern.items():  # '<layer>.lora_E.default' -> [bool] * init_r
        layer = key.split(".lora_E")[0]
        out[layer] = int(sum(bool(x) for x in (mask.view(-1).tolist() if torch.is_tensor(mask) else mask)))
    return out


def adalora_budget(model: nn.Module) -> dict:
    """AdaLoRA's budget: ranks, triplet counts, nominal and realised final parameters, the rank pattern."""
    tuner = _adalora(model)
    config = tuner.peft_config[tuner.trainable_adapter_name]
    sizes = {  # layer -> cost of one triplet, d_in + d_out + 1
        name.removeprefix("base_model.model."): layer.in_features + layer.out_features + 1
        for name, layer in model.named_modules()
        if isinstance(layer, AdaLoraLayer)
    }
    ranks = rank_pattern(model)
    return dict(
        target_r=config.target_r,
        init_r=config.init_r,
        n_matrices=len(sizes),
        final_budget_triplets=config.target_r * len(sizes),
        initial_budget_triplets=config.init_r * len(sizes),
        nominal_final_params=config.target_r * sum(sizes.values()),
        final_params=None if ranks is None else sum(r * sizes[k] for k, r in ranks.items()),
        allocated_params=sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n),
        rank_pattern=ranks,
        total_rank=None if ranks is None else sum(ranks.values()),
    )


@register("adalora")
class AdaLoraMethod(PeftMethod):
    """AdaLoRA (Zhang et al., 2023): SVD-form LoRA whose rank budget falls from init_r to target_r."""

    settings_class = AdaLoraSettings

    def peft_config(self, layers, total_steps, common):
        s = self.settings
        if s.target_r is None:
            raise QpeftError(
                "adapter.target_r is not set and the task protocol gives none: set adapter.target_r=..."
            )
        init_r = s.init_r or math.ceil(1.5 * s.target_r)  # b(0) = 1.5 b(T) (AdaLoRA paper, Table 7)
        if s.target_r > init_r:
            raise QpeftError(f"adapter.target_r={s.target_r} must be between 1 and adapter.init_r={init_r}")
        tinit = _schedule_step(s.tinit, total_steps, "tinit")
        tfinal = _schedule_step(s.tfinal, total_steps, "tfinal")
        if tinit >= total_steps - tfinal:
            raise QpeftError(
                f"AdaLoRA needs adapter.tinit ({tinit}) < total steps ({total_steps}) - adapter.tfinal ({tfinal}): "
                "lower them or give them as fractions of the run (e.g. adapter.tinit=0.1 adapter.tfinal=0.3)"
            )
        return AdaLoraConfig(
            init_r=int(init_r),
            target_r=int(s.target_r),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=int(s.deltaT or 1),
            beta1=s.beta1,
            beta2=s.beta2,
            orth_reg_weight=s.orth_reg if s.orth_reg is not None else 0.1,
            total_step=total_steps,
            lora_alpha=s.alpha or init_r,
            lora_dropout=s.dropout,
            **common,
        )

    def on_step(self, model: nn.Module, global_step: int) -> None:
        """AdaLoRA's importance update and budget allocation (after optimizer.step, before zero_grad)."""
        model.base_model.update_and_allocate(global_step)

    def adapter_params(self, model: nn.Module, head: list[str]) -> int:
        """The final budget: realised ranks once allocated, else the nominal target_r per matrix."""
        b = adalora_budget(model)
        return b["final_params"] if b["final_params"] is not None else b["nominal_final_params"]

    def record_facts(self, model: nn.Module) -> dict:
        """Allocated count, final budget, target total rank and the rank pattern."""
        return {"adalora": adalora_budget(model)}


# --- OFT, BOFT ---------------------------------------------------------------------------------------------


def _check_divides(layers: dict[str, nn.Module], size: int, key: str, what: str) -> None:
    """Every target layer's input width must be a multiple of `size` (OFT / BOFT blocks)."""
    for name, m in layers.items():
        d_in = dims(m)[0]
        if d_in % size:
            raise QpeftError(
                f"{key}={size} does not divide the input width {d_in} of {name} ({what}): choose a divisor of {d_in}"
            )


@dataclass
class OftSettings(AdapterSettings):
    block_size: int = option(32, "peft's oft_block_size; must divide every target layer's input width")
    module_dropout: float = option(
        0.0, "multiplicative dropout: a block becomes the identity with this probability"
    )
    coft: bool = option(False, "constrained OFT")
    eps: float = option(6.0e-05, "COFT's freedom of rotation (only with coft: true)")
    block_share: bool = option(False, "one rotation shared by all blocks of a layer")
    use_cayley_neumann: bool = option(
        True, "Cayley transform by a truncated Neumann series (peft 0.21's default)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.block_size >= 1, "block_size", self.block_size, "set adapter.block_size >= 1")
        check_fraction("module_dropout", self.module_dropout)
        require(self.eps > 0, "eps", self.eps, "set adapter.eps > 0")


@register("oft")
class OftMethod(PeftMethod):
    """OFT (Qiu et al., 2023): a block-diagonal orthogonal rotation of each target layer's input."""

    settings_class = OftSettings
    conv1d_ok = False

    def peft_config(self, layers, total_steps, common):
        s = self.settings
        _check_divides(
            layers, s.block_size, "adapter.block_size", "OFT rotates the input in blocks of this size"
        )
        return OFTConfig(
            r=0,
            oft_block_size=s.block_size,
            module_dropout=s.module_dropout,
            coft=s.coft,
            eps=s.eps,
            block_share=s.block_share,
            use_cayley_neumann=s.use_cayley_neumann,
            **common,
        )


@dataclass
class BoftSettings(AdapterSettings):
    block_size: int = option(8, "peft's boft_block_size (the number of blocks follows from the width)")
    n_butterfly_factor: int = option(
        2, "number of butterfly factors (1 = block-diagonal OFT with BOFT's scaling)"
    )
    dropout: float = option(0.0, "BOFT's multiplicative dropout, in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.block_size >= 1, "block_size", self.block_size, "set adapter.block_size >= 1")
        require(
            self.n_butterfly_factor >= 1, "n_butterfly_factor", self.n_butterfly_factor, "set it to 1 or more"
        )
        require(
            self.n_butterfly_factor == 1 or self.block_size % 2 == 0,
            "block_size",
            self.block_size,
            "must be even when adapter.n_butterfly_factor > 1",
        )
        check_fraction("dropout", self.dropout)


def block_diagonal(blocks: torch.Tensor) -> torch.Tensor:
    """(m, D, H, H) blocks -> (m, D*H, D*H) block-diagonal matrices (what peft's fbd_cuda kernel computes)."""
    m, d, h, _ = blocks.shape
    eye = torch.eye(d, device=blocks.device, dtype=blocks.dtype)
    return torch.einsum("ndij,de->ndiej", blocks, eye).reshape(m, d * h, d * h)


class FastBoftLinear(boft_layer.Linear):
    """peft's BOFT Linear, same parameters, state dict and merge, with two changes.

    - `update_layer` builds the butterfly for the requested factor. peft's asks for its compiled CUDA
      kernel (`fbd_cuda`) and, without it (no nvcc / ninja, or a CPU), silently sets
      `boft_n_butterfly_factor = 1`, which changes the method; here the block-diagonal matrices come from
      `block_diagonal` (pure torch) and the kernel is never needed.
    - `forward` applies the rotation to the weight. peft builds R = prod_i P_i blockdiag(B_i) P_i^T as N x N
      matrices (O(N^3) per butterfly factor per step: 10 s a step for MiniLM on 2 cores) and computes
      base(x R). Here W R^T is formed block by block after index permutations (O(d_out N H), whatever the
      batch), and x meets one ordinary matmul: half the step time of rotating x (MiniLM, 32 x 64, CPU).

    Parity with peft's own forward, gradients included: tests/test_baselines.py. Put in place of each
    target nn.Linear before peft injects, so peft's tuner finds a BOFTLayer and only calls `update_layer`.
    """

    def __init__(self, base_layer: nn.Linear):
        nn.Module.__init__(self)
        boft_layer.BOFTLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self.is_target_conv_1d_layer = False
        self.fbd_cuda_available = False  # never used: forward and get_delta_weight below do not call it

    def update_layer(self, adapter_name: str, config: BOFTConfig, **kwargs: Any) -> None:
        """peft's BOFTLayer.update_layer for a block size (the checks are BoftMethod's), keeping the factor."""
        m, block = config.boft_n_butterfly_factor, config.boft_block_size
        n = self.in_features
        blocks = n // block
        drop = config.boft_dropout
        self.boft_dropout.update(
            nn.ModuleDict(
                {adapter_name: boft_layer.MultiplicativeDropoutLayer(p=drop) if drop > 0 else nn.Identity()}
            )
        )
        # butterfly permutations (integers: computed on the CPU, also when the model is built on meta)
        with torch.device("cpu"):
            perms = torch.stack(
                [self.block_butterfly_perm(n, blocks // 2**i, block // 2, m - 1) for i in range(m)]
            )
        device = self.get_base_layer().weight.device
        perms = perms.to(device)
        # peft's perm2mat: row j of P_i is e_{perm_i[j]}; x @ P_i = x[..., argsort(perm_i)], x @ P_i^T = x[..., perm_i]
        self.register_buffer("boft_P", torch.eye(n, device=device)[perms], persistent=False)
        self.register_buffer("boft_perm", perms, persistent=False)
        self.register_buffer("boft_perm_inverse", perms.argsort(dim=-1), persistent=False)
        self.boft_R[adapter_name] = nn.Parameter(torch.zeros(m, blocks, block, block))
        self.boft_s[adapter_name] = nn.Parameter(torch.ones(int(self.out_features), 1))
        self.reset_boft_parameters(adapter_name, config.init_weights)
        self.boft_block_size[adapter_name] = block
        self.boft_block_num[adapter_name] = blocks
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def get_delta_weight(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """peft's (rotation R, scale s) for merge / unmerge, with the block-diagonal matrices in pure torch."""
        R, s = self.boft_R[adapter], self.boft_s[adapter]
        m, d, h, _ = R.shape
        diag = block_diagonal(self.cayley_batch(R.view(m * d, h, h)).view(m, d, h, h))
        P = self.boft_P.to(diag)
        factors = P @ diag @ P.transpose(1, 2)
        rotation = factors[0]
        for i in range(1, m):
            rotation = factors[i] @ rotation
        return rotation, s

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)  # peft's paths that use the base layer alone
        dtype = x.dtype
        base = self.get_base_layer()
        scale = torch.ones(int(self.out_features), device=x.device, dtype=base.weight.dtype)
        rotations = []  # per active adapter: blocks (m, D, H, H)
        for name in self.active_adapters:
            if name not in self.boft_R.keys():
                continue
            R = self.boft_R[name]
            m, d, h, _ = R.shape
            rotations.append(self.boft_dropout[name](self.cayley_batch(R.view(m * d, h, h)).view(m, d, h, h)))
            scale = self.boft_s[name].squeeze(-1) * scale
        # x R W^T with R = R_last ... R_first and, within an adapter, R = B_{m-1} ... B_0, B_i = P_i D_i P_i^T:
        # W R^T = W B_0^T ... B_{m-1}^T (first adapter first), and W @ B_i^T permutes, applies D_i^T per block
        weight = base.weight
        for blocks in rotations:
            for i in range(blocks.shape[0]):
                w = weight[:, self.boft_perm_inverse[i]].unflatten(-1, blocks.shape[1:3])
                rotated = torch.einsum("odh,dkh->odk", w, blocks[i].to(weight.dtype)).flatten(-2)
                weight = rotated[:, self.boft_perm[i]]
        return nn.functional.linear(x, weight * scale[:, None], base.bias).to(dtype)


@register("boft")
class BoftMethod(PeftMethod):
    """BOFT (Liu et al., 2024): OFT with butterfly-factorised rotations; qpeft's forward (FastBoftLinear)."""

    settings_class = BoftSettings
    conv1d_ok = False
    layers_in_place = True

    def peft_config(self, layers, total_steps, common):
        s = self.settings
        block, m = s.block_size, s.n_butterfly_factor
        span = block * 2 ** (m - 1)
        _check_divides(
            layers, span, "adapter.block_size * 2^(adapter.n_butterfly_factor - 1)", "BOFT butterfly"
        )
        if m > 1 and any((dims(x)[0] // block) % 2 for x in layers.values()):
            raise QpeftError(
                f"adapter.block_size={block} must leave an even number of blocks per layer for BOFT"
            )
        return BOFTConfig(
            boft_block_size=block,
            boft_block_num=0,
            boft_n_butterfly_factor=m,
            boft_dropout=s.dropout,
            **common,
        )

    def prepare(self, model: nn.Module, layers: dict[str, nn.Module]) -> None:
        """Each target nn.Linear becomes a FastBoftLinear around it (peft then adds the adapter to it). The
        backbone is frozen first: finding tuner layers, peft keeps the other parameters' requires_grad as it
        finds them (as for a second adapter) instead of freezing them."""
        model.requires_grad_(False)
        for name, module in layers.items():
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, FastBoftLinear(module))


# --- VeRA, FourierFT, TinyLoRA ----------------------------------------------------------------------------


@dataclass
class VeraSettings(OwnLrSettings):
    r: int = option(256, "rank of the shared random projections A (r x d_in), B (d_out x r)")
    d_initial: float = option(0.1, "initial value of every lambda_d entry (VeRA paper Table 6c: <= 0.1)")
    projection_prng_key: int = option(0, "seed of the frozen random projections A, B (shared by all layers)")
    save_projection: bool = option(True, "save A, B with the adapter (else they are re-drawn from the seed)")
    dropout: float = option(0.0, "dropout on the adapter input, in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.r >= 1, "r", self.r, "set adapter.r >= 1")
        require(self.d_initial > 0, "d_initial", self.d_initial, "set adapter.d_initial > 0")
        _check_dropout("dropout", self.dropout)


@register("vera")
class VeraMethod(OwnLrMethod):
    """VeRA (Kopiczko et al., ICLR 2024): dW = diag(lambda_b) B diag(lambda_d) A, with A, B frozen random
    matrices shared by all layers (peft draws them for the largest target shape and slices them per layer)
    and only lambda_b (d_out) and lambda_d (r) trained: d_out + r parameters per adapted matrix."""

    settings_class = VeraSettings

    def peft_config(self, layers, total_steps, common):
        s = self.settings
        return VeraConfig(
            r=s.r,
            d_initial=s.d_initial,
            projection_prng_key=s.projection_prng_key,
            save_projection=s.save_projection,
            vera_dropout=s.dropout,
            **common,
        )


@dataclass
class FourierFTSettings(OwnLrSettings):
    n_frequency: int = option(1000, "trained spectral coefficients per adapted matrix (<= d_out * d_in)")
    scaling: float = option(150.0, "scale of dW = scaling * Re(IDFT2(spectrum)), like LoRA's alpha")
    random_loc_seed: int = option(777, "seed of the frequencies' random locations")
    init_zero: bool = option(False, "spectrum starts at 0 (dW = 0); false: N(0, 1) as in the paper")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_frequency >= 1, "n_frequency", self.n_frequency, "set adapter.n_frequency >= 1")
        require(self.scaling > 0, "scaling", self.scaling, "set adapter.scaling > 0")


@register("fourierft")
class FourierFTMethod(OwnLrMethod):
    """FourierFT (Gao et al., ICML 2024): dW = scaling * Re(IDFT2(S)), S a d_out x d_in spectrum zero except at
    n_frequency random locations (shared seed) whose values train: n_frequency parameters per matrix."""

    settings_class = FourierFTSettings

    def peft_config(self, layers, total_steps, common):
        s = self.settings
        smallest, where = min((dims(m)[0] * dims(m)[1], name) for name, m in layers.items())
        if s.n_frequency > smallest:
            raise QpeftError(
                f"adapter.n_frequency={s.n_frequency} exceeds the {smallest} entries of {where}: "
                f"set adapter.n_frequency <= {smallest}"
            )
        return FourierFTConfig(
            n_frequency=s.n_frequency,
            scaling=s.scaling,
            random_loc_seed=s.random_loc_seed,
            init_weights=s.init_zero,
            **common,
        )


@dataclass
class TinyLoraSettings(OwnLrSettings):
    r: int = option(2, "rank of the frozen truncated SVD W ~ U S V^T (<= the smallest target width)")
    u: int = option(64, "trained vector v per group: R = sum_i v_i P_i, P_i fixed random r x r")
    weight_tying: float = option(
        0.0, "share of layers tying one v, in [0, 1]: 0 = one v per layer, 1 = one v"
    )
    projection_seed: int = option(42, "seed of the fixed random projections P")
    save_projection: bool = option(True, "save P with the adapter (else re-drawn from the seed)")
    init: Literal["zeros", "uniform"] = option(
        "zeros", "v at the start: zeros (dW = 0) or uniform(+-init_v_bound)"
    )
    init_v_bound: float = option(0.02, "bound of the uniform start of v")
    dropout: float = option(0.0, "dropout on the adapter input, in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.r >= 1, "r", self.r, "set adapter.r >= 1")
        require(self.u >= 1, "u", self.u, "set adapter.u >= 1")
        check_fraction("weight_tying", self.weight_tying, open_top=False)
        require(self.init_v_bound > 0, "init_v_bound", self.init_v_bound, "set adapter.init_v_bound > 0")
        _check_dropout("dropout", self.dropout)


@register("tinylora")
class TinyLoraMethod(OwnLrMethod):
    """TinyLoRA ("Learning to Reason in 13 Parameters", arXiv:2602.04118; LoRA-XS with a projected core):
    dW = B R A with B = U sqrt(S), A = sqrt(S) V^T from the frozen rank-r SVD of W, R = sum_i v_i P_i. Only v
    trains: u parameters per group of layers, max(1, round(n_layers * (1 - weight_tying))) groups."""

    settings_class = TinyLoraSettings

    def peft_config(self, layers, total_steps, common):
        s = self.settings
        smallest, where = _smallest_width(layers)
        if s.r > smallest:  # peft would silently cut r to the layer's rank
            raise QpeftError(
                f"adapter.r={s.r} is larger than the layer {where} allows ({smallest}): set adapter.r <= {smallest}"
            )
        return TinyLoraConfig(
            r=s.r,
            u=s.u,
            weight_tying=s.weight_tying,
            projection_seed=s.projection_seed,
            save_projection=s.save_projection,
            init_weights=True if s.init == "zeros" else "uniform",
            init_v_bound=s.init_v_bound,
            tinylora_dropout=s.dropout,
            **common,
        )
