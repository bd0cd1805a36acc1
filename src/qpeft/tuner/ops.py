"""The autograd ops and product plans of Quantum-PEFT's layers: how dW = U diag(lam) V^T is formed with the
fewest multiply-adds (cheapest_plan, DeltaWeight), and a full-rank layer's low-rank update that saves no more
than its input (FactoredLinear). The folded layer is qpeft.tuner.fold."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from qpeft.quantum import KronSum, PauliCircuit


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on `device`: the factors and dW are float32 products whatever the caller's autocast."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def cheapest_plan(
    d_out: int, d_in: int, k: int, kron_u: KronSum | None, kron_v: KronSum | None
) -> tuple[str, int]:
    """How to form U diag(lam) V^T with the fewest multiply-adds, and that count: the dense d_out x K x d_in
    product, or a Pauli factor's sum of Kronecker products applied to the other factor's (lam-scaled) transpose
    ("u": U applied to lam V^T; "v": V applied to lam U^T, transposed)."""
    costs = {"dense": d_out * k * d_in}
    if kron_u is not None:
        costs["u"] = kron_u.apply_cost(d_in)
    if kron_v is not None:
        costs["v"] = kron_v.apply_cost(d_out)
    how = min(costs, key=costs.get)
    return how, costs[how]


def compute_dtype(dtype: torch.dtype, device: str) -> torch.dtype:
    """The dtype that matmuls of `dtype` inputs on `device` run in: autocast's for float32 / half inputs under
    autocast, else `dtype` itself."""
    if dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return dtype


class DeltaWeight:
    """Forms dW = U diag(lam) V^T from its operands: U's tensors, V's tensors, lam. A factor's tensors are its
    dense (n, K) row (`circuit` None) or the Kronecker factors of its sum (KronSum.xs of one row). `how` is the
    plan (cheapest_plan): apply U's sum to lam V^T ("u"), V's sum to lam U^T ("v"), or the dense product."""

    def __init__(self, how: str, u_circuit: PauliCircuit | None, num_u: int, v_circuit: PauliCircuit | None):
        self.how, self.u_circuit, self.num_u, self.v_circuit = how, u_circuit, num_u, v_circuit

    @staticmethod
    def _kron(circuit: PauliCircuit, ops: tuple[Tensor, ...]) -> KronSum:
        return KronSum(circuit, list(ops), 1)

    def _dense(self, circuit: PauliCircuit | None, ops: tuple[Tensor, ...]) -> Tensor:
        return ops[0] if circuit is None else self._kron(circuit, ops).dense().squeeze(0)

    def _scaled_transpose(self, circuit: PauliCircuit | None, ops: tuple[Tensor, ...], lam: Tensor) -> Tensor:
        """lam[:, None] * F^T (K, n): the operand KronSum.apply takes."""
        if circuit is None:
            return lam[:, None] * ops[0].T
        return self._kron(circuit, ops).dense(scale=lam, transposed=True).squeeze(0)

    def __call__(self, *operands: Tensor) -> Tensor:
        u_ops, v_ops, lam = operands[: self.num_u], operands[self.num_u : -1], operands[-1]
        if self.how == "u":
            lam_vt = self._scaled_transpose(self.v_circuit, v_ops, lam)
            return self._kron(self.u_circuit, u_ops).apply(lam_vt[None]).squeeze(0)
        if self.how == "v":
            lam_ut = self._scaled_transpose(self.u_circuit, u_ops, lam)
            return self._kron(self.v_circuit, v_ops).apply(lam_ut[None]).squeeze(0).T
        return (self._dense(self.u_circuit, u_ops) * lam) @ self._dense(self.v_circuit, v_ops).T


class FactoredLinear(torch.autograd.Function):
    """y = x W^T + b + ((x V) diag(lam)) U^T, or `result` + the update when the base layer ran on its own,
    saving for backward only what the GEMMs' input gradients need: x, U, V, lam, and W as the parameter itself.

    x, U and V come in the GEMM dtype (autocast's or the weights'): the hub casts each bank once per pass, and
    x once per pass for all the layers that read it (query, key and value: QuantumHub.cast_input), where peft's
    LoRA layers save a copy each. Plain autograd would save more, all of it per layer:

    - x V (T x K) for U's and lam's gradients: at full rank as large as x. It is formed again in backward
      instead: one more GEMM.
    - the bf16 copy of W that autocast makes for the input gradient. W is cast again in backward instead: one
      elementwise op per layer.

    lam multiplies U (U diag(lam) formed in float32, rounded once), not the (T, K) product, and its gradient is
    sum_o (g^T x V)[o, k] U[o, k], summed in float32: no (T, K) elementwise op either way. Every operand is cast
    explicitly, so an enclosing autocast changes nothing (and is not switched off: host time per layer)."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        result: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        u: Tensor,
        v: Tensor,
        lam: Tensor,
    ) -> Tensor:
        ctx.x_shape = x.shape
        dtype = x.dtype
        flat = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(flat, weight, u, v, lam)
        if result is None:  # the base layer too: linear(x, W, b) as autocast runs it
            w = weight.to(dtype)
            base = flat @ w.T if bias is None else torch.addmm(bias.to(dtype), flat, w.T)
        else:
            base = result.reshape(-1, result.shape[-1])
        # U diag(lam) in float32 (u is promoted), rounded once
        out = torch.addmm(base, (flat @ v).to(base.dtype), (u * lam).T.to(base.dtype))
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        flat, weight, u, v, lam = ctx.saved_tensors
        needs_x, needs_result, needs_w, needs_b, needs_u, needs_v, needs_lam = ctx.needs_input_grad
        grad_x = grad_w = grad_b = grad_u = grad_v = grad_lam = None
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(flat.dtype)
        if needs_u or needs_lam:
            gh = g.T @ (flat @ v)  # (d_out, K): x V formed again
            grad_u = (gh * lam).to(u.dtype) if needs_u else None
            if needs_lam:  # summed in lam's dtype (float32 at least: gh is bf16 under autocast)
                grad_lam = (gh.to(torch.promote_types(lam.dtype, torch.float32)) * u).sum(0)
        if needs_x or needs_v:
            dh = g @ (u * lam).to(flat.dtype)  # (T, K): the gradient of x V
            grad_v = flat.T @ dh if needs_v else None
            if needs_x:  # W cast again rather than saved
                grad_x = dh @ v.T if weight is None else torch.addmm(g @ weight.to(flat.dtype), dh, v.T)
                grad_x = grad_x.view(ctx.x_shape)
        if needs_w:
            grad_w = (g.T @ flat).to(weight.dtype)
        if needs_b:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_out if needs_result else None, grad_w, grad_b, grad_u, grad_v, grad_lam
