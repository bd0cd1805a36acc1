"""Quantum-PEFT adapter: dW = s U diag(lam * mask) V^T, U and V from quantum mappings (docs/method.md).

Batching design. Every adapted matrix i needs U_i (d_out x K) and V_i (d_in x K). All factors of the same
dimension n and rank K, whether they are a U or a V, are rows of one bank: a `PauliStiefel` (or
`TaylorStiefel`) with `batch` = number of such factors, angles (B, P) as ONE parameter. A single `QuantumHub`
module (registered on the root model as `qpeft_adapter`) owns the banks and one lam tensor (M, K) per K.
Once per forward pass of the root model the hub runs each bank once (one batched circuit simulation per
distinct (n, K): two for a BERT-style model with 768 and 3072, whatever the number of layers) and unbinds the
results; each adapted layer then only computes

    y = base(x) + ((dropout(x) @ V_i) * lam_eff_i) @ U_i^T,      lam_eff = s * lam * mask,  s = alpha / K

never forming dW while training. Recomputation is keyed: a forward-pre-hook on the root model starts a new
pass whenever grad is enabled (a fresh graph for every training step); under no_grad the factors are cached
until a parameter or mask changes (its `_version` or storage) or train/eval mode changes. The unbind's
backward is a single stack, so the circuit part has a kernel count independent of the number of matrices.
Not supported: reentrant gradient checkpointing (the cached factors are shared by all layers of a pass).

Masking (`rank_mask`): an int K' keeps lam[:K'] active; "adaptive" is AdaLoRA-style: on_step keeps an EMA
(`mask_beta`) of the sensitivity |lam * grad lam| and, every `mask_interval` steps between `mask_warmup` and
`mask_final` (fractions of total_steps), keeps the globally top-scoring entries, the budget going from K to
`target_rank` per matrix on a cubic schedule; pruned entries stay pruned (their gradient is zero).

Quantisation (`quant_bits`): the gate angle theta/2 (the gates are 4 pi-periodic in theta) on a uniform
n-bit grid over [-pi, pi); "qat" trains through it with a straight-through estimator, "ptq" trains in full
precision; both evaluate, merge and save the quantised angles (the saved file holds `quant_bits` per angle).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qpeft.adapters import freeze_except_head, target_modules
from qpeft.errors import QpeftError
from qpeft.quantum import PauliStiefel, TaylorStiefel, pack_angles, quantize_angles, unpack_angles

HUB = "qpeft_adapter"
PERIOD = 4 * math.pi  # RY(theta) uses theta/2: quantise the rotation angle theta/2 over [-pi, pi)


class AdapterConfigError(QpeftError, ValueError):
    """A quantum adapter setting that cannot work for this model; the message names the setting."""


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return None
    return Conv1D


def _rank(rank, d_out: int, d_in: int, name: str) -> int:
    """K for one matrix: an int <= min(d_out, d_in), or "full" = min(d_out, d_in)."""
    limit = min(d_out, d_in)
    if str(rank) == "full":
        return limit
    if isinstance(rank, str) and rank.isdigit():
        rank = int(rank)
    if not isinstance(rank, int) or rank < 1:
        raise AdapterConfigError(f"adapter.rank={rank!r} is not a positive integer or 'full'")
    if rank > limit:
        raise AdapterConfigError(
            f"adapter.rank={rank} exceeds min(d_out, d_in)={limit} of {name} ({d_out}x{d_in}); "
            f"set adapter.rank <= {limit} or adapter.rank=full"
        )
    return rank


class QuantumHub(nn.Module):
    """All circuit banks and lam tensors of a model; computes every factor once per forward pass."""

    def __init__(self, shapes: list[tuple[int, int, int]], cfg, total_steps: int):
        super().__init__()
        method = cfg.get("method", "quantum")
        if method not in ("quantum", "quantum_taylor"):
            raise AdapterConfigError(
                f"adapter.method={method!r}: this module implements quantum, quantum_taylor"
            )
        self.mapping = "pauli" if method == "quantum" else "taylor"
        self.layers = int(cfg.get("layers", 1))
        self.order = int(cfg.get("order", 8))
        alpha = cfg.get("alpha")
        self.alpha = float(16.0 if alpha is None else alpha)
        self.bits = cfg.get("quant_bits")
        self.bits = None if self.bits is None else int(self.bits)
        self.quant_mode = cfg.get("quant_mode", "qat")
        if self.quant_mode not in ("qat", "ptq"):
            raise AdapterConfigError(f"adapter.quant_mode={self.quant_mode!r}: choose qat or ptq")
        if self.bits is not None and self.mapping != "pauli":
            raise AdapterConfigError(
                "adapter.quant_bits applies to periodic angles: use it with method=quantum"
            )
        init = cfg.get("init", "uniform" if self.mapping == "pauli" else "small")
        self.rank_mask = cfg.get("rank_mask")
        self._target_rank = cfg.get("target_rank")
        self.total_steps = total_steps
        self.mask_opts = {
            k: cfg.get(k, v)
            for k, v in dict(mask_beta=0.85, mask_warmup=0.1, mask_final=0.8, mask_interval=10).items()
        }

        # rows: matrix i -> (bank key, row of U), (bank key, row of V), (lam key, row)
        rows: dict[str, int] = {}
        self.index: list[tuple[str, int, str, int, str, int]] = []
        for d_out, d_in, k in shapes:
            ku, kv, kl = f"n{d_out}_k{k}", f"n{d_in}_k{k}", f"k{k}"
            ru = rows[ku] = rows.get(ku, -1) + 1
            rv = rows[kv] = rows.get(kv, -1) + 1
            rl = rows[kl] = rows.get(kl, -1) + 1
            self.index.append((ku, ru, kv, rv, kl, rl))
        self.banks = nn.ModuleDict()
        for key in sorted({i[0] for i in self.index} | {i[2] for i in self.index}, key=lambda s: (len(s), s)):
            n, k = (int(v) for v in key[1:].split("_k"))
            if self.mapping == "pauli":
                self.banks[key] = PauliStiefel(n, k, self.layers, init=init, batch=rows[key] + 1)
            else:
                self.banks[key] = TaylorStiefel(n, k, self.order, init=init, batch=rows[key] + 1)
        self.lam = nn.ParameterDict()
        self.scale: dict[str, float] = {}
        for key in sorted({i[4] for i in self.index}, key=lambda s: (len(s), s)):
            k = int(key[1:])
            self.lam[key] = nn.Parameter(torch.zeros(rows[key] + 1, k))  # dW = 0: the pretrained function
            self.scale[key] = self.alpha / k
            self.register_buffer(f"mask_{key}", self._initial_mask(rows[key] + 1, k))
            if self.rank_mask == "adaptive":
                self.register_buffer(f"score_{key}", torch.zeros(rows[key] + 1, k))
        self.num_simulations = 0  # circuit (or Taylor) bank evaluations, for tests and benchmarks
        self._gen = 0
        self._key = None
        self._stacked: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None
        self._unbound: dict[torch.dtype, tuple[dict, dict]] = {}
        self._watched: tuple[Tensor, ...] | None = None

    def _apply(self, *args, **kwargs):
        self._watched = None
        return super()._apply(*args, **kwargs)

    def _initial_mask(self, m: int, k: int) -> Tensor:
        mask = torch.ones(m, k)
        if self.rank_mask is None or self.rank_mask == "adaptive":
            return mask
        if isinstance(self.rank_mask, str) and self.rank_mask.isdigit():
            self.rank_mask = int(self.rank_mask)
        if not isinstance(self.rank_mask, int) or not 1 <= self.rank_mask <= k:
            raise AdapterConfigError(
                f"adapter.rank_mask={self.rank_mask!r}: use null, 'adaptive' or an int in 1..{k}"
            )
        mask[:, self.rank_mask :] = 0
        return mask

    def target_rank(self, k: int) -> int:
        """Active entries per matrix that the adaptive mask ends with (adapter.target_rank, default K // 2)."""
        t = self._target_rank
        return min(k, max(1, int(t) if t is not None else k // 2))

    def _quantised(self) -> bool:
        return self.bits is not None and (self.quant_mode == "qat" or not self.training)

    def compute(self, quant: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Run every bank once: {bank: (B, n, K) factors}, {K: (M, K) lam_eff = s * lam * mask}."""
        us = {}
        for key, bank in self.banks.items():
            if self.mapping == "pauli":
                theta = (
                    quantize_angles(bank.theta, self.bits, ste=True, period=PERIOD) if quant else bank.theta
                )
                us[key] = bank(theta)
            else:
                us[key] = bank()
            self.num_simulations += 1
        lams = {key: lam * getattr(self, f"mask_{key}") * self.scale[key] for key, lam in self.lam.items()}
        return us, lams

    def new_pass(self, *_) -> None:
        """Forward-pre-hook of the root model: a pass with grad enabled gets freshly computed factors."""
        if torch.is_grad_enabled():
            self._gen += 1

    def factors(self, i: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(U_i, V_i, lam_eff_i) of matrix i, from this pass's cached batched computation."""
        if self._watched is None:  # parameters and masks; reset by _apply (.to() replaces buffers)
            self._watched = (*self.parameters(), *(getattr(self, f"mask_{k}") for k in self.lam))
        grad = torch.is_grad_enabled()
        key = (
            self._gen if grad else -1,
            grad,
            self.training,
            *[t._version for t in self._watched],
            *[t.data_ptr() for t in self._watched],
        )
        if key != self._key:
            self._stacked, self._unbound, self._key = self.compute(self._quantised()), {}, key
        if dtype not in self._unbound:
            us, lams = self._stacked
            cast = (lambda t: t) if dtype == next(iter(us.values())).dtype else (lambda t: t.to(dtype))
            self._unbound[dtype] = (
                {k: cast(v).unbind(0) for k, v in us.items()},
                {k: cast(v).unbind(0) for k, v in lams.items()},
            )
        us, lams = self._unbound[dtype]
        ku, ru, kv, rv, kl, rl = self.index[i]
        return us[ku][ru], us[kv][rv], lams[kl][rl]


class QuantumLayer(nn.Module):
    """A frozen nn.Linear / GPT-2 Conv1D plus its low-rank quantum update, read from the shared hub."""

    def __init__(self, base: nn.Module, index: int, hub: QuantumHub, dropout: float, fan_in_fan_out: bool):
        super().__init__()
        self.base, self.index, self.fan_in_fan_out = base, index, fan_in_fan_out
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        object.__setattr__(self, "hub", hub)  # a reference, not a submodule: its parameters live once

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.merged:
            return y
        U, V, lam = self.hub.factors(self.index, x.dtype)
        h = (self.drop(x) @ V) * lam  # (..., K): the low-rank path costs what LoRA's does
        # y + h @ U^T as one GEMM with beta=1 (no extra pass over the d_out-wide output)
        return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), U.T).view(y.shape)

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def extra_repr(self) -> str:
        return f"index={self.index}, merged={self.merged}"


def apply(model: nn.Module, cfg, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
    """Freeze the backbone, wrap every target Linear/Conv1D, register the shared hub on the root model."""
    if hasattr(model, HUB):
        raise AdapterConfigError("the model already carries a quantum adapter; build a fresh model")
    freeze_except_head(model, head)
    conv1d = _conv1d_type()
    found = target_modules(model, targets, head)
    specs = []
    for name, mod in found.items():
        if isinstance(mod, nn.Linear):
            d_out, d_in, fifo = mod.out_features, mod.in_features, False
        elif conv1d is not None and isinstance(mod, conv1d):
            (d_in, d_out), fifo = mod.weight.shape, True
        else:
            raise AdapterConfigError(
                f"adapter.targets matched {name} ({type(mod).__name__}); the quantum adapter needs nn.Linear or "
                "Conv1D modules: narrow adapter.targets"
            )
        specs.append((name, mod, d_out, d_in, _rank(cfg.get("rank", 8), d_out, d_in, name), fifo))
    hub = QuantumHub([(o, i, k) for _, _, o, i, k, _ in specs], cfg, total_steps)
    weight = specs[0][1].weight
    hub.to(weight.device)
    model.add_module(HUB, hub)
    dropout = float(cfg.get("dropout", 0.0) or 0.0)
    for i, (name, mod, _, _, _, fifo) in enumerate(specs):
        parent, _, leaf = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model, leaf, QuantumLayer(mod, i, hub, dropout, fifo)
        )
    model.register_forward_pre_hook(hub.new_pass)
    return model


def optimizer_overrides(model: nn.Module, cfg) -> dict[int, dict]:
    """Per-parameter optimiser settings, keyed by id: the circuit parameters (angles, Taylor generators) get
    `circuit_lr` and no weight decay (an angle is periodic: pulling it to 0 has no meaning). Under Adam an
    angle moves about lr radians per step, so at LoRA's lr the circuits barely leave their random start."""
    lr = cfg.get("circuit_lr")
    extra = {"weight_decay": 0.0, **({"lr": float(lr)} if lr is not None else {})}
    return {id(p): extra for p in _hub(model).banks.parameters()}


def _hub(model: nn.Module) -> QuantumHub:
    hub = getattr(model, HUB, None)
    if not isinstance(hub, QuantumHub):
        raise ValueError("model has no quantum adapter: call qpeft.adapters.quantum.apply first")
    return hub


def _layers(model: nn.Module) -> list[QuantumLayer]:
    return [m for m in model.modules() if isinstance(m, QuantumLayer)]


@torch.no_grad()
def merge(model: nn.Module) -> None:
    """Fold s U diag(lam) V^T into each base weight (quantised angles if quant_bits); W0 is kept for unmerge."""
    hub = _hub(model)
    us, lams = hub.compute(hub.bits is not None)
    for layer in _layers(model):
        if layer.merged:
            continue
        ku, ru, kv, rv, kl, rl = hub.index[layer.index]
        dw = (us[ku][ru].float() * lams[kl][rl].float()) @ us[kv][rv].float().T  # (d_out, d_in)
        w = layer.base.weight
        layer._w0 = w.detach().clone()
        w.add_((dw.T if layer.fan_in_fan_out else dw).to(w.dtype))
        layer.merged = True


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    """Restore every merged base weight to its saved W0 exactly."""
    for layer in _layers(model):
        if layer.merged:
            layer.base.weight.copy_(layer._w0)
            del layer._w0
            layer.merged = False


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter alone: angles (bit-packed when quant_bits is set), lam, masks; keys relative to the hub."""
    hub = _hub(model)
    sd: dict[str, Tensor] = {}
    for name, p in hub.named_parameters():
        if hub.bits is not None and name.endswith(".theta"):
            sd[name + ".packed"] = pack_angles(p.detach(), hub.bits, PERIOD)
            sd[name + ".shape"] = torch.tensor(p.shape, dtype=torch.int32)
        else:
            sd[name] = p.detach().cpu().clone()
    for name, b in hub.named_buffers():
        if name.startswith("mask_") and hub.rank_mask is not None:
            sd[name] = b.detach().cpu().bool()
    if hub.bits is not None:
        sd["quant_bits"] = torch.tensor(hub.bits, dtype=torch.uint8)
    return sd


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, sd: dict[str, Tensor]) -> None:
    """Load an adapter_state_dict into a model prepared by apply() with the same settings and targets."""
    hub = _hub(model)
    own = {**dict(hub.named_parameters()), **dict(hub.named_buffers())}
    for name, value in sd.items():
        if name == "quant_bits" or name.endswith(".shape"):
            continue
        if name.endswith(".packed"):
            name = name[: -len(".packed")]
            shape = tuple(sd[name + ".shape"].tolist())
            value = unpack_angles(value, int(sd["quant_bits"]), shape, PERIOD)
        if name not in own or own[name].shape != value.shape:
            got = tuple(own[name].shape) if name in own else "missing"
            raise ValueError(f"adapter state '{name}' {tuple(value.shape)} does not fit this model ({got})")
        own[name].copy_(value.to(own[name].dtype))


def state_bytes(sd: dict[str, Tensor]) -> int:
    """Bytes of the tensors of a state dict (what an adapter file holds, without container overhead)."""
    return sum(t.numel() * t.element_size() for t in sd.values())


def adapter_state_bytes(model: nn.Module) -> int:
    """state_bytes(adapter_state_dict(model)) from shapes alone (works on the meta device too)."""
    hub = _hub(model)
    total = 0
    for name, p in hub.named_parameters():
        if hub.bits is not None and name.endswith(".theta"):
            total += math.ceil(p.numel() * hub.bits / 8) + 4 * p.dim()
        else:
            total += p.numel() * p.element_size()
    if hub.rank_mask is not None:
        total += sum(b.numel() for n, b in hub.named_buffers() if n.startswith("mask_"))
    return total + (hub.bits is not None)


def on_step(model: nn.Module, global_step: int) -> None:
    """Adaptive rank mask: update the sensitivity EMA, and at schedule points re-select the kept lam entries."""
    hub = _hub(model)
    if hub.rank_mask != "adaptive":
        return
    o = hub.mask_opts
    with torch.no_grad():
        for key, lam in hub.lam.items():
            if lam.grad is not None:
                score = getattr(hub, f"score_{key}")
                score.mul_(o["mask_beta"]).add_((lam * lam.grad).abs(), alpha=1 - o["mask_beta"])
        t0, t1 = o["mask_warmup"] * hub.total_steps, o["mask_final"] * hub.total_steps
        if global_step < t0 or global_step > t1 or int(global_step - t0) % int(o["mask_interval"]):
            return
        frac = min(1.0, (global_step - t0) / max(1.0, t1 - t0))
        total = sum(lam.numel() for lam in hub.lam.values())
        final = sum(lam.shape[0] * hub.target_rank(lam.shape[1]) for lam in hub.lam.values())
        budget = round(final + (total - final) * (1 - frac) ** 3)
        keys = list(hub.lam)
        masks = [getattr(hub, f"mask_{k}") for k in keys]
        scores = torch.cat(
            [getattr(hub, f"score_{k}").masked_fill(m == 0, -1.0).flatten() for k, m in zip(keys, masks)]
        )
        keep = torch.zeros_like(scores)
        keep[scores.topk(min(budget, int((scores >= 0).sum()))).indices] = 1
        for m, part in zip(masks, keep.split([m.numel() for m in masks])):
            m.copy_(part.view_as(m))


def record_extra(model: nn.Module) -> dict:
    """Facts for the run record: mapping, L or order, K, matrices, groups, adapter bytes, quantisation, mask."""
    hub = _hub(model)
    ks = sorted({lam.shape[1] for lam in hub.lam.values()})
    masks = [getattr(hub, f"mask_{k}") for k in hub.lam]
    return {
        "mapping": hub.mapping,
        "layers": hub.layers if hub.mapping == "pauli" else None,
        "order": hub.order if hub.mapping == "taylor" else None,
        "rank": ks[0] if len(ks) == 1 else ks,
        "alpha": hub.alpha,
        "adapted_matrices": len(hub.index),
        "circuit_groups": len(hub.banks),
        "adapter_state_bytes": adapter_state_bytes(model),
        "quant_bits": hub.bits,
        "quant_mode": hub.quant_mode if hub.bits is not None else None,
        "rank_mask": hub.rank_mask,
        "active_rank_mean": None if masks[0].is_meta else sum(float(m.sum()) for m in masks) / len(hub.index),
    }
