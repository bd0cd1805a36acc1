"""QuantumLinear: a frozen nn.Linear or GPT-2 Conv1D plus s U diag(lam) V^T, its factors read from the
model's QuantumHub (qpeft.tuner.hub)."""

from __future__ import annotations

import warnings

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from qpeft.tuner import fold
from qpeft.tuner.config import QuantumConfig
from qpeft.tuner.hub import QuantumHub
from qpeft.tuner.ops import FactoredLinear, compute_dtype

# the forwards that compute x W^T + b alone: a layer running one may have its GEMM computed by the adapter
_GEMM_FORWARDS = (nn.Linear.forward, Conv1D.forward)


def _add_into(weight: Tensor, dw: Tensor, sign: int) -> None:
    """weight += sign * dW in place, the sum formed in the wider dtype and rounded once (a float32 dW into a
    half-precision weight goes through one temporary; float32 into float32 through none)."""
    if torch.promote_types(weight.dtype, dw.dtype) == weight.dtype:
        weight.add_(dw, alpha=sign)
    else:
        weight.copy_((weight.to(dw.dtype) + sign * dw).to(weight.dtype))


class QuantumLinear(nn.Module, BaseTunerLayer):
    """A frozen nn.Linear or GPT-2 Conv1D plus s U diag(lam) V^T, its factors read from the hub."""

    adapter_layer_names = ("quantum_dropout",)
    other_param_names = ("quantum_row",)

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, hub: QuantumHub, config: QuantumConfig, row: int
    ):
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.quantum_dropout = nn.ModuleDict()
        self.quantum_row: dict[str, int] = {}  # adapter -> matrix index in the hub's adapter state
        self.merged_adapters = []
        self._disable_adapters = False
        self._active_adapter = adapter_name
        self.fan_in_fan_out = config.fan_in_fan_out
        weight = base_layer.weight
        self.out_features, self.in_features = weight.shape[::-1] if self.fan_in_fan_out else weight.shape
        object.__setattr__(self, "hub", hub)  # a reference, not a submodule: the hub's state lives once
        self._w0: Tensor | None = None
        self.update_layer(adapter_name, config, row)

    def update_layer(self, adapter_name: str, config: QuantumConfig, row: int) -> None:
        """Adapt this layer by `adapter_name`: its factors are matrix `row` of that adapter's state in the hub."""
        self.quantum_dropout[adapter_name] = (
            nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        )
        self.quantum_row[adapter_name] = row

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """dW in the layout of the base weight (transposed for Conv1D), float32 (float64 for a float64 model)."""
        state = self.hub.quantum_adapters[adapter_name]
        with torch.no_grad():  # with the quantised angles when quant_bits is set (what is saved)
            dw = self.hub.delta_weight(
                adapter_name, self.quantum_row[adapter_name], quantise=state.config.quant_bits is not None
            )
        return dw.T if self.fan_in_fan_out else dw

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or given) adapters' dW to the base weight in place; unmerge subtracts it again, as
        peft's LoRA does (W0 back up to rounding). With safe_merge the merged weight is formed on a copy and
        checked for NaNs first, and W0 is kept, so that unmerge restores it exactly."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        for name in adapter_names:
            if name not in self.quantum_row:
                continue
            with torch.no_grad():
                dw = self.get_delta_weight(name).to(weight.device)
                if safe_merge:
                    new = weight.to(torch.promote_types(weight.dtype, dw.dtype)) + dw  # float64 stays float64
                    if not torch.isfinite(new).all():
                        raise ValueError(
                            f"NaNs detected in the merged weights. The adapter {name} seems to be broken"
                        )
                    if self._w0 is None:
                        self._w0 = weight.detach().clone()
                    weight.copy_(new.to(weight.dtype))
                else:
                    _add_into(weight, dw, 1)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        weight = self.get_base_layer().weight
        with torch.no_grad():
            if self._w0 is not None:  # a safe merge: W0 exactly
                weight.copy_(self._w0)
            else:
                for name in reversed(self.merged_adapters):
                    _add_into(weight, self.get_delta_weight(name).to(weight.device), -1)
        self._w0 = None
        self.merged_adapters = []

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        return self._forward_adapted(x, *args, **kwargs)

    # Run eagerly under torch.compile (a graph break; ~0.3 us per call otherwise): the hub's per-pass caches,
    # keyed by matrix row and input tensor, would make Dynamo recompile this frame for every layer and pass until
    # its recompile limit, after which it runs eagerly anyway. The model around the layers still compiles.
    @torch.compiler.disable
    def _forward_adapted(self, x: Tensor, *args, **kwargs) -> Tensor:
        self.hub.check_not_reentrant()
        active = [name for name in self.active_adapters if name in self.quantum_row]
        if len(active) == 1 and fold.pays(self, x, active[0]):
            return fold.forward(self, x, active[0])
        dtype = compute_dtype(x.dtype, x.device.type)
        if len(active) == 1 and self.plain_base(active[0]):
            name = active[0]
            x_c = self.hub.cast_input(x, dtype)  # shared with the other layers that read x
            U, V, lam = self.hub.low_rank_factors(name, self.quantum_row[name], dtype)
            if lam is not None:  # full rank: the base GEMM in the same op (x V and a bf16 W are not saved)
                weight = self.base_layer.weight.T if self.fan_in_fan_out else self.base_layer.weight
                return FactoredLinear.apply(x_c, None, weight, self.base_layer.bias, U, V, lam)
            return self._add_narrow(self.base_layer(x_c, *args, **kwargs), x_c, U, V)
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            U, V, lam = self.hub.low_rank_factors(name, self.quantum_row[name], dtype)
            dropout = self.quantum_dropout[name]  # (not called when Identity: host time per layer)
            x_c = self.hub.cast_input(x if isinstance(dropout, nn.Identity) else dropout(x), dtype)
            if lam is None:
                result = self._add_narrow(result, x_c, U, V)
            else:
                result = FactoredLinear.apply(x_c, result, None, None, U, V, lam)
        return result

    @staticmethod
    def _add_narrow(result: Tensor, x: Tensor, U: Tensor, V: Tensor) -> Tensor:
        """result + (x V) U^T, V carrying lam, as one GEMM with beta=1 (no extra pass over the d_out-wide output).
        Plain autograd: it saves x V, (T, K), which for a narrow K costs less than FactoredLinear's host time."""
        h = x @ V
        flat = torch.addmm(
            result.reshape(-1, result.shape[-1]),
            h.reshape(-1, h.shape[-1]).to(result.dtype),
            U.T.to(result.dtype),
        )
        return flat.view(result.shape)

    def plain_base(self, name: str) -> bool:
        """Whether calling the base layer would compute x W^T + b and nothing else, and the adapter reads the same
        input (no dropout): then the adapted layer may compute the base GEMM itself. So the base layer runs
        nn.Linear's or GPT-2 Conv1D's own forward (not a subclass's: a quantised or otherwise special Linear keeps
        its forward), and has no hooks of its own and no forward replaced on the instance (accelerate's
        offloading does that), which calling it would run. Global module hooks (`register_module_forward_hook`)
        are not looked for: they see the adapted layer, not its base layer, where the GEMM is taken over."""
        base = self.base_layer
        if not isinstance(self.quantum_dropout[name], nn.Identity) or base.weight.dim() != 2:
            return False
        if type(base).forward not in _GEMM_FORWARDS or "forward" in base.__dict__:
            return False
        return not (
            base._forward_hooks or base._forward_pre_hooks or base._backward_hooks or base._backward_pre_hooks
        )

    def __repr__(self) -> str:
        return "quantum." + super().__repr__()
