"""The 'width' step-size rule (docs/method.md "Step sizes under AdamW"), checked against what it claims:

- lam: one real AdamW step from init moves dW = s U diag(lam) V^T by as much (Frobenius) as peft's LoRA r=K
  moves (alpha / r) B A, per matrix, for matrices of different d_out; the paper's s = alpha / K moves it
  sqrt(d_out / 3) times less;
- circuits: one real AdamW step at the width circuit lr turns U (Pauli and Taylor) by as large a fraction of
  its norm as one Adam step of lr turns peft's initial LoRA A;
- the per-bank learning rates are the formula's, computed here from the circuit's angle count;
- s enters the forward pass, merge and delta weight alike (per row, from d_out);
- the harness settings accept and refuse what they should.

References are peft's LoRA (its own init and forward), torch's AdamW, and closed forms; tolerances are stated
as factors because the LoRA side is random (its first step's size depends on its random A)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from qpeft.adapters import get_method, settings_from_config
from qpeft.errors import QpeftError
from qpeft.quantum import PauliStiefel, TaylorStiefel, pauli_num_params
from qpeft.tuner import QuantumConfig, QuantumLinear, quantum_param_groups

D_IN = 96
D_OUTS = {"narrow": 24, "wide": 384}  # d_out of each adapted Linear
K = 4
ALPHA = 8.0
LR = 1e-3
FACTOR = 1.5  # |log ratio| bound: LoRA's step is random through A


class TwoWidths(nn.Module):
    """Two Linear layers of different d_out reading the same input."""

    def __init__(self):
        super().__init__()
        self.narrow = nn.Linear(D_IN, D_OUTS["narrow"])
        self.wide = nn.Linear(D_IN, D_OUTS["wide"])

    def forward(self, x):
        return torch.cat([self.narrow(x), self.wide(x)], dim=-1)


def first_step_of_dw(model: nn.Module, delta_weight) -> dict[str, float]:
    """||dW_after - dW_before||_F per layer after one AdamW step (lr LR, no decay) on a fixed random loss."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, D_IN, generator=g)
    target = torch.randn(64, sum(D_OUTS.values()), generator=g)
    before = {name: delta_weight(model, name).clone() for name in D_OUTS}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    ((model(x) - target) ** 2).mean().backward()
    opt.step()
    return {name: float((delta_weight(model, name) - before[name]).norm()) for name in D_OUTS}


def layer(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(f"base_model.model.{name}")


def lora_dw(model, name):
    return layer(model, name).get_delta_weight("default").detach()


def quantum_dw(model, name):
    return layer(model, name).get_delta_weight("default").detach()


def lora_and_quantum(scaling: str) -> tuple[dict[str, float], dict[str, float]]:
    torch.manual_seed(0)
    base = TwoWidths()
    torch.manual_seed(1)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=K, lora_alpha=ALPHA, target_modules=list(D_OUTS)))
    quantum = get_peft_model(
        copy.deepcopy(base), QuantumConfig(r=K, alpha=ALPHA, scaling=scaling, target_modules=list(D_OUTS))
    )
    return first_step_of_dw(lora, lora_dw), first_step_of_dw(quantum, quantum_dw)


def test_width_scaling_matches_loras_first_step_per_matrix():
    lora, width = lora_and_quantum("width")
    for name, d_out in D_OUTS.items():
        # the closed form of both sides (docs/method.md)
        assert width[name] == pytest.approx(ALPHA / K * math.sqrt(d_out / 3) * LR * math.sqrt(K), rel=1e-3)
        assert lora[name] == pytest.approx(ALPHA / K * LR * math.sqrt(d_out * K / 3), rel=0.5)
        assert 1 / FACTOR < width[name] / lora[name] < FACTOR, (name, width[name], lora[name])


def test_rank_scaling_steps_sqrt_d_out_over_3_times_less_than_lora():
    lora, rank = lora_and_quantum("rank")
    for name, d_out in D_OUTS.items():
        expected = math.sqrt(d_out / 3)  # 2.8 (narrow), 11.3 (wide)
        assert 1 / FACTOR < (lora[name] / rank[name]) / expected < FACTOR, (name, lora[name], rank[name])


def test_width_scale_is_per_row_in_forward_merge_and_delta_weight():
    """Same angles and lam (seeded, init_weights=False): every dW under width is sqrt(d_out / 3) times dW
    under rank, and the merged plain model computes what the unmerged adapter computes."""
    x = torch.randn(5, D_IN)
    made = {}
    for scaling in ("rank", "width"):
        torch.manual_seed(0)
        base = TwoWidths()
        torch.manual_seed(1)
        config = QuantumConfig(
            r=K, alpha=ALPHA, scaling=scaling, init_weights=False, target_modules=list(D_OUTS)
        )
        made[scaling] = get_peft_model(base, config)
    for name, d_out in D_OUTS.items():
        width, rank = quantum_dw(made["width"], name), quantum_dw(made["rank"], name)
        scaled = rank * math.sqrt(d_out / 3)
        torch.testing.assert_close(width, scaled, rtol=1e-5, atol=1e-6 * float(scaled.abs().max()))
    model = made["width"]
    with torch.no_grad():
        unmerged = model(x)
        merged_plain = model.merge_and_unload()(x)
    torch.testing.assert_close(merged_plain, unmerged, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, QuantumLinear) for m in model.modules())


