"""The claim study's lr rule (docs/claim.md) on synthetic records: the grid on seeds 0 and 1, a winning edge
extended by 5x, a tie to the smaller lr, a constant prediction last; then the other seeds and the linear head at
the chosen lr, and the claims with their Welch intervals (checked against scipy)."""

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from qpeft import claim
from qpeft.records import Record, write_record


def write(
    root: Path,
    task: str,
    setting: str,
    lr: float,
    seed: int,
    held: float,
    dev: float | None = None,
    backbone="minilm_l6",
    experiment="claim_minilm",
    wall_s: float | None = None,
):
    spec = claim.POINTS[setting]
    method = "head_only" if setting == "head_only" else "lora"
    tag = f"{setting}_lr{lr:g}" if setting == "head_only" else f"{setting}_alr{lr:g}"
    cfg = {"method": method, ("lr" if method == "head_only" else "adapter_lr"): lr}
    metric = "accuracy" if task == "sst2" else "pearson_spearman"
    dev = held if dev is None else dev
    record = Record(
        task=task,
        backbone=backbone,
        adapter_tag=tag,
        seed=seed,
        metrics={metric: dev / 100, f"{metric}_heldout": held / 100},
        main_metric=metric,
        experiment=experiment,
        adapter=method,
        adapter_cfg=cfg,
        adapter_params=0 if setting == "head_only" else 1000,
        head_params=770,
        git_commit="abc1234",
        wall_time_s=wall_s,
        curve=[
            {"step": 200, metric: dev / 200, f"{metric}_heldout": held / 200},
            {"step": 400, metric: dev / 100},
        ],
        data={
            "heldout_examples": 500,
            "train_clashes_dropped": 7,
            "train_pool": 900,
            "heldout_label_counts": {"0": 250, "1": 250},
        },
    )
    assert spec  # a point of the study
    write_record(root / task / backbone / tag / f"seed{seed}" / "record.json", record)


def test_the_grid_then_an_edge_extension_then_the_other_seeds(tmp_path):
    # lora_r1 on sst2: 4e-3 (the top edge) wins -> the rule asks for 2e-2 on seeds 0 and 1
    for lr, held in [(1.6e-4, 80.0), (8e-4, 82.0), (4e-3, 84.0)]:
        for seed in (0, 1):
            write(tmp_path, "sst2", "lora_r1", lr, seed, held + seed)
    runs, _ = claim.load(tmp_path)
    c = claim.choose(runs, "sst2", "lora_r1")
    assert c.chosen is None and c.missing == [(0.02, 0), (0.02, 1)]
    assert "adapter=frontier/lora_r1_alr adapter.adapter_lr=0.02 seed=0,1" in "\n".join(claim.pending(runs))
    # 2e-2 is worse: 4e-3 is chosen (inside the extended grid); seeds 2-4 and the linear head follow
    for seed in (0, 1):
        write(tmp_path, "sst2", "lora_r1", 0.02, seed, 50.0)
    runs, _ = claim.load(tmp_path)
    c = claim.choose(runs, "sst2", "lora_r1")
    assert c.chosen == pytest.approx(4e-3) and c.scores[4e-3] == pytest.approx(84.5)
    lines = [line for line in claim.pending(runs) if "lora_r1_alr" in line and "glue/sst2" in line]
    assert lines == [
        "run.py -m experiment=claim_minilm task=glue/sst2 adapter=frontier/lora_r1_alr adapter.adapter_lr=0.004 seed=2,3,4",
        "run.py -m experiment=claim_minilm task=glue/sst2 adapter=frontier/lora_r1_alr adapter.adapter_lr=0.004 "
        "seed=0,1,2 backbone=minilm_l6_linear",
    ]


