"""The quantum adapter on tiny models: exact start, training, merge, state dict, counts, batching."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import tiny_bert, tiny_bert_config
from torch import nn

from qpeft.adapters import adapter_params, get_method, settings_from_config
from qpeft.adapters import quantum as qa
from qpeft.errors import QpeftError
from qpeft.quantum import pauli_num_params
from qpeft.quantum.pauli import PauliCircuit


def cfg(**kw):
    base = dict(
        method="quantum",
        name="q",
        lr=1e-3,
        targets=MLP_TARGETS,
        rank=4,
        layers=1,
        alpha=8,
        init="uniform",
        rank_mask=None,
        quant_bits=None,
        quant_mode="qat",
        dropout=0.0,
    )
    values = {**base, **kw}
    if values["method"] == "quantum_taylor":
        del values["layers"]  # the Taylor mapping has no circuit depth
    return settings_from_config(values)  # the typed settings run.py hands the adapter


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 24), nn.Linear(24, 24), nn.Linear(24, 24)
        self.fc4, self.cls = nn.Linear(24, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.tanh(self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))))
        return self.cls(torch.tanh(self.fc4(h)))


MLP_TARGETS = ["fc1", "fc2", "fc3", "fc4"]
MLP_SHAPES = [(24, 16), (24, 24), (24, 24), (16, 24)]


def mlp(c, seed=0):
    torch.manual_seed(seed)
    base = MLP()
    model = qa.apply(copy.deepcopy(base), c, MLP_TARGETS, ["cls"], total_steps=40)
    return base, model


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 16, generator=g), torch.randint(0, 3, (32,), generator=g)


def train(model, x, y, steps=15, lr=0.05, loss_fn=None, on_step=False):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = loss_fn or (lambda: nn.functional.cross_entropy(model(x), y))
    losses = []
    for step in range(steps):
        loss = loss_fn()
        loss.backward()
        opt.step()
        if on_step:
            qa.on_step(model, step + 1)
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def pauli_count(shapes, k, layers):
    return sum(pauli_num_params(o, layers) + pauli_num_params(i, layers) + k for o, i in shapes)


@pytest.mark.parametrize("method", ["quantum", "quantum_taylor"])
def test_mlp_start_train_merge(method):
    c = cfg(method=method, init="uniform" if method == "quantum" else "small")
    base, model = mlp(c)
    x, y = data()
    torch.testing.assert_close(model(x), base(x), atol=0, rtol=0)  # lam = 0: exactly the pretrained function
    if method == "quantum":
        assert adapter_params(model, ["cls"]) == pauli_count(MLP_SHAPES, 4, 1)
    else:
        assert adapter_params(model, ["cls"]) == sum((o + i) * 4 - 16 for o, i in MLP_SHAPES)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("base_model.qpeft_hub.", "base_model.model.cls.")) for n in trainable)
    for p in model.cls.parameters():
        p.requires_grad = False  # the adapter alone must lower the loss
    losses = train(model, x, y)
    assert losses[-1] < losses[0] - 0.05
    model.eval()
    with torch.no_grad():
        out = model(x)
        w0 = model.fc2.base_layer.weight.clone()
        qa.merge(model)
        assert not torch.equal(model.fc2.base_layer.weight, w0)
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
        qa.unmerge(model)
        assert torch.equal(model.fc2.base_layer.weight, w0)
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)


def file_tensor_bytes(path):
    from safetensors.torch import load_file

    return sum(t.numel() * t.element_size() for t in load_file(str(path)).values())


def test_state_dict_round_trip_and_bytes(tmp_path):
    c = cfg()
    base, model = mlp(c)
    x, y = data()
    train(model, x, y, steps=5)
    model.eval()
    sd = qa.adapter_state_dict(model)
    fresh = qa.apply(copy.deepcopy(base), c, MLP_TARGETS, ["cls"], total_steps=40)
    fresh.cls.load_state_dict(model.cls.state_dict())  # the head is saved by the harness, not the adapter
    fresh.eval()
    qa.load_adapter_state_dict(fresh, sd)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
    n_float = pauli_count(MLP_SHAPES, 4, 1)
    path = qa.save_adapter(model, tmp_path)
    assert (
        qa.record_extra(model)["adapter_file_bytes"] == path.stat().st_size
    )  # the file written, header included
    assert file_tensor_bytes(path) == 4 * n_float  # float32 angles and lam, nothing else
    # the run folder's adapter is a peft adapter: PeftModel.from_pretrained on the base gives the same outputs
    from peft import PeftModel

    plain = copy.deepcopy(base)
    plain.cls.load_state_dict(model.cls.state_dict())
    loaded = PeftModel.from_pretrained(plain, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_quantised_state_dict_and_modes(tmp_path):
    bits = 5
    base, model = mlp(cfg(quant_bits=bits, quant_mode="qat"))
    x, y = data()
    losses = train(model, x, y)  # QAT: gradients pass the rounding (STE)
    assert losses[-1] < losses[0]
    model.eval()
    sd = qa.adapter_state_dict(model)
    hub = qa._state(model)
    angles = sum(p.numel() for n, p in hub.named_parameters() if n.endswith(".theta"))
    n_lam = sum(p.numel() for p in hub.lam.values())
    packed = sum(math.ceil(p.numel() * bits / 8) for n, p in hub.named_parameters() if n.endswith(".theta"))
    path = qa.save_adapter(model, tmp_path)
    # bits per angle, float32 lam, an int32 (B, P) shape per bank; quant_bits itself is in adapter_config.json
    assert file_tensor_bytes(path) == packed + 4 * n_lam + 4 * 2 * len(hub.banks) < 4 * (angles + n_lam)
    assert qa.record_extra(model)["adapter_file_bytes"] == path.stat().st_size
    assert json.loads((tmp_path / "adapter_config.json").read_text())["quant_bits"] == bits
    fresh = qa.apply(copy.deepcopy(base), cfg(quant_bits=bits), MLP_TARGETS, ["cls"], total_steps=40)
    fresh.cls.load_state_dict(model.cls.state_dict())
    fresh.eval()
    qa.load_adapter_state_dict(fresh, sd)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=1e-5, rtol=1e-5)

    # PTQ: full-precision angles while training, quantised at eval and merge
    _, model = mlp(cfg(quant_bits=2, quant_mode="ptq"))
    train(model, x, y, steps=5)
    with torch.no_grad():
        model.train()
        out_fp = model(x)
        model.eval()
        out_q = model(x)
        assert not torch.allclose(out_fp, out_q, atol=1e-4)
        qa.merge(model)
        torch.testing.assert_close(model(x), out_q, atol=1e-5, rtol=1e-5)


def test_rank_errors_and_full():
    """A rank above a layer's width is the tuner's check at injection, named as the harness's setting; a rank
    below 1 the settings' own, when the config is composed."""
    with pytest.raises(
        ValueError, match=r"adapter.rank=17 exceeds min\(d_out, d_in\)=16 of fc1 .*adapter.rank <= 16"
    ):
        mlp(cfg(rank=17))
    with pytest.raises(QpeftError, match="adapter.rank=0 is out of range"):
        cfg(rank=0)
    model = MLP()  # a refused adapter leaves the model as it was: nothing frozen, nothing wrapped
    with pytest.raises(ValueError, match="adapter.rank=17"):
        qa.apply(model, cfg(rank=17), MLP_TARGETS, ["cls"], total_steps=40)
    assert all(p.requires_grad for p in model.parameters())
    assert all(type(m) in (MLP, nn.Linear) for m in model.modules())
    _, model = mlp(cfg(rank="full"))
    ks = [lam.shape[1] for lam in qa._state(model).lam.values()]
    assert sorted(ks) == [16, 24]
    assert adapter_params(model, ["cls"]) == sum(
        pauli_num_params(o, 1) + pauli_num_params(i, 1) + min(o, i) for o, i in MLP_SHAPES
    )
    with pytest.raises(QpeftError, match="quant_bits"):
        cfg(method="quantum_taylor", quant_bits=4)


