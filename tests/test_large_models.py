"""Large decoders: a tiny random Mistral-style model trains end to end through run.py with every method, and
the Mistral-7B GLUE preset composes with its memory-saving settings (meta device: no weights)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import compose_cfg, run_cli

from qpeft import hf_trainer, jobs, params
from qpeft.config import run_spec

METHODS = ["quantum", "quantum_taylor", "lora", "adalora", "oft", "boft", "full", "head_only", "bitfit"]
TINY = [
    "task=glue/sst2",
    "backbone=tiny_mistral",
    "protocol=minilm_cpu",
    "trainer.max_length=32",
    "trainer.train_limit=64",
    "trainer.eval_limit=32",
    "trainer.batch_size=8",
    "trainer.max_steps=3",
    "trainer.logging_steps=1",
    "trainer.eval_every_epoch=false",
    "trainer.threads=1",
]
# tiny_mistral: hidden 32, 4 query heads and 2 key/value heads of width 8, 2 layers, 2 labels
Q_SHAPE, V_SHAPE, LAYERS = (32, 32), (16, 32), 2  # (d_out, d_in) of q_proj and v_proj


def records(root: Path) -> dict[str, dict]:
    out = {}
    for path in root.rglob("record.json"):
        rec = json.loads(path.read_text())
        with open(path.parent / "metrics.csv", newline="") as f:
            rec["losses"] = [float(r["value"]) for r in csv.DictReader(f) if r["key"] == "loss"]
        out[rec["adapter"]] = rec
    return out


def test_tiny_mistral_trains_with_every_method(glue_dir, tmp_path):
    """One run.py sweep over the nine methods: each takes its 3 steps with finite losses and is evaluated;
    the seq-cls head `score` (no bias) is trained; LoRA's count matches r (d_in + d_out) on q_proj, v_proj."""
    out = run_cli(["-m", f"adapter={','.join(METHODS)}", *TINY, f"output_root={tmp_path}"], timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = records(tmp_path)
    assert sorted(recs) == sorted(METHODS)
    for method, rec in recs.items():
        assert rec["optimizer_steps"] == 3 and len(rec["losses"]) == 3, method
        assert all(math.isfinite(x) for x in rec["losses"]), method
        assert 0 <= rec["score"] <= 1 and rec["head_params"] == 32 * 2, method
    lora = LAYERS * sum(8 * (d_out + d_in) for d_out, d_in in (Q_SHAPE, V_SHAPE))
    assert recs["lora"]["adapter_params"] == lora == 1792
    assert recs["bitfit"]["adapter_params"] == 0  # Mistral has no biases: BitFit trains the head only


@pytest.mark.parametrize("adapter", ["lora", "quantum"])
def test_tiny_mistral_with_the_7b_preset_settings(adapter, glue_dir, tmp_path):
    """The memory-saving settings of experiment=glue_mistral (bf16 autocast and gradient checkpointing) on
    the tiny decoder, through run.py."""
    args = [*TINY, f"adapter={adapter}", "trainer.precision=bf16", "trainer.gradient_checkpointing=true"]
    out = run_cli([*args, f"output_root={tmp_path}"])
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = records(tmp_path).values()
    assert rec["optimizer_steps"] == 3 and all(math.isfinite(x) for x in rec["losses"])
    assert rec["config"]["trainer"]["gradient_checkpointing"] is True


def test_glue_mistral_preset_composes():
    """experiment=glue_mistral: the real 7B shape with weights (meta off), bf16, checkpointing, the
    protocol's batch; LoRA's count on the meta model matches r (d_in + d_out) over q_proj and v_proj."""
    cfg = compose_cfg(["experiment=glue_mistral", "task=glue/rte", "adapter=lora"])
    assert cfg.backbone.name == "mistral_7b" and cfg.backbone.meta is False
    assert cfg.trainer.precision == "bf16" and cfg.trainer.gradient_checkpointing is True
    spec = run_spec(cfg)
    assert spec.trainer.batch_size == 32 and spec.trainer.max_length == 320
    args = hf_trainer.training_args(spec.trainer, Path("/tmp/unused"), 0, True, "x", False)
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    row = params.count(cfg)
    # 32 layers; q_proj 4096 -> 4096, v_proj 4096 -> 1024 (8 key/value heads of 128)
    assert row["adapter_params"] == 32 * (8 * (4096 + 4096) + 8 * (4096 + 1024)) == 3_407_872
    assert row["backbone_params"] == 7_110_668_288  # Mistral-7B without its LM head, plus score (4096 x 2)
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # jobs.expand initialises Hydra itself
    runs, _ = jobs.expand(["experiment=glue_mistral"])
    assert len(runs) == 8 * 7 * 3  # quantum_paper (the paper's rule) beside quantum_k8