def test_ties_go_to_the_smaller_lr_and_a_constant_prediction_ranks_last(tmp_path):
    for seed in (0, 1):
        write(tmp_path, "stsb", "head_only", 1.6e-4, seed, math.nan)
        write(tmp_path, "stsb", "head_only", 8e-4, seed, 70.0)
        write(tmp_path, "stsb", "head_only", 4e-3, seed, 70.0)
    runs, records = claim.load(tmp_path)
    c = claim.choose(runs, "stsb", "head_only")
    assert c.chosen == pytest.approx(8e-4) and math.isnan(c.scores[1.6e-4])
    page = "\n".join(claim.tables_of(runs, records, claim.choices(runs))[0]).splitlines()
    grid_row = next(line for line in page if line.startswith("| STS-B | head only | 0.00016"))
    assert "0.00016: constant, 0.0008: 70.00, 0.004: 70.00 | 0.0008 |" in grid_row
    pend = [line for line in claim.pending(runs) if "head_only" in line and "glue/stsb" in line]
    assert (
        pend[0]
        == "run.py -m experiment=claim_minilm_head task=glue/stsb adapter=claim/head_only_lr adapter.lr=0.0008 seed=2,3,4"
    )


def test_claims_carry_welch_intervals(tmp_path):
    default = [80.0, 81.0, 82.5, 80.5, 81.2]
    lora = [82.0, 83.5, 82.2, 84.0, 82.9]
    for setting, devs in [("quantum_kfull_l1_ws", default), ("lora_r8", lora)]:
        for lr, bonus in [(1.6e-4, -5), (8e-4, 0), (4e-3, -3)]:
            for seed in range(5 if lr == 8e-4 else 2):
                write(tmp_path, "sst2", setting, lr, seed, devs[seed] + bonus)
    runs, records = claim.load(tmp_path)
    lines, csv = claim.tables_of(runs, records, claim.choices(runs))
    text = "\n".join(lines)
    ref = stats.ttest_ind(default, lora, equal_var=False).confidence_interval()
    gap = sum(default) / 5 - sum(lora) / 5
    assert f"{gap:+.2f} [{ref.low:+.2f}, {ref.high:+.2f}]" in text
    assert "**behind**" in text and ref.high < 0
    assert "| SST-2 | 500 | 0: 250, 1: 250 (seed 0) | 7 | 900 |" in text
    claim.curve_figure(runs, claim.choices(runs), "sst2", tmp_path / "c.png")
    digest = claim.curves_digest(claim.curves(runs, claim.choices(runs), "sst2"))
    assert claim.figure_digest(tmp_path / "c.png") == digest and digest in (tmp_path / "c.svg").read_text()
    write(tmp_path, "sst2", "lora_r8", 8e-4, 5, 84.0)  # one more seed: another figure
    runs, _ = claim.load(tmp_path)
    assert claim.curves_digest(claim.curves(runs, claim.choices(runs), "sst2")) != digest
    assert json.dumps(csv)


def test_claims_read_as_one_family(tmp_path):
    """Each claim's per-gap verdict stays; beside it, the gaps read as one family of the 10 declared claims by
    Holm's step-down: the smallest p against 0.05 / 10, the next against 0.05 / 9 (p-values from scipy)."""
    default = [80.0, 81.0, 82.5, 80.5, 81.2]
    lora_r8, lora_r1 = [83.0, 84.5, 83.2, 85.0, 83.9], [81.5, 83.0, 82.0, 84.0, 82.6]
    p8, p1 = (stats.ttest_ind(default, x, equal_var=False).pvalue for x in (lora_r8, lora_r1))
    assert p8 < 0.05 / 10 and 0.05 / 9 < p1 < 0.05  # behind both per gap; only r=8 survives the family
    for setting, devs in [("quantum_kfull_l1_ws", default), ("lora_r8", lora_r8), ("lora_r1", lora_r1)]:
        for lr, bonus in [(1.6e-4, -5), (8e-4, 0), (4e-3, -3)]:
            for seed in range(5 if lr == 8e-4 else 2):
                write(tmp_path, "sst2", setting, lr, seed, devs[seed] + bonus)
    runs, records = claim.load(tmp_path)
    text = "\n".join(claim.tables_of(runs, records, claim.choices(runs))[0])
    assert "| **behind** | <0.001 | stands |" in text
    assert f"| **behind** | {p1:.3f} | not family-wise |" in text
    summary = " ".join(claim.summary_block(runs, claim.choices(runs)).split())
    assert (
        "the verdicts that stand: behind LoRA r=8 (SST-2); that do not: behind LoRA r=1 (SST-2)." in summary
    )