def test_one_simulation_per_dimension_not_per_matrix(monkeypatch):
    calls = []
    real = PauliCircuit.group_matrices  # every simulation of a bank starts with its gates
    monkeypatch.setattr(
        PauliCircuit, "group_matrices", lambda self, a: calls.append(a.shape[0]) or real(self, a)
    )
    _, model = mlp(cfg())
    x, y = data()
    hub = qa._state(model)
    nn.functional.cross_entropy(model(x), y).backward()
    # 4 matrices, 8 factors, 2 distinct dimensions (16, 24): 2 batched simulations of 2 and 6 circuits
    assert sorted(calls) == [2, 6] and hub.num_simulations == 2 == len(hub.banks)
    model.eval()
    with torch.no_grad():  # eval: cached until a parameter changes
        model(x)
        model(x)
        assert hub.num_simulations == 4
        hub.lam["k4"].add_(0.1)
        model(x)
        assert hub.num_simulations == 6


BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def test_tiny_bert():
    base = tiny_bert().eval()
    model = qa.apply(copy.deepcopy(base), cfg(), BERT_TARGETS, ["classifier", "pooler"], total_steps=40)
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 100, (8, 12), generator=g), torch.randint(0, 2, (8,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=0, rtol=0)
    hub = qa._state(model)
    shapes = [(32, 32)] * 8 + [(64, 32), (32, 64)] * 2
    assert len(hub.index) == 12 and len(hub.banks) == 2
    assert adapter_params(model, ["classifier", "pooler"]) == pauli_count(shapes, 4, 1)
    for p in model.classifier.parameters():
        p.requires_grad = False
    before = hub.num_simulations
    model.train()
    losses = train(
        model, ids, labels, steps=12, lr=0.05, loss_fn=lambda: model(input_ids=ids, labels=labels).loss
    )
    assert hub.num_simulations - before == 12 * 2  # per step: one per distinct dimension (32, 64)
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits
        qa.merge(model)
        torch.testing.assert_close(model(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)
        qa.unmerge(model)
    fresh = qa.apply(copy.deepcopy(base), cfg(), BERT_TARGETS, ["classifier", "pooler"], total_steps=40)
    fresh.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("base_model.qpeft_hub.")},
        strict=False,
    )
    qa.load_adapter_state_dict(fresh, qa.adapter_state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(input_ids=ids).logits, out, atol=0, rtol=0)
    extra = qa.record_extra(model)
    assert (
        extra["adapted_matrices"] == 12 and extra["circuit_groups"] == 2 and extra["adapter_file_bytes"] > 0
    )
    assert extra["lora_r8_params"] == peft_lora_r8_count(base, BERT_TARGETS)


