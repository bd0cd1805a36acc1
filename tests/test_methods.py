"""The Method interface: registry, settings from every adapter config, the error contract, VeRA / FourierFT /
TinyLoRA (counts against their papers' formulas, training, merge), optimiser groups, adapter bytes."""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch
from conftest import REPO, compose_cfg, tiny_bert
from transformers import Trainer, TrainingArguments

from qpeft import adapters, params
from qpeft.adapters import METHODS, AdapterSettings, Method, get_method, register, settings_from_config
from qpeft.config import run_spec
from qpeft.errors import QpeftError
from qpeft.hf_trainer import use_param_groups
from qpeft.tuner.optim import decay_parameter_names

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
HEAD = ["classifier", "pooler"]
ADAPTER_FILES = sorted(p.stem for p in (REPO / "configs" / "adapter").glob("*.yaml"))


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 100, (8, 12), generator=g),
        "labels": torch.randint(0, 2, (8,), generator=g),
    }


def composed_settings(*overrides: str) -> AdapterSettings:
    """The adapter settings a run with these overrides builds (protocol values filled in as train does)."""
    cfg = compose_cfg(["backbone=tiny_bert", *overrides])
    return run_spec(cfg).adapter_settings


def adapt(settings: dict, model=None, total_steps: int = 20):
    """(model, method) for settings given as a dict (name and targets added)."""
    values = {"name": "test", "targets": TARGETS, **settings}
    method = get_method(values["method"])(settings_from_config(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = method.apply(model if model is not None else tiny_bert(), TARGETS, HEAD, total_steps)
    return model, method


# --- registry and configs ----------------------------------------------------------------------------------


def test_registry_holds_every_method_with_its_settings_class():
    expected = {
        "quantum",
        "quantum_taylor",
        "lora",
        "adalora",
        "oft",
        "boft",
        "vera",
        "fourierft",
        "tinylora",
        "full",
        "head_only",
        "bitfit",
    }
    assert set(METHODS) == expected
    for name, cls in METHODS.items():
        assert (
            issubclass(cls, Method) and cls.name == name and issubclass(cls.settings_class, AdapterSettings)
        )
        for f in dataclasses.fields(cls.settings_class):  # every option says what it means
            assert f.metadata.get("help"), f"{cls.settings_class.__name__}.{f.name} has no help text"
    with pytest.raises(
        QpeftError, match=r"unknown adapter method 'loraa': choose adapter= one of adalora, bitfit"
    ):
        get_method("loraa")
    with pytest.raises(ValueError, match="registered twice"):
        register("lora")(type("Again", (Method,), {"apply": lambda *a: None}))


@pytest.mark.parametrize("file", ADAPTER_FILES)
def test_every_adapter_file_builds_its_settings(file):
    """Every key of every configs/adapter file is an option of its method's settings, of the right type."""
    settings = composed_settings(f"adapter={file}")
    assert isinstance(settings, get_method(settings.method).settings_class)
    assert settings.targets == TARGETS and settings.name


def test_new_method_files_and_defaults():
    assert {"vera", "fourierft", "tinylora"} <= set(ADAPTER_FILES)
    vera = composed_settings("adapter=vera")
    assert (vera.name, vera.r, vera.d_initial, vera.save_projection) == ("vera_r256", 256, 0.1, True)
    fourier = composed_settings("adapter=fourierft")
    assert (fourier.name, fourier.n_frequency, fourier.scaling) == ("fourierft_n1000", 1000, 150.0)
    tiny = composed_settings("adapter=tinylora")
    assert (tiny.name, tiny.r, tiny.u, tiny.weight_tying, tiny.init) == (
        "tinylora_r2_u64",
        2,
        64,
        0.0,
        "zeros",
    )


# --- the error contract: every mistake names the setting to change -----------------------------------------


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["adapter=quantum", "adapter.layers=-1"], "adapter.layers"),
        (["adapter=lora", "adapter.r=0"], "adapter.r"),
        (["adapter=quantum", "adapter.quant_bits=0"], "adapter.quant_bits"),
        (["adapter=quantum", "adapter.quant_bits=17"], "adapter.quant_bits"),
        (["adapter=quantum", "adapter.init=banana"], "adapter.init"),
        (["adapter=quantum", "adapter.rank=0"], "adapter.rank"),
        (["adapter=quantum", "adapter.rank=half"], "adapter.rank"),
        (["adapter=quantum", "adapter.rank_mask=0"], "adapter.rank_mask"),
        (["adapter=quantum_k8", "adapter.rank_mask=9"], "adapter.rank_mask"),  # above rank 8
        (["adapter=quantum", "adapter.quant_mode=int8"], "adapter.quant_mode"),
        (["adapter=quantum", "adapter.dropout=1.0"], "adapter.dropout"),
        (["adapter=quantum", "adapter.alpha=0"], "adapter.alpha"),
        (["adapter=quantum", "adapter.circuit_lr=-0.1"], "adapter.circuit_lr"),
        (["adapter=quantum", "adapter.circuit_lr=wide"], "adapter.circuit_lr"),
        (["adapter=quantum", "adapter.scaling=depth"], "adapter.scaling"),
        (["adapter=quantum", "adapter.mask_warmup=0.9"], "adapter.mask_warmup"),  # after mask_final
        (["adapter=quantum_taylor", "adapter.order=0"], "adapter.order"),
        (["adapter=quantum_taylor", "adapter.quant_bits=4"], "adapter.quant_bits"),
        (["adapter=lora", "adapter.r=abc"], "adapter.r"),
        (["adapter=lora", "adapter.r=2.5"], "adapter.r"),
        (["adapter=lora", "adapter.lr=0"], "adapter.lr"),
        (["adapter=adalora", "adapter.target_r=12", "adapter.init_r=8"], "adapter.target_r"),
        (["adapter=adalora", "adapter.beta1=1.0"], "adapter.beta1"),
        (["adapter=boft", "adapter.n_butterfly_factor=0"], "adapter.n_butterfly_factor"),
        (["adapter=boft", "adapter.block_size=7"], "adapter.block_size"),  # odd, with butterfly factor 2
        (["adapter=oft", "adapter.module_dropout=-0.1"], "adapter.module_dropout"),
        (["adapter=bitfit", "adapter.bitfit_scope=some"], "adapter.bitfit_scope"),
        (["adapter=vera", "adapter.r=0"], "adapter.r"),
        (["adapter=fourierft", "adapter.n_frequency=0"], "adapter.n_frequency"),
        (["adapter=tinylora", "adapter.weight_tying=1.5"], "adapter.weight_tying"),
        (["adapter=tinylora", "adapter.init=gaussian"], "adapter.init"),
    ],
)
def test_bad_settings_are_refused_when_composed(overrides, key):
    with pytest.raises(QpeftError, match=rf"^{re.escape(key)}[= ]") as info:
        composed_settings(*overrides)
    assert "\n" not in str(info.value)


