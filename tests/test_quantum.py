"""The quantum mappings against independent dense references (docs/method.md section 6)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qpeft.quantum import (
    PauliCircuit,
    PauliStiefel,
    TaylorStiefel,
    pack_angles,
    pauli_num_params,
    pauli_stiefel,
    quantize_angles,
    taylor_num_params,
    taylor_stiefel,
    unpack_angles,
)
from qpeft.quantum.quantize import angle_codes, pack_bits, unpack_bits

# ---- dense reference: Kronecker products of the individual gates, float64, obviously correct ----


def prime_factors(n: int) -> list[int]:
    out = []
    for p in range(2, n + 1):
        while n % p == 0:
            out.append(p)
            n //= p
    return out


def kron_all(mats: list[torch.Tensor]) -> torch.Tensor:
    out = torch.ones(1, 1, dtype=torch.float64)
    for m in mats:
        out = torch.kron(out, m)
    return out


def generalized_ry(angles: list[float], d: int) -> torch.Tensor:
    """G_{d-2} ... G_0, G_j the rotation by t_j/2 in the plane of levels (j, j+1)."""
    R = torch.eye(d, dtype=torch.float64)
    for j, t in enumerate(angles):
        G = torch.eye(d, dtype=torch.float64)
        G[j, j], G[j, j + 1] = math.cos(t / 2), -math.sin(t / 2)
        G[j + 1, j], G[j + 1, j + 1] = math.sin(t / 2), math.cos(t / 2)
        R = G @ R
    return R


def cz_brick(dims: list[int], pairs: list[tuple[int, int]]) -> torch.Tensor:
    diag = []
    for digits in itertools.product(*[range(d) for d in dims]):
        top = [digits[i] == dims[i] - 1 for i in range(len(dims))]
        diag.append((-1.0) ** sum(top[a] and top[b] for a, b in pairs))
    return torch.diag(torch.tensor(diag, dtype=torch.float64))


def dense_pauli(theta: torch.Tensor, n: int, layers: int) -> torch.Tensor:
    """The full n x n circuit matrix; also checks that it consumes exactly all the angles."""
    dims = prime_factors(n)
    w = len(dims)
    it = iter(theta.tolist())

    def ry_slot(active: set[int]) -> torch.Tensor:
        return kron_all(
            [
                generalized_ry([next(it) for _ in range(d - 1)], d) if i in active else torch.eye(d)
                for i, d in enumerate(dims)
            ]
        )

    pairs_a = [(i, i + 1) for i in range(0, w - 1, 2)]
    pairs_b = [(i, i + 1) for i in range(1, w - 1, 2)]
    U = ry_slot(set(range(w)))
    for _ in range(layers):
        U = ry_slot({i for p in pairs_a for i in p}) @ cz_brick(dims, pairs_a) @ U
        U = ry_slot({i for p in pairs_b for i in p}) @ cz_brick(dims, pairs_b) @ U
    assert next(it, None) is None, "reference did not use every angle"
    return U


def rand_angles(b: int, n: int, layers: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, pauli_num_params(n, layers), generator=g) * 2 - 1).to(dtype) * math.pi


def orth_err(U: torch.Tensor) -> float:
    k = U.shape[-1]
    return (U.transpose(-1, -2).double() @ U.double() - torch.eye(k, dtype=torch.float64)).abs().max().item()


# ---- Pauli ----

CASES = [
    (8, 1),
    (8, 3),
    (8, 8),
    (384, 1),
    (384, 384),
    (768, 1),
    (768, 8),
    (768, 96),
    (1000, 7),
    (1000, 1000),
    (1024, 16),
    (1024, 1024),
    (1536, 32),
    (2304, 8),
    (2304, 200),
    (3072, 1),
    (3072, 64),
]


@pytest.mark.parametrize("n,k", CASES)
def test_orthonormal_columns_float32(n, k):
    U = pauli_stiefel(rand_angles(1, n, 1, seed=n + k), n, k, 1)
    assert U.shape == (1, n, k) and U.dtype == torch.float32
    assert orth_err(U) < 1e-5


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16, 6, 12, 18, 30, 20, 45])
@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("block", [64, 3])
def test_fast_circuit_equals_dense_reference(n, layers, block):
    """Both fast forms (slot by slot, and the sum of Kronecker products: its columns and its product with a
    matrix) give the dense reference's first k columns; block=3 splits the wires into 3-5 groups (2^(L (g-1))
    terms), as n > 4096 does with the default block."""
    theta = rand_angles(2, n, layers, seed=n * 10 + layers, dtype=torch.float64)
    for k in sorted({1, max(1, n // 3), n}):
        U = pauli_stiefel(theta, n, k, layers)
        circuit = PauliCircuit(n, k, layers, block=block).double()
        by_slots, kron = circuit.simulate(theta), circuit.kron_sum(theta)
        m = torch.randn(2, k, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        applied = kron.apply(m)
        for b in range(2):
            ref = dense_pauli(theta[b], n, layers)[:, :k]
            for fast in (U[b], by_slots[b], kron.dense()[b]):
                torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
            scale = m[b, :, 0]
            # one circuit alone: rows()[b] (an unbind, group 0 cut to its columns)
            row = kron.rows()[b]
            torch.testing.assert_close(row.dense()[0], ref, atol=1e-12, rtol=0)
            torch.testing.assert_close(
                row.dense(scale, transposed=True)[0], (ref * scale).T, atol=1e-12, rtol=0
            )
            torch.testing.assert_close(row.apply(m[b : b + 1])[0], ref @ m[b], atol=1e-12, rtol=0)
            torch.testing.assert_close(applied[b], ref @ m[b], atol=1e-12, rtol=0)


def test_angle_count():
    for q in range(1, 13):
        for L in range(4):
            assert pauli_num_params(2**q, L) == (2 * L + 1) * q - 2 * L
    # hand-computed from the documented formula P = D + L (2D - (d_0 - 1) - (d_last - 1)), D = sum(d_i - 1)
    hand = {
        (768, 1): 27,
        (768, 2): 44,
        (2304, 1): 33,
        (2304, 2): 54,
        (1000, 1): 40,
        (1000, 2): 65,
        (3072, 1): 33,
        (384, 1): 24,
        (1536, 1): 30,
        (1024, 1): 28,
        (4096, 1): 34,
        (6, 1): 6,
        (7, 3): 6,
    }
    for (n, L), p in hand.items():
        assert pauli_num_params(n, L) == p, (n, L)
    assert pauli_num_params(1, 2) == 0
    assert PauliStiefel(768, 8, 1).theta.numel() == 27


def test_n_equals_one():
    assert pauli_stiefel(torch.zeros(3, 0), 1, 1, 2).tolist() == [[[1.0]]] * 3


def test_full_rank_is_orthogonal_matrix():
    for n in (12, 64):
        U = pauli_stiefel(rand_angles(1, n, 2, dtype=torch.float64), n, n, 2)[0]
        eye = torch.eye(n, dtype=torch.float64)
        torch.testing.assert_close(U @ U.T, eye, atol=1e-12, rtol=0)
        torch.testing.assert_close(U.T @ U, eye, atol=1e-12, rtol=0)
        assert abs(abs(torch.linalg.det(U).item()) - 1) < 1e-10


def test_batched_equals_per_matrix():
    n, k, L = 768, 8, 2
    theta = rand_angles(5, n, L)
    batched = pauli_stiefel(theta, n, k, L)
    for b in range(5):
        torch.testing.assert_close(batched[b], pauli_stiefel(theta[b : b + 1], n, k, L)[0], atol=1e-6, rtol=0)
    m = PauliStiefel(n, k, L, batch=5)
    assert m().shape == (5, n, k) and PauliStiefel(n, k, L)().shape == (n, k)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def test_op_count_does_not_grow_with_batch():
    pauli_stiefel(rand_angles(1, 768, 1), 768, 8, 1)  # build the cached plan first
    counts = []
    for b in (1, 48):
        theta = rand_angles(b, 768, 1).requires_grad_()
        with OpCounter() as c:
            pauli_stiefel(theta, 768, 8, 1).sum().backward()
        counts.append(c.n)
    assert counts[0] == counts[1]


def test_bfloat16_angles_computed_in_float32_and_cast_once():
    """bf16 angles: the circuit still runs in float32 (orthonormal to float32 precision); asking for a bf16
    result rounds that U once, so it is within bf16 rounding (2^-8 relative) of the float32 U."""
    theta = rand_angles(3, 768, 1).bfloat16()
    u32 = pauli_stiefel(theta, 768, 8, 1)
    assert u32.dtype == torch.float32 and orth_err(u32) < 1e-5
    ref = pauli_stiefel(theta.double(), 768, 8, 1)  # the same (bf16-rounded) angles in float64
    torch.testing.assert_close(u32.double(), ref, atol=1e-6, rtol=0)
    u16 = pauli_stiefel(theta, 768, 8, 1, dtype=torch.bfloat16)
    assert u16.dtype == torch.bfloat16
    assert ((u16.double() - ref).abs() <= ref.abs() * 2**-8 + 1e-30).all()


def _linear_loss_grads(make, n_out: int, k: int, amp: torch.dtype | None = None, seed: int = 3):
    """U from `make()` (forward under CPU autocast `amp`, backward outside it, as the Trainer does) and the
    gradients of <U, R> (R fixed random) to the module's parameters."""
    module = make()
    R = torch.randn(n_out, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        U = module()
    (U.double() * R).sum().backward()
    return U, [p.grad.double() for p in module.parameters()]


AUTOCAST_CASES = [
    ("pauli 768x8 L1", lambda: PauliStiefel(768, 8, 1, generator=torch.Generator().manual_seed(0)), 768, 8),
    (
        "pauli 384x384 L2",
        lambda: PauliStiefel(384, 384, 2, generator=torch.Generator().manual_seed(1)),
        384,
        384,
    ),
    (
        "pauli 1000x7 L1",
        lambda: PauliStiefel(1000, 7, 1, generator=torch.Generator().manual_seed(2)),
        1000,
        7,
    ),
    (
        "taylor 768x8",
        lambda: TaylorStiefel(768, 8, 8, init="uniform", generator=torch.Generator().manual_seed(0)),
        768,
        8,
    ),
]


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,make,n,k", AUTOCAST_CASES, ids=[c[0] for c in AUTOCAST_CASES])
def test_autocast_leaves_factors_in_float32(amp, name, make, n, k):
    """Under CPU autocast (bf16 / fp16) U is float32, orthonormal to float32 precision, and U and the
    gradients match a float64 computation of the same parameters to float32 precision."""
    U, grads = _linear_loss_grads(make, n, k, amp)
    assert U.dtype == torch.float32
    torch.manual_seed(0)

    def make64():
        return make().double()

    U64, grads64 = _linear_loss_grads(make64, n, k)
    torch.testing.assert_close(U.double(), U64, atol=2e-6, rtol=0)
    for g, g64 in zip(grads, grads64):
        scale = g64.abs().max().item()
        assert (g - g64).abs().max().item() <= 1e-5 * scale, name
    if name.startswith("pauli"):
        assert orth_err(U) < 1e-5  # float32 rounding; bf16 products reached 1e-2 here
        # and against the dense Kronecker reference of the circuit (float64), first columns
        if n <= 1000:
            theta = make().theta.detach().double()
            layers = int(name.split("L")[-1])
            torch.testing.assert_close(U.double(), dense_pauli(theta, n, layers)[:, :k], atol=2e-6, rtol=0)


def test_bfloat16_parameters_give_float32_factors_and_bf16_gradients():
    """A model cast to bf16 (e.g. model.to(torch.bfloat16)) stores bf16 angles, but U is still simulated in
    float32 from them; the gradient comes back in the parameter's dtype."""
    m = PauliStiefel(768, 8, 1, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    U = m()
    assert U.dtype == torch.float32 and orth_err(U) < 1e-5
    U.sum().backward()
    assert m.theta.grad.dtype == torch.bfloat16
    t = TaylorStiefel(96, 4, 8, init="uniform", generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    Ut = t()
    assert Ut.dtype == torch.float32
    ref = taylor_stiefel(t.B.detach().double()[None], t.s.detach().double()[None], 8)[0]
    torch.testing.assert_close(Ut.double(), ref, atol=1e-6, rtol=0)


def test_zero_update_at_init_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    U, V = PauliStiefel(24, 4, 1), PauliStiefel(12, 4, 1)
    lam = torch.nn.Parameter(torch.zeros(4))
    target = torch.randn(24, 12)
    dW = lambda: U() @ torch.diag(lam) @ V().T  # noqa: E731
    assert dW().abs().max() == 0
    opt = torch.optim.SGD([U.theta, V.theta, lam], lr=0.1)
    (dW() * target).sum().backward()
    assert lam.grad.abs().min() > 0
    assert U.theta.grad.abs().max() == 0 and V.theta.grad.abs().max() == 0  # as LoRA's B = 0: only lam moves
    opt.step()
    opt.zero_grad()
    (dW() * target).sum().backward()
    for p in (U.theta, V.theta, lam):
        assert p.grad.abs().min() > 0


# ---- Taylor ----


def dense_A(B: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    k = S.shape[0]
    n = k + B.shape[0]
    A = torch.zeros(n, n, dtype=B.dtype)
    A[:k, :k], A[:k, k:], A[k:, :k] = S, -B.T, B
    return A


def test_taylor_equals_matrix_exp():
    from qpeft.quantum.taylor import skew

    g = torch.Generator().manual_seed(1)
    for n, k in [(10, 3), (7, 1), (6, 6)]:
        B = torch.randn(2, n - k, k, generator=g, dtype=torch.float64) * 0.3
        s = torch.randn(2, k * (k - 1) // 2, generator=g, dtype=torch.float64) * 0.3
        U = taylor_stiefel(B, s, order=30)
        for b in range(2):
            S = skew(s[b : b + 1], k)[0]
            assert torch.equal(S, -S.T)
            ref = torch.linalg.matrix_exp(dense_A(B[b], S))[:, :k]
            torch.testing.assert_close(U[b], ref, atol=1e-12, rtol=0)


def test_taylor_orthogonality_improves_with_order():
    torch.manual_seed(0)
    m = TaylorStiefel(768, 8, init="small", batch=4)
    errs = [orth_err(taylor_stiefel(m.B, m.s, order)) for order in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-5  # order 8, small init (N(0, 0.01^2)): float32 rounding level
    spread = TaylorStiefel(768, 8, order=8, init="uniform")  # ||A|| ~ 1: truncation error ~ 1/9!
    assert orth_err(spread()) < 1e-3
    assert m.B.numel() // 4 + m.s.numel() // 4 == taylor_num_params(768, 8) == 768 * 8 - 36


# ---- quantisation ----


def test_quantize_round_trip_wrap_and_ste():
    theta = (torch.rand(1000) * 2 - 1) * 3 * math.pi
    for bits in (1, 3, 4, 8, 11, 16):
        step = 2 * math.pi / 2**bits
        q = quantize_angles(theta, bits, ste=False)
        wrapped = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
        dist = torch.remainder(q - wrapped + math.pi, 2 * math.pi) - math.pi  # periodic distance
        assert dist.abs().max() <= step / 2 + 1e-5
        assert q.min() >= -math.pi and q.max() < math.pi  # wrapped, never clipped
        torch.testing.assert_close(quantize_angles(q, bits, ste=False), q)  # idempotent
        shifted = quantize_angles(
            theta + 2 * math.pi, bits, ste=False
        )  # same grid point up to float32 rounding
        assert (torch.remainder(shifted - q + math.pi, 2 * math.pi) - math.pi).abs().max() <= step + 1e-5
        packed = pack_angles(theta, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1000 * bits / 8)
        torch.testing.assert_close(
            unpack_angles(packed, bits, (10, 100)), q.reshape(10, 100), atol=1e-6, rtol=0
        )
        codes = angle_codes(theta, bits)
        assert torch.equal(unpack_bits(pack_bits(codes, bits), bits, codes.numel()), codes)
    t = theta.clone().requires_grad_()
    quantize_angles(t, 4).mul(torch.arange(1000.0)).sum().backward()
    assert torch.equal(t.grad, torch.arange(1000.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantised_angle_is_exactly_its_code_for_any_angle(dtype):
    """The straight-through value is the grid angle its code stands for, bit for bit, even beyond the period
    (what a loaded adapter's unpacked codes give): no ulp left over from theta + (q - theta)."""
    from qpeft.quantum.quantize import codes_to_angles

    g = torch.Generator().manual_seed(0)
    # |theta| up to 60, beyond the period 4 pi
    theta = ((torch.rand(20000, generator=g, dtype=torch.float64) * 2 - 1) * 60).to(dtype)
    period = 4 * math.pi
    for bits in (2, 4, 8, 12, 16):
        grid = codes_to_angles(angle_codes(theta, bits, period), bits, period, dtype)
        t = theta.clone().requires_grad_()
        q = quantize_angles(t, bits, ste=True, period=period)
        assert torch.equal(q, grid)
        assert torch.equal(quantize_angles(theta, bits, ste=False, period=period), grid)
        unpacked = unpack_angles(
            pack_angles(theta, bits, period), bits, (20000,), period
        )  # float32 grid angles
        assert torch.equal(angle_codes(unpacked, bits, period), angle_codes(theta, bits, period))
        if dtype == torch.float32:
            assert torch.equal(unpacked, grid)
        q.sum().backward()
        assert torch.equal(t.grad, torch.ones_like(theta))  # straight through
