"""Every circuit of a trained Quantum-PEFT adapter as a Qiskit circuit, by layer name (needs the qiskit extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from torch import nn

from qpeft.quantum import quantize_angles, to_qiskit
from qpeft.tuner.config import QuantumConfigError
from qpeft.tuner.hub import QuantumHub
from qpeft.tuner.layer import QuantumLinear
from qpeft.tuner.state import PERIOD

if TYPE_CHECKING:
    from qiskit import QuantumCircuit


def export_circuits(
    model: nn.Module, adapter_name: str | None = None
) -> dict[str, dict[str, QuantumCircuit]]:
    """{layer name: {"U": circuit, "V": circuit}} for every layer that adapter `adapter_name` (default: the
    active one) adapts, names as in the base model (`model.get_base_model().named_modules()`).

    Layer `W + s U diag(lam) V^T` (d_out x d_in, rank K): U is the first K columns of the "U" circuit's unitary
    (width d_out), V those of the "V" circuit's (width d_in); see qpeft.quantum.to_qiskit for the qubit order.
    Each circuit's `metadata` adds the layer, the factor, K, and lam_eff = s * lam * mask (K numbers), so that
    dW can be rebuilt from the two circuits. With quant_bits the angles are the grid angles the adapter uses
    (and saves). Only the Pauli mapping is a circuit, and only power-of-two widths are qubit circuits: anything
    else is refused with a ValueError naming the layer."""
    hub = next((m for m in model.modules() if isinstance(m, QuantumHub)), None)  # on the tuner
    base = (
        model.get_base_model() if isinstance(model, PeftModel) else model
    )  # layer names as in the base model
    if hub is None:
        raise ValueError("export_circuits: the model has no Quantum-PEFT adapter")
    name = adapter_name or hub.active[0]
    if name not in hub.quantum_adapters:
        raise ValueError(
            f"export_circuits: no Quantum-PEFT adapter {name!r} (have {list(hub.quantum_adapters)})"
        )
    state = hub.quantum_adapters[name]
    config = state.config
    if config.mapping != "pauli":
        raise QuantumConfigError(
            f"export_circuits: adapter {name!r} has QuantumConfig.mapping={config.mapping!r}; only the Pauli "
            "mapping is a quantum circuit"
        )
    out: dict[str, dict[str, QuantumCircuit]] = {}
    with torch.no_grad():
        lams = {
            k: lam.double() * state.mask(k).double() * state.scale[k].double() for k, lam in state.lam.items()
        }
        for layer_name, layer in base.named_modules():
            if not isinstance(layer, QuantumLinear) or name not in layer.quantum_row:
                continue
            row = layer.quantum_row[name]
            (_, _, k), (ku, ru, kv, rv, kl, rl) = state.shapes[row], state.index[row]
            circuits = {}
            for factor, key, r in (("U", ku, ru), ("V", kv, rv)):
                bank = state.banks[key.name]
                theta = bank.theta[r].double()
                if config.quant_bits is not None:
                    theta = quantize_angles(theta, config.quant_bits, ste=False, period=PERIOD)
                n = bank.circuit.n
                try:
                    circuit = to_qiskit(n, config.depth, theta, name=f"{layer_name}.{factor}")
                except ValueError as err:
                    raise ValueError(
                        f"export_circuits: layer {layer_name!r}, factor {factor}: {err}"
                    ) from None
                circuit.metadata.update(
                    layer=layer_name, factor=factor, adapter=name, k=k, lam_eff=lams[kl][rl].tolist()
                )
                circuits[factor] = circuit
            out[layer_name] = circuits
    return out
