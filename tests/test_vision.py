"""The vision path end to end: a tiny random timm ViT on the offline VTAB-1k cifar10 folder, every adapter.

Runs call `qpeft.train.train` in-process on configs composed as run.py composes them (one run goes through
run.py itself). Each run: 64 training images, 1 epoch of batch 16, the VTAB preset (`experiment=vtab_vit`:
the test set evaluated once, at the end), on one CPU thread (a tiny model gains nothing from more).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import REPO, VTAB_DIR, compose_cfg, run_cli
from omegaconf import DictConfig, OmegaConf, open_dict

from qpeft import adapters, hf_trainer, tasks, train
from qpeft.config import run_spec
from qpeft.quantum import pauli_num_params, taylor_num_params

ADAPTERS = sorted(p.stem for p in (REPO / "configs/adapter").glob("*.yaml"))
SMALL = [
    "task=vtab/cifar10",
    "experiment=vtab_vit",
    "backbone=tiny_vit",
    "trainer.epochs=1",
    "trainer.train_limit=64",
    "trainer.batch_size=16",
    "trainer.logging_steps=1",
]
TINY_VIT_QKV = [(144, 48)] * 2  # (d_out, d_in) of the fused qkv in each of the 2 blocks


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread, the data folder in the environment, Hydra's own env vars left alone."""
    if not (VTAB_DIR / "cifar10" / "test.txt").exists():
        pytest.skip(f"VTAB-1k cifar10 not found at {VTAB_DIR}: set QPEFT_VTAB_DIR")
    monkeypatch.setenv("QPEFT_VTAB_DIR", str(VTAB_DIR))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vit_cfg(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The composed run config with its run folder under tmp_path."""
    cfg = compose_cfg([*SMALL, *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    return cfg


def logged(run_dir: Path, key: str) -> list[float]:
    """Every value of `key` in the run's metrics.csv, in order."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["key"] == key]


def expected_quantum_params(method: str, rank: int | str) -> int:
    """Per matrix: U (d_out x K) and V (d_in x K) from their circuits, plus K singular values."""
    total = 0
    for d_out, d_in in TINY_VIT_QKV:
        k = min(d_out, d_in) if rank == "full" else rank
        if method == "quantum":
            total += pauli_num_params(d_out, 1) + pauli_num_params(d_in, 1) + k
        else:
            total += taylor_num_params(d_out, k) + taylor_num_params(d_in, k) + k
    return total


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_trains_the_vit_and_records_top1(adapter, tmp_path):
    cfg = vit_cfg(tmp_path, [f"adapter={adapter}", "trainer.eval_limit=64"])
    rec = train.train(cfg)
    assert set(rec["metrics"]) == {"top1"} and 0 <= rec["score"] <= 1 and rec["main_metric"] == "top1"
    assert rec["task_family"] == "vtab" and "task_group" in rec and rec["task_group"] is None  # cifar10
    assert rec["train_samples"] == 64 and rec["eval_samples"] == {"test": 64} and rec["optimizer_steps"] == 4
    assert rec["head_params"] == 48 * 10 + 10
    if adapter == "head_only":
        assert rec["adapter_params"] == 0
    else:
        assert rec["adapter_params"] > 0
    if adapter in ("quantum", "quantum_taylor"):
        assert rec["adapter_params"] == expected_quantum_params(
            cfg.adapter.method, rec["adapter_cfg"]["rank"]
        )
    run_dir = Path(cfg.run_dir)
    losses = logged(run_dir, "loss")
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)  # one per step
    assert not logged(run_dir, "eval_test_top1")  # the preset evaluates once, after training
    assert json.loads((run_dir / "record.json").read_text())["metrics"] == rec["metrics"]


def test_tune_mode_evaluates_on_val200(tmp_path):
    rec = train.train(vit_cfg(tmp_path, ["adapter=head_only", "task.mode=tune"]))
    assert rec["eval_samples"] == {"val200": 200} and set(rec["metrics"]) == {"top1"}


