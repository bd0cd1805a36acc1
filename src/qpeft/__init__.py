"""qpeft: Quantum-PEFT as a peft tuner, and a benchmark harness for it and its baselines.

`import qpeft` registers the "QUANTUM" peft type (idempotent), so peft's get_peft_model,
PeftModel.from_pretrained and AutoPeftModel... accept `QuantumConfig`. The harness (`qpeft.train`,
`qpeft.adapters`, ...) needs the `bench` extra; this module imports only torch, transformers and peft.
"""

from qpeft.tuner import (
    QuantumConfig,
    QuantumModel,
    circuit_parameters,
    create_quantum_optimizer,
    quantum_param_groups,
    register,
)

__version__ = "0.1.0"

register()

__all__ = [
    "QuantumConfig",
    "QuantumModel",
    "circuit_parameters",
    "create_quantum_optimizer",
    "quantum_param_groups",
    "register",
]