def peft_lora_r8_count(base: nn.Module, targets: list[str]) -> int:
    """Trainable LoRA parameters peft itself adds for r=8 on `targets` (the demo prints this count)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad = False
    lora = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
    return sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)


def test_gpt2_conv1d():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)).eval()
    model = qa.apply(copy.deepcopy(base), cfg(rank=2), ["c_attn", "c_proj"], [], total_steps=10)
    ids = torch.randint(0, 50, (4, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=0, rtol=0)
    shapes = [(96, 32), (32, 32), (32, 128)]  # c_attn, attn.c_proj, mlp.c_proj (d_out, d_in)
    assert adapter_params(model, []) == pauli_count(shapes, 2, 1)
    assert qa.record_extra(model)["lora_r8_params"] == peft_lora_r8_count(base, ["c_attn", "c_proj"])
    losses = train(model, ids, None, steps=8, loss_fn=lambda: model(input_ids=ids, labels=ids).loss)
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits
        qa.merge(model)
        torch.testing.assert_close(model(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)


def test_rank_masks(tmp_path):
    _, model = mlp(cfg(rank_mask=2))
    x, y = data()
    train(model, x, y, steps=3)
    lam = qa._state(model).lam["k4"]
    assert lam.grad is None or lam.grad[:, 2:].abs().max() == 0
    assert torch.all(lam[:, 2:] == 0) and lam[:, :2].abs().min() > 0
    assert qa.record_extra(model)["active_rank_mean"] == 2

    _, model = mlp(cfg(rank_mask="adaptive", target_rank=1, mask_warmup=0.1, mask_final=0.5, mask_interval=2))
    train(model, x, y, steps=40, on_step=True)
    hub = qa._state(model)
    assert qa.record_extra(model)["active_rank_mean"] == 1  # budget reached target_rank * matrices
    path = qa.save_adapter(model, tmp_path)
    assert qa.record_extra(model)["adapter_file_bytes"] == path.stat().st_size
    assert file_tensor_bytes(path) == 4 * pauli_count(MLP_SHAPES, 4, 1) + hub.mask_k4.numel()  # + bool masks
    assert hub.mask_k4.sum() == 4 and hub.score_k4.abs().sum() > 0


def test_bfloat16_model_runs():
    _, model = mlp(cfg())
    model.to(torch.bfloat16)
    x, _ = data()
    out = model(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def trainer_on_mlp(tmp_path, **settings):
    """(model, hub, trainer): Quantum-PEFT (rank 4) on the MLP with lam drawn at random (lam = 0 would give the
    angles no gradient), and a Trainer (lr 1e-3, weight decay 0.1) whose AdamW takes the method's groups."""
    from transformers import Trainer, TrainingArguments

    from qpeft.adapters.quantum_method import QuantumMethod, QuantumSettings
    from qpeft.hf_trainer import use_param_groups

    method = QuantumMethod(
        QuantumSettings(method="quantum", name="q", targets=MLP_TARGETS, rank=4, alpha=8.0, **settings)
    )
    torch.manual_seed(0)
    model = method.apply(MLP(), MLP_TARGETS, ["cls"], 40)
    hub = qa._state(model)
    with torch.no_grad():
        for lam in hub.lam.values():
            lam.normal_()
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, report_to=[], use_cpu=True
    )
    trainer = Trainer(model=model, args=args)
    use_param_groups(trainer, method.optimizer_groups(model, args.learning_rate, args.weight_decay))
    return model, hub, trainer