def test_a_record_of_another_setting_is_named(tmp_path):
    write(tmp_path, "sst2", "lora_r1", 8e-4, 0, 80.0)
    path = next(tmp_path.rglob("record.json"))
    data = json.loads(path.read_text())
    data["adapter_tag"] = "mystery_alr0.0008"
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match="mystery"):
        claim.load(tmp_path)


def test_a_figure_of_each_point_at_its_best_takes_the_chosen_lr_of_either_head(tmp_path):
    """The report's score-against-parameters figure (records_at_choice): the runs at each point's chosen lr, both
    heads; a point whose grid is unfinished contributes nothing."""
    for seed in (0, 1):  # lora_r1: 8e-4 wins inside the grid
        for lr, held in [(1.6e-4, 80.0), (8e-4, 83.0), (4e-3, 51.0)]:
            write(tmp_path, "sst2", "lora_r1", lr, seed, held)
        write(tmp_path, "sst2", "lora_r8", 8e-4, seed, 84.0)  # lora_r8: two grid lrs missing
    write(tmp_path, "sst2", "lora_r1", 8e-4, 2, 83.5)
    write(tmp_path, "sst2", "lora_r1", 8e-4, 0, 83.1, backbone="minilm_l6_linear")
    write(tmp_path, "sst2", "lora_r1", 4e-3, 0, 51.0, backbone="minilm_l6_linear")  # not at the choice
    _, records = claim.load(tmp_path)
    kept = claim.records_at_choice(records)
    got = sorted((r.adapter_tag, r.backbone, r.seed) for _, r in kept)
    assert got == [
        ("lora_r1_alr0.0008", "minilm_l6", 0),
        ("lora_r1_alr0.0008", "minilm_l6", 1),
        ("lora_r1_alr0.0008", "minilm_l6", 2),
        ("lora_r1_alr0.0008", "minilm_l6_linear", 0),
    ]


def test_a_one_lr_preset_takes_each_point_at_its_lr_and_chooses_nothing(tmp_path):
    """claim_gpu_sst2 (scripts/gpu_claim.sh): the points at one shared lr; each is taken at that lr whatever the
    rule's grid would ask, points that did not run are left out, and a point run at two lrs is refused."""
    gpu = "claim_gpu_sst2"
    default, lora = [84.6, 84.9], [87.0, 88.5, 86.8]
    for seed, dev in enumerate(default):
        write(tmp_path, "sst2", "quantum_kfull_l1_ws", 8e-4, seed, 88.0, dev, experiment=gpu)
    for seed, dev in enumerate(lora):
        write(tmp_path, "sst2", "lora_r1", 8e-4, seed, 87.0, dev, experiment=gpu)
    paths = claim.build(tmp_path, tmp_path / "tables", tmp_path / "figures", preset=gpu)
    text = (tmp_path / "tables" / f"{gpu}_claims.md").read_text()
    assert [p.name for p in paths] == [f"{gpu}_claims.md", f"{gpu}_claims.csv", f"{gpu}_sst2_curves.png"]
    assert "lr choices" not in text and "at the shared lr" in text and "pending" not in text
    ref = stats.ttest_ind(default, lora, equal_var=False).confidence_interval()
    gap = sum(default) / 2 - sum(lora) / 3
    assert f"| SST-2 | LoRA r=1 | 1.00x | 1.00x | {gap:+.2f} [{ref.low:+.2f}, {ref.high:+.2f}]" in text
    assert ("**behind**" in text) == (ref.high < 0)
    with pytest.raises(Exception, match="no records of experiment claim_minilm"):
        claim.load(tmp_path)  # the study itself has none of these
    write(tmp_path, "sst2", "lora_r1", 4e-3, 0, 80.0, experiment=gpu)
    with pytest.raises(Exception, match="several lrs"):
        claim.build(tmp_path, tmp_path / "tables", None, preset=gpu)


