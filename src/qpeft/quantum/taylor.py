"""Taylor (Lie-algebra) mapping: U = exp(A) E_k with A = [[S, -B^T], [B, 0]], by a truncated Taylor series.

S is k x k skew-symmetric (k(k-1)/2 parameters, its strict upper triangle), B is (n-k) x k: n k - k(k+1)/2
parameters per factor. A has rank <= 2k, so each product A X on the n x k block X = [X1; X2] is
[S X1 - B^T X2; B X1], O(n k^2), and A is never formed. Orthogonality is approximate: the truncation
error is about ||A||^(order+1) / (order+1)!, small for small B and S.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def taylor_num_params(n: int, k: int) -> int:
    """Parameters of one factor: n k - k (k + 1) / 2 (B plus the strict upper triangle of S)."""
    return n * k - k * (k + 1) // 2


def skew(s: Tensor, k: int) -> Tensor:
    """(B, k(k-1)/2) strict-upper-triangle entries -> (B, k, k) skew-symmetric S."""
    iu = torch.triu_indices(k, k, 1, device=s.device)
    S = s.new_zeros(s.shape[0], k, k)
    S[:, iu[0], iu[1]] = s
    return S - S.transpose(1, 2)


def taylor_stiefel(B: Tensor, s: Tensor, order: int, dtype: torch.dtype | None = None) -> Tensor:
    """Functional core: B (b, n-k, k) and s (b, k(k-1)/2) -> U (b, n, k) = sum_{j<=order} A^j E_k / j!.

    Computed in float32 (float64 if B or s is float64) with autocast off, whatever the parameters' dtype;
    `dtype` casts the result once (default: the compute precision)."""
    work = torch.float64 if torch.float64 in (B.dtype, s.dtype) else torch.float32
    with torch.autocast(B.device.type, enabled=False):
        u = _taylor(B.to(work), s.to(work), order)
    return u if dtype is None else u.to(dtype)


def _taylor(B: Tensor, s: Tensor, order: int) -> Tensor:
    b, k = B.shape[0], B.shape[2]
    S = skew(s, k)
    Bt = B.transpose(1, 2)
    t1 = torch.eye(k, dtype=B.dtype, device=B.device).expand(b, k, k)  # current term, top block
    t2 = B.new_zeros(b, B.shape[1], k)  # current term, bottom block
    u1, u2 = t1, t2
    for j in range(1, order + 1):
        t1, t2 = torch.baddbmm(S @ t1, Bt, t2, beta=1.0 / j, alpha=-1.0 / j), (B @ t1) / j
        u1, u2 = u1 + t1, u2 + t2
    return torch.cat([u1, u2], 1)


def init_taylor(n: int, k: int, batch: int, init: str = "small", generator: torch.Generator | None = None):
    """Initial (B, s): "small" N(0, 0.01^2) entries; "uniform" N(0, 1/n), so ||A|| ~ 1 spreads U (like uniform angles)."""
    if init == "small":
        std = 0.01
    elif init == "uniform":
        std = 1.0 / math.sqrt(n)
    else:
        raise ValueError(f"unknown Taylor init '{init}': choose small or uniform")
    B = torch.randn(batch, n - k, k, generator=generator) * std
    s = torch.randn(batch, k * (k - 1) // 2, generator=generator) * std
    return B, s


class TaylorStiefel(nn.Module):
    """Trainable Taylor mapping: U (n, k), or (batch, n, k) when `batch` is given."""

    def __init__(
        self,
        n: int,
        k: int,
        order: int = 8,
        init: str = "small",
        generator: torch.Generator | None = None,
        batch: int | None = None,
    ):
        super().__init__()
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
        self.n, self.k, self.order, self.batch = n, k, order, batch
        B, s = init_taylor(n, k, batch or 1, init, generator)
        for name, value in (("B", B if batch else B[0]), ("s", s if batch else s[0])):
            if value.numel():
                setattr(self, name, nn.Parameter(value))
            else:  # B at k = n, S at k = 1: nothing to train. A zero-size parameter would never get a gradient
                # (DDP without find_unused_parameters stops at step 2): a buffer, saved and loaded as before
                self.register_buffer(name, value)

    def forward(self, dtype: torch.dtype | None = None) -> Tensor:
        """The (approximately) orthonormal columns, float32 (float64 for float64 parameters) unless `dtype`."""
        B, s = self.B, self.s
        if B.device != s.device:  # an empty buffer left where a parameter was not (a meta-device load)
            B, s = (B.to(s.device), s) if not B.numel() else (B, s.to(B.device))
        if self.batch is None:
            return taylor_stiefel(B[None], s[None], self.order, dtype)[0]
        return taylor_stiefel(B, s, self.order, dtype)
