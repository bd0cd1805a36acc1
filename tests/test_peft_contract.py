"""peft's generic tuner contract, run against QuantumConfig with LoRA's own cases as controls.

A port (rewritten, not copied) of the method-independent tests of peft's tests/test_custom_models.py and
tests/testing_common.py: peft's custom models (MLP, EmbConv1D), its case matrix (target one or several layers,
`modules_to_save`, several adapters, bias modes, dtypes) and its assertions. The peft source read was the
newest stored snapshot of huggingface/peft (0.20.1.dev0, shortly before the pinned 0.21.2, whose wheel ships no
tests); every API used here is the pinned version's. Each test runs on every case; LoRA's cases are controls: a
test that fails on a QuantumConfig case and passes on LoRA's is Quantum-PEFT's failure.

Where Quantum-PEFT differs from LoRA by design the test says so and asserts what Quantum-PEFT does instead (a
clear refusal): targeting an nn.Embedding or nn.Conv1d, add_weighted_adapter, mixed adapter batches,
PeftMixedModel (docs/library.md, "peft features: what works and what does not"). Nothing is skipped.

Models are peft's sizes (a few hundred parameters); the whole file runs in well under a minute on one core.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftMixedModel, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

import qpeft  # noqa: F401  (registers the QUANTUM peft type)
from qpeft.quantum import quantize_angles
from qpeft.tuner import QuantumConfig, QuantumUnsupportedError
from qpeft.tuner.state import PERIOD


# ---- peft's custom models (same layers and sizes) ----
class MLP(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2, bias=bias)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X):
        X = X.to(self.lin0.weight.dtype)
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(X)))))


class EmbConv1D(nn.Module):
    """peft's ModelEmbConv1D: a GPT-2 Conv1D with a single output (nf=1), the D1 layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 5)
        self.conv1d = Conv1D(1, 5)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.lin0 = nn.Linear(10, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X):
        return self.sm(self.lin0(self.flat(self.relu(self.conv1d(self.emb(X))))))


MODELS = {"MLP": MLP, "EmbConv1D": EmbConv1D}