def test_circuit_lr_gives_the_angles_their_own_adam_step(tmp_path):
    """With circuit_lr the Trainer's AdamW moves each angle by circuit_lr on its first step (Adam's first
    update is lr * sign(grad)), lam by lr; angles carry no weight decay."""
    model, hub, trainer = trainer_on_mlp(tmp_path, circuit_lr=0.05)
    angles = list(hub.banks.parameters())
    lams = list(hub.lam.values())
    before = [p.detach().clone() for p in angles + lams]

    x, y = data()
    nn.functional.cross_entropy(model(x), y).backward()
    trainer.optimizer.step()

    for p, p0 in zip(angles + lams, before):
        lr, wd = (0.05, 0.0) if any(p is a for a in angles) else (1e-3, 0.1)
        expected = -lr * (p.grad.sign() + wd * p0)  # decoupled decay, then the sign step
        live = p.grad.abs() > 1e-6
        assert live.sum() > 0
        torch.testing.assert_close((p.detach() - p0)[live], expected[live], rtol=0.02, atol=1e-3 * lr)
    for g in trainer.optimizer.param_groups:
        if any(p is a for p in g["params"] for a in angles):
            assert g["weight_decay"] == 0.0 and all(any(p is a for a in angles) for p in g["params"])
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("circuit_lr,angle_lr", [(None, 0.05), (0.2, 0.2)])
def test_adapter_lr_moves_lam_and_angles_at_their_own_lr_and_the_head_at_the_trainers(
    tmp_path, circuit_lr, angle_lr
):
    """adapter_lr: lam steps by adapter_lr, the angles by the lr circuit_lr gives (null: adapter_lr; a number
    stays), the head (cls) by the Trainer's lr, through the Trainer's own AdamW; nothing trainable left out."""
    model, hub, trainer = trainer_on_mlp(tmp_path, circuit_lr=circuit_lr, adapter_lr=0.05)
    angles, lams = list(hub.banks.parameters()), list(hub.lam.values())
    head = list(model.cls.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(trained) == len(angles) + len(lams) + len(head)
    before = [p.detach().clone() for p in trained]
    x, y = data()
    nn.functional.cross_entropy(model(x), y).backward()
    trainer.optimizer.step()
    for p, p0 in zip(trained, before):
        if any(p is a for a in angles):
            lr, wd = angle_lr, 0.0
        elif any(p is a for a in lams):
            lr, wd = 0.05, 0.1
        else:
            lr, wd = 1e-3, 0.0 if p is model.cls.bias else 0.1
        expected = -lr * (p.grad.sign() + wd * p0)
        live = p.grad.abs() > 1e-6
        assert live.sum() > 0
        torch.testing.assert_close((p.detach() - p0)[live], expected[live], rtol=0.02, atol=1e-3 * lr)
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in trained)


