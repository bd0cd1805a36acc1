"""Quantum-PEFT as a peft tuner: QuantumConfig, QuantumModel, and the optimiser helpers."""

from qpeft.tuner.config import PEFT_TYPE, QuantumConfig, QuantumConfigError
from qpeft.tuner.export import export_circuits
from qpeft.tuner.hub import QuantumHub
from qpeft.tuner.layer import QuantumLinear
from qpeft.tuner.model import QuantumModel, QuantumUnsupportedError, register
from qpeft.tuner.optim import circuit_parameters, create_quantum_optimizer, quantum_param_groups

__all__ = [
    "PEFT_TYPE",
    "QuantumConfig",
    "QuantumConfigError",
    "QuantumHub",
    "QuantumLinear",
    "QuantumModel",
    "QuantumUnsupportedError",
    "circuit_parameters",
    "export_circuits",
    "create_quantum_optimizer",
    "quantum_param_groups",
    "register",
]