def test_an_unknown_option_is_refused_with_the_valid_ones():
    values = {"method": "lora", "name": "x", "targets": TARGETS, "r": 8, "foo": 1}
    with pytest.raises(
        QpeftError, match=r"^unknown option adapter\.foo: valid options are adapter_lr, alpha, dropout, lr,"
    ):
        settings_from_config(values)
    with pytest.raises(QpeftError, match=r"^adapter\.method is not set"):
        settings_from_config({"name": "x"})


@pytest.mark.parametrize(
    "settings,key",
    [
        ({"method": "oft", "block_size": 7}, "adapter.block_size"),  # does not divide the width 32
        ({"method": "lora", "r": 100}, "adapter.r"),  # above the layers' width 32
        ({"method": "tinylora", "r": 100}, "adapter.r"),
        ({"method": "fourierft", "n_frequency": 32 * 32 + 1}, "adapter.n_frequency"),  # above 32 x 32 entries
        ({"method": "quantum", "rank": 100}, "adapter.rank"),
        ({"method": "boft", "block_size": 32, "n_butterfly_factor": 2}, "adapter.block_size"),  # span 64 > 32
        ({"method": "adalora", "target_r": 8, "init_r": 12, "tinit": 15, "tfinal": 10}, "adapter.tinit"),
        ({"method": "adalora", "target_r": None, "tinit": 0, "tfinal": 0}, "adapter.target_r"),
        ({"method": "lora", "r": 2, "targets": ["nothing"]}, "adapter.targets"),
    ],
)
def test_settings_that_do_not_fit_the_model_name_the_setting(settings, key):
    targets = settings.pop("targets", TARGETS)
    method = get_method(settings["method"])(
        settings_from_config({"name": "t", "targets": targets, **settings})
    )
    with pytest.raises(QpeftError, match=key.replace(".", r"\.")) as info:
        method.apply(tiny_bert(), targets, HEAD, 20)
    assert "\n" not in str(info.value)


