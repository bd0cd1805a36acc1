"""Mixed precision on CPU: DeBERTa's attention mask fill under autocast (transformers issue 35332) and every
method under bf16 / fp16 autocast and in bf16 weights. docs/gpu.md says what this does and does not cover."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from conftest import compose_cfg, run_cli
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForSequenceClassification

from qpeft import adapters, backbones, compat
from qpeft.config import run_spec

METHODS = ["quantum", "quantum_taylor", "lora", "adalora", "oft", "boft", "full", "head_only", "bitfit"]
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def method_setup(adapter: str, backbone: str = "tiny_deberta"):
    """(backbone cfg, resolved adapter cfg) exactly as run.py composes them (protocol defaults filled in)."""
    cfg = compose_cfg([f"backbone={backbone}", f"adapter={adapter}", "protocol=minilm_cpu"])
    return cfg.backbone, run_spec(cfg).adapter_settings


def adapted(model: torch.nn.Module, bb, acfg) -> torch.nn.Module:
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return adapters.get_method(acfg.method)(acfg).apply(model, list(bb.targets), list(bb.head), 100)


def bare_deberta(bb) -> torch.nn.Module:
    """The tiny DeBERTa-v2 straight from transformers, without qpeft's per-instance fix."""
    arch = OmegaConf.to_container(bb.arch, resolve=True)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(arch.pop("model_type"), num_labels=2, **arch)
    )


def batch(vocab: int = 1000, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[:2, 8:] = 0  # padding: the masked positions are what masked_fill fills
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def loss_and_grads(model: torch.nn.Module, amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under CPU autocast `amp` (None: none), backward outside it, as the Trainer does."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout masks in every call
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        out = model(**batch())
    out.loss.backward()
    return out.logits.detach().float(), out.loss.detach().float()


def assert_within(logits: torch.Tensor, ref: torch.Tensor, rel: float = 0.03) -> None:
    """Low-precision logits within `rel` of the largest float32 logit (random-init logits are ~1e-2, so an
    absolute tolerance would mean nothing); measured: at most 0.9% for every method, bf16 and fp16."""
    err = (logits - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item(), (err, ref.abs().max().item())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fill_value_of_a_float32_query_overflows_low_precision_scores(amp):
    """The mechanism itself: torch.finfo(float32).min does not fit bfloat16 or float16, so filling scores of
    those dtypes with it raises exactly the GPU probe's error; the scores' own minimum fits."""
    scores = torch.zeros(2, 3, dtype=AMP[amp])
    keep = torch.tensor([[True, True, False], [True, False, False]])
    with pytest.raises(RuntimeError, match="cannot be converted to type .* without overflow"):
        scores.masked_fill(~keep, torch.finfo(torch.float32).min)
    filled = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    assert torch.softmax(filled.float(), -1)[~keep].max() == 0


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("adapter", ["oft", "boft"])
def test_deberta_autocast_crash_reproduced_and_fixed(adapter, amp):
    """peft's OFT / BOFT return their float32 input's dtype from query_proj under autocast: unfixed,
    DeBERTa-v2 raises the GPU probe's overflow error on CPU too; the per-instance fix (which qpeft's backbone
    builder applies) removes it, and the logits stay within low-precision rounding of the float32 ones."""
    bb, acfg = method_setup(adapter)
    plain = adapted(bare_deberta(bb), bb, acfg)
    with pytest.raises(RuntimeError, match="without overflow"):
        loss_and_grads(plain, AMP[amp])
    assert compat.fix_deberta_autocast_mask(plain) == 2  # both layers' attention
    logits, loss = loss_and_grads(plain, AMP[amp])
    ref_logits, _ = loss_and_grads(plain, None)
    assert torch.isfinite(loss)
    assert_within(logits, ref_logits)


def test_deberta_v1_autocast_crash_fixed():
    """DeBERTa v1 adds its float32 q_bias to the query, so even the bare model hits the overflow."""
    config = AutoConfig.for_model(
        "deberta", vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, relative_attention=True, max_relative_positions=16, pos_att_type=["p2c", "c2p"],
        num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(RuntimeError, match="without overflow"):
        loss_and_grads(model, torch.bfloat16)
    compat.apply(model)
    logits, loss = loss_and_grads(model, torch.bfloat16)
    assert_within(logits, loss_and_grads(model, None)[0])


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_fix_changes_nothing_where_there_was_no_crash(amp):
    """Without autocast, and under autocast for LoRA (whose query is already bf16), the fixed model gives
    bitwise the same logits and gradients as the unfixed one."""
    bb, acfg = method_setup("lora")
    a, b = adapted(bare_deberta(bb), bb, acfg), adapted(bare_deberta(bb), bb, acfg)
    compat.apply(b)
    la, _ = loss_and_grads(a, AMP.get(amp))
    lb, _ = loss_and_grads(b, AMP.get(amp))
    assert torch.equal(la, lb)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), n


def test_fix_survives_deepcopy():
    """bench copies the built backbone per method: the rebound method must point at the copy."""
    bb, _ = method_setup("lora")
    model, _ = backbones.build(OmegaConf.merge(bb, {"tokenizer": None}), num_labels=2)
    clone = copy.deepcopy(model)
    attn = [m for m in clone.modules() if type(m).__name__ == "DisentangledSelfAttention"]
    assert attn and all(m.transpose_for_scores.__self__ is m for m in attn)


@pytest.mark.parametrize("adapter", METHODS)
def test_every_method_on_deberta_in_bf16_and_fp16(adapter):
    """Through qpeft's builder: every method trains a step under bf16 and fp16 autocast and in bf16 weights
    (model.to(bfloat16), no autocast) with finite loss and gradients, and its bf16-autocast logits are
    within bf16 rounding of its float32 logits."""
    bb, acfg = method_setup(adapter)
    model, _ = backbones.build(OmegaConf.merge(bb, {"tokenizer": None}), num_labels=2)
    model = adapted(model, bb, acfg)
    ref, _ = loss_and_grads(model, None)
    for amp in ("bf16", "fp16"):
        logits, loss = loss_and_grads(model, AMP[amp])
        assert torch.isfinite(loss), amp
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), amp
        assert_within(logits, ref)
    model.to(torch.bfloat16)
    logits, loss = loss_and_grads(model, None)
    assert torch.isfinite(loss)
    assert_within(logits, ref)


def test_trainer_bf16_path_on_deberta_with_oft(glue_dir, tmp_path):
    """The paper path's precision (trainer.precision=bf16: the Trainer's autocast) through run.py on CPU,
    with the adapter that produces a float32 query: before the fix this run raised the overflow error."""
    out = run_cli(
        [
            "task=glue/sst2",
            "backbone=tiny_deberta",
            "adapter=oft",
            "protocol=minilm_cpu",
            "trainer.precision=bf16",
            "trainer.max_length=32",
            "trainer.train_limit=64",
            "trainer.eval_limit=32",
            "trainer.batch_size=8",
            "trainer.max_steps=3",
            "trainer.eval_every_epoch=false",
            f"output_root={tmp_path}",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads(next(tmp_path.rglob("record.json")).read_text())
    assert rec["optimizer_steps"] == 3 and rec["config"]["trainer"]["precision"] == "bf16"
