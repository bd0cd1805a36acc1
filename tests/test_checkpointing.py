"""Gradient checkpointing (trainer.gradient_checkpointing, non-reentrant) through the Trainer: every method
trains to the same losses and parameters with and without it, on a tiny random BERT and a tiny ViT."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg
from safetensors.torch import load_file

from qpeft import train

METHODS = ["quantum", "quantum_taylor", "lora", "adalora", "oft", "boft", "full", "head_only", "bitfit"]


def run(tmp: Path, overrides: list[str], checkpointing: bool) -> tuple[list[float], dict]:
    """One in-process run; (logged train losses, trained parameters)."""
    out = tmp / ("ckpt" if checkpointing else "plain")
    cfg = compose_cfg([*overrides, f"trainer.gradient_checkpointing={checkpointing}", f"output_root={out}"])
    rec = train.train(cfg)
    run_dir = Path(rec["config"]["run_dir"])
    with open(run_dir / "metrics.csv", newline="") as f:
        losses = [float(r["value"]) for r in csv.DictReader(f) if r["key"] == "loss"]
    return losses, load_file(str(run_dir / "trained.safetensors"))


def assert_same_training(tmp_path: Path, overrides: list[str]) -> None:
    """Checkpointing recomputes the same forward (dropout included: the RNG state is restored), so losses and
    trained parameters agree to float32 summation-order noise: 1e-5 relative (observed: bitwise equal)."""
    plain_losses, plain = run(tmp_path, overrides, False)
    ckpt_losses, ckpt = run(tmp_path, overrides, True)
    assert len(plain_losses) == 4 and len(ckpt_losses) == 4
    torch.testing.assert_close(torch.tensor(ckpt_losses), torch.tensor(plain_losses), rtol=1e-5, atol=0)
    assert plain.keys() == ckpt.keys() and plain
    for name, p in plain.items():
        torch.testing.assert_close(ckpt[name], p, rtol=1e-5, atol=1e-7, msg=name)


TEXT = [
    "task=glue/sst2",
    "backbone=tiny_bert",
    "protocol=minilm_cpu",
    "trainer.max_length=32",
    "trainer.train_limit=64",
    "trainer.eval_limit=16",
    "trainer.batch_size=8",
    "trainer.max_steps=4",
    "trainer.logging_steps=1",
    "trainer.eval_every_epoch=false",
    "trainer.lr=1e-3",
]


@pytest.mark.parametrize("adapter", METHODS)
def test_checkpointing_changes_nothing_on_bert(adapter, glue_dir, tmp_path):
    assert_same_training(tmp_path, [*TEXT, f"adapter={adapter}"])


def test_checkpointing_is_active(glue_dir, tmp_path):
    """The setting reaches the model: the Trainer turns checkpointing on in every encoder layer, and the
    layers' forward runs twice per step (the recomputation in the backward)."""
    from transformers import Trainer

    seen = {}
    real = Trainer.train

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        model = self.model.get_base_model()
        seen["flags"] = [layer.gradient_checkpointing for layer in model.bert.encoder.layer]
        return out

    calls = []
    from transformers.models.bert.modeling_bert import BertAttention

    real_forward = BertAttention.forward

    def count(self, *a, **k):
        calls.append(torch.is_grad_enabled())
        return real_forward(self, *a, **k)

    Trainer.train, BertAttention.forward = spy, count
    try:
        run(tmp_path, [*TEXT, "adapter=lora", "trainer.eval_limit=8"], True)
    finally:
        Trainer.train, BertAttention.forward = real, real_forward
    assert seen["flags"] == [True, True]
    # 4 steps x 2 layers x (forward + recomputation), then the no-grad evaluation
    assert calls.count(True) == 16  # without checkpointing: 8


VISION = [
    "task=vtab/cifar10",
    "experiment=vtab_vit",
    "backbone=tiny_vit",
    "trainer.max_steps=4",
    "trainer.train_limit=64",
    "trainer.eval_limit=16",
    "trainer.batch_size=8",
    "trainer.logging_steps=1",
    "trainer.threads=1",
]


@pytest.mark.parametrize("adapter", ["lora", "oft", "full"])
def test_checkpointing_changes_nothing_on_timm_vit(adapter, tmp_path, monkeypatch):
    """timm's blocks checkpoint through the ImageClassifier wrapper (non-reentrant, timm's default)."""
    from conftest import VTAB_DIR

    if not (VTAB_DIR / "cifar10" / "test.txt").exists():
        pytest.skip(f"VTAB-1k cifar10 not found at {VTAB_DIR}: set QPEFT_VTAB_DIR")
    monkeypatch.setenv("QPEFT_VTAB_DIR", str(VTAB_DIR))
    assert_same_training(tmp_path, [*VISION, f"adapter={adapter}"])
