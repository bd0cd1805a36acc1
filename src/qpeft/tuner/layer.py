"""The adapted layer and the per-model hub that computes every layer's factors in a few batched simulations.

peft's tuners keep an adapter's weights in each layer. Quantum-PEFT's factors are cheapest when all factors of
one dimension n and rank K are simulated together: one circuit bank per distinct (n, K) holds them all as
rows of one (B, P) angle tensor. So an adapter's trainable state (banks, lam, masks) lives in one
`QuantumAdapterState` held by a `QuantumHub` (a submodule of the adapted model, `qpeft_hub`), and each
`QuantumLinear` only knows its rows. The hub computes all factors of the active adapters once per forward
pass of the model (a forward-pre-hook on it): with grad enabled a fresh graph every pass; under no_grad a
cache, kept until a parameter or mask changes or train/eval mode changes. Computing in the pre-hook, before
any layer runs, keeps the factors outside gradient-checkpointed blocks, so non-reentrant checkpointing
recomputes a block with the very same factor tensors and gives the same gradients. A bank whose matrices are
all full rank is built differently while training: the pre-hook computes its sums of Kronecker products, and
each layer builds from them only the factor its folded update needs (an op of the layer, so a checkpointed
block recomputes it); or, when the layers do not fold (under autocast), the pre-hook forms the bank from the
sums, cast to the GEMM dtype, keeping no float32 copy, and each layer runs as one autograd op that saves no
more than its input (_FactoredLinear).
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from qpeft.errors import QpeftError
from qpeft.quantum import (
    KronSum,
    PauliCircuit,
    PauliStiefel,
    TaylorStiefel,
    pack_angles,
    quantize_angles,
    unpack_angles,
)
from qpeft.tuner.config import QuantumConfig

HUB = "qpeft_hub"  # attribute of the adapted model that holds the hub (no "quantum_": peft skips those names)
PERIOD = 4 * math.pi  # RY(theta) uses theta/2: the rotation angle theta/2 is quantised over [-pi, pi)


# the forwards that compute x W^T + b alone: a layer running one may have its GEMM computed by the adapter
_GEMM_FORWARDS = (nn.Linear.forward, Conv1D.forward)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on `device`: the factors and dW are float32 products whatever the caller's autocast."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _product_plan(
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


def _compute_dtype(dtype: torch.dtype, device: str) -> torch.dtype:
    """The dtype that matmuls of `dtype` inputs on `device` run in: autocast's for float32 / half inputs under
    autocast, else `dtype` itself."""
    if dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return dtype


class _DeltaWeight:
    """Forms dW = U diag(lam) V^T from its operands: U's tensors, V's tensors, lam. A factor's tensors are its
    dense (n, K) row (`circuit` None) or the Kronecker factors of its sum (KronSum.xs of one row). `how` is the
    plan (_product_plan): apply U's sum to lam V^T ("u"), V's sum to lam U^T ("v"), or the dense product."""

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


class _FoldedLinear(torch.autograd.Function):
    """y = x (W + dW)^T + b with dW = build(*operands), formed again in backward rather than saved.

    Autograd through `linear(x, W + build(...))` would keep W + dW and the product's intermediates for backward:
    about two weight-sized tensors per layer, 1.6x LoRA's step peak memory on DeBERTaV3-base at full rank. This
    saves what a trainable nn.Linear saves (x; W and the small operands are alive anyway) and pays for it with
    forming dW twice (docs/method.md section 4 has the measured cost).

    The GEMMs run in `dtype`: the weights' own, or autocast's, into which W + dW (float32) is cast once per
    pass and direction, as AMP casts a float32 master weight; dW and its gradient stay float32."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        dtype: torch.dtype,
        build: _DeltaWeight,
        *operands: Tensor,
    ) -> Tensor:
        ctx.build, ctx.x_dtype = build, x.dtype
        with _no_autocast(x.device):
            x = x.to(dtype)
            ctx.save_for_backward(x, weight, *operands)
            folded = (weight + build(*operands)).to(dtype)
            return nn.functional.linear(x, folded, None if bias is None else bias.to(dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight, *operands = ctx.saved_tensors
        trains = ctx.needs_input_grad[5:]
        with torch.enable_grad(), _no_autocast(x.device):
            leaves = [op.detach().requires_grad_(t) for op, t in zip(operands, trains)]
            dw = ctx.build(*leaves)
        with _no_autocast(x.device):
            flat = grad_out.reshape(-1, grad_out.shape[-1])
            g = flat.to(x.dtype)
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (g @ (weight + dw.detach()).to(x.dtype)).view(x.shape).to(ctx.x_dtype)
            grad_dw = (g.T @ x.reshape(-1, x.shape[-1])).to(dw.dtype)
            grad_b = flat.sum(0) if ctx.needs_input_grad[2] else None
            trained = [leaf for leaf in leaves if leaf.requires_grad]
            grads = iter(torch.autograd.grad(dw, trained, grad_dw) if trained else ())
        grad_ops = [next(grads) if t else None for t in trains]
        grad_w = grad_dw.to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, grad_b, None, None, *grad_ops


class _FactoredLinear(torch.autograd.Function):
    """y = x W^T + b + ((x V) diag(lam)) U^T, or `result` + the update when the base layer ran on its own,
    saving for backward only what the GEMMs' input gradients need: x, U, V, lam, and W as the parameter itself.

    x, U and V come in the GEMM dtype (autocast's or the weights'): the hub casts each bank once per pass, and
    x once per pass for all the layers that read it (query, key and value: QuantumHub.cast_input), where peft's
    LoRA layers save a copy each. Plain autograd would save more, all of it per layer:

    - x V (T x K) for U's and lam's gradients: at full rank as large as x (453 MB on DeBERTaV3-base at batch
      32 x 128 in bf16). It is formed again in backward instead: one more GEMM.
    - the bf16 copy of W that autocast makes for the input gradient (the frozen weights: 170 MB there). W is
      cast again in backward instead: one elementwise op per layer.

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


class QuantumAdapterState(nn.Module):
    """The trainable state of one adapter: a circuit bank per distinct (n, K), lam (M, K) and a mask per K.

    Matrix i of the adapter reads row `index[i]` = (U bank, U row, V bank, V row, lam key, lam row).
    """

    def __init__(self, config: QuantumConfig, shapes: list[tuple[int, int, int]]):
        super().__init__()
        self.config = config
        self.shapes = shapes  # (d_out, d_in, K) per matrix
        rows: dict[str, int] = {}
        self.index: list[tuple[str, int, str, int, str, int]] = []
        for d_out, d_in, k in shapes:
            ku, kv, kl = f"n{d_out}_k{k}", f"n{d_in}_k{k}", f"k{k}"
            ru = rows[ku] = rows.get(ku, -1) + 1
            rv = rows[kv] = rows.get(kv, -1) + 1
            rl = rows[kl] = rows.get(kl, -1) + 1
            self.index.append((ku, ru, kv, rv, kl, rl))
        # banks whose every matrix is full rank: with grad enabled their factors are built per matrix, and only
        # the side a folded update needs (QuantumHub.delta_weight); the others are built batched, once per pass
        partial = {
            key for (d_out, d_in, k), i in zip(shapes, self.index) if k < min(d_out, d_in) for key in i[:3:2]
        }
        self.full_rank_banks = {key for i in self.index for key in i[:3:2]} - partial
        by_size = {"key": lambda s: (len(s), s)}
        self.banks = nn.ModuleDict()
        for key in sorted({i[0] for i in self.index} | {i[2] for i in self.index}, **by_size):
            n, k = (int(v) for v in key[1:].split("_k"))
            if config.mapping == "pauli":
                self.banks[key] = PauliStiefel(n, k, config.layers, init=config.init, batch=rows[key] + 1)
            else:
                self.banks[key] = TaylorStiefel(n, k, config.order, init=config.init, batch=rows[key] + 1)
        self.lam = nn.ParameterDict()
        # s of each lam row, (M, 1) float64 (cast to the compute dtype), from the shapes alone (not saved: the
        # config rebuilds it); kept off the module's buffers so that casting the adapter to half precision leaves
        # s exact
        row_scales: dict[str, list[float]] = {}
        for (d_out, _, k), (*_, kl, _) in zip(shapes, self.index):
            row_scales.setdefault(kl, []).append(config.scale(k, d_out))
        self.scale: dict[str, Tensor] = {}
        self._scales: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}  # _scale_on's casts
        # per narrow bank with V rows: (lam key, the lam row of each bank row; U rows point one past the end, at a
        # row of ones): there lam is folded into the V factors in one op per bank (QuantumHub._low_rank_banks)
        owners: dict[str, tuple[str, dict[int, int]]] = {}  # V bank -> (its lam key, {bank row: lam row})
        for *_, kv, rv, kl, rl in self.index:
            owners.setdefault(kv, (kl, {}))[1][rv] = rl
        self.lam_rows: dict[str, tuple[str, Tensor]] = {
            key: (kl, torch.tensor([lam_of.get(r, rows[kl] + 1) for r in range(rows[key] + 1)]))
            for key, (kl, lam_of) in owners.items()
        }
        for key in sorted({i[4] for i in self.index}, **by_size):
            m, k = rows[key] + 1, int(key[1:])
            lam = torch.zeros(m, k) if config.init_weights else torch.randn(m, k) * 0.1
            self.lam[key] = nn.Parameter(lam)  # zeros: dW = 0, exactly the pretrained function
            self.scale[key] = torch.tensor(row_scales[key], dtype=torch.float64).view(m, 1)
            mask = torch.ones(m, k)
            if isinstance(config.rank_mask, int):
                if config.rank_mask > k:
                    raise QpeftError(f"QuantumConfig.rank_mask={config.rank_mask} exceeds the rank K={k}")
                mask[:, config.rank_mask :] = 0
            # saved with the adapter only when masking is on (otherwise all ones)
            self.register_buffer(f"mask_{key}", mask, persistent=config.rank_mask is not None)
            if config.rank_mask == "adaptive":
                self.register_buffer(f"score_{key}", torch.zeros(m, k), persistent=False)
        self.num_simulations = 0  # bank evaluations, for tests and benchmarks
        if config.quant_bits is not None:
            self._add_packed_angles()

    def _add_packed_angles(self) -> None:
        """With quant_bits, each Pauli bank also carries its angles bit-packed (`theta_packed`, `theta_shape`):
        what the adapter file stores in place of `theta`. As buffers of the model they load by any loader that
        fills the model's state dict by name (transformers' load_adapter too); `sync_packed_angles` then takes
        newly loaded codes into `theta`. They are refreshed from `theta` whenever a state dict is taken."""
        for bank in self.banks.values():
            theta = bank.theta
            numel_bytes = math.ceil(theta.numel() * self.config.quant_bits / 8)
            packed = torch.zeros(numel_bytes, dtype=torch.uint8)
            if not theta.is_meta:
                packed = pack_angles(theta.detach(), self.config.quant_bits, PERIOD).to(theta.device)
            bank.register_buffer("theta_packed", packed)
            bank.register_buffer("theta_shape", torch.tensor(theta.shape, dtype=torch.int32))
        self._packed_seen = self._packed_marks()
        self.register_state_dict_pre_hook(self._refresh_packed_angles)

    def _packed_marks(self) -> dict[str, tuple[int, int]]:
        return {k: (b.theta_packed._version, b.theta_packed.data_ptr()) for k, b in self.banks.items()}

    @torch.no_grad()
    def _refresh_packed_angles(self, module: nn.Module, prefix: str, keep_vars: bool) -> None:
        for bank in self.banks.values():
            if not bank.theta.is_meta and not bank.theta_packed.is_meta:
                codes = pack_angles(bank.theta.detach(), self.config.quant_bits, PERIOD)
                bank.theta_packed.copy_(codes.to(bank.theta_packed.device))
        self._packed_seen = self._packed_marks()

    @torch.no_grad()
    def sync_packed_angles(self) -> None:
        """If a loader wrote new packed codes (and not the matching angles), set `theta` to their grid angles."""
        if self.config.quant_bits is None:
            return
        marks = self._packed_marks()
        for key, bank in self.banks.items():
            if marks[key] == self._packed_seen.get(key) or bank.theta.is_meta or bank.theta_packed.is_meta:
                continue
            bits, packed = self.config.quant_bits, bank.theta_packed.cpu()
            if not torch.equal(pack_angles(bank.theta.detach(), bits, PERIOD), packed):
                angles = unpack_angles(packed, bits, tuple(bank.theta.shape), PERIOD)
                bank.theta.copy_(angles.to(bank.theta.device, bank.theta.dtype))
        self._packed_seen = self._packed_marks()

    @property
    def is_meta(self) -> bool:
        return any(p.is_meta for p in self.parameters())

    def mask(self, key: str) -> Tensor:
        return getattr(self, f"mask_{key}")

    def watched(self) -> tuple[Tensor, ...]:
        """Tensors whose change invalidates cached factors."""
        return (*self.parameters(), *(self.mask(k) for k in self.lam))

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the factors and dW are computed in: float64 for an adapter of a float64 model (its
        parameters take the base weight's dtype), float32 for any other (float32, or half precision)."""
        lam = next(iter(self.lam.values()))
        return torch.float64 if lam.dtype == torch.float64 else torch.float32

    def compute(self, quantise: bool) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, KronSum]]:
        """Run the banks once, in `compute_dtype` (float32; float64 for a float64 adapter) with autocast off:
        {bank: (B, n, K)} (not the full-rank Pauli banks: their users build what they need from the sums),
        {K: (M, K) s * lam * mask}, and {bank: its circuits as a sum of Kronecker products} (Pauli)."""
        device = next(iter(self.lam.values())).device
        work = self.compute_dtype
        us, sums = {}, {}
        with _no_autocast(device):
            for key, bank in self.banks.items():
                if self.config.mapping == "pauli":
                    theta = bank.theta.to(device, work)
                    if quantise:
                        theta = quantize_angles(theta, self.config.quant_bits, ste=True, period=PERIOD)
                    circuit = bank.circuit
                    # n = 1 (a Conv1D with one output): no wires, no angles (theta is a buffer), U = [[1]]
                    if not circuit.dims:
                        us[key] = theta.new_ones(len(theta), 1, 1)
                    else:
                        # the sum builds U when it pays, and serves folded updates (QuantumHub.delta_weight):
                        # full-rank layers while training, and any merge or no_grad pass (cached there)
                        if circuit.kron_pays or key in self.full_rank_banks or not torch.is_grad_enabled():
                            sums[key] = circuit.kron_sum(theta)
                        if key not in self.full_rank_banks:
                            us[key] = sums[key].dense() if circuit.kron_pays else circuit.simulate(theta)
                else:
                    # (on its device already, unless all of it is empty buffers)
                    us[key] = bank(work).to(device)
                self.num_simulations += 1
            lams = {
                k: lam.to(work) * self.mask(k).to(work) * self._scale_on(k, device, work)
                for k, lam in self.lam.items()
            }
        return us, lams, sums

    def _scale_on(self, key: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The (M, 1) per-row s of lam bank `key` on `device` in `dtype` (made once, not every pass)."""
        cast = self._scales.get((key, device, dtype))
        if cast is None:
            cast = self._scales[key, device, dtype] = self.scale[key].to(device, dtype)
        return cast

    def full_rank(self, row: int) -> bool:
        """Whether matrix `row` reads full-rank banks only (then its layer applies lam itself: _FactoredLinear)."""
        ku, _, kv, *_ = self.index[row]
        return ku in self.full_rank_banks and kv in self.full_rank_banks

    def lam_of_rows(self, key: str, lams: dict[str, Tensor]) -> Tensor:
        """(B, 1, K): for each row of bank `key`, the lam_eff of the matrix whose V it is, ones for U rows."""
        kl, rows = self.lam_rows[key]
        lam = lams[kl]
        if rows.device != lam.device:  # moved once, not every pass
            rows = rows.to(lam.device)
            self.lam_rows[key] = (kl, rows)
        return torch.cat([lam, lam.new_ones(1, lam.shape[1])]).index_select(0, rows)[:, None]

    @torch.no_grad()
    def update_rank_mask(self, global_step: int) -> None:
        """Adaptive mask (AdaLoRA-style): EMA of |lam * grad lam|, and on the schedule keep the top entries.

        Call after backward and before zero_grad. The budget falls from K to `target_rank` per matrix on average
        along AdaLoRA's cubic schedule between `mask_warmup` and `mask_final` (fractions of `total_step`);
        pruned entries stay pruned (their gradient is zero)."""
        c = self.config
        if c.rank_mask != "adaptive":
            return
        for key, lam in self.lam.items():
            if lam.grad is not None:
                score = getattr(self, f"score_{key}")
                score.mul_(c.mask_beta).add_((lam * lam.grad).abs(), alpha=1 - c.mask_beta)
        t0, t1 = c.mask_warmup * c.total_step, c.mask_final * c.total_step
        if global_step < t0 or global_step > t1 or int(global_step - t0) % int(c.mask_interval):
            return
        frac = min(1.0, (global_step - t0) / max(1.0, t1 - t0))
        total = sum(lam.numel() for lam in self.lam.values())
        final = sum(lam.shape[0] * self.target_rank(lam.shape[1]) for lam in self.lam.values())
        budget = round(final + (total - final) * (1 - frac) ** 3)
        keys = list(self.lam)
        masks = [self.mask(k) for k in keys]
        scores = torch.cat(
            [getattr(self, f"score_{k}").masked_fill(m == 0, -1.0).flatten() for k, m in zip(keys, masks)]
        )
        keep = torch.zeros_like(scores)
        keep[scores.topk(min(budget, int((scores >= 0).sum()))).indices] = 1
        for m, part in zip(masks, keep.split([m.numel() for m in masks])):
            m.copy_(part.view_as(m))

    def target_rank(self, k: int) -> int:
        t = self.config.target_rank
        return min(k, max(1, int(t) if t is not None else k // 2))


class QuantumHub(nn.Module, BaseTunerLayer):
    """Owns every adapter's state (`quantum_adapters[name]`) and computes the factors once per forward pass."""

    adapter_layer_names = ("quantum_adapters",)

    def __init__(self, adapter_name: str):
        nn.Module.__init__(self)
        self.quantum_adapters = nn.ModuleDict()
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self._disable_adapters = False
        # adapter -> layers in injection order, until its state is built (rows follow this order)
        self.pending: dict[str, list[tuple[QuantumLinear, int, int, int]]] = {}
        self._pass = 0  # counts forward passes with grad enabled
        self._pass_grad = False  # was grad enabled when the current forward pass began?
        self._base_dtype: torch.dtype | None = None  # of the model's frozen weights, seen when a pass begins
        self._cache: dict[str, tuple[tuple, tuple, dict]] = {}
        # adapter -> (grad enabled, its _factors) for the forward pass under way: set by begin_pass, cleared by
        # end_pass, so that the model's layers skip re-validating the cache (a walk over its parameters) each
        self._live: dict[str, tuple[bool, tuple]] = {}
        # id(x) -> (a weak reference to x, its version, x cast to the GEMM dtype), for the pass under way
        self._casts: dict[int, tuple[weakref.ref, int, Tensor]] = {}
        self._depth = 0  # open forward_pass scopes: nested ones (PeftModel's, then the model's hook) join
        self.in_features = self.out_features = None  # a tuner layer that wraps no layer

    def _apply(self, *args, **kwargs):
        self._cache, self._live, self._casts = {}, {}, {}  # .to() / .float() replace tensors
        return super()._apply(*args, **kwargs)

    def build(self, adapter_name: str, config: QuantumConfig) -> None:
        """Create the adapter's banks for the layers registered while injecting; assign each layer its rows."""
        specs = self.pending.pop(adapter_name, [])
        if not specs:
            return
        if adapter_name in self.quantum_adapters:
            raise QpeftError(f"adapter '{adapter_name}' already exists: choose another adapter_name")
        state = QuantumAdapterState(config, [(o, i, k) for _, o, i, k in specs])
        weight = specs[0][0].get_base_layer().weight
        # the base weight's dtype and device, as peft's layers (get_peft_model then upcasts a half-precision
        # adapter to float32, autocast_adapter_dtype); the factors are computed in float32 either way, in float64
        # for a float64 model (QuantumAdapterState.compute_dtype)
        if weight.dtype.is_floating_point:
            state.to(weight.dtype)
        if not state.is_meta:  # meta under low_cpu_mem_usage: loading assigns the tensors
            state.to(weight.device)
        self.quantum_adapters[adapter_name] = state
        for row, (layer, *_) in enumerate(specs):
            layer.quantum_row[adapter_name] = row

    @contextlib.contextmanager
    def forward_pass(self, model: nn.Module) -> Iterator[None]:
        """The scope of one forward pass of `model`, the one place a pass opens and closes. On opening, the
        factors of the active adapters are computed (a new graph with grad enabled; the cache under no_grad),
        outside any checkpointed block, and cast for the dtype the layers compute in: autocast's if autocast is
        on now, else the frozen weights'. Nothing is carried over from an earlier pass. Entered by
        QuantumModel._enable_peft_forward_hooks (PeftModel's forward and generate) and by the adapted model's
        forward hooks (attach_to); a scope entered inside an open one joins it. Enter autocast before the scope
        (the harness's Trainer does: qpeft.hf_trainer): autocast entered inside the model's forward leaves the
        layers to form their factors one by one, every pass alike."""
        self.open_pass(model)
        try:
            yield
        finally:
            self.close_pass()

    def attach_to(self, model: nn.Module) -> None:
        """Hook `model`'s forward: a forward_pass around it (closed even if the forward raises)."""
        model.register_forward_pre_hook(self.begin_pass)
        model.register_forward_hook(self.end_pass, always_call=True)

    def detach_from(self, model: nn.Module) -> None:
        """Remove this hub's forward hooks from `model`. Found by owner rather than kept as handles: a handle
        survives copy.deepcopy pointing at the original model's hooks."""
        for hooks in (model._forward_pre_hooks, model._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is self:
                    del hooks[hook_id]
                    model._forward_hooks_always_called.pop(hook_id, None)

    def begin_pass(self, module: nn.Module, args) -> None:
        """Forward-pre-hook of the adapted model: open its forward_pass."""
        self.open_pass(module)

    def end_pass(self, module: nn.Module, args, output) -> None:
        """Forward hook of the adapted model (always called): close its forward_pass."""
        self.close_pass()

    @torch.compiler.disable  # eager under torch.compile: Dynamo would guard on the pass counter, recompiling each step
    def open_pass(self, model: nn.Module) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        self._live, self._casts = {}, {}
        self._pass_grad = torch.is_grad_enabled()
        if self._pass_grad:
            self._pass += 1
        frozen = next((p for p in model.parameters() if not p.requires_grad), None)
        self._base_dtype = None if frozen is None else frozen.dtype
        if self.disable_adapters:
            return
        # the layers' matmuls run in autocast's dtype, else in the frozen weights' (their inputs match them)
        dtype = None
        if frozen is not None and frozen.dtype.is_floating_point:
            dtype = _compute_dtype(frozen.dtype, frozen.device.type)
        for name in self.active_adapters:
            state = self.quantum_adapters[name] if name in self.quantum_adapters else None
            if state is not None and not state.is_meta:
                self._live[name] = (self._pass_grad, self._factors(name, quantise=None))
                if dtype is not None:
                    self._low_rank_banks(name, dtype, not self._may_fold(state))

    @torch.compiler.disable
    def close_pass(self) -> None:
        """The pass is over: the next call of a layer (outside the model's forward, or recomputing a
        checkpointed block in backward) checks the cache again."""
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._live, self._casts = {}, {}

    def cast_input(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """x in the GEMM dtype. Within the model's forward one copy per input tensor, shared by the layers that
        read it (query, key and value read the same hidden states): autograd saves it once, where peft's LoRA
        layers (and autocast) make and save a copy per layer. Outside the forward (or while a checkpointed
        block is recomputed), and for a tensor made under inference_mode (it has no version counter to tell
        an in-place change), each call casts its own."""
        if x.dtype == dtype:
            return x
        if not self._live or x.is_inference():
            return x.to(dtype)
        seen = self._casts.get(id(x))
        if seen is not None and seen[0]() is x and seen[1] == x._version and seen[2].dtype == dtype:
            return seen[2]
        cast = x.to(dtype)
        self._casts[id(x)] = (weakref.ref(x), x._version, cast)
        return cast

    def _quantise(self, state: QuantumAdapterState) -> bool:
        bits = state.config.quant_bits
        return bits is not None and (state.config.quant_mode == "qat" or not self.training)

    def _factors(self, name: str, quantise: bool | None) -> tuple[dict, dict, dict, dict]:
        """(stacked U's per bank, lam_eff per K, sums of Kronecker products per bank, a per-pass store: each
        sum's rows by ("rows", bank) and each lam_eff's by ("lam", K), the banks cast for the low-rank path per
        dtype by ("low_rank", dtype), each matrix's product plan by ("plan", row), and under no_grad each folded
        dW by ("dw", row)) of adapter `name`, computed or cached. The full-rank Pauli banks are sums only: a
        folding layer builds the factor it needs, and the low-rank path's cast banks are formed from the sums
        (_low_rank_banks), so that no float32 copy of them stays alive through a step, nor in the no_grad cache
        (eval: 243 MB held at DeBERTaV3-base in bf16, where the float32 banks and their casts held 729 MB)."""
        live = self._live.get(name)
        if quantise is None and live is not None and live[0] == torch.is_grad_enabled():
            return live[1]  # inside the model's forward: begin_pass computed or validated them
        state = self.quantum_adapters[name]
        state.sync_packed_angles()  # after a load that brought packed codes only (transformers' load_adapter)
        quantise = self._quantise(state) if quantise is None else quantise
        grad = torch.is_grad_enabled()
        watched = state.watched()
        key = (
            self._pass if grad else -1,
            grad,
            quantise,
            *[t._version for t in watched],
            *[t.data_ptr() for t in watched],
        )
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            # under no_grad the cache serves every batch until a parameter changes
            computed = state.compute(quantise)
            # each sum's circuits as rows of one unbind (their gradients meet in one stack per bank in backward),
            # made now for the banks that layers will build from (no batched U), so that a checkpointed block
            # finds them made; for the others when first asked (_kron_row)
            us, lams, sums = computed
            store = {("rows", bank): kron.rows() for bank, kron in sums.items() if bank not in us}
            store.update({("lam", k): lam.unbind(0) for k, lam in lams.items()})
            cached = self._cache[name] = (key, computed, store)
        return (*cached[1], cached[2])

    def _may_fold(self, state: QuantumAdapterState) -> bool:
        """Whether a layer may take the folded path in this pass (QuantumLinear._update_weight_pays): grad
        enabled, float32 or float64 weights, no adapter dropout, and no autocast unless the config's `fold`
        allows it. (If a layer folds anyway, or does not, it builds what it needs; this only decides whether
        the full-rank banks are cast for the low-rank path in advance.)"""
        full = (torch.float32, torch.float64)
        lam, fold = next(iter(state.lam.values())), state.config.fold
        autocast = torch.is_autocast_enabled(lam.device.type)
        return (
            torch.is_grad_enabled()
            and fold != "never"
            and lam.dtype in full
            and self._base_dtype in (*full, None)
            and (fold == "autocast" or not autocast)
            and state.config.dropout == 0
        )

    @staticmethod
    def _kron_row(sums: dict, store: dict, key: str, row: int) -> KronSum:
        """Row `row` of bank `key`'s sum of Kronecker products, from the per-pass store (KronSum.rows)."""
        if ("rows", key) not in store:
            store["rows", key] = sums[key].rows()
        return store["rows", key][row]

    @classmethod
    def _factor(cls, us: dict, sums: dict, store: dict, key: str, row: int) -> Tensor:
        """Row `row` of bank `key`, float32: from the batched bank, or built alone from its sum of Kronecker
        products (a full-rank bank in a pass that may fold; not cached, so a checkpointed block rebuilds it).
        Elementwise ops only: float32 whatever the autocast."""
        return us[key][row] if key in us else cls._kron_row(sums, store, key, row).dense().squeeze(0)

    def factors(self, name: str, row: int) -> tuple[Tensor, Tensor, Tensor]:
        """(U, V, lam_eff) of matrix `row` of adapter `name`, float32: dW = U diag(lam_eff) V^T."""
        us, _, sums, store = self._factors(name, quantise=None)
        ku, ru, kv, rv, kl, rl = self.quantum_adapters[name].index[row]
        U, V = self._factor(us, sums, store, ku, ru), self._factor(us, sums, store, kv, rv)
        return U, V, store["lam", kl][rl]

    def low_rank_factors(
        self, name: str, row: int, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the low-rank path multiplies by for matrix `row`, in `dtype`: (U, V, lam_eff) for a full-rank
        matrix (lam float32, applied by the layer's _FactoredLinear), (U, V diag(lam_eff), None) for the others.

        The factors are cast per bank when the pass begins, for the dtype the layers will compute in: one cast
        serves all rows of a bank, and for a narrow bank (K=8) the same op folds lam into its V rows, so such a
        layer adds only its two GEMMs (and their backward) to the step, fewer kernel launches than LoRA's layer
        (tests/test_tuner.py). Any other dtype, or a full-rank bank not cast in advance (a pass that may fold),
        is formed for this matrix alone, inside the layer (a checkpointed block must recompute what it formed)."""
        us, _, sums, store = self._factors(name, quantise=None)
        state = self.quantum_adapters[name]
        ku, ru, kv, rv, kl, rl = state.index[row]
        banks, lam = store.get(("low_rank", dtype)), store["lam", kl][rl]
        banks = {} if banks is None else banks  # another dtype than the pass prepared: formed here, alone
        full = state.full_rank_banks
        U = banks[ku][ru] if ku in banks else self._factor(us, sums, store, ku, ru).to(dtype)
        if kv in banks:  # lam folded in if the bank is narrow
            V = banks[kv][rv]
        else:
            V = self._factor(us, sums, store, kv, rv)
            V = (V if kv in full else V * lam).to(dtype)
        if state.full_rank(row):
            return U, V, lam
        # (a narrow matrix whose V bank is full rank, with mixed shapes: lam for this matrix alone)
        return U, V * lam.to(dtype) if kv in full else V, None

    def _low_rank_banks(self, name: str, dtype: torch.dtype, full_rank: bool) -> None:
        """The banks of adapter `name` cast to `dtype`, as rows: a narrow bank with lam folded into its V rows
        (float32, then cast), a full-rank Taylor one alone; with `full_rank` also the full-rank Pauli banks,
        formed from their sums. Their float32 forms are not kept: nothing saves them for backward (a
        cast needs no input there, and their layers apply lam to the cast factors), so only the cast copy lives
        through the step (at full rank on DeBERTaV3-base, 486 MB of float32 factors against 243 MB in bf16)."""
        us, lams, sums, store = self._factors(name, quantise=None)
        if ("low_rank", dtype) in store:
            return
        state, banks = self.quantum_adapters[name], {}
        for key in state.banks:
            if key not in state.full_rank_banks:  # narrow: always built batched
                u = us[key] * state.lam_of_rows(key, lams) if key in state.lam_rows else us[key]
                banks[key] = u.to(dtype).unbind(0)
            elif key in us:  # full rank, built batched (Taylor)
                banks[key] = us[key].to(dtype).unbind(0)
            elif full_rank:
                # laid out (B, K, n): one batched contraction (float32: a matmul, so autocast off), whose backward
                # saves only the sum's small factors (dense()'s per-term products save (B, m, K) tensors: 68 MB on
                # DeBERTaV3-base)
                with _no_autocast(sums[key].xs[0].device):
                    dense = sums[key].dense(transposed=True)
                banks[key] = dense.to(dtype).transpose(1, 2).unbind(0)
        store["low_rank", dtype] = banks

    def product_plan(self, name: str, row: int, quantise: bool | None = None) -> tuple[int, str, int]:
        """(K, how dW is formed, its multiply-adds) for matrix `row` of adapter `name` (see _product_plan);
        it depends on the shapes alone, so it is kept in the per-pass store."""
        _, _, sums, store = self._factors(name, quantise)
        if ("plan", row) not in store:
            state = self.quantum_adapters[name]
            (d_out, d_in, k), (ku, _, kv, _, _, _) = state.shapes[row], state.index[row]
            # a row's cost is its bank's per circuit
            store["plan", row] = (k, *_product_plan(d_out, d_in, k, sums.get(ku), sums.get(kv)))
        return store["plan", row]

    def delta_weight_operands(
        self, name: str, row: int, quantise: bool | None = None
    ) -> tuple[_DeltaWeight, tuple[Tensor, ...]]:
        """dW of matrix `row` as a function of a few tensors of this pass: `build(*operands)` forms it (float32,
        by the cheapest plan). The operands are the factors' own tensors (a batched row, or the Kronecker
        factors of a sum) and lam, so a folded layer can form dW again in backward instead of saving it."""
        us, _, sums, store = self._factors(name, quantise)
        ku, ru, kv, rv, kl, rl = self.quantum_adapters[name].index[row]
        _, how, _ = self.product_plan(name, row, quantise)
        sides = []
        for key, r, applied in ((ku, ru, how == "u"), (kv, rv, how == "v")):
            # the batched row when there is one, unless the plan applies this factor's sum
            if key in us and not applied:
                sides.append((None, (us[key][r],)))
            else:
                kron = self._kron_row(sums, store, key, r)
                sides.append((kron.circuit, tuple(kron.xs)))
        (u_circuit, u_ops), (v_circuit, v_ops) = sides
        build = _DeltaWeight(how, u_circuit, len(u_ops), v_circuit)
        return build, (*u_ops, *v_ops, store["lam", kl][rl])

    def delta_weight(self, name: str, row: int, quantise: bool | None = None) -> Tensor:
        """dW = s U diag(lam * mask) V^T of matrix `row` (float32, autocast off; a graph to the adapter when grad
        is enabled), forming only what the cheapest plan needs; under no_grad cached until a parameter changes."""
        _, _, _, store = self._factors(name, quantise)
        if not torch.is_grad_enabled() and ("dw", row) in store:
            return store["dw", row]
        build, operands = self.delta_weight_operands(name, row, quantise)
        with _no_autocast(operands[-1].device):
            dw = build(*operands)
        if not torch.is_grad_enabled():
            store["dw", row] = dw
        return dw

    def check_not_reentrant(self) -> None:
        """Reentrant checkpointing runs blocks under no_grad and recomputes them in backward, each with its own
        backward through factors shared by all blocks: that cannot be correct, so say so."""
        if self.training and self._pass_grad and not torch.is_grad_enabled():
            if any(p.requires_grad for p in self.parameters()):
                raise QpeftError(
                    "Quantum-PEFT does not support reentrant gradient checkpointing: use "
                    "gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
                )

    def forward(self, x):
        """Identity. Nothing calls the hub, except a container that calls every child in turn: an
        nn.Sequential adapted as a whole gets the hub as its last child."""
        return x

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Nothing to fold: the layers merge their own weights."""

    def unmerge(self) -> None:
        """Nothing to restore: the layers unmerge their own weights."""

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._cache.pop(adapter_name, None)
        self._live.pop(adapter_name, None)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """The hub has no base layer; its state follows the model's .to()."""

    @property
    def weight(self) -> Tensor:
        raise AttributeError("the Quantum-PEFT hub wraps no layer and has no weight")

    @property
    def bias(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"adapters={list(self.quantum_adapters)}"


class QuantumLinear(nn.Module, BaseTunerLayer):
    """A frozen nn.Linear or GPT-2 Conv1D plus s U diag(lam) V^T, its factors read from the hub."""

    adapter_layer_names = ("quantum_dropout",)
    other_param_names = ("quantum_row",)

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, hub: QuantumHub, config: QuantumConfig, k: int
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
        self.update_layer(adapter_name, config, k)

    def update_layer(self, adapter_name: str, config: QuantumConfig, k: int) -> None:
        """Register this layer for `adapter_name`; the hub assigns its rows when the adapter is built."""
        self.quantum_dropout[adapter_name] = (
            nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        )
        self.hub.pending.setdefault(adapter_name, []).append((self, self.out_features, self.in_features, k))

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """dW in the layout of the base weight (transposed for Conv1D), float32 (float64 for a float64 model)."""
        state = self.hub.quantum_adapters[adapter_name]
        with torch.no_grad():  # with the quantised angles when quant_bits is set (what is saved)
            dw = self.hub.delta_weight(
                adapter_name, self.quantum_row[adapter_name], quantise=state.config.quant_bits is not None
            )
        return dw.T if self.fan_in_fan_out else dw

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the active (or given) adapters into the base weight; W0 is kept so unmerge restores it exactly."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        for name in adapter_names:
            if name not in self.quantum_row:
                continue
            with torch.no_grad():
                dw = self.get_delta_weight(name).to(weight.device)
                new = weight.to(torch.promote_types(weight.dtype, dw.dtype)) + dw  # float64 stays float64
                if safe_merge and not torch.isfinite(new).all():
                    raise ValueError(
                        f"NaNs detected in the merged weights. The adapter {name} seems to be broken"
                    )
                if self._w0 is None:
                    self._w0 = weight.detach().clone()
                weight.copy_(new.to(weight.dtype))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        with torch.no_grad():
            self.get_base_layer().weight.copy_(self._w0)
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
        if len(active) == 1 and self._update_weight_pays(x, active[0]):
            return self._forward_updated_weight(x, active[0])
        dtype = _compute_dtype(x.dtype, x.device.type)
        if len(active) == 1 and self._plain_base(active[0]):
            name = active[0]
            x_c = self.hub.cast_input(x, dtype)  # shared with the other layers that read x
            U, V, lam = self.hub.low_rank_factors(name, self.quantum_row[name], dtype)
            if lam is not None:  # full rank: the base GEMM in the same op (x V and a bf16 W are not saved)
                weight = self.base_layer.weight.T if self.fan_in_fan_out else self.base_layer.weight
                return _FactoredLinear.apply(x_c, None, weight, self.base_layer.bias, U, V, lam)
            return self._add_narrow(self.base_layer(x_c, *args, **kwargs), x_c, U, V)
        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            U, V, lam = self.hub.low_rank_factors(name, self.quantum_row[name], dtype)
            dropout = self.quantum_dropout[name]  # (not called when Identity: host time per layer)
            x_c = self.hub.cast_input(x if isinstance(dropout, nn.Identity) else dropout(x), dtype)
            if lam is None:
                result = self._add_narrow(result, x_c, U, V)
            else:
                result = _FactoredLinear.apply(x_c, result, None, None, U, V, lam)
        return result

    @staticmethod
    def _add_narrow(result: Tensor, x: Tensor, U: Tensor, V: Tensor) -> Tensor:
        """result + (x V) U^T, V carrying lam, as one GEMM with beta=1 (no extra pass over the d_out-wide output).
        Plain autograd: it saves x V, (T, K), which for a narrow K costs less than _FactoredLinear's host time."""
        h = x @ V
        flat = torch.addmm(
            result.reshape(-1, result.shape[-1]),
            h.reshape(-1, h.shape[-1]).to(result.dtype),
            U.T.to(result.dtype),
        )
        return flat.view(result.shape)

    def _plain_base(self, name: str) -> bool:
        """Whether calling the base layer would compute x W^T + b and nothing else, and the adapter reads the same
        input (no dropout): then the adapted layer may compute the base GEMM itself. So the base layer runs
        nn.Linear's or GPT-2 Conv1D's own forward (not a subclass's: a quantised or otherwise special Linear keeps
        its forward), and has no hooks and no forward replaced on the instance (accelerate's offloading does
        that), which calling it would run; nor may any global module hook be registered
        (`torch.nn.modules.module.register_module_forward_hook` and the like: they run for every module called)."""
        base = self.base_layer
        if not isinstance(self.quantum_dropout[name], nn.Identity) or base.weight.dim() != 2:
            return False
        if type(base).forward not in _GEMM_FORWARDS or "forward" in base.__dict__:
            return False
        hooks = torch.nn.modules.module  # the global hooks live in that module's dicts
        return not (
            base._forward_hooks
            or base._forward_pre_hooks
            or base._backward_hooks
            or base._backward_pre_hooks
            or hooks._global_forward_hooks
            or hooks._global_forward_pre_hooks
            or hooks._global_backward_hooks
            or hooks._global_backward_pre_hooks
        )

    def _update_weight_pays(self, x: Tensor, name: str) -> bool:
        """Whether x (W + dW)^T costs fewer flops than x W^T + (x (V diag(lam))) U^T, forward and backward.

        The low-rank path costs 3 T K (d_in + d_out) multiply-adds for T rows (three GEMMs of each factor's size;
        a full-rank matrix's _FactoredLinear forms x V once more, T K d_in); forming dW costs 4 P (dW, formed
        again in backward, and its two factor gradients; P = d_out K d_in for the dense product, far less when a
        Pauli factor is applied as its sum of Kronecker products) and its gradient g^T x T d_out d_in. So for a
        wide K (full rank) and a large batch the update is folded into the weight; for LoRA-like K never. Only
        for float32 / float64 weights, and under autocast only when the config's `fold` is "autocast" (W + dW is
        then rounded to bf16 / fp16 once, which a small dW may not move: the trade AMP makes with a float32
        master weight); only for a plain nn.Linear or Conv1D and without adapter dropout (one shared input)."""
        weight, fold = self.base_layer.weight, self.hub.quantum_adapters[name].config.fold
        if fold == "never" or weight.dtype not in (torch.float32, torch.float64):
            return False
        if torch.is_autocast_enabled(x.device.type):
            if fold != "autocast":
                return False
        elif x.dtype != weight.dtype:
            return False
        if not self._plain_base(name):
            return False
        k, _, product = self.hub.product_plan(name, self.quantum_row[name])
        rows, d_in, d_out = x.numel() // self.in_features, self.in_features, self.out_features
        full_rank = self.hub.quantum_adapters[name].full_rank(self.quantum_row[name])
        low_rank = 3 * rows * k * (d_in + d_out) + (rows * k * d_in if full_rank else 0)
        return low_rank > 4 * product + rows * d_out * d_in

    def _forward_updated_weight(self, x: Tensor, name: str) -> Tensor:
        """The layer with W + s U diag(lam) V^T as its weight: equal to the low-rank path up to rounding. dW is
        formed from the hub's tensors of this pass and formed again in backward (_FoldedLinear), not saved;
        under no_grad the hub's cached dW serves every batch."""
        base, row = self.base_layer, self.quantum_row[name]
        # (d_out, d_in); GPT-2's Conv1D stores (d_in, d_out)
        weight = base.weight.T if self.fan_in_fan_out else base.weight
        if not torch.is_grad_enabled():
            return nn.functional.linear(x, weight + self.hub.delta_weight(name, row), base.bias)
        build, operands = self.hub.delta_weight_operands(name, row)
        dtype = _compute_dtype(weight.dtype, x.device.type)
        return _FoldedLinear.apply(x, weight, base.bias, dtype, build, *operands)

    def __repr__(self) -> str:
        return "quantum." + super().__repr__()
