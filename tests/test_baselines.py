"""Baselines through peft (LoRA, AdaLoRA, OFT, BOFT) and the parameter counts of the published tables."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import compose_cfg, tiny_bert
from peft import LoraConfig, get_peft_model
from peft.tuners.boft import layer as boft_layer
from transformers import AutoConfig, AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

from qpeft import params
from qpeft.adapters import get_method, peft_methods, settings_from_config
from qpeft.backbones import ImageClassifier
from qpeft.errors import QpeftError

BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
HEAD = ["classifier", "pooler"]


def count(*overrides: str) -> dict:
    return params.count(compose_cfg(list(overrides)))


# --- counts as published (adapter only, meta backbones, no weights) ---------------------------------------


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            ["backbone=deberta_v3_base", "adapter=lora", "adapter.r=8"],
            1_327_104,
        ),  # AdaLoRA paper, 72 matrices
        (["backbone=deberta_v3_base", "adapter=lora", "adapter.r=2"], 331_776),
        (
            ["backbone=roberta_base", "adapter=lora", "adapter.r=8", "protocol=lora_roberta"],
            294_912,
        ),  # LoRA paper
        (
            [
                "backbone=vit_b16_in21k",
                "adapter=lora",
                "adapter.r=8",
                "task=vtab/cifar10",
                "protocol=vit_vtab",
            ],
            294_912,
        ),
    ],
)
def test_published_lora_counts(overrides, expected):
    assert count(*overrides)["adapter_params"] == expected


def test_simple_baselines_on_tiny_bert_by_hand():
    # tiny_bert: hidden 32, 2 layers, intermediate 64, vocab 30522, 512 positions, 2 token types; 2 labels
    h, i, layers = 32, 64, 2
    per_layer_biases = (
        3 * h + h + h + i + h + h
    )  # q k v, attn out dense + LN, intermediate, output dense + LN
    per_layer = 3 * (h * h + h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    embeddings = 30522 * h + 512 * h + 2 * h + 2 * h
    head = (h * h + h) + (h * 2 + 2)  # pooler + classifier
    bitfit = count("backbone=tiny_bert", "adapter=bitfit")
    assert bitfit["adapter_params"] == h + layers * per_layer_biases == 608
    assert bitfit["head_params"] == head == 1122
    only = count("backbone=tiny_bert", "adapter=head_only")
    assert (only["adapter_params"], only["head_params"]) == (0, head)
    assert count("backbone=tiny_bert", "adapter=full")["adapter_params"] == embeddings + layers * per_layer


def test_adalora_counts_the_final_budget():
    # nominal before allocation: target_r triplets of (d_in + d_out + 1) per matrix; DeBERTa: 48 square
    # 768 matrices and 24 of 768 x 3072
    c = count("backbone=deberta_v3_base", "adapter=adalora", "adapter.target_r=8", "adapter.init_r=12")
    assert c["adapter_params"] == 8 * (48 * (768 + 768 + 1) + 24 * (768 + 3072 + 1)) == 1_327_104 + 8 * 72


def test_oft_and_boft_counts():
    # OFT: b(b-1)/2 angles per block, d_in / b blocks; BOFT: m full b x b blocks per d_in / b, plus d_out scales
    assert (
        count("backbone=roberta_base", "adapter=oft", "adapter.block_size=32")["adapter_params"]
        == 24 * 24 * 496
    )
    boft = count(
        "backbone=roberta_base", "adapter=boft", "adapter.block_size=8", "adapter.n_butterfly_factor=2"
    )
    assert boft["adapter_params"] == 24 * (2 * 768 * 8 + 768)


# --- the wrapper on tiny models ----------------------------------------------------------------------------


def method_for(settings: dict, targets: list[str]):
    """The Method object of `settings` (plus the name and targets every setting holds), checked."""
    return get_method(settings["method"])(
        settings_from_config({"name": "test", "targets": targets, **settings})
    )


def adapt(model, settings: dict, targets: list[str], head: list[str], total_steps: int):
    """(adapted model, its Method object)."""
    method = method_for(settings, targets)
    return method.apply(model, targets, head, total_steps), method


def tiny_vit(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(
        timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            embed_dim=48,
            depth=2,
            num_heads=2,
            num_classes=10,
        )
    )


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 100, (8, 12), generator=g),
        "labels": torch.randint(0, 2, (8,), generator=g),
    }


def images(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(4, 3, 32, 32, generator=g),
        "labels": torch.randint(0, 10, (4,), generator=g),
    }


def step(model, inputs, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = model(**inputs).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def test_lora_wrapper_equals_peft_applied_directly():
    torch.manual_seed(3)
    ours, method = adapt(
        tiny_bert(), {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, BERT_TARGETS, HEAD, 10
    )
    torch.manual_seed(3)
    ref = get_peft_model(
        tiny_bert(),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=BERT_TARGETS, modules_to_save=list(HEAD), task_type="SEQ_CLS"
        ),
    )
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert shapes(ours) == shapes(ref) and any("lora_A" in n for n in shapes(ours))
    x = batch()
    torch.testing.assert_close(ours(**x).logits, ref(**x).logits)
    step(ours, x), step(ref, x)
    torch.testing.assert_close(ours(**x).logits, ref(**x).logits)
    assert method.adapter_params(ours, HEAD) == 2 * (4 * 4 * (32 + 32) + 2 * 4 * (32 + 64))


def orth_regulariser(model) -> torch.Tensor:
    """AdaLoRA's regulariser recomputed: mean over A (r x d_in) and B (d_out x r) of ||A A^T - I||, ||B^T B - I||."""
    terms = []
    for n, p in model.named_parameters():
        if "lora_A" in n or "lora_B" in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0])))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_adalora_loss_carries_the_orthogonal_regulariser(kind):
    cfg = {
        "method": "adalora",
        "target_r": 1,
        "init_r": 3,
        "tinit": 0.1,
        "tfinal": 0.3,
        "deltaT": 1,
        "orth_reg": 0.5,
    }
    if kind == "bert":
        (model, _), x = adapt(tiny_bert(), cfg, BERT_TARGETS, HEAD, 30), batch()
    else:
        (model, _), x = adapt(tiny_vit(), cfg, ["attn.qkv"], ["head"], 30), images()
    with torch.no_grad():  # lora_E starts at zero, so the adapted model computes the base function
        total = model(**x).loss
        base = model.base_model.model(**x).loss  # the wrapped model itself: no regulariser
        assert total.item() > base.item()
        torch.testing.assert_close(total - base, 0.5 * orth_regulariser(model))


