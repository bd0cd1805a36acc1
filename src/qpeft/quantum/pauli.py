"""Pauli mapping: the first k columns of a real RY/CZ brick circuit, a point on the Stiefel manifold St(n, k).

Wires: n is factored into primes in ascending order (wire 0 = smallest, most significant digit of the
row-major basis index); a factor 2 is a qubit, a factor d > 2 a d-level qudit. Gates (docs/method.md):

- generalized RY on a d-level wire = G_{d-2} ... G_1 G_0 (G_0 applied first), G_j the rotation by t_j / 2
  in the plane of levels (j, j+1); for d = 2 it is RY(t) = [[cos t/2, -sin t/2], [sin t/2, cos t/2]];
- generalized CZ on wires (a, b) = diagonal -1 where both wires are at their top level, +1 elsewhere.

Circuit ("slots" of RY gates, applied right to left)::

    U = R_{2L} CZ_B R_{2L-1} CZ_A ... R_2 CZ_B R_1 CZ_A R_0

R_0 acts on every wire; layer l adds CZ_A on pairs (0,1),(2,3),... then R_{2l+1} on the wires CZ_A touched,
and CZ_B on pairs (1,2),(3,4),... then R_{2l+2} on the wires CZ_B touched. Angle order in theta: slot by
slot, wire by wire (increasing), each wire's d-1 Givens angles in order j = 0..d-2.

Fast simulation (never an n x n matrix): the wires are split into g >= 2 consecutive groups of sizes
m_1..m_g (prod = n); the RY slot is the Kronecker product of g small (m_j x m_j) matrices, each built by a
few broadcast multiplies. The state (B, n, k) is updated by one bmm per group per slot, which also rotates
the axes (the transposes ride on the bmm's operand strides, so no copies); a CZ brick is one multiply by
a +-1 buffer; slot 0 applied to the identity columns is an outer product of matrix columns. Kernels per
forward: about 3 + 3 per prime + (w - g) krons + (g + 1) per slot, independent of the batch B.

Sum of Kronecker products (`kron_sum`, taken when its multiply-add count is lower): a CZ pair inside a group is a
diagonal of that group, and the one pair of a brick that crosses a group boundary is I - 2 P (x) Q with P, Q
diagonal 0/1 projectors of the two groups. Expanding every crossing gives U = sum_t (x)_j X_{t,j} with
2^(L (g - 1)) terms, each X_{t,j} an (m_j x m_j) product of the group's slot matrices and diagonals. The first
k columns are then one outer product of group columns per term (O(n k) per term, not O(n k sum m_j) per
slot), and U[:, :k] @ M is applied group by group without ever forming U (`KronSum.apply`: what a full-rank
dW = U diag(lam) V^T costs in place of an n x K x n product).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch
from torch import Tensor, nn


def wire_dims(n: int) -> list[int]:
    """Prime factors of n in ascending order, with multiplicity: the wire dimensions of the circuit."""
    if n < 1:
        raise ValueError(f"circuit dimension must be >= 1, got {n}")
    dims, p = [], 2
    while p * p <= n:
        while n % p == 0:
            dims.append(p)
            n //= p
        p += 1
    if n > 1:
        dims.append(n)
    return dims


def pauli_num_params(n: int, layers: int) -> int:
    """Angle count P(n, L) = D + L (2D - (d_0 - 1) - (d_{w-1} - 1)), D = sum_i (d_i - 1) over the wires.

    For n = 2^q this is (2L + 1) q - 2L. The initial RY slot has D angles; per layer the two bricks
    together touch every wire twice except wire 0 (only brick A) and wire w-1 (only one brick for any w).
    One wire (n prime): no CZ, P = n - 1. n = 1: no wires, 0 angles, U = [[1]].
    """
    dims = wire_dims(n)
    if not dims:
        return 0
    total = sum(d - 1 for d in dims)
    return total + layers * (2 * total - (dims[0] - 1) - (dims[-1] - 1))


def _slots(w: int, layers: int) -> list[list[int]]:
    """Active wires of each RY slot: all, then per layer brick A's wires and brick B's wires."""
    a = list(range(0, 2 * (w // 2)))
    b = list(range(1, 1 + 2 * ((w - 1) // 2)))
    return [list(range(w))] + [s for _ in range(layers) for s in (a, b)]


def _cz_signs(dims: list[int], first: int) -> Tensor:
    """The +-1 diagonal (length n, row-major) of the CZ brick on pairs (first, first+1), (first+2, ...)."""
    sign = torch.ones(dims, dtype=torch.float64)
    for a in range(first, len(dims) - 1, 2):
        idx = [slice(None)] * len(dims)
        idx[a], idx[a + 1] = dims[a] - 1, dims[a + 1] - 1
        sign[tuple(idx)] *= -1
    return sign.reshape(-1)


def _split(dims: list[int], groups: int) -> list[int]:
    """Wires per consecutive group, minimising the sum of group sizes (the flops of one slot)."""
    w = len(dims)
    best = None
    for cuts in itertools.combinations(range(1, w), groups - 1):
        bounds = (0, *cuts, w)
        cost = sum(math.prod(dims[bounds[i] : bounds[i + 1]]) for i in range(groups))
        if best is None or cost < best[0]:
            best = (cost, [bounds[i + 1] - bounds[i] for i in range(groups)])
    return best[1]


class PauliCircuit(nn.Module):
    """The fixed plan of an (n, k, L) circuit (index and sign buffers only); forward maps (B, P) angles to U."""

    def __init__(self, n: int, k: int, layers: int, block: int = 64):
        super().__init__()
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
        self.n, self.k, self.layers = n, k, layers
        self._quarter_turns: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.dims = dims = wire_dims(n)
        w = len(dims)
        self.num_params = pauli_num_params(n, layers)
        slots = _slots(w, layers)
        # angle index of (slot, wire, givens j); inactive wires point at a padded zero angle (identity gate)
        index: dict[tuple[int, int], list[int]] = {}
        p = 0
        for s, active in enumerate(slots):
            for i in range(w):
                if i in active:
                    index[s, i] = list(range(p, p + dims[i] - 1))
                    p += dims[i] - 1
                else:
                    index[s, i] = [self.num_params] * (dims[i] - 1)
        assert p == self.num_params
        self.primes = sorted(set(dims))
        self.pos = [[j for j in range(w) if dims[j] == d].index(i) for i, d in enumerate(dims)]
        for d in self.primes:
            wires = [i for i in range(w) if dims[i] == d]
            idx = torch.tensor([[index[s, i] for i in wires] for s in range(len(slots))], dtype=torch.long)
            self.register_buffer(f"idx{d}", idx.reshape(-1), persistent=False)
            # G_j = c_j P_j + s_j Q_j + R_j: the Givens rotation in the (j, j+1) plane
            P, Q, R = torch.zeros(3, d - 1, d, d)
            for j in range(d - 1):
                P[j, j, j] = P[j, j + 1, j + 1] = 1
                Q[j, j + 1, j], Q[j, j, j + 1] = 1, -1
                R[j] = torch.eye(d) - P[j]
            self.register_buffer(f"gates{d}", torch.stack([P, Q, R]), persistent=False)
        groups = min(w, max(2, math.ceil(math.log(n) / math.log(block)))) if w else 0
        self.group_wires = _split(dims, groups) if groups else []
        bounds = list(itertools.accumulate([0, *self.group_wires]))
        self.group_dims = [dims[bounds[j] : bounds[j + 1]] for j in range(groups)]
        self.group_first = bounds[:-1]
        self.m = [math.prod(g) for g in self.group_dims]
        # mixed-radix digits (m_1, ..., m_g) of the k starting basis columns
        digits, rest = [], torch.arange(k)
        for m in reversed(self.m):
            digits.append(rest % m)
            rest = rest // m
        self.register_buffer(
            "digits", torch.stack(digits[::-1]) if digits else torch.zeros(0, k), persistent=False
        )
        self.register_buffer("cz_a", _cz_signs(dims, 0).float() if w else torch.ones(1), persistent=False)
        self.register_buffer("cz_b", _cz_signs(dims, 1).float() if w else torch.ones(1), persistent=False)
        self.num_slots = len(slots)
        # per brick (A, B): every combination of its boundary-crossing pairs taken as I or -2 P (x) Q, as
        # (combinations, m_j) diagonals per group, the -2 factors folded into group 0's
        self.num_terms = 1
        for brick in (0, 1):
            diags = self._brick_diagonals(brick)
            for j, diag in enumerate(diags):
                self.register_buffer(f"diag{brick}_{j}", diag, persistent=False)
            self.num_terms *= diags[0].shape[0] ** layers if diags else 1
        self.kron_pays = bool(dims) and self._kron_cost() < self._simulate_cost()

    def _quarter_turn(self, like: Tensor) -> Tensor:
        """[pi/2, 0] on `like`'s device and dtype, made once per pair, not per pass: a tensor made from Python
        numbers is copied from the host, and on a GPU that copy waits for the stream (the host stops queueing
        work). Not a buffer: a module cast to bf16 would round pi/2."""
        key = (like.device, like.dtype)
        if key not in self._quarter_turns:
            with torch.inference_mode(False):  # usable by autograd even if first made under inference_mode
                turn = torch.tensor([math.pi / 2, 0.0], dtype=like.dtype, device=like.device)
                self._quarter_turns[key] = turn
        return self._quarter_turns[key]

    def _simulate_cost(self) -> int:
        """Multiply-adds of simulate(): g GEMMs on the (n, k) state per slot after the first."""
        return (self.num_slots - 1) * self.n * self.k * sum(self.m)

    def _kron_cost(self) -> int:
        """Multiply-adds of kron_sum().dense(): the (m_j x m_j) products of every term, and one outer product per
        term over the (n, k) output counted 10-fold (a memory-bound pass against a cache-blocked GEMM, measured
        on CPU: docs/method.md)."""
        terms, chain = 1, 0
        for _ in range(self.layers):
            for brick in (0, 1):
                terms *= getattr(self, f"diag{brick}_0").shape[0]
                chain += terms * sum(m**3 for m in self.m)
        return chain + 10 * terms * len(self.m) * self.n * self.k

    def group_matrices(self, angles: Tensor) -> list[tuple[Tensor, ...]]:
        """Per group and slot, the (B, m, m) Kronecker product of the group's wires' generalized RY gates."""
        B, S = angles.shape[0], self.num_slots
        a = nn.functional.pad(angles, (0, 1))  # angle P := 0 -> identity gate
        # (B, P+1, 2): cos(t/2), sin(t/2)
        cs = torch.sin(torch.add(self._quarter_turn(a), a[..., None], alpha=0.5))
        gates = {}
        for d in self.primes:
            P, Q, R = getattr(self, f"gates{d}").to(a.dtype)
            c, s = cs[:, getattr(self, f"idx{d}")].view(B, S, -1, d - 1, 2, 1, 1).unbind(4)
            g = torch.addcmul(torch.addcmul(R, c, P), s, Q)
            while g.shape[3] > 1:  # G_{d-2} ... G_1 G_0 as a tree of pairwise products
                odd = g[:, :, :, -1:] if g.shape[3] % 2 else None
                g = g[:, :, :, 1 : g.shape[3] - (odd is not None) : 2] @ g[:, :, :, 0 : g.shape[3] - 1 : 2]
                g = g if odd is None else torch.cat([g, odd], 3)
            gates[d] = g[:, :, :, 0].unbind(2)  # W_d x (B, S, d, d); unbind's backward is one stack
        wire = [gates[d][self.pos[i]] for i, d in enumerate(self.dims)]
        mats = []
        for first, gdims in zip(self.group_first, self.group_dims):
            m = wire[first]
            for i in range(first + 1, first + len(gdims)):
                d, r = self.dims[i], m.shape[-1]
                m = (m[..., :, None, :, None] * wire[i][..., None, :, None, :]).reshape(B, S, r * d, r * d)
            mats.append(m.unbind(1))  # per slot (B, m, m)
        return mats

    def _brick_diagonals(self, first: int) -> list[Tensor]:
        """Brick `first` (0 = A, 1 = B) as sum_c (x)_j diag(D[c, j]): per group j a (C, m_j) tensor, C = 2^crossings."""
        dims, w = self.dims, len(self.dims)
        where = [
            (j, i) for j, g in enumerate(self.group_dims) for i in range(len(g))
        ]  # wire -> (group, index)
        inside = [torch.ones(g, dtype=torch.float64) for g in self.group_dims]
        crossings = []
        for a in range(first, w - 1, 2):
            (ja, ia), (jb, ib) = where[a], where[a + 1]
            if ja == jb:  # both wires in one group: -1 where both are at their top level
                idx = [slice(None)] * len(self.group_dims[ja])
                idx[ia], idx[ib] = dims[a] - 1, dims[a + 1] - 1
                inside[ja][tuple(idx)] *= -1
            else:  # I - 2 P (x) Q: P = group ja's last wire at its top level, Q = group jb's first wire at its top
                crossings.append((ja, self._top(ja, ia, dims[a] - 1), jb, self._top(jb, ib, dims[a + 1] - 1)))
        diags = []
        for choice in itertools.product((False, True), repeat=len(crossings)):
            d = [v.clone() for v in inside]
            for on, (ja, p, jb, q) in zip(choice, crossings):
                if on:
                    d[ja], d[jb] = d[ja] * p, d[jb] * q
                    d[0] = d[0] * -2
            diags.append([v.reshape(-1) for v in d])
        return [torch.stack([d[j] for d in diags]).float() for j in range(len(self.group_dims))]

    def _top(self, group: int, index: int, level: int) -> Tensor:
        """0/1 over group `group`'s basis: 1 where its wire `index` is at `level`."""
        mask = torch.zeros(self.group_dims[group], dtype=torch.float64)
        idx = [slice(None)] * len(self.group_dims[group])
        idx[index] = level
        mask[tuple(idx)] = 1
        return mask

    def kron_sum(self, angles: Tensor) -> KronSum:
        """(B, P) angles -> U = sum_t (x)_j X_{t,j}, in the precision and autocast state of the caller."""
        mats = self.group_matrices(angles)
        g, B = len(mats), angles.shape[0]
        xs = [m[0][:, None] for m in mats]  # (B, terms, m_j, m_j), one term so far: slot 0
        for layer in range(self.layers):
            for brick in (0, 1):
                s = 1 + 2 * layer + brick
                diags = [getattr(self, f"diag{brick}_{j}").to(angles.dtype) for j in range(g)]
                # every term times every combination of the brick's crossings: D_c X_t, then the slot's matrices
                for j in range(g):
                    y = (diags[j][:, None, :, None] * xs[j][:, None]).flatten(1, 2)  # (B, terms, m, m)
                    # M_s @ Y_t for every term t as one bmm: M_s @ [Y_1 | Y_2 | ...]
                    y = torch.bmm(mats[j][s], y.transpose(1, 2).reshape(B, self.m[j], -1))
                    xs[j] = y.view(B, self.m[j], -1, self.m[j]).transpose(1, 2)
        return KronSum(self, [x.transpose(0, 1) for x in xs], B)

    def forward(self, angles: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """(B, P) angles -> (B, n, k) orthonormal columns, computed in float32 (float64 for float64 angles)
        with autocast off whatever the angles' dtype, then cast once to `dtype` (default: that precision).

        Under bf16 autocast the products would otherwise run in bfloat16 and the rounding compounds over the
        slots (U^T U - I reached 1e-2); one final cast keeps the factor as exact as its storage allows."""
        if angles.dim() != 2 or angles.shape[1] != self.num_params:
            raise ValueError(f"angles must be (B, {self.num_params}), got {tuple(angles.shape)}")
        with torch.autocast(angles.device.type, enabled=False):
            angles = angles.double() if angles.dtype == torch.float64 else angles.float()
            x = self.kron_sum(angles).dense() if self.kron_pays else self.simulate(angles)
        return x if dtype is None else x.to(dtype)

    def simulate(self, angles: Tensor) -> Tensor:
        """U[:, :k] slot by slot (the state is (B, n, k)); linear in L, where the sum's terms grow as 2^L."""
        B, n, k = angles.shape[0], self.n, self.k
        if not self.dims:
            return angles.new_ones(B, 1, 1)
        dtype = angles.dtype
        mats = self.group_matrices(angles)
        g = len(mats)
        # slot 0 on the identity columns: x[:, (i_1..i_g), c] = prod_j M_j[:, i_j, digit_j(c)]
        x = None
        for j, m in enumerate(mats):
            col = m[0][:, :, self.digits[j]]  # (B, m_j, k)
            col = col.view(B, *[1] * j, self.m[j], *[1] * (g - 1 - j), k)
            x = col if x is None else x * col
        x = x.reshape(B, n, k)  # layout (m_1, .., m_g, k)
        for layer in range(self.layers):
            s = 1 + 2 * layer
            x = x * self.cz_a.to(dtype)[:, None]
            for j in range(g):  # leading group axis -> applied and rotated to the end
                x = torch.bmm(x.view(B, self.m[j], -1).transpose(1, 2), mats[j][s].transpose(1, 2))
            x = x.view(B, k, n) * self.cz_b.to(dtype)  # layout (k, m_1, .., m_g)
            for j in reversed(range(g)):  # trailing group axis -> applied and rotated to the front
                x = torch.bmm(mats[j][s + 1], x.view(B, -1, self.m[j]).transpose(1, 2))
            x = x.view(B, n, k)
        return x


def _first_columns(x: Tensor, q: int) -> Tensor:
    """x[..., :q], and x itself when that is all of it (a slice costs a zero-filled gradient in backward)."""
    return x if q == x.shape[-1] else x[..., :q]


class KronSum:
    """U = sum_t (x)_j X_{t,j} for a batch of B circuits of one plan: `xs[j]` is (terms, B, m_j, m_j), except
    that xs[0] may hold only the first q = ceil(k / (m_2 ... m_g)) columns, all that U[:, :k] reads of it."""

    def __init__(self, circuit: PauliCircuit, xs: list[Tensor], batch: int):
        self.circuit, self.xs, self.batch = circuit, xs, batch

    def rows(self) -> list[KronSum]:
        """Every circuit of the batch alone, as views of one `unbind` per factor: the gradients of all rows
        meet in one stack in backward, where a slice per row would cost a zero-filled slice gradient and an
        add apiece (kernel launches, for a bank of many matrices). Once for the bank rather than per row: group
        0's factors are cut to the q columns that U's first k columns read (see `apply`), and each factor is
        laid out circuit-major, so that a row's terms are contiguous and `apply`'s reshapes of them are views."""
        q = -(-self.circuit.k // math.prod(self.circuit.m[1:]))
        xs = (_first_columns(self.xs[0], q), *self.xs[1:])
        unbound = [x.transpose(0, 1).contiguous().unbind(0) for x in xs]  # B x (terms, m_j, m_j)
        return [KronSum(self.circuit, [u[i].unsqueeze(1) for u in unbound], 1) for i in range(self.batch)]

    def dense(self, scale: Tensor | None = None, transposed: bool = False) -> Tensor:
        """(B, n, k): U[(i_1..i_g), c] = sum_t prod_j X_{t,j}[i_j, digit_j(c)], one outer product per term.

        `scale` ((k,) or (B, k)) multiplies column c, applied to the small group-0 columns rather than to U;
        `transposed` lays the result out as (B, k, n), contiguous (what `apply` takes as its operand)."""
        c, g, B = self.circuit, len(self.xs), self.batch
        if transposed and g == 2:
            return self._dense_transposed_two_groups(scale)
        out = None
        for t in range(self.xs[0].shape[0]):
            u = None
            for j, x in enumerate(self.xs):
                col = x[t][:, :, c.digits[j]]  # (B, m_j, k)
                if j == 0 and scale is not None:
                    col = col * scale.reshape(-1, 1, c.k)
                ones = [1] * j, [1] * (g - 1 - j)
                col = (
                    col.transpose(1, 2).reshape(B, c.k, *ones[0], c.m[j], *ones[1])
                    if transposed
                    else col.view(B, *ones[0], c.m[j], *ones[1], c.k)
                )
                u = col if u is None else u * col
            out = u if out is None else out + u
        return out.reshape(B, c.k, c.n) if transposed else out.reshape(B, c.n, c.k)

    def _dense_transposed_two_groups(self, scale: Tensor | None) -> Tensor:
        """dense(scale, transposed=True) for two groups, as one batched contraction over the terms (a few ops
        where the per-term loop takes several per term, forward and backward). Column c = (p, j) of U (mixed
        radix, group 1 major) is sum_t X_{t,1}[:, p] (x) X_{t,2}[:, j]: an (m_1 x terms) @ (terms x m_2) product
        per column, laid out as row c of the (k, n) result."""
        c, B = self.circuit, self.batch
        m2, (x1, x2) = c.m[1], self.xs  # x_j: (terms, B, m_j, m_j)
        q = -(-c.k // m2)
        first = _first_columns(x1, q).permute(1, 3, 2, 0)[:, :, None]  # (B, q, 1, m1, terms): X_{t,1}[i, p]
        if scale is not None:
            scale = scale.reshape(-1, c.k)
            if q * m2 != c.k:
                scale = nn.functional.pad(scale, (0, q * m2 - c.k))
            first = first * scale.view(-1, q, m2, 1, 1)  # (B, q, m2, m1, terms)
        second = x2.permute(1, 3, 0, 2)[:, None]  # (B, 1, m2, terms, m2): X_{t,2}[i, j] at [j, t, i]
        # (B, q, m2, m1, m2): row (p, j), column (i1, i2)
        out = torch.matmul(first, second).reshape(B, q * m2, c.n)
        return out if q * m2 == c.k else out[:, : c.k].contiguous()

    def apply(self, m: Tensor) -> Tensor:
        """U[:, :k] @ m for m (B, k, c), group by group, without forming U: (B, n, c).

        Rows of m are padded to q * (m_2 ... m_g) so that the first k columns of U are X_1[:, :q] (x) rest. With
        two groups it is two GEMMs, the terms stacked: [X_{1,2}; X_{2,2}; ...] on the second group's axis, then
        [X_{1,1}[:, :q] | X_{2,1}[:, :q] | ...] on the first, whose contraction also sums the terms."""
        circuit, B, c = self.circuit, m.shape[0], m.shape[2]
        rest = math.prod(circuit.m[1:])
        q = -(-circuit.k // rest)
        if q * rest != circuit.k:
            m = torch.cat([m, m.new_zeros(B, q * rest - circuit.k, c)], 1)
        terms = self.xs[0].shape[0]
        if len(circuit.m) == 2:
            (m1, m2), (x1, x2) = circuit.m, self.xs
            z = torch.matmul(x2.transpose(0, 1).reshape(B, 1, terms * m2, m2), m.view(B, q, m2, c))
            first = _first_columns(x1, q).permute(1, 2, 3, 0).reshape(B, m1, q * terms)  # columns (p, t)
            return torch.bmm(first, z.view(B, q * terms, m2 * c)).view(B, circuit.n, c)
        sizes = [q, *circuit.m[1:]]
        z = m[None]  # (1, B, ...) broadcast against the terms
        for j in reversed(range(len(sizes))):
            x = self.xs[j] if j else _first_columns(self.xs[0], q)
            pre, post = math.prod(sizes[:j]), math.prod(sizes[j + 1 :]) * c
            z = torch.matmul(x[:, :, None], z.reshape(z.shape[0], B, pre, sizes[j], post))
            sizes[j] = circuit.m[j]
        return z.sum(0).reshape(B, circuit.n, c)

    def apply_cost(self, c: int) -> int:
        """Multiply-adds of apply() on a (k, c) operand, per circuit."""
        circuit = self.circuit
        rest = math.prod(circuit.m[1:])
        sizes, total = [-(-circuit.k // rest), *circuit.m[1:]], 0
        for j in reversed(range(len(sizes))):
            total += math.prod(sizes[:j]) * circuit.m[j] * sizes[j] * math.prod(sizes[j + 1 :]) * c
            sizes[j] = circuit.m[j]
        return total * self.xs[0].shape[0]


@lru_cache(maxsize=64)
def _plan(n: int, k: int, layers: int, device: str) -> PauliCircuit:
    return PauliCircuit(n, k, layers).to(device)


def pauli_stiefel(angles: Tensor, n: int, k: int, layers: int, dtype: torch.dtype | None = None) -> Tensor:
    """Functional core: (B, P) angles -> (B, n, k), B circuits of one (n, k, L) simulated together in
    float32 (float64 for float64 angles), autocast off; `dtype` casts the result once."""
    return _plan(n, k, layers, str(angles.device))(angles, dtype)


def init_angles(
    shape: tuple[int, ...], init: str = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """Initial angles: "uniform" on [-pi, pi) (U spread over many coordinates) or "small" N(0, 0.01^2)."""
    if init == "uniform":
        return torch.rand(shape, generator=generator) * (2 * math.pi) - math.pi
    if init == "small":
        return torch.randn(shape, generator=generator) * 0.01
    raise ValueError(f"unknown angle init '{init}': choose uniform or small")


class PauliStiefel(nn.Module):
    """Trainable Pauli mapping: theta (P,) -> U (n, k), or theta (batch, P) -> U (batch, n, k)."""

    def __init__(
        self,
        n: int,
        k: int,
        layers: int,
        init: str = "uniform",
        generator: torch.Generator | None = None,
        batch: int | None = None,
    ):
        super().__init__()
        self.circuit = PauliCircuit(n, k, layers)
        self.batch = batch
        shape = (self.circuit.num_params,) if batch is None else (batch, self.circuit.num_params)
        theta = init_angles(shape, init, generator)
        if theta.numel():
            self.theta = nn.Parameter(theta)
        else:  # n = 1: no wires, no angles. A zero-size parameter would never get a gradient (DDP without
            # find_unused_parameters stops at step 2), so it is a buffer: saved and loaded as before, not trained
            self.register_buffer("theta", theta)

    def forward(self, theta: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """The orthonormal columns (float32, or float64 for float64 angles, unless `dtype` casts them);
        `theta` overrides the parameter (e.g. quantised angles)."""
        theta = self.theta if theta is None else theta
        u = self.circuit(theta.reshape(-1, self.circuit.num_params), dtype)
        return u[0] if self.batch is None else u