def relative_step(factor_of, params: list[nn.Parameter], lr: float) -> float:
    """||U_after - U_before||_F / ||U_before||_F after one AdamW step on a random linear loss of U."""
    g = torch.Generator().manual_seed(3)
    u0 = factor_of().detach().clone()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    (factor_of() * torch.randn(u0.shape, generator=g)).sum().backward()
    opt.step()
    return float((factor_of().detach() - u0).norm() / u0.norm())


def lora_a_relative_step(n: int, r: int) -> float:
    """One Adam step of LR on every entry of peft's initial LoRA A (r x n), relative to ||A||_F."""
    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Linear(n, 8)), LoraConfig(r=r, target_modules=["0"]))
    a = model.base_model.model[0].lora_A["default"].weight
    assert float(a.detach().norm()) == pytest.approx(
        math.sqrt(r / 3), rel=0.1
    )  # U(-1/sqrt(n), 1/sqrt(n)) entries
    return (
        LR * math.sqrt(a.numel()) / float(a.detach().norm())
    )  # Adam's first step: LR * sign(grad) per entry


@pytest.mark.parametrize("n,layers", [(24, 1), (384, 1), (384, 2), (1536, 1)])
def test_width_circuit_lr_turns_pauli_factors_as_lora_turns_a(n, layers):
    torch.manual_seed(0)
    bank = PauliStiefel(n, K, layers, batch=2)
    p = pauli_num_params(n, layers)
    expected_lr = LR * math.sqrt(3 * n) / (math.sqrt(p) / 2)  # lr sqrt(12 n / P)
    groups = quantum_param_groups(_adapted(n, layers), lr=LR, circuit_lr="width")
    assert any(g["lr"] == pytest.approx(expected_lr) for g in groups)
    ours = relative_step(lambda: bank(), [bank.theta], expected_lr)
    lora = lora_a_relative_step(n, K)
    assert 1 / FACTOR < ours / lora < FACTOR, (ours, lora)


@pytest.mark.parametrize("n", [24, 384])
def test_width_circuit_lr_of_taylor_is_lr_sqrt_3(n):
    torch.manual_seed(0)
    bank = TaylorStiefel(n, K, 8, init="small", batch=2)
    model = get_peft_model(
        nn.Sequential(nn.Linear(n, n)), QuantumConfig(r=K, mapping="taylor", target_modules=["0"])
    )
    circuit = [g for g in quantum_param_groups(model, lr=LR, circuit_lr="width") if g["lr"] != LR]
    assert [g["lr"] for g in circuit] == pytest.approx([LR * math.sqrt(3)])  # one bank: n x n, K
    ours = relative_step(lambda: bank(), [bank.B, bank.s], LR * math.sqrt(3))
    assert 1 / FACTOR < ours / lora_a_relative_step(n, K) < FACTOR


def _adapted(d_out: int, layers: int) -> nn.Module:
    """A Linear (d_out x 32) under Quantum-PEFT, to read its optimiser groups."""
    return get_peft_model(
        nn.Sequential(nn.Linear(32, d_out)), QuantumConfig(r=K, layers=layers, target_modules=["0"])
    )


def test_width_groups_one_lr_per_bank_dimension():
    torch.manual_seed(0)
    model = get_peft_model(TwoWidths(), QuantumConfig(r=K, layers=1, target_modules=list(D_OUTS)))
    groups = quantum_param_groups(model, lr=LR, circuit_lr="width", weight_decay=0.1)
    banks = {n: LR * math.sqrt(12 * n / pauli_num_params(n, 1)) for n in (D_IN, *D_OUTS.values())}
    circuit = [g for g in groups if g["lr"] != LR]
    assert sorted(g["lr"] for g in circuit) == pytest.approx(sorted(banks.values()))
    assert all(g["weight_decay"] == 0.0 and len(g["params"]) == 1 for g in circuit)  # one bank each
    lam = [g for g in groups if g["lr"] == LR]
    assert lam and all(g["weight_decay"] == 0.1 for g in lam)
    with pytest.raises(QpeftError, match="circuit_lr='wide'"):
        quantum_param_groups(model, lr=LR, circuit_lr="wide")


def test_harness_settings_and_groups():
    values = {"method": "quantum", "name": "t", "targets": list(D_OUTS), "rank": K, "alpha": ALPHA}
    width = settings_from_config({**values, "scaling": "width", "circuit_lr": "width"})
    assert (width.scaling, width.circuit_lr) == ("width", "width")
    assert settings_from_config(values).scaling == "rank"  # the paper's rule stays the default
    for bad in ({"scaling": "widest"}, {"circuit_lr": "wide"}, {"circuit_lr": -1.0}):
        with pytest.raises(QpeftError, match=rf"adapter\.{next(iter(bad))}"):
            settings_from_config({**values, **bad})
    method = get_method("quantum")(width)
    torch.manual_seed(0)
    model = method.apply(TwoWidths(), list(D_OUTS), [], total_steps=10)
    groups = method.optimizer_groups(model, LR, 0.0)
    expected = sorted(LR * math.sqrt(12 * n / pauli_num_params(n, 1)) for n in (D_IN, *D_OUTS.values()))
    assert sorted(g["lr"] for g in groups if g["lr"] != LR) == pytest.approx(expected)
    assert method.record_facts(model)["scaling"] == "width"
