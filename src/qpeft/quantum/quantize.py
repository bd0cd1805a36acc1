"""n-bit uniform quantisation of periodic angles, with wrap (no clipping), STE for QAT, and bit packing.

Grid over one period [-period/2, period/2): code c in [0, 2^bits) <-> angle -period/2 + c * period / 2^bits.
Angles outside the period are wrapped first; rounding up to 2^bits wraps to code 0 (the same angle).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(bits: int) -> None:
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"quantisation bits must be in 1..16, got {bits}")


def angle_codes(theta: Tensor, bits: int, period: float = 2 * math.pi) -> Tensor:
    """Integer codes (int64, in [0, 2^bits)) of the nearest grid angle, after wrapping into one period."""
    _check(bits)
    levels = 2**bits
    step = period / levels
    return torch.round((theta.detach().double() + period / 2) / step).long().remainder(levels)


def codes_to_angles(codes: Tensor, bits: int, period: float = 2 * math.pi, dtype=torch.float32) -> Tensor:
    """Grid angles in [-period/2, period/2) of integer codes."""
    return (codes.double() * (period / 2**bits) - period / 2).to(dtype)


def quantize_angles(theta: Tensor, bits: int, ste: bool = True, period: float = 2 * math.pi) -> Tensor:
    """Nearest n-bit grid angle, wrapped into [-period/2, period/2): exactly the angle its code stands for (what
    unpack_angles returns), for any theta. With `ste` the gradient passes straight through (identity).

    The straight-through form is q + (theta - theta.detach()): the added term is exactly 0, so the value is q
    bit for bit. (theta + (q - theta).detach() rounds twice: for |theta| beyond the period, q - theta is a
    multiple of it plus a small part, and the sum lands an ulp or two off the grid angle.)"""
    q = codes_to_angles(angle_codes(theta, bits, period), bits, period, theta.dtype)
    return q + (theta - theta.detach()) if ste else q


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Integer codes -> uint8 bit stream of ceil(numel * bits / 8) bytes (little-endian within a byte)."""
    _check(bits)
    flat = codes.reshape(-1).long()
    stream = ((flat[:, None] >> torch.arange(bits)) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8))
    return (stream.view(-1, 8) << torch.arange(8)).sum(1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of pack_bits: the first `numel` codes (int64)."""
    _check(bits)
    stream = ((packed.long()[:, None] >> torch.arange(8)) & 1).reshape(-1)[: numel * bits]
    return (stream.view(numel, bits) << torch.arange(bits)).sum(1)


def pack_angles(theta: Tensor, bits: int, period: float = 2 * math.pi) -> Tensor:
    """Angles -> bits per angle in a uint8 stream (store the shape and bits beside it)."""
    return pack_bits(angle_codes(theta, bits, period).cpu(), bits)


def unpack_angles(packed: Tensor, bits: int, shape: tuple[int, ...], period: float = 2 * math.pi) -> Tensor:
    """uint8 stream -> grid angles (float32) of `shape`."""
    numel = math.prod(shape)
    return codes_to_angles(unpack_bits(packed.cpu(), bits, numel), bits, period).reshape(shape)
