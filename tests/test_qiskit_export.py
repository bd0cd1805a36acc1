"""qpeft.quantum.to_qiskit and qpeft.tuner.export_circuits against Qiskit's own unitary of the circuit.

The reference is `qiskit.quantum_info.Operator(circuit)`: Qiskit's simulation of the gates it was given, with its
own qubit order (qubit 0 the least significant bit), independent of qpeft's simulator. The tests that need Qiskit
are skipped, saying so, where it is not installed (`pip install "qpeft[qiskit]"`; CI installs it)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from torch import nn

from qpeft.quantum import pauli_num_params, pauli_stiefel, to_qiskit
from qpeft.tuner import QuantumConfig, QuantumLinear, export_circuits

try:
    import qiskit  # noqa: F401
    from qiskit.quantum_info import Operator
except ImportError:
    Operator = None
needs_qiskit = pytest.mark.skipif(
    Operator is None, reason='Qiskit is not installed (pip install "qpeft[qiskit]"; CI installs it)'
)


def angles(n: int, layers: int, seed: int) -> torch.Tensor:
    """float64 angles over three periods of RY's half angle: wrap-around is part of what must agree."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(pauli_num_params(n, layers), generator=g, dtype=torch.float64) * 2 - 1) * 3 * math.pi


@needs_qiskit
@pytest.mark.parametrize("layers", [0, 1, 2, 4])
@pytest.mark.parametrize("q", range(11), ids=[f"n{2**q}" for q in range(11)])
def test_first_columns_of_the_qiskit_unitary_are_U(q, layers):
    """Every power-of-two width up to 1,024 and L = 0, 1, 2, 4: Operator(circuit)[:, :K] equals U to 1e-12 in
    float64, for K = n and a narrow K (qpeft simulates the two by different plans)."""
    n = 2**q
    theta = angles(n, layers, seed=100 * q + layers)
    circuit = to_qiskit(n, layers, theta)
    assert circuit.num_qubits == q
    op = torch.from_numpy(Operator(circuit).data)
    assert op.shape == (n, n)
    assert op.imag.abs().max() == 0  # RY and CZ are real
    for k in sorted({n, min(n, 3)}):
        U = pauli_stiefel(theta[None], n, k, layers)[0]
        assert U.dtype == torch.float64
        torch.testing.assert_close(op.real[:, :k], U, atol=1e-12, rtol=0)


@needs_qiskit
def test_qubit_order_is_reversed_against_qpeft_wires():
    """One RY on qpeft's wire 0 (the most significant digit) is an RY on Qiskit's last qubit."""
    n, theta = 8, torch.zeros(pauli_num_params(8, 0), dtype=torch.float64)
    theta[0] = 1.0  # slot 0, wire 0
    circuit = to_qiskit(n, 0, theta)
    ry = [(inst.operation.name, circuit.find_bit(inst.qubits[0]).index) for inst in circuit.data]
    assert ("ry", 2) in ry and circuit.metadata["qubit_of_wire"] == [2, 1, 0]
    # |000> -> cos(1/2)|000> + sin(1/2)|100>: the most significant digit moves, index 4
    col = Operator(circuit).data[:, 0].real
    assert col[0] == pytest.approx(math.cos(0.5)) and col[4] == pytest.approx(math.sin(0.5))


@pytest.mark.parametrize("n", [3, 6, 12, 20, 768])
def test_a_qudit_width_is_refused_with_one_clear_error(n):
    """A prime factor other than 2 is a qudit wire; refused before Qiskit is imported (so also without it)."""
    with pytest.raises(ValueError, match=rf"width n={n} = .* qudit wire"):
        to_qiskit(n, 1, torch.zeros(pauli_num_params(n, 1)))


def test_wrong_angle_count_is_refused():
    with pytest.raises(ValueError, match="takes 7 angles, got 4"):
        to_qiskit(8, 1, torch.zeros(4))


def test_qpeft_quantum_imports_without_qiskit():
    """qpeft.quantum and qpeft stay importable where Qiskit is absent; to_qiskit then says what to install."""
    code = (
        "import sys; sys.modules['qiskit'] = None\n"
        "import qpeft, qpeft.quantum\n"
        "try:\n"
        "    qpeft.quantum.to_qiskit(4, 1, [0.0] * 4)\n"
        "except ImportError as err:\n"
        "    print('refused:', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "qpeft[qiskit]"' in out.stdout


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1, self.head = nn.Linear(16, 32), nn.Linear(32, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


@needs_qiskit
@pytest.mark.parametrize(
    "kw", [dict(r=2, depth=2), dict(r=2, depth=1, quant_bits=5)], ids=["float", "quantised"]
)
def test_export_circuits_rebuilds_every_layer_update(kw):
    """export_circuits gives every adapted layer's U and V circuits by name; U diag(lam_eff) V^T from Qiskit's
    unitaries equals the layer's own dW (get_delta_weight: with the grid angles when quantised)."""
    torch.manual_seed(0)
    model = get_peft_model(
        MLP().double(), QuantumConfig(target_modules=["lin0", "lin1", "head"], init_weights=False, **kw)
    )
    with torch.no_grad():  # angles beyond 2 pi, as training may leave them
        for name, p in model.named_parameters():
            if name.endswith(".theta"):
                p.mul_(5)
    circuits = export_circuits(model)
    layers = {n: m for n, m in model.get_base_model().named_modules() if isinstance(m, QuantumLinear)}
    assert set(circuits) == set(layers) == {"lin0", "lin1", "head"}
    for name, layer in layers.items():
        u, v = circuits[name]["U"], circuits[name]["V"]
        assert u.name == f"{name}.U" and u.metadata["layer"] == name and v.metadata["factor"] == "V"
        k = u.metadata["k"]
        U = torch.from_numpy(Operator(u).data.real)[:, :k]
        V = torch.from_numpy(Operator(v).data.real)[:, :k]
        dw = U * torch.tensor(u.metadata["lam_eff"], dtype=torch.float64) @ V.T
        torch.testing.assert_close(dw, layer.get_delta_weight("default"), atol=1e-12, rtol=0)


def test_export_circuits_refuses_taylor_and_qudit_widths():
    model = get_peft_model(MLP(), QuantumConfig(r=2, mapping="taylor", target_modules=["lin0"]))
    with pytest.raises(ValueError, match="mapping='taylor'"):
        export_circuits(model)
    odd = nn.Sequential(nn.Linear(6, 8))
    model = get_peft_model(copy.deepcopy(odd), QuantumConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match=r"layer '0', factor V: .*n=6 = 2 x 3 has a qudit wire"):
        export_circuits(model)
