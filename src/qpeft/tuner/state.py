"""QuantumAdapterState: the trainable state of one adapter (a circuit bank per distinct (n, K), lam, masks),
and the batched simulation of all its factors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from qpeft.errors import QpeftError
from qpeft.quantum import (
    KronSum,
    PauliStiefel,
    TaylorStiefel,
    quantize_angles,
)
from qpeft.tuner.config import QuantumConfig
from qpeft.tuner.ops import no_autocast

PERIOD = 4 * math.pi  # RY(theta) uses theta/2: the rotation angle theta/2 is quantised over [-pi, pi)


class BankKey(NamedTuple):
    """A circuit bank: the factors of dimension n and rank k of an adapter, simulated together."""

    n: int
    k: int

    @property
    def name(self) -> str:
        """Its name in the module tree and so in the adapter file: 'n<n>_k<k>'."""
        return f"n{self.n}_k{self.k}"


class MatrixRows(NamedTuple):
    """Where one matrix of an adapter reads its factors: U's bank and row, V's, and its row of lam `lam_key`."""

    u: BankKey
    u_row: int
    v: BankKey
    v_row: int
    lam_key: str  # 'k<K>': the name of the (M, K) lam of every matrix of rank K
    lam_row: int


@dataclass
class PassFactors:
    """What an adapter's banks gave in one pass (or, under no_grad, until a parameter changes): the banks'
    output, then what QuantumHub derives from it as the layers ask, kept for the rest of the pass."""

    us: dict[BankKey, Tensor]  # (B, n, K) per bank built batched (not the full-rank Pauli banks)
    lams: dict[str, Tensor]  # s * lam * mask, (M, K) per lam key
    sums: dict[BankKey, KronSum]  # the Pauli banks as sums of Kronecker products, where built
    # each sum's circuits as rows of one unbind (their gradients meet in one stack per bank in backward)
    kron_rows: dict[BankKey, list[KronSum]] = field(default_factory=dict)
    lam_rows: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)  # each lam's rows, one unbind
    # the banks as the low-rank path multiplies by them, cast to a GEMM dtype (QuantumHub._low_rank_banks)
    low_rank: dict[torch.dtype, dict[BankKey, tuple[Tensor, ...]]] = field(default_factory=dict)
    plans: dict[int, tuple[int, str, int]] = field(default_factory=dict)  # matrix -> (K, plan, its cost)
    delta_weights: dict[int, Tensor] = field(default_factory=dict)  # matrix -> its dW, under no_grad only


class QuantumAdapterState(nn.Module):
    """The trainable state of one adapter: a circuit bank per distinct (n, K), lam (M, K) and a mask per K.

    Matrix i of the adapter reads `index[i]` (MatrixRows: U's bank and row, V's, its lam row).
    """

    def __init__(self, config: QuantumConfig, shapes: list[tuple[int, int, int]]):
        super().__init__()
        self.config = config
        self.shapes = shapes  # (d_out, d_in, K) per matrix
        rows: dict[BankKey | str, int] = {}
        self.index: list[MatrixRows] = []
        for d_out, d_in, k in shapes:
            ku, kv, kl = BankKey(d_out, k), BankKey(d_in, k), f"k{k}"
            ru = rows[ku] = rows.get(ku, -1) + 1
            rv = rows[kv] = rows.get(kv, -1) + 1
            rl = rows[kl] = rows.get(kl, -1) + 1
            self.index.append(MatrixRows(ku, ru, kv, rv, kl, rl))
        # banks whose every matrix is full rank: with grad enabled their factors are built per matrix, and only
        # the side a folded update needs (QuantumHub.delta_weight); the others are built batched, once per pass
        partial = {
            key
            for (d_out, d_in, k), i in zip(shapes, self.index)
            if k < min(d_out, d_in)
            for key in (i.u, i.v)
        }
        self.full_rank_banks = {key for i in self.index for key in (i.u, i.v)} - partial
        by_size = {"key": lambda s: (len(s), s)}  # the order of names (and so of init): by length, then text
        self.bank_keys = sorted(
            {i.u for i in self.index} | {i.v for i in self.index}, key=lambda b: by_size["key"](b.name)
        )
        self.banks = nn.ModuleDict()
        for key in self.bank_keys:
            n, k, batch = key.n, key.k, rows[key] + 1
            if config.mapping == "pauli":
                self.banks[key.name] = PauliStiefel(n, k, config.depth, init=config.init, batch=batch)
            else:
                self.banks[key.name] = TaylorStiefel(n, k, config.order, init=config.init, batch=batch)
        self.lam = nn.ParameterDict()
        # s of each lam row, (M, 1) float64 (cast to the compute dtype), from the shapes alone (not saved: the
        # config rebuilds it); kept off the module's buffers so that casting the adapter to half precision leaves
        # s exact
        row_scales: dict[str, list[float]] = {}
        for (d_out, _, k), i in zip(shapes, self.index):
            row_scales.setdefault(i.lam_key, []).append(config.scale(k, d_out))
        self.scale: dict[str, Tensor] = {}
        self._scales: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}  # _scale_on's casts
        # per narrow bank with V rows: (lam key, the lam row of each bank row; U rows point one past the end, at a
        # row of ones): there lam is folded into the V factors in one op per bank (QuantumHub._low_rank_banks)
        owners: dict[BankKey, tuple[str, dict[int, int]]] = {}  # V bank -> (its lam key, {bank row: lam row})
        for i in self.index:
            owners.setdefault(i.v, (i.lam_key, {}))[1][i.v_row] = i.lam_row
        self.lam_rows: dict[BankKey, tuple[str, Tensor]] = {
            key: (kl, torch.tensor([lam_of.get(r, rows[kl] + 1) for r in range(rows[key] + 1)]))
            for key, (kl, lam_of) in owners.items()
        }
        rank_of = {i.lam_key: k for (*_, k), i in zip(shapes, self.index)}
        for key in sorted(rank_of, **by_size):
            m, k = rows[key] + 1, rank_of[key]
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

    def compute(self, quantise: bool) -> PassFactors:
        """Run the banks once, in `compute_dtype` (float32; float64 for a float64 adapter) with autocast off:
        {bank: (B, n, K)} (not the full-rank Pauli banks: their users build what they need from the sums),
        {lam key: (M, K) s * lam * mask}, and {bank: its circuits as a sum of Kronecker products} (Pauli)."""
        device = next(iter(self.lam.values())).device
        work = self.compute_dtype
        us, sums = {}, {}
        with no_autocast(device):
            for key in self.bank_keys:
                bank = self.banks[key.name]
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
        return PassFactors(us, lams, sums)

    def _scale_on(self, key: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The (M, 1) per-row s of lam bank `key` on `device` in `dtype` (made once, not every pass)."""
        cast = self._scales.get((key, device, dtype))
        if cast is None:
            cast = self._scales[key, device, dtype] = self.scale[key].to(device, dtype)
        return cast

    def full_rank(self, row: int) -> bool:
        """Whether matrix `row` reads full-rank banks only (then its layer applies lam itself: FactoredLinear)."""
        i = self.index[row]
        return i.u in self.full_rank_banks and i.v in self.full_rank_banks

    def lam_of_rows(self, key: BankKey, lams: dict[str, Tensor]) -> Tensor:
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