def write_frontier(root: Path, task: str, tag: str, method: str, seed: int, dev: float):
    """A 126-step frontier record at the shared lr (no adapter_lr): its tag is the setting itself."""
    cfg = (
        {"method": method, "scaling": "width_sqrt", "layers": 1}
        if method == "quantum"
        else {"method": method}
    )
    metric = "accuracy" if task == "sst2" else "pearson_spearman"
    record = Record(
        task=task,
        backbone="minilm_l6",
        adapter_tag=tag,
        seed=seed,
        metrics={metric: dev / 100, f"{metric}_heldout": dev / 100},
        main_metric=metric,
        experiment="frontier_minilm",
        adapter=method,
        adapter_cfg=cfg,
        adapter_params=1000,
        head_params=770,
        git_commit="abc1234",
    )
    write_record(root / task / "minilm_l6" / tag / f"seed{seed}" / "record.json", record)


def test_which_frontier_conclusions_held(tmp_path):
    """The 126-step frontier's comparisons judged again on the study's points: a level pair that is behind here
    did not hold, a pair of a setting the study did not run is named so, and a side without two seeds waits."""
    frontier_root, study = tmp_path / "frontier", tmp_path / "study"
    then_default, then_lora = [80.0, 82.0, 79.5], [80.5, 81.0, 81.5]  # level at 126 steps
    for seed in range(3):
        write_frontier(frontier_root, "sst2", "quantum_kfull_l1_ws", "quantum", seed, then_default[seed])
        write_frontier(frontier_root, "sst2", "lora_r8", "lora", seed, then_lora[seed])
        write_frontier(frontier_root, "sst2", "vera_r64", "vera", seed, 80.0)
        write_frontier(frontier_root, "sst2", "lora_r1", "lora", seed, 80.0 + seed)
    now_default, now_lora = [84.0, 84.5, 84.2], [88.0, 88.6, 87.9]  # behind at 1,000 steps
    for setting, devs in [("quantum_kfull_l1_ws", now_default), ("lora_r8", now_lora)]:
        for lr, bonus in [(1.6e-4, -5), (8e-4, 0), (4e-3, -3)]:
            for seed in range(3 if lr == 8e-4 else 2):
                write(study, "sst2", setting, lr, seed, devs[seed] + bonus)
    claim.build(study, tmp_path / "tables", None, frontier_root=frontier_root)
    text = (tmp_path / "tables" / "claim_minilm_claims.md").read_text()
    section = text[text.index("## Which conclusions of the 126-step frontier held") :]

    def gap(a, b):
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval()
        return f"{sum(a) / len(a) - sum(b) / len(b):+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]"

    then, now = gap(then_default, then_lora), gap(now_default, now_lora)
    assert (
        f"| SST-2 | `quantum_kfull_l1_ws - lora_r8` | {then} level | {now} behind (3/3 seeds) | **did not hold** |"
        in section
    )
    assert "| SST-2 | `quantum_kfull_l1_ws - vera_r64` |" in section and "| not run here |" in section
    assert "`quantum_kfull_l1_ws - lora_r1`" in section and "| 3/0 seeds | pending |" in section
    # the summary README and docs/claim.md carry says the same in one sentence
    runs, _ = claim.load(study)
    judgements = claim.frontier_judgements(runs, claim.choices(runs), frontier_root)
    sentence = " ".join(claim.summary_block(runs, claim.choices(runs), judgements).split())
    assert (
        "Of the 126-step frontier's 3 stated conclusions on these tasks, 0 held, 1 did not hold (SST-2 "
        "`quantum_kfull_l1_ws - lora_r8` level); 1 wait for runs and 1 compare settings this study does not run"
    ) in sentence
    # once nothing waits, the sentence no longer speaks of runs to wait for
    finished = [j for j in judgements if j.outcome not in ("pending", "too few seeds")]
    assert claim.held_sentence(finished).endswith(
        "level); 1 compare settings this study does not run (the page's last section)."
    )
    # without the frontier's records the page has no such section
    claim.build(study, tmp_path / "tables", None)
    assert "126-step" not in (tmp_path / "tables" / "claim_minilm_claims.md").read_text()