def inputs(model_id: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if model_id == "EmbConv1D":
        return {"X": torch.randint(0, 100, (9, 10), generator=g)}
    return {"X": torch.arange(90, dtype=torch.float32).view(9, 10) / 90 + torch.randn(9, 10, generator=g)}


# ---- the case matrix: peft's LoRA rows, and QuantumConfig rows mirroring them ----
# (Linear(20, 2) has rank 2: QuantumConfig refuses r > min(d_out, d_in), where LoRA accepts it; so r=2 there)
LORA = [
    ("MLP 1 LoRA", "MLP", LoraConfig, {"target_modules": "lin0"}),
    ("MLP 2 LoRA", "MLP", LoraConfig, {"target_modules": ["lin0"]}),
    ("MLP 3 LoRA", "MLP", LoraConfig, {"target_modules": ["lin1"]}),
    ("MLP 4 LoRA", "MLP", LoraConfig, {"target_modules": ["lin0", "lin1"]}),
    ("MLP 5 LoRA", "MLP", LoraConfig, {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("MLP 6 LoRA bias", "MLP", LoraConfig, {"target_modules": ["lin0", "lin1"], "bias": "lora_only"}),
    ("MLP 7 LoRA dropout", "MLP", LoraConfig, {"target_modules": ["lin0"], "lora_dropout": 0.1}),
    ("EmbConv1D LoRA", "EmbConv1D", LoraConfig, {"target_modules": ["conv1d"]}),
]
QUANTUM = [
    ("MLP 1 Quantum", "MLP", QuantumConfig, {"target_modules": "lin0"}),
    ("MLP 2 Quantum", "MLP", QuantumConfig, {"target_modules": ["lin0"]}),
    ("MLP 3 Quantum", "MLP", QuantumConfig, {"target_modules": ["lin1"], "r": 2}),
    ("MLP 4 Quantum", "MLP", QuantumConfig, {"target_modules": ["lin0", "lin1"], "r": 2}),
    ("MLP 5 Quantum", "MLP", QuantumConfig, {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("MLP 6 Quantum bias", "MLP", QuantumConfig, {"target_modules": ["lin0", "lin1"], "r": 2, "bias": "all"}),
    (
        "MLP 7 Quantum depth=2",
        "MLP",
        QuantumConfig,
        {"target_modules": ["lin0", "lin1"], "r": 2, "depth": 2},
    ),
    ("MLP 8 Quantum full", "MLP", QuantumConfig, {"target_modules": ["lin0", "lin1"], "r": "full"}),
    (
        "MLP 9 Quantum taylor",
        "MLP",
        QuantumConfig,
        {"target_modules": ["lin0", "lin1"], "r": 2, "mapping": "taylor"},
    ),
    ("MLP 10 Quantum quantised", "MLP", QuantumConfig, {"target_modules": ["lin0"], "quant_bits": 4}),
    ("MLP 11 Quantum rank_mask", "MLP", QuantumConfig, {"target_modules": ["lin0"], "rank_mask": 4}),
    ("MLP 12 Quantum dropout", "MLP", QuantumConfig, {"target_modules": ["lin0"], "dropout": 0.1}),
    ("EmbConv1D Quantum", "EmbConv1D", QuantumConfig, {"target_modules": ["conv1d"], "r": 1}),
    (
        "EmbConv1D Quantum taylor",
        "EmbConv1D",
        QuantumConfig,
        {"target_modules": ["conv1d"], "r": 1, "mapping": "taylor"},
    ),
]
CASES = LORA + QUANTUM
IDS = [c[0].replace(" ", "_") for c in CASES]
cases = pytest.mark.parametrize("name,model_id,config_cls,kw", CASES, ids=IDS)


def init_false(config_cls, kw: dict) -> dict:
    """A non-identity adapter at init (peft's set_init_weights_false)."""
    key = "init_lora_weights" if config_cls is LoraConfig else "init_weights"
    return {**kw, key: False}


def second(config_cls, kw: dict, keep: tuple[str, ...] = ()):
    """The config of a second adapter: peft allows one adapter that trains biases, and LoRA refuses to combine
    adapters that save the same module, so the second one has neither. (A new adapter's modules start in
    training mode, LoRA's too: tests that compare outputs call .eval() after add_adapter.)"""
    kw = {
        k: v
        for k, v in init_false(config_cls, kw).items()
        if k in keep or k not in ("bias", "modules_to_save")
    }
    return config_cls(**kw)


def make(model_id: str, config_cls, kw: dict, seed: int = 0, dtype=torch.float32, **config_kw):
    torch.manual_seed(seed)
    base = MODELS[model_id]().to(dtype).eval()
    torch.manual_seed(seed + 1)
    return base, get_peft_model(copy.deepcopy(base), config_cls(**kw, **config_kw)).eval()


def out(model, model_id: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(model_id))


def adapter_params(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def train(model, model_id: str, steps: int = 3, lr: float = 0.5) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(**inputs(model_id)).sum().backward()
        opt.step()
    model.eval()


# ---- the contract ----
@cases
def test_attributes(name, model_id, config_cls, kw):
    _, model = make(model_id, config_cls, kw)
    for attr in ("save_pretrained", "from_pretrained", "load_adapter", "set_adapter", "disable_adapter"):
        assert hasattr(model, attr)
    assert model.active_adapter == "default" and isinstance(model.peft_config["default"], config_cls)


@cases
def test_adapter_name(name, model_id, config_cls, kw):
    torch.manual_seed(0)
    model = get_peft_model(MODELS[model_id](), config_cls(**kw), adapter_name="other")
    assert model.active_adapters == ["other"] and list(model.peft_config) == ["other"]
    assert any(".other" in n for n in adapter_params(model)) and not any(
        "default" in n for n, _ in model.named_parameters()
    )


@cases
def test_in_features_out_features_exposed(name, model_id, config_cls, kw):
    _, model = make(model_id, config_cls, kw)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "base_layer")]
    assert layers
    for layer in layers:
        base = layer.get_base_layer()
        d_in, d_out = (
            (base.weight.shape[0], base.weight.shape[1])
            if isinstance(base, Conv1D)
            else (
                base.in_features,
                base.out_features,
            )
        )
        assert (layer.in_features, layer.out_features) == (d_in, d_out)


@cases
def test_forward_output_finite_and_identity_at_init(name, model_id, config_cls, kw):
    base, model = make(model_id, config_cls, kw)
    y = out(model, model_id)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, out(base, model_id))  # both methods start as the base model


@cases
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=["f64", "bf16", "f16"])
def test_forward_and_merge_in_dtype(name, model_id, config_cls, kw, dtype):
    """peft's test_forward_float16 / _bfloat16 (no autocast), and float64: forward, merge and unmerge in the
    model's dtype, the merged model agreeing with the unmerged one to that dtype's precision."""
    _, model = make(model_id, config_cls, init_false(config_cls, kw), dtype=dtype)
    y = out(model, model_id)
    assert y.dtype == dtype and torch.isfinite(y).all()
    model.merge_adapter()
    tol = {torch.float64: 1e-10, torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(out(model, model_id), y, atol=tol, rtol=tol)
    model.unmerge_adapter()
    torch.testing.assert_close(out(model, model_id), y, atol=tol, rtol=tol)


@cases
def test_training_gives_every_trainable_parameter_a_gradient(name, model_id, config_cls, kw):
    """peft's _test_training: after backward, every trainable adapter parameter has a gradient, nothing else."""
    _, model = make(model_id, config_cls, init_false(config_cls, kw))
    model.train()
    model(**inputs(model_id)).sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n


@cases
def test_only_params_are_updated(name, model_id, config_cls, kw):
    """peft's test_only_params_are_updated: three SGD steps at lr 0.5 from the default init move every trainable
    parameter (a zero-size one cannot move: D1) and no frozen one."""
    _, model = make(model_id, config_cls, kw)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, model_id)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.isfinite(p).all() and not torch.allclose(before[n], p, atol=1e-4, rtol=1e-4), n
        else:
            assert torch.allclose(before[n], p, atol=1e-4, rtol=1e-4), n


@cases
def test_save_load_roundtrip_and_parameters_after_loading(name, model_id, config_cls, kw, tmp_path):
    """peft's _test_save_pretrained (safetensors and pickle), test_save_load_roundtrip and
    test_parameters_after_loading_model: a trained adapter reloads with equal parameters and equal outputs."""
    base, model = make(model_id, config_cls, kw)
    train(model, model_id, lr=0.05)
    y = out(model, model_id)
    for safe in (True, False):
        folder = tmp_path / f"safe{safe}"
        model.save_pretrained(folder, safe_serialization=safe)
        assert (folder / ("adapter_model.safetensors" if safe else "adapter_model.bin")).exists()
        assert (
            json.loads((folder / "adapter_config.json").read_text())["peft_type"]
            == model.peft_config["default"].peft_type
        )
        loaded = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
        assert isinstance(loaded.peft_config["default"], config_cls)
        mine, theirs = adapter_params(model), dict(loaded.named_parameters())
        bits = getattr(model.peft_config["default"], "quant_bits", None)
        for n, p in mine.items():
            if bits is not None and n.endswith(".theta"):
                # documented difference: a quantised adapter saves its angles' codes, so the loaded angles are
                # the grid angles the trained model computes with, not its latent ones
                p = quantize_angles(p, bits, ste=False, period=PERIOD)
            assert torch.equal(p, theirs[n]), n
        assert torch.equal(out(loaded, model_id), y)


@cases
def test_save_pretrained_selected_adapters_and_load_multiple(name, model_id, config_cls, kw, tmp_path):
    """peft's _test_save_pretrained_selected_adapters and _test_load_multiple_adapters."""
    base, model = make(model_id, config_cls, init_false(config_cls, kw))
    torch.manual_seed(5)
    model.add_adapter("other", second(config_cls, kw))
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_config.json").exists()
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    for adapter in ("default", "other"):
        model.set_adapter(adapter)
        loaded.set_adapter(adapter)
        torch.testing.assert_close(out(loaded, model_id), out(model, model_id), atol=0, rtol=0)


@cases
def test_load_model_low_cpu_mem_usage(name, model_id, config_cls, kw, tmp_path):
    base, model = make(model_id, config_cls, init_false(config_cls, kw))
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, low_cpu_mem_usage=True).eval()
    assert not any(p.is_meta for p in loaded.parameters())
    torch.testing.assert_close(out(loaded, model_id), out(model, model_id), atol=0, rtol=0)


@cases
def test_merge_layers(name, model_id, config_cls, kw):
    """peft's _test_merge_layers: merged = unmerged output; merge_and_unload gives a plain model with it."""
    base, model = make(model_id, config_cls, init_false(config_cls, kw))
    y = out(model, model_id)
    assert not torch.allclose(y, out(base, model_id))
    model.merge_adapter()
    torch.testing.assert_close(out(model, model_id), y, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    merged = copy.deepcopy(model).merge_and_unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    torch.testing.assert_close(out(merged, model_id), y, atol=1e-5, rtol=1e-5)
    # safe_merge and its refusal of a broken adapter (peft's _test_safe_merge, _test_merge_layers_nan)
    safe = copy.deepcopy(model).merge_and_unload(safe_merge=True)
    torch.testing.assert_close(out(safe, model_id), y, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for p in adapter_params(model).values():
            if (
                p.numel()
                and p.dim() > 1
                and "modules_to_save" not in next(n for n, q in model.named_parameters() if q is p)
            ):
                p.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaNs detected"):
        model.merge_adapter(safe_merge=True)


@cases
def test_merge_layers_is_idempotent(name, model_id, config_cls, kw):
    _, model = make(model_id, config_cls, init_false(config_cls, kw))
    model.merge_adapter()
    y = out(model, model_id)
    with warnings.catch_warnings(record=True):
        model.merge_adapter()
    torch.testing.assert_close(out(model, model_id), y, atol=0, rtol=0)


@cases
def test_disable_adapters(name, model_id, config_cls, kw):
    """peft's test_disable_adapters and _with_merging: disabled gives the base output, merged or not."""
    base, model = make(model_id, config_cls, kw)
    train(model, model_id, lr=0.05)
    y_base, y = out(base, model_id), out(model, model_id)
    assert not torch.allclose(y, y_base)
    if kw.get("bias", "none") != "none":
        # trained biases are the base model's own: disabling cannot restore them, and peft says so
        # (peft's test_disable_adapter_with_bias_warns)
        with pytest.warns(UserWarning, match="Careful, disabling adapter layers with bias"):
            with model.disable_adapter():
                pass
        return
    with model.disable_adapter():
        torch.testing.assert_close(out(model, model_id), y_base, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out(model, model_id), y, atol=0, rtol=0)
    model.merge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(out(model, model_id), y_base, atol=1e-5, rtol=1e-5)


@cases
def test_active_adapter_and_requires_grad(name, model_id, config_cls, kw):
    """peft's test_active_adapter and TestRequiresGrad: set_adapter switches the output and what trains."""
    _, model = make(model_id, config_cls, init_false(config_cls, kw))
    y0 = out(model, model_id)
    model.add_adapter("other", second(config_cls, kw))
    model.eval()
    assert model.active_adapters == ["default"]
    torch.testing.assert_close(out(model, model_id), y0, atol=0, rtol=0)
    assert not any(".other" in n for n in adapter_params(model))  # an added adapter is not trained until set
    model.set_adapter("other")
    assert model.active_adapters == ["other"] and not torch.allclose(out(model, model_id), y0)
    trainable = adapter_params(model)
    assert trainable and all(".default" not in n for n in trainable)
    model.set_adapter("default")
    torch.testing.assert_close(out(model, model_id), y0, atol=0, rtol=0)


@cases
def test_delete_adapter(name, model_id, config_cls, kw):
    """peft's _test_delete_adapter, _test_delete_inactive_adapter, _test_delete_unknown_adapter_raises."""
    _, model = make(model_id, config_cls, init_false(config_cls, kw))
    y0 = out(model, model_id)
    model.add_adapter("other", second(config_cls, kw))
    model.eval()
    model.delete_adapter("other")  # inactive
    assert list(model.peft_config) == ["default"] and not any(
        "other" in n for n, _ in model.named_parameters()
    )
    torch.testing.assert_close(out(model, model_id), y0, atol=0, rtol=0)
    model.add_adapter("other", second(config_cls, kw))
    model.eval()
    model.set_adapter("other")
    model.delete_adapter("other")  # active: peft falls back to the remaining one
    assert model.active_adapters == ["default"]
    torch.testing.assert_close(out(model, model_id), y0, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not found|does not exist"):
        model.delete_adapter("unknown")


@cases
def test_unload_adapter(name, model_id, config_cls, kw):
    base, model = make(model_id, config_cls, init_false(config_cls, kw))
    plain = model.unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in plain.modules())
    torch.testing.assert_close(out(plain, model_id), out(base, model_id), atol=0, rtol=0)


@cases
def test_adding_multiple_adapters_with_bias_raises(name, model_id, config_cls, kw):
    """peft's _test_adding_multiple_adapters_with_bias_raises: two adapters that train biases are refused."""
    bias = "lora_only" if config_cls is LoraConfig else "quantum_only"
    _, model = make(model_id, config_cls, {**kw, "bias": bias})
    with pytest.raises(ValueError, match="bias"):
        model.add_adapter("other", config_cls(**{**kw, "bias": bias}))


@cases
def test_adapter_name_makes_no_difference(name, model_id, config_cls, kw):
    """peft's test_adapter_name_makes_no_difference: the same seed under different adapter names, same output."""
    outputs = []
    for adapter in ("default", "other", "x" * 30):
        torch.manual_seed(0)
        base = MODELS[model_id]().eval()
        torch.manual_seed(1)
        model = get_peft_model(base, config_cls(**init_false(config_cls, kw)), adapter_name=adapter).eval()
        outputs.append(out(model, model_id))
    for y in outputs[1:]:
        torch.testing.assert_close(y, outputs[0], atol=0, rtol=0)


# ---- what LoRA offers and Quantum-PEFT refuses, each with one clear error ----
@cases
def test_add_weighted_adapter(name, model_id, config_cls, kw):
    """LoRA combines adapters (peft's _test_weighted_combination_of_adapters); Quantum-PEFT refuses: a weighted
    sum of circuit updates is not a circuit update."""
    kw = {
        k: v for k, v in kw.items() if k not in ("bias", "modules_to_save")
    }  # LoRA refuses to combine those
    _, model = make(model_id, config_cls, init_false(config_cls, kw))
    model.add_adapter("other", second(config_cls, kw))
    model.eval()
    if config_cls is LoraConfig:
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix", combination_type="cat")
        assert "mix" in model.peft_config
    else:
        with pytest.raises(QuantumUnsupportedError, match="add_weighted_adapter"):
            model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix")


@cases
def test_mixed_adapter_batches(name, model_id, config_cls, kw):
    """LoRA runs each sample with its own adapter (peft's _test_mixed_adapter_batches: each row equals that
    adapter's own output); Quantum-PEFT refuses `adapter_names=` rather than ignoring it."""
    _, model = make(model_id, config_cls, init_false(config_cls, kw))
    model.add_adapter("other", second(config_cls, kw, keep=("modules_to_save",)))
    model.eval()
    x = inputs(model_id)
    names = ["default", "other", "__base__"] * 3
    if config_cls is LoraConfig:
        with torch.no_grad():
            mixed = model(**x, adapter_names=names)
            for adapter in ("default", "other"):
                model.set_adapter(adapter)
                rows = [i for i, a in enumerate(names) if a == adapter]
                torch.testing.assert_close(mixed[rows], model(**x)[rows])
    else:
        with pytest.raises(QuantumUnsupportedError, match="adapter_names"):
            model(**x, adapter_names=names)


@pytest.mark.parametrize("config_cls", [LoraConfig, QuantumConfig])
def test_lora_only_targets_and_mixed_models(config_cls):
    """LoRA adapts nn.Embedding (peft's EmbConv1D 'emb' rows) and mixes with other tuners in PeftMixedModel;
    Quantum-PEFT adapts nn.Linear and GPT-2 Conv1D only, and peft's PeftMixedModel does not take it."""
    kw = {"target_modules": ["emb"], **({"r": 2} if config_cls is QuantumConfig else {})}
    if config_cls is LoraConfig:
        get_peft_model(EmbConv1D(), LoraConfig(**kw))
        PeftMixedModel(MLP(), LoraConfig(target_modules=["lin0"]))
    else:
        with pytest.raises(ValueError, match="adapts nn.Linear and Conv1D"):
            get_peft_model(EmbConv1D(), QuantumConfig(**kw))
        with pytest.raises((TypeError, ValueError), match="(?i)compatible|support"):
            PeftMixedModel(MLP(), QuantumConfig(target_modules=["lin0"]))


def test_the_matrix_has_lora_controls_for_each_model():
    """Every model the QuantumConfig cases use has LoRA control cases, and the other way round."""
    assert {m for _, m, c, _ in CASES if c is LoraConfig} == {m for _, m, c, _ in CASES if c is QuantumConfig}
