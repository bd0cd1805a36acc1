"""Quantum mappings to the Stiefel manifold (pure torch; imports nothing from the rest of qpeft)."""

from qpeft.quantum.pauli import (
    KronSum,
    PauliCircuit,
    PauliStiefel,
    pauli_num_params,
    pauli_stiefel,
    wire_dims,
)
from qpeft.quantum.qiskit_export import to_qiskit
from qpeft.quantum.quantize import pack_angles, quantize_angles, unpack_angles
from qpeft.quantum.taylor import TaylorStiefel, taylor_num_params, taylor_stiefel

__all__ = [
    "KronSum",
    "PauliCircuit",
    "PauliStiefel",
    "TaylorStiefel",
    "pack_angles",
    "pauli_num_params",
    "pauli_stiefel",
    "quantize_angles",
    "taylor_num_params",
    "taylor_stiefel",
    "to_qiskit",
    "unpack_angles",
    "wire_dims",
]