# --- VeRA, FourierFT, TinyLoRA ----------------------------------------------------------------------------

# the 12 adapted matrices of tiny_bert as (d_out, d_in): per layer query, key, value, attention.output.dense
# (32 x 32), intermediate.dense (64 x 32), output.dense (32 x 64)
SHAPES = 2 * [(32, 32)] * 4 + 2 * [(64, 32), (32, 64)]


def vera_count(r: int, shapes) -> int:
    """VeRA paper (Sec. 3.1): per adapted matrix, lambda_b (d_out) and lambda_d (r) train."""
    return sum(d_out + r for d_out, _ in shapes)


def fourierft_count(n: int, shapes) -> int:
    """FourierFT paper (Sec. 3): n trained spectral coefficients per adapted matrix."""
    return n * len(shapes)


def tinylora_count(u: int, tying: float, n_matrices: int) -> int:
    """TinyLoRA (peft's TinyLoraConfig docs): u entries of v per group, round(n (1 - tying)) groups (>= 1)."""
    return u * max(1, round(n_matrices * (1 - tying)))


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"method": "vera", "r": 16}, vera_count(16, SHAPES)),
        ({"method": "fourierft", "n_frequency": 50, "scaling": 150.0}, fourierft_count(50, SHAPES)),
        (
            {"method": "tinylora", "r": 2, "u": 8, "init": "uniform", "init_v_bound": 0.5},
            tinylora_count(8, 0, 12),
        ),
        ({"method": "tinylora", "r": 2, "u": 8, "weight_tying": 0.5}, tinylora_count(8, 0.5, 12)),
    ],
)
def test_new_methods_count_train_and_merge(settings, expected):
    model, method = adapt(settings)
    assert method.adapter_params(model, HEAD) == expected
    head = sum(
        p.numel() for n, p in tiny_bert().named_parameters() if n.startswith(("classifier", "bert.pooler"))
    )
    assert adapters.head_params(model, HEAD) == head
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    prefix = {"vera": "vera_lambda_", "fourierft": "fourierft_spectrum", "tinylora": "tinylora_v"}[
        settings["method"]
    ]
    assert all(prefix in n or "modules_to_save" in n for n in trained)

    x = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if prefix in n}
    losses = []
    for _ in range(4):
        loss = model(**x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)

    model.eval()
    with torch.no_grad():
        out = model(**x).logits
        weight = model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight
        w0 = weight.clone()
        method.merge(model)
        assert not torch.equal(weight, w0)  # the update is folded into the base weight
        torch.testing.assert_close(model(**x).logits, out, atol=1e-5, rtol=1e-4)
        method.unmerge(model)
        torch.testing.assert_close(weight, w0, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(**x).logits, out, atol=1e-5, rtol=1e-4)


def test_vera_and_tinylora_start_at_the_pretrained_function_fourierft_as_its_paper():
    x = batch()
    with torch.no_grad():
        base = tiny_bert().eval()(**x).logits
        for settings, same in (
            ({"method": "vera", "r": 16}, True),  # lambda_b = 0
            ({"method": "tinylora", "r": 2, "u": 8}, True),  # v = 0
            ({"method": "fourierft", "n_frequency": 50, "init_zero": True}, True),
            ({"method": "fourierft", "n_frequency": 50}, False),  # spectrum ~ N(0, 1), the paper's start
        ):
            model, _ = adapt(settings)
            # the head is copied into modules_to_save, so the adapted model starts from the same classifier
            assert torch.allclose(model.eval()(**x).logits, base, atol=1e-6) == same, settings


def test_counts_on_deberta_v3_base_shapes():
    """The full-size DeBERTaV3-base (meta device, scripts/params.py): 72 matrices, 48 of 768 x 768, 12 of
    3072 x 768 (intermediate) and 12 of 768 x 3072 (output.dense)."""
    shapes = 48 * [(768, 768)] + 12 * [(3072, 768), (768, 3072)]
    cases = [
        (["adapter=vera"], vera_count(256, shapes)),
        (["adapter=fourierft"], fourierft_count(1000, shapes)),
        (["adapter=tinylora"], tinylora_count(64, 0.0, 72)),
        (["adapter=tinylora", "adapter.weight_tying=1.0"], 64),
    ]
    for overrides, expected in cases:
        row = params.count(compose_cfg(["backbone=deberta_v3_base", *overrides]))
        assert row["matrices"] == 72 and row["adapter_params"] == expected, overrides
    assert vera_count(256, shapes) == 101_376 and fourierft_count(1000, shapes) == 72_000