def test_adalora_budget_falls_and_is_recorded():
    cfg = {
        "method": "adalora",
        "target_r": 1,
        "init_r": 4,
        "tinit": 0.1,
        "tfinal": 0.3,
        "deltaT": 1,
        "orth_reg": 0.1,
        "beta1": 0.85,
        "beta2": 0.85,
    }
    (model, method), x = adapt(tiny_bert(), cfg, BERT_TARGETS, HEAD, 30), batch()
    assert method.record_facts(model)["adalora"]["rank_pattern"] is None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for global_step in range(30):
        model(**x).loss.backward()
        opt.step()
        method.on_step(model, global_step)  # as the Trainer callback: after the step, before zero_grad
        opt.zero_grad()
    extra = method.record_facts(model)["adalora"]
    ranks = extra["rank_pattern"]
    assert len(ranks) == extra["n_matrices"] == 12
    assert (
        extra["total_rank"] <= extra["final_budget_triplets"] == 12 < extra["initial_budget_triplets"] == 48
    )
    nonzero = sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)
    assert nonzero == extra["total_rank"]
    sizes = {
        n.removeprefix("base_model.model."): m.in_features + m.out_features + 1
        for n, m in model.named_modules()
        if hasattr(m, "lora_E")
    }
    assert (
        method.adapter_params(model, HEAD)
        == extra["final_params"]
        == sum(r * sizes[k] for k, r in ranks.items())
    )
    assert extra["allocated_params"] == sum(4 * (s - 1) + 4 for s in sizes.values())