def test_run_py_end_to_end_on_the_full_test_set(tmp_path):
    args = [a for a in SMALL if a != "experiment=vtab_vit"] + ["adapter=quantum", "protocol=vit_vtab"]
    out = run_cli([*args, f"output_root={tmp_path}"], timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "adhoc" / "cifar10" / "tiny_vit" / "quantum_kfull_l1_ws" / "seed0"
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["eval_samples"] == {"test": 1000} and 0 <= rec["metrics"]["top1"] <= 1
    assert len(logged(run_dir, "eval_test_top1")) == 1  # eval_every_epoch defaults to true outside the preset
    assert rec["hyperparameters"]["drop_path"] == rec["config"]["trainer"]["drop_path"] == 0.1
    assert json.loads(out.stdout.strip().splitlines()[-1])["top1"] == rec["metrics"]["top1"]


def test_adalora_loss_on_the_vit_carries_the_orthogonal_regulariser():
    cfg = compose_cfg([*SMALL, "adapter=adalora", "adapter.orth_reg=0.5"])
    spec = run_spec(cfg)
    acfg = OmegaConf.create(spec.adapter)
    assert (acfg.tinit, acfg.tfinal, acfg.deltaT) == (0.1, 0.3, 10)  # from the vit_vtab protocol
    model, transform = train.build_model(spec)
    method = adapters.get_method("adalora")(adapters.settings_from_config(spec.adapter))
    model = method.apply(model, list(cfg.backbone.targets), ["head"], 40)
    train_ds, _, collate = tasks.family(spec.task, spec.hyperparameters).load(
        transform, spec.trainer, spec.seed
    )
    x = collate([train_ds[i] for i in range(8)])
    model.eval()  # no drop-path: two forwards see the same function
    with torch.no_grad():
        out = model(**x)
        reg = []
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                cov = p @ p.T if "lora_A" in name else p.T @ p
                reg.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0])))
        plain = F.cross_entropy(out.logits, x["labels"])
    assert len(reg) == 4  # lora_A and lora_B of 2 qkv layers
    assert out.loss.item() > plain.item()
    torch.testing.assert_close(out.loss - plain, 0.5 * torch.stack(reg).mean())


@pytest.mark.parametrize("experiment", ["vtab_vit", "cifar10_vit"])
def test_vtab_schedule_reaches_the_trainer(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}", *(["task=vtab/dtd"] if experiment == "vtab_vit" else [])])
    spec = run_spec(cfg)
    args = hf_trainer.training_args(spec.trainer, tmp_path, 0, text_task=False, run_name="x", wandb=False)
    assert args.warmup_steps == pytest.approx(0.1)  # 10 of the protocol's 100 epochs, kept for 10 epochs
    assert args.get_warmup_steps(1600) == 160
    assert args.lr_scheduler_type == "cosine"
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size) == (1e-3, 1e-4, 64)
    assert args.eval_strategy == ("no" if experiment == "vtab_vit" else "epoch")
    assert args.label_names == ["labels"]


def test_drop_path_and_image_size_reach_the_timm_model(monkeypatch):
    calls = []
    create = timm.create_model

    def offline_meta(name, pretrained=False, **kwargs):  # the real architecture, no download, no memory
        calls.append({"name": name, "pretrained": pretrained, **kwargs})
        with torch.device("meta"):
            return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_meta)
    cfg = compose_cfg(["experiment=vtab_vit", "task=vtab/dtd"])
    model, transform = train.build_model(run_spec(cfg))
    assert calls == [
        {
            "name": "vit_base_patch16_224.orig_in21k",
            "pretrained": True,
            "num_classes": 47,
            "drop_path_rate": 0.1,
        }
    ]
    assert model.net.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # timm's linear decay ends at 0.1
    assert transform.transforms[0].size == (224, 224)
    assert cfg.task.group == "natural"
    tiny = compose_cfg(SMALL)
    _, tiny_transform = train.build_model(run_spec(tiny))
    assert tiny_transform.transforms[0].size == (32, 32)
