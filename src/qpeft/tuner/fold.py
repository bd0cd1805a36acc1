"""The fold: a layer runs x (W + dW)^T + b, its update folded into the weight, where that costs fewer flops
than the low-rank path (a wide K on a large batch), in float32 / float64 without autocast. `QuantumConfig.fold`
chooses it ("float32", the default) or not ("never"); `pays` is the one predicate a layer asks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from qpeft.tuner.ops import DeltaWeight, no_autocast

if TYPE_CHECKING:
    from qpeft.tuner.layer import QuantumLinear
    from qpeft.tuner.state import QuantumAdapterState

FULL = (torch.float32, torch.float64)


def allowed(state: QuantumAdapterState, weight_dtype: torch.dtype | None) -> bool:
    """Whether the adapter's layers may fold in this pass: grad enabled (under no_grad the hub's cached dW is
    added to W instead), `fold` not "never", float32 / float64 weights and adapter, no autocast, no dropout."""
    lam = next(iter(state.lam.values()))
    return (
        torch.is_grad_enabled()
        and state.config.fold != "never"
        and lam.dtype in FULL
        and weight_dtype in (*FULL, None)
        and not torch.is_autocast_enabled(lam.device.type)
        and state.config.dropout == 0
    )


def pays(layer: QuantumLinear, x: Tensor, name: str) -> bool:
    """Whether layer's adapter `name` folds for input x: x (W + dW)^T costs fewer flops than
    x W^T + (x (V diag(lam))) U^T, forward and backward.

    The low-rank path costs 3 T K (d_in + d_out) multiply-adds for T rows (three GEMMs of each factor's size; a
    full-rank matrix's FactoredLinear forms x V once more, T K d_in); forming dW costs 4 P (dW, formed again in
    backward, and its two factor gradients; P = d_out K d_in for the dense product, far less when a Pauli factor
    is applied as its sum of Kronecker products) and its gradient g^T x T d_out d_in. So a wide K (full rank) on
    a large batch folds; a LoRA-like K never does. Only where `allowed`, for x in the weight's dtype, and for a
    plain nn.Linear or Conv1D (QuantumLinear.plain_base)."""
    weight, state = layer.base_layer.weight, layer.hub.quantum_adapters[name]
    if state.config.fold == "never" or weight.dtype not in FULL or x.dtype != weight.dtype:
        return False
    if torch.is_autocast_enabled(x.device.type) or not layer.plain_base(name):
        return False
    row = layer.quantum_row[name]
    k, _, product = layer.hub.product_plan(name, row)
    rows, d_in, d_out = x.numel() // layer.in_features, layer.in_features, layer.out_features
    low_rank = 3 * rows * k * (d_in + d_out) + (rows * k * d_in if state.full_rank(row) else 0)
    return low_rank > 4 * product + rows * d_out * d_in


def forward(layer: QuantumLinear, x: Tensor, name: str) -> Tensor:
    """The layer with W + s U diag(lam) V^T as its weight: equal to the low-rank path up to rounding. dW is
    formed from the hub's tensors of this pass and formed again in backward (FoldedLinear), not saved; under
    no_grad the hub's cached dW serves every batch."""
    base, row = layer.base_layer, layer.quantum_row[name]
    weight = (
        base.weight.T if layer.fan_in_fan_out else base.weight
    )  # (d_out, d_in); Conv1D stores (d_in, d_out)
    if not torch.is_grad_enabled():
        return nn.functional.linear(x, weight + layer.hub.delta_weight(name, row), base.bias)
    build, operands = layer.hub.delta_weight_operands(name, row)
    return FoldedLinear.apply(x, weight, base.bias, build, *operands)


class FoldedLinear(torch.autograd.Function):
    """y = x (W + dW)^T + b with dW = build(*operands), formed again in backward rather than saved.

    Autograd through `linear(x, W + build(...))` would keep W + dW and the product's intermediates for backward:
    about two weight-sized tensors per layer. This saves what a trainable nn.Linear saves (x; W and the small
    operands are alive anyway) and pays for it with forming dW twice (docs/method.md section 4 has the measured
    cost). x, W and dW share one dtype, float32 or float64 (`pays`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, build: DeltaWeight, *operands: Tensor):
        ctx.build = build
        ctx.save_for_backward(x, weight, *operands)
        return nn.functional.linear(x, weight + build(*operands), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight, *operands = ctx.saved_tensors
        trains = ctx.needs_input_grad[4:]
        with torch.enable_grad(), no_autocast(x.device):
            leaves = [op.detach().requires_grad_(t) for op, t in zip(operands, trains)]
            dw = ctx.build(*leaves)
        with no_autocast(x.device):
            g = grad_out.reshape(-1, grad_out.shape[-1])
            grad_x = (g @ (weight + dw.detach())).view(x.shape) if ctx.needs_input_grad[0] else None
            grad_dw = g.T @ x.reshape(-1, x.shape[-1])
            grad_b = g.sum(0) if ctx.needs_input_grad[2] else None
            trained = [leaf for leaf in leaves if leaf.requires_grad]
            grads = iter(torch.autograd.grad(dw, trained, grad_dw) if trained else ())
        grad_ops = [next(grads) if t else None for t in trains]
        grad_w = grad_dw if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, grad_b, None, *grad_ops