def test_runs_left_and_their_time(tmp_path):
    """--eta: LoRA r=1's grid is complete (8e-4 chosen) and seed 2 ran: 2 seeds and 3 linear-head runs are left.
    A point with no runs needs its grid (6), 3 more seeds and 3 linear-head runs; its time is the task's median."""
    for lr, held in [(1.6e-4, 80.0), (8e-4, 84.0), (4e-3, 82.0)]:
        for seed in (0, 1):
            write(tmp_path, "sst2", "lora_r1", lr, seed, held, wall_s=300.0)
    write(tmp_path, "sst2", "lora_r1", 8e-4, 2, 84.0, wall_s=420.0)
    runs, _ = claim.load(tmp_path)
    left = {setting: n for task, setting, n in claim.runs_left(runs) if task == "sst2"}
    assert {task for task, *_ in claim.runs_left(runs)} == {"sst2", "stsb"}  # STS-B: nothing ran, all is left
    assert left["lora_r1"] == 2 + 3
    assert left["quantum_kfull_l1_ws"] == 6 + 3 + 3
    assert left["quantum_k64_l1_ws"] == 6 + 1  # 3 seeds, no linear head
    lines = claim.eta_lines(runs)
    assert "SST-2  LoRA r=1: 5 runs x 5 min (its runs)" in lines  # the median of 300 s (x6) and 420 s
    assert "the task's runs" in next(line for line in lines if "Pauli K=64" in line)
    total_runs = sum(n for *_, n in claim.runs_left(runs))
    stsb_runs = total_runs - sum(left.values())  # no STS-B run finished: no estimate for them
    assert "STS-B  LoRA r=1: 12 runs (no finished run of the task: no estimate)" in lines
    assert lines[-1] == (
        f"at least {total_runs} runs left, {stsb_runs} of them not estimated; about "
        f"{sum(left.values()) * 5 / 60:.1f} worker-hours at the median wall times above"
    )


