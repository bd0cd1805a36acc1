"""A Pauli circuit as a Qiskit `QuantumCircuit`: to inspect, draw, or run on a simulator or a device.

Qiskit is an optional extra (`pip install "qpeft[qiskit]"`), imported only when a circuit is built. The circuit
is the one `PauliCircuit` simulates (docs/method.md): RY on every wire, then per layer the CZ brick on wire
pairs (0, 1), (2, 3), ... and RY on the wires it touched, then the brick on (1, 2), (3, 4), ... and RY on its
wires, with the angles taken in qpeft's order (slot by slot, wire by wire). U's K columns are the circuit's
action on the first K computational basis states: the first K columns of `Operator(circuit)`.

Qubit order: qpeft's wire 0 is the most significant digit of a basis index (row-major, as `torch.kron`);
Qiskit's qubit 0 is the least significant bit. So wire i is qubit q - 1 - i, and the basis index c means the
same state to both: Operator(circuit).data[:, :K] equals U in float64 to rounding (tests/test_qiskit_export.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from qpeft.quantum.pauli import _slots, pauli_num_params, wire_dims

if TYPE_CHECKING:
    from qiskit import QuantumCircuit


def _require_qiskit():
    try:
        import qiskit
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            'to_qiskit needs Qiskit: pip install "qpeft[qiskit]" (or pip install qiskit)'
        ) from err
    return qiskit


def to_qiskit(n: int, layers: int, theta, name: str | None = None) -> QuantumCircuit:
    """The RY/CZ circuit of width n (a power of two: q = log2 n qubits) and `layers` entangling layers with the
    angles `theta` (P = pauli_num_params(n, layers) numbers: a tensor, array or list), as a QuantumCircuit.

    A width with a prime factor other than 2 has a qudit wire, which Qiskit's qubit circuits cannot hold: it is
    refused with a ValueError. n = 1 is the empty circuit on no qubits (U = [[1]])."""
    dims = wire_dims(n)
    if any(d != 2 for d in dims):
        raise ValueError(
            f"to_qiskit: width n={n} = {' x '.join(map(str, dims))} has a qudit wire (a prime factor other than "
            "2); Qiskit circuits are of qubits, so only power-of-two widths export"
        )
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"to_qiskit: layers={layers!r}: use an integer >= 0")
    angles = torch.as_tensor(theta, dtype=torch.float64).detach().cpu().reshape(-1).tolist()
    expected = pauli_num_params(n, layers)
    if len(angles) != expected:
        raise ValueError(f"to_qiskit: n={n}, layers={layers} takes {expected} angles, got {len(angles)}")
    if not all(math.isfinite(a) for a in angles):
        raise ValueError("to_qiskit: the angles must be finite")
    qiskit = _require_qiskit()
    q = len(dims)
    circuit = qiskit.QuantumCircuit(q, name=name or f"qpeft_pauli_n{n}_L{layers}")

    def qubit(wire: int) -> int:  # qpeft's wire 0 is the most significant digit, Qiskit's qubit 0 the least
        return q - 1 - wire

    it = iter(angles)
    for s, active in enumerate(_slots(q, layers)):
        if s:  # slot 2l+1 follows brick A (pairs from wire 0), slot 2l+2 brick B (pairs from wire 1)
            for a in range(0 if s % 2 else 1, q - 1, 2):
                circuit.cz(qubit(a), qubit(a + 1))
        for wire in active:
            circuit.ry(next(it), qubit(wire))
    circuit.metadata = {"n": n, "layers": layers, "qubit_of_wire": [qubit(i) for i in range(q)]}
    return circuit