@pytest.mark.parametrize(
    "settings",
    [{"method": "oft", "block_size": 8}, {"method": "boft", "block_size": 4, "n_butterfly_factor": 2}],
)
def test_oft_boft_train_and_merge(settings):
    (model, method), x = adapt(tiny_bert(), settings, BERT_TARGETS, HEAD, 10), batch()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("oft_" in n or "modules_to_save" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable) and any("oft_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "oft_" in n}
    losses = [step(model, x) for _ in range(8)]
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    model.eval()
    with torch.no_grad():
        out = model(**x).logits
        method.merge(model)
        torch.testing.assert_close(model(**x).logits, out, atol=1e-4, rtol=1e-4)
        method.unmerge(model)
        torch.testing.assert_close(model(**x).logits, out, atol=1e-4, rtol=1e-4)


def test_boft_keeps_its_butterfly_factor():
    model, _ = adapt(
        tiny_bert(), {"method": "boft", "block_size": 4, "n_butterfly_factor": 2}, BERT_TARGETS, HEAD, 10
    )
    assert all(p.shape[0] == 2 for n, p in model.named_parameters() if "boft_R" in n)


def test_lora_on_gpt2_conv1d_and_merge():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    )
    model, method = adapt(model, {"method": "lora", "r": 2}, ["c_attn"], [], 10)
    assert model.peft_config["default"].fan_in_fan_out and method.adapter_params(model, []) == 2 * 2 * (
        32 + 96
    )
    x = torch.randint(0, 100, (2, 8))
    step(model, {"input_ids": x, "labels": x})
    model.eval()
    with torch.no_grad():
        out = model(input_ids=x).logits
        method.merge(model)
        torch.testing.assert_close(model(input_ids=x).logits, out, atol=1e-4, rtol=1e-4)


def test_lora_and_adalora_train_the_timm_classifier():
    for settings in (
        {"method": "lora", "r": 2},
        {
            "method": "adalora",
            "target_r": 1,
            "init_r": 2,
            "tinit": 0,
            "tfinal": 0,
            "deltaT": 1,
            "orth_reg": 0.1,
        },
    ):
        model, _ = adapt(tiny_vit(), settings, ["attn.qkv"], ["head"], 10)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert any("lora_A" in n for n in trainable) and any("head.modules_to_save" in n for n in trainable)
        assert all("lora_" in n or ".head." in n for n in trainable)
        losses = [step(model, images()) for _ in range(5)]
        assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "settings,key",
    [
        ({"method": "oft", "block_size": 5}, "adapter.block_size"),
        ({"method": "boft", "block_size": 3, "n_butterfly_factor": 2}, "adapter.block_size"),
        ({"method": "lora", "r": 40}, "adapter.r"),
        ({"method": "adalora", "target_r": 4, "init_r": 2, "tinit": 0, "tfinal": 0}, "adapter.target_r"),
        ({"method": "adalora", "target_r": 1, "init_r": 2, "tinit": 6000, "tfinal": 22000}, "adapter.tinit"),
    ],
)
def test_bad_settings_name_the_setting(settings, key):
    with pytest.raises(QpeftError, match=key.replace(".", r"\.")):
        adapt(tiny_bert(), settings, BERT_TARGETS, HEAD, 100)