def test_pending_asks_for_the_claims_first(tmp_path, capsys):
    """Before any run: every grid, the default's first. Once grids are in: the claim points' seeds (standard head)
    come before the claim points' linear-head runs, and those before the other points' grids."""
    assert claim.main(["--records", str(tmp_path / "none"), "--pending"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 3 * len(claim.POINTS)  # 2 tasks x 3 lrs, every point
    assert (
        "task=glue/sst2 adapter=frontier/quantum_kfull_l1_ws_alr adapter.adapter_lr=0.00016 seed=0,1"
        in lines[0]
    )
    assert "fourierft_n100" in lines[-1]
    for setting in ("quantum_kfull_l1_ws", "lora_r1"):
        for lr, held in [(1.6e-4, 80.0), (8e-4, 84.0), (4e-3, 82.0)]:
            for seed in (0, 1):
                write(tmp_path, "sst2", setting, lr, seed, held)
    lines = claim.pending(claim.load(tmp_path)[0])

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    default_seeds = first("quantum_kfull_l1_ws_alr adapter.adapter_lr=0.0008 seed=2,3,4")
    assert (
        default_seeds
        < first("lora_r1_alr adapter.adapter_lr=0.0008 seed=2,3,4")
        < first("claim/lora_qv_r1_alr")
    )
    linear = first("backbone=minilm_l6_linear")
    assert first("adapter=claim/head_only_lr") < linear < first("frontier/quantum_k64_l1_ws_alr")
    assert all("minilm_l6_linear" in line for line in lines[linear : first("quantum_k64")])


def test_readme_and_docs_state_what_the_committed_claim_records_give(tmp_path):
    """README's and docs/claim.md's claim summary is the one the committed records give (`make tables` rewrites
    it); a file without the markers is left alone."""
    repo = Path(__file__).resolve().parent.parent
    runs, _ = claim.load(repo / "results/records/claim_minilm")
    cs = claim.choices(runs)
    block = claim.summary_block(
        runs, cs, claim.frontier_judgements(runs, cs, repo / "results/records/frontier_minilm")
    )
    assert len(claim.SUMMARY_FILES) == 2
    for path in claim.SUMMARY_FILES:
        text = (repo / path).read_text(encoding="utf-8")
        assert block in text, f"{path}'s claim summary is stale: run `make tables`"
    other = tmp_path / "README.md"
    other.write_text("# no markers\n")
    assert not claim.write_summary(other, block) and other.read_text() == "# no markers\n"
    other.write_text(f"top\n{claim.SUMMARY_BEGIN}\nold\n{claim.SUMMARY_END}\nbottom\n")
    assert claim.write_summary(other, block)
    assert other.read_text() == f"top\n{block}\nbottom\n"


def test_a_missing_frontier_records_folder_is_named(tmp_path, capsys):
    write(tmp_path, "sst2", "lora_r1", 8e-4, 0, 80.0)
    argv = ["--records", str(tmp_path), "--tables", str(tmp_path / "t"), "--figures", str(tmp_path / "f")]
    assert claim.main([*argv, "--frontier-records", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("qpeft error: --frontier-records ") and "no such folder" in err[0]
    )
    assert not (tmp_path / "t").exists()  # nothing written


@pytest.mark.parametrize(
    "setting,lr,backbone",
    [
        ("lora_qv_r1", 1.6e-4, "minilm_l6"),
        ("head_only", 2e-2, "minilm_l6_linear"),
        ("quantum_k8_l1_paper", 3.2e-5, "minilm_l6"),
    ],
)
def test_a_pending_runs_folder_is_the_one_run_py_makes(setting, lr, backbone, tmp_path):
    """`--next` looks for a run's lock where run.py puts the run: the folder the composed config names."""
    from conftest import compose_cfg

    p = claim.Pending("stsb", setting, lr, (3,), backbone)
    args = p.args().split()[2:]  # past `run.py -m`
    cfg = compose_cfg([*args, f"output_root={tmp_path}"])
    assert str(p.run_dir(tmp_path / "claim_minilm", 3)) == str(cfg.run_dir)


def test_next_skips_the_runs_another_worker_holds(tmp_path):
    """Each worker of `make claim` takes the first run the rule asks for that no live process holds (its folder's
    lock, as run.py takes it), one seed at a time; when all are taken, none."""
    from qpeft.run_folder import RunFolder

    for lr, held in [(1.6e-4, 80.0), (8e-4, 84.0), (4e-3, 82.0)]:
        for seed in (0, 1):
            write(tmp_path, "sst2", "lora_r1", lr, seed, held)
    runs, _ = claim.load(tmp_path)
    first = claim.pending_runs(runs)[0]  # the default's grid on SST-2 comes first
    assert (first.task, first.setting, first.lr, first.seeds) == ("sst2", claim.DEFAULT, 1.6e-4, (0, 1))
    assert claim.next_run(runs, tmp_path) == first.args([0])
    taken = RunFolder(first.run_dir(tmp_path, 0))
    assert taken.claim()  # another worker is running seed 0
    assert claim.next_run(runs, tmp_path) == first.args([1])
    other = RunFolder(first.run_dir(tmp_path, 1))
    assert other.claim()
    assert "adapter.adapter_lr=0.0008 seed=0" in claim.next_run(runs, tmp_path)
    taken.release()  # its process ended (without a record): free again
    assert claim.next_run(runs, tmp_path) == first.args([0])
    other.release()
    # a folder whose lock no one holds any more is free; so is one not made yet
    assert not claim.held(first.run_dir(tmp_path, 1)) and not claim.held(tmp_path / "nowhere")


def test_next_and_pending_before_any_run_has_finished(tmp_path, capsys):
    """The first worker's run makes the study's folder before it writes a record: the second worker, asking then,
    gets the next grid run, not an error."""
    from qpeft.run_folder import RunFolder

    root = tmp_path / "claim_minilm"
    assert claim.main(["--records", str(root), "--next"]) == 0  # no folder yet
    first = capsys.readouterr().out.strip()
    assert first.endswith("adapter.adapter_lr=0.00016 seed=0")
    running = RunFolder(claim.pending_runs([])[0].run_dir(root, 0))
    assert running.claim()  # the folder exists, no record in it
    assert claim.main(["--records", str(root), "--next"]) == 0
    assert capsys.readouterr().out.strip() == first.replace("seed=0", "seed=1")
    assert claim.main(["--records", str(root), "--pending"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("adapter.adapter_lr=0.00016 seed=0,1")
    running.release()