def test_param_groups_put_the_circuits_at_circuit_lr_without_decay():
    """The groups a Method class hands the optimiser: every circuit parameter (and nothing else) at
    adapter.circuit_lr without weight decay."""
    _, model = mlp(cfg(circuit_lr=0.05))
    groups = get_method("quantum")(cfg(circuit_lr=0.05)).optimizer_groups(model, lr=1e-3, weight_decay=0.1)
    circuit = [g for g in groups if g["lr"] == 0.05]
    assert len(circuit) == 1 and circuit[0]["weight_decay"] == 0.0
    assert {id(p) for p in circuit[0]["params"]} == {id(p) for p in qa._state(model).banks.parameters()}


@pytest.mark.parametrize("extra", [{}, {"quant_bits": 4}, {"rank_mask": 2}], ids=str)
def test_adapter_file_bytes_on_meta_equal_the_written_file(extra, tmp_path):
    """scripts/params.py builds backbones on the meta device: the size must come out the same there."""
    from transformers import BertForSequenceClassification

    c = cfg(**extra)
    real = qa.apply(tiny_bert().eval(), c, BERT_TARGETS, ["classifier", "pooler"], total_steps=40)
    with torch.device("meta"):
        meta = BertForSequenceClassification(tiny_bert_config())
    meta = qa.apply(meta, c, BERT_TARGETS, ["classifier", "pooler"], total_steps=40)
    assert qa._state(meta).is_meta
    path = qa.save_adapter(real, tmp_path)
    assert qa.adapter_file_bytes(meta) == qa.adapter_file_bytes(real) == path.stat().st_size


@pytest.mark.parametrize("mask,kept", [(2, 2), ("adaptive", 1)], ids=["fixed", "adaptive"])
def test_masked_lam_entries_are_not_counted(mask, kept):
    """A rank mask keeps K - kept entries of each matrix's lam at zero for good: not parameters. The count is
    the angles plus `kept` per matrix (adaptive: target_rank, the final budget, AdaLoRA's convention), from the
    method the harness records it with; the adapter file still holds all K."""
    c = cfg(rank=4, rank_mask=mask, target_rank=1 if mask == "adaptive" else None)
    _, model = mlp(c)
    angles = sum(pauli_num_params(o, 1) + pauli_num_params(i, 1) for o, i in MLP_SHAPES)
    assert adapter_params(model, ["cls"]) == angles + 4 * len(MLP_SHAPES)  # what is trainable
    method = get_method("quantum")(c)
    assert method.adapter_params(model, ["cls"]) == angles + kept * len(MLP_SHAPES)


def test_masked_count_on_meta_matches_the_rule():
    """qpeft-params (meta device, no weights): the frontier's rank-masked full-rank MiniLM points count
    angles + 8 (or 64) lam entries per matrix, 36 matrices, against 15,624 unmasked."""
    from conftest import compose_cfg

    from qpeft import params

    def count(adapter: str) -> int:
        return params.count(compose_cfg(["backbone=minilm_l6", f"adapter=frontier/{adapter}"]))[
            "adapter_params"
        ]

    full = count("pauli_kfull_l1")
    assert full == 15_624
    angles = full - 36 * 384  # K = min(d_out, d_in) = 384 for all 36 matrices of MiniLM-L6
    assert count("pauli_kfull_l1_mask8") == angles + 36 * 8
    assert count("pauli_kfull_l1_mask64") == angles + 36 * 64