# --- optimiser groups, merge of the simple methods, adapter bytes ------------------------------------------


def test_decay_parameter_names_follow_the_trainer(tmp_path):
    model, _ = adapt({"method": "lora", "r": 2})
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    assert decay_parameter_names(model) == set(
        Trainer(model=model, args=args).get_decay_parameter_names(model)
    )


def test_methods_without_own_groups_leave_the_optimiser_to_the_trainer():
    for settings in ({"method": "lora", "r": 2}, {"method": "full"}, {"method": "vera", "r": 4}):
        model, method = adapt(settings)
        assert method.optimizer_groups(model, 1e-3, 0.01) is None


@pytest.mark.parametrize(
    "settings,prefix",
    [
        ({"method": "vera", "r": 16}, "vera_lambda_"),
        ({"method": "fourierft", "n_frequency": 50}, "fourierft_"),
        ({"method": "lora", "r": 2}, "lora_"),
        ({"method": "tinylora", "r": 2, "u": 4}, "tinylora_v"),
    ],
)
def test_adapter_lr_moves_the_adapter_at_its_own_lr_and_the_head_at_the_trainers(tmp_path, settings, prefix):
    """adapter.adapter_lr: through the Trainer's own optimiser class, one AdamW step moves every adapter entry
    by adapter_lr (Adam's first step is lr * sign(grad), after decoupled decay) and every head entry by the
    Trainer's lr; nothing trainable is left out of the optimiser."""
    model, method = adapt({**settings, "adapter_lr": 0.05})
    with torch.no_grad():  # VeRA's lambda_b and LoRA's B start at 0, which gives lambda_d and A no gradient
        for n, p in model.named_parameters():
            if "vera_lambda_b" in n or "lora_B" in n:
                p.normal_()
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, report_to=[], use_cpu=True
    )
    trainer = Trainer(model=model, args=args)
    use_param_groups(trainer, method.optimizer_groups(model, args.learning_rate, args.weight_decay))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    # scaled: Adam's step does not depend on the gradient's scale but for its eps (1e-8), and VeRA's query / key
    # lambdas get gradients of ~1e-7 here
    (1e4 * model(**batch()).loss).backward()
    trainer.optimizer.step()
    kinds = set()
    for n, p in trained.items():
        kind = "adapter" if prefix in n else "head" if "modules_to_save" in n else n
        kinds.add(kind)
        lr = {"adapter": 0.05, "head": 1e-3}[kind]
        wd = 0.0 if n.endswith("bias") else 0.1
        expected = -lr * (p.grad.sign() + wd * before[n])
        live = p.grad.abs() > 1e-6
        assert live.sum() > 0, n
        torch.testing.assert_close((p.detach() - before[n])[live], expected[live], rtol=0.02, atol=1e-3 * lr)
    assert kinds == {"adapter", "head"}
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in trained.values())


@pytest.mark.parametrize("name", ["full", "head_only", "bitfit"])
def test_simple_methods_merge_as_a_no_op(name):
    model, method = adapt({"method": name})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    method.merge(model)
    method.unmerge(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_the_default_merge_refuses():
    class NoMerge(Method):
        settings_class = AdapterSettings
        name = "no_merge"

        def apply(self, model, targets, head, total_steps):
            return model

    method = NoMerge(AdapterSettings(method="no_merge", name="n", targets=["q"]))
    with pytest.raises(QpeftError, match="adapter=no_merge cannot merge"):
        method.merge(torch.nn.Linear(2, 2))
    assert method.record_facts(None) == {} and method.adapter_bytes(None) is None


def test_adapter_bytes():
    model, method = adapt({"method": "lora", "r": 2})
    assert method.adapter_bytes(model) == 4 * method.adapter_params(model, HEAD)  # float32, head apart
    r = 16
    model, method = adapt({"method": "vera", "r": r})
    projections = r * 64 + 64 * r  # A (r x largest d_in), B (largest d_out x r), saved with the adapter
    assert method.adapter_bytes(model) == 4 * (vera_count(r, SHAPES) + projections)
    model, method = adapt({"method": "vera", "r": r, "save_projection": False})
    assert method.adapter_bytes(model) == 4 * vera_count(r, SHAPES)
    model, method = adapt({"method": "bitfit"})
    assert method.adapter_bytes(model) == 4 * method.adapter_params(model, HEAD)
