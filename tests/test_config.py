"""Every task composes with every adapter and backbone, offline, and resolves to a full run config."""

import itertools

import pytest
from conftest import REPO, compose_cfg, run_cli
from omegaconf import OmegaConf

from qpeft.config import run_spec

GLUE = sorted(p.stem for p in (REPO / "configs/task/glue").glob("*.yaml"))
VTAB = sorted(p.stem for p in (REPO / "configs/task/vtab").glob("*.yaml") if not p.stem.startswith("_"))
ADAPTERS = sorted(p.stem for p in (REPO / "configs/adapter").glob("*.yaml"))
TEXT = [
    "deberta_v3_base",
    "roberta_base",
    "roberta_large",
    "minilm_l6",
    "tiny_bert",
    "tiny_deberta",
    "tiny_roberta",
]
VISION = ["vit_b16_in21k", "tiny_vit"]
PROTOCOL = {
    "deberta_v3_base": "adalora_deberta",
    "roberta_base": "lora_roberta",
    "roberta_large": "lora_roberta",
}


def test_the_eight_glue_tasks_and_nine_adapters_exist():
    assert GLUE == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
    assert {
        "quantum",
        "quantum_taylor",
        "lora",
        "adalora",
        "oft",
        "boft",
        "full",
        "head_only",
        "bitfit",
    } <= set(ADAPTERS)


def check(overrides: list[str]) -> None:
    """Compose, resolve every interpolation, and derive the run's hyperparameters and adapter settings."""
    cfg = compose_cfg(overrides)
    OmegaConf.to_container(cfg, resolve=True)
    spec = run_spec(cfg)
    assert spec.trainer.lr > 0 and spec.trainer.batch_size > 0 and spec.trainer.epochs > 0
    assert spec.adapter["targets"] == list(cfg.backbone.targets)
    assert cfg.run_dir.endswith(f"{cfg.task.name}/{cfg.backbone.name}/{spec.adapter['name']}/seed{cfg.seed}")


# Pairwise coverage (Hydra composes a pair in ~0.1 s; configs of different groups only meet through
# interpolations, which every pair exercises).
@pytest.mark.parametrize("task", GLUE)
def test_glue_task_composes_with_every_adapter_and_text_backbone(task):
    for adapter in ADAPTERS:
        check([f"task=glue/{task}", f"adapter={adapter}"])
    for backbone in TEXT:
        check(
            [
                f"task=glue/{task}",
                "adapter=quantum",
                f"backbone={backbone}",
                f"protocol={PROTOCOL.get(backbone, 'adalora_deberta')}",
            ]
        )


def test_vtab_tasks_compose_with_every_adapter_and_vision_backbone():
    for task in VTAB:
        check([f"task=vtab/{task}", "adapter=quantum", "backbone=vit_b16_in21k", "protocol=vit_vtab"])
    for adapter, backbone in itertools.product(ADAPTERS, VISION):
        check(["task=vtab/cifar10", f"adapter={adapter}", f"backbone={backbone}", "protocol=vit_vtab"])


def test_paper_setting_prints_with_no_network():
    out = run_cli(["--cfg", "job", "task=glue/sst2", "adapter=quantum"], timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.backbone.source == "microsoft/deberta-v3-base" and cfg.task.name == "sst2"
    sst2 = cfg.task.protocols.adalora_deberta
    assert (sst2.lr, sst2.epochs, sst2.max_length, sst2.batch_size, sst2.alpha) == (8e-4, 24, 128, 32, 16)


@pytest.mark.parametrize("group,bad", [("task", "glue/nope"), ("adapter", "nope"), ("backbone", "nope")])
def test_unknown_name_lists_the_valid_ones(group, bad):
    out = run_cli([f"{group}={bad}"], timeout=120)
    assert out.returncode != 0
    assert f"unknown {group} '{bad}'" in out.stderr and "Traceback" not in out.stderr
    assert ("glue/sst2" if group == "task" else "minilm_l6" if group == "backbone" else "lora") in out.stderr


def test_busy_cores_warning(monkeypatch):
    """A CPU run with more torch threads than the cores left idle by other processes is warned, naming
    trainer.threads; one thread, an idle machine or a GPU machine are not."""
    from qpeft import train

    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(train.os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # another job holds one core
    warning = train._busy_cores_warning(2)
    assert warning and "trainer.threads" in warning and "2 torch threads on 2 cores" in warning
    assert train._busy_cores_warning(1) is None
    monkeypatch.setattr(train.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert train._busy_cores_warning(2) is None
    monkeypatch.setattr(train.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: True)
    assert train._busy_cores_warning(2) is None


def test_record_hyperparameters_are_the_values_the_run_used():
    """A trainer override of a protocol value shows in the record's hyperparameters, a null one too: the claim
    study's GPU runs lift the protocol's train_limit (train_limit=null) and score every 400 steps."""
    base = ["experiment=claim_minilm", "task=glue/sst2", "adapter=frontier/lora_r1_alr"]
    protocol = run_spec(compose_cfg(base)).hyperparameters
    assert (
        protocol["train_limit"] == 32000
        and protocol["eval_steps"] == 200
        and protocol["heldout_clean"] is True
    )
    hp = run_spec(compose_cfg([*base, "trainer.train_limit=null", "trainer.eval_steps=400"])).hyperparameters
    assert hp["train_limit"] is None and hp["eval_steps"] == 400 and hp["heldout"] == 500
    # a protocol without the key gets it only where the run departs from the trainer's default
    plain = run_spec(compose_cfg(["task=glue/sst2", "adapter=lora"])).hyperparameters
    assert "eval_steps" not in plain and "heldout_clean" not in plain