def test_on_step_is_a_no_op_for_other_methods():
    model, method = adapt(tiny_bert(), {"method": "lora", "r": 2}, BERT_TARGETS, HEAD, 10)
    state = copy.deepcopy(model.state_dict())
    method.on_step(model, 0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert method.record_facts(model) == {}


@pytest.mark.parametrize("model_type", ["deberta-v2", "roberta"])
def test_lora_and_adalora_on_deberta_and_roberta(model_type):
    arch = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        pad_token_id=0,
    )
    if model_type == "deberta-v2":  # DeBERTaV3's attention layout, as configs/backbone/tiny_deberta.yaml
        arch.update(
            relative_attention=True,
            position_buckets=32,
            pos_att_type=["p2c", "c2p"],
            type_vocab_size=0,
            position_biased_input=False,
            pooler_hidden_size=32,
        )
        targets, head = (
            [
                "query_proj",
                "key_proj",
                "value_proj",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ],
            ["classifier", "pooler"],
        )
    else:
        targets, head = ["query", "value"], ["classifier"]
    for settings in (
        {"method": "lora", "r": 2},
        {"method": "adalora", "target_r": 1, "init_r": 2, "tinit": 0, "tfinal": 0, "orth_reg": 0.1},
    ):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **arch))
        model, _ = adapt(model, settings, targets, head, 10)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert all(any(f"{h}.modules_to_save" in n for n in trainable) for h in head)  # pooler too
        assert step(model, batch()) > 0


class TorchBlockDiag:
    """A pure-torch stand-in for peft's compiled `fbd_cuda` kernel, so that peft's own dense forward can run
    with several butterfly factors on a CPU (as the reference of the parity test below)."""

    @staticmethod
    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        n, d, h, _ = x.shape
        return [
            torch.block_diag(*x[0]).unsqueeze(0) if n == 1 else torch.stack([torch.block_diag(*b) for b in x])
        ]

    @staticmethod
    def backward(grad: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        n, d, h, _ = x.shape
        return [grad.reshape(n, d, h, d, h).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2).contiguous()]


@pytest.mark.parametrize("m", [1, 2, 3])
def test_fast_boft_forward_matches_peft_dense_forward(m, monkeypatch):
    """qpeft's BOFT forward (permute, rotate block by block) against peft's own dense N x N forward, gradients
    included, in float64 with random (non-identity) rotations and a bias. peft's forward runs with its
    kernel path (`fbd_cuda_available`), the kernel given by a torch stand-in for this test only."""
    model, _ = adapt(
        tiny_bert(), {"method": "boft", "block_size": 4, "n_butterfly_factor": m}, BERT_TARGETS, HEAD, 10
    )
    model = model.double()
    layers = [mod for mod in model.modules() if isinstance(mod, boft_layer.Linear)]
    assert layers and all(isinstance(mod, peft_methods.FastBoftLinear) for mod in layers)
    assert all(mod.boft_R["default"].shape[0] == m for mod in layers)
    monkeypatch.setattr(boft_layer, "_FBD_CUDA", TorchBlockDiag())
    torch.manual_seed(1)
    for mod in layers:
        with torch.no_grad():
            mod.boft_R["default"].normal_(std=0.3)
            mod.boft_s["default"].uniform_(0.5, 1.5)
        x = torch.randn(3, 5, mod.in_features, dtype=torch.float64, requires_grad=True)
        outs, grads = [], []
        for peft_path in (False, True):
            if peft_path:
                monkeypatch.setattr(mod, "fbd_cuda_available", True)
                out = boft_layer.Linear.forward(mod, x)  # peft's own forward
            else:
                out = mod(x)
            w = torch.randn_like(out, generator=torch.Generator().manual_seed(2))
            params = [x, mod.boft_R["default"], mod.boft_s["default"]]
            outs.append(out)
            grads.append(torch.autograd.grad((out * w).sum(), params))
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
        for g_fast, g_peft in zip(*grads):
            torch.testing.assert_close(g_fast, g_peft, rtol=1e-9, atol=1e-10)
        assert not torch.allclose(outs[1], mod.base_layer(x))  # the rotation is really there
        # merge (peft's, through FastBoftLinear.get_delta_weight) against peft's own delta weight
        ours, s_ours = mod.get_delta_weight("default")
        theirs, s_theirs = boft_layer.Linear.get_delta_weight(mod, "default")
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
        monkeypatch.setattr(mod, "fbd_cuda_available", False)
