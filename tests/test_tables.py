"""qpeft.tables on synthetic record.json files (written with plain json, not through qpeft.records)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qpeft import tables
from qpeft.tables import TablesError, build_tables, human_count, load_references

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference"
GLUE_MAIN = {"mnli": "accuracy_matched", "cola": "matthews", "stsb": "pearson_spearman"}
VTAB_19 = tables.VTAB_TASKS


def put(root: Path, task: str, seed: int, metrics: dict, *, where: str = "", **fields) -> Path:
    """Write one record.json under root and return its path."""
    rec = {
        "schema": 1,
        "experiment": "glue_test",
        "task": task,
        "task_family": "glue",
        "task_group": None,
        "backbone": "bb",
        "adapter": "lora",
        "adapter_tag": "lora_r8",
        "seed": seed,
        "metrics": metrics,
        "main_metric": GLUE_MAIN.get(task, "accuracy"),
        "adapter_params": 1327104,
        "head_params": 592130,
        "train_samples_per_s": 100.0,
        "train_tokens_per_s": 6400.0,
        "step_time_s": 0.32,
        "peak_mem_bytes": 2 * 2**30,
    }
    rec.update(fields)
    folder = root / (where or f"{rec['experiment']}/{task}/{rec['backbone']}/{rec['adapter_tag']}/seed{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "record.json"
    path.write_text(json.dumps(rec))
    return path


def glue_metrics(task: str, x: float) -> dict:
    """Plausible metric dicts for a GLUE task, every value x (x + 0.01 for the second number)."""
    return {
        "mnli": {"accuracy_matched": x, "accuracy_mismatched": x + 0.01},
        "qqp": {"accuracy": x, "f1": x + 0.01},
        "stsb": {"pearson": x, "spearman": x, "pearson_spearman": x},
        "cola": {"matthews": x},
        "mrpc": {"accuracy": x, "f1": x},
    }.get(task, {"accuracy": x})


def build(tmp_path: Path, reference: Path | None = None) -> Path:
    out = tmp_path / "tables"
    build_tables([tmp_path / "outputs"], out, reference)
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def md_row(path: Path, label: str) -> dict[str, str]:
    """The Markdown row whose Method cell is `label`, keyed by header."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    method = headers.index("Method")
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[method] == label:
            return dict(zip(headers, cells))
    raise AssertionError(f"no row {label} in {path}")


def test_mean_std_match_numpy(tmp_path):
    values = [0.9412, 0.9503, 0.9358, 0.9471]
    walls = [50.0, 70.0, 90.0, 110.0]
    for seed, v in enumerate(values):
        put(tmp_path / "outputs", "sst2", seed, {"accuracy": v}, wall_time_s=walls[seed])
    out = build(tmp_path)
    row = read_csv(out / "glue_test.csv")[0]
    assert float(row["minutes_per_run"]) == pytest.approx(np.mean(walls) / 60, abs=1e-2)
    assert md_row(out / "glue_test.md", "lora_r8")["min/run"] == "1.3"
    expected = np.array(values) * 100
    assert float(row["sst2"]) == pytest.approx(expected.mean(), abs=1e-4)
    assert float(row["sst2_std"]) == pytest.approx(expected.std(ddof=1), abs=1e-4)
    assert row["sst2_n"] == "4"
    cell = md_row(out / "glue_test.md", "lora_r8")["SST-2"]
    assert cell == f"{expected.mean():.2f} ± {expected.std(ddof=1):.2f}"
    assert "over 4 seeds" in (out / "glue_test.md").read_text()


def test_missing_cells_and_average_only_when_complete(tmp_path):
    score = {t: 0.80 + 0.01 * i for i, t in enumerate(tables.GLUE_TASKS)}
    score["sst2"] += 0.0004  # the average 83.63, not 83.625: a tie rounds by summation order (numpy, pandas)
    for task, x in score.items():
        put(tmp_path / "outputs", task, 0, glue_metrics(task, x))
        if task != "rte":
            put(
                tmp_path / "outputs",
                task,
                0,
                glue_metrics(task, x),
                adapter_tag="quantum_r4",
                adapter="quantum",
            )
    out = build(tmp_path)
    complete = md_row(out / "glue_test.md", "lora_r8")
    partial = md_row(out / "glue_test.md", "quantum_r4")
    assert partial["RTE"] == "—"
    assert partial["Avg"] == "—"
    # MNLI and QQP count as the mean of their two numbers (second = first + 0.01).
    per_task = [100 * (x + 0.005) if t in ("mnli", "qqp") else 100 * x for t, x in score.items()]
    assert complete["Avg"] == f"{sum(per_task) / 8:.2f}"
    assert complete["MNLI m/mm"] == "80.00 / 81.00"
    assert complete["QQP acc/F1"] == "83.00 / 84.00"
    rows = {r["method"]: r for r in read_csv(out / "glue_test.csv")}
    assert rows["quantum_r4"]["rte"] == "" and rows["quantum_r4"]["avg"] == ""
    assert float(rows["lora_r8"]["avg"]) == pytest.approx(sum(per_task) / 8, abs=1e-4)


def test_single_task_preset_has_no_average(tmp_path):
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9}, experiment="demo")
    out = build(tmp_path)
    row = md_row(out / "demo.md", "lora_r8")
    assert row["SST-2"] == "90.00" and "Avg" not in row


def test_vtab_group_means(tmp_path):
    value = {"natural": 0.5, "specialized": 0.8, "structured": 0.2}
    for group, tasks_ in tables.VTAB_GROUPS.items():
        for task in tasks_:
            common = dict(experiment="vtab_test", task_family="vtab", task_group=group, main_metric="top1")
            put(tmp_path / "outputs", task, 0, {"top1": value[group]}, **common)
            if task != "kitti":
                put(tmp_path / "outputs", task, 0, {"top1": value[group]}, adapter_tag="other", **common)
    out = build(tmp_path)
    full = md_row(out / "vtab_test.md", "lora_r8")
    assert (full["Natural"], full["Specialized"], full["Structured"]) == ("50.00", "80.00", "20.00")
    assert full["Mean (19)"] == "43.68"  # (7 * 50 + 4 * 80 + 8 * 20) / 19 = 830 / 19
    assert full["Mean (groups)"] == "50.00"  # (50 + 80 + 20) / 3
    assert "Avg" not in full
    partial = md_row(out / "vtab_test.md", "other")
    assert (partial["Natural"], partial["Specialized"]) == ("50.00", "80.00")
    assert partial["Structured"] == partial["Mean (19)"] == partial["Mean (groups)"] == "—"
    assert partial["KITTI-Dist"] == "—"


def test_vtab_summaries_equal_group_means_computed_independently(tmp_path):
    from qpeft.data.vtab import TASKS, group_means  # the data module's own task list and averages

    rng = np.random.default_rng(0)
    top1 = {(t, seed): float(rng.uniform(0.2, 0.99)) for t in VTAB_19 for seed in range(3)}
    for (task, seed), x in top1.items():
        vtab = dict(
            experiment="vtab_vit", task_family="vtab", task_group=TASKS[task].group, main_metric="top1"
        )
        put(tmp_path / "outputs", task, seed, {"top1": x}, **vtab)
    row = read_csv(build(tmp_path) / "vtab_vit.csv")[0]
    per_task = {t: 100 * np.mean([top1[t, s] for s in range(3)]) for t in VTAB_19}
    expected = group_means(per_task)
    for task in VTAB_19:
        assert float(row[task]) == pytest.approx(per_task[task], abs=1e-4)
    for key in ("natural", "specialized", "structured", "mean19", "mean_groups"):
        assert float(row[key]) == pytest.approx(expected[f"vtab_{key}"], abs=1e-4), key
    assert expected["vtab_mean19"] != pytest.approx(expected["vtab_mean_groups"], abs=1e-3)  # they differ


def test_vtab_columns_complete_even_with_one_task(tmp_path):
    vtab = dict(experiment="v", task_family="vtab", task_group="natural", main_metric="top1")
    put(tmp_path / "outputs", "dtd", 0, {"top1": 0.7}, **vtab)
    header = (build(tmp_path) / "v.md").read_text().splitlines()[4]
    assert all(tables.TASK_LABELS[t] in header for t in VTAB_19)


def test_seed_counts_shown_per_cell_when_they_differ(tmp_path):
    for seed in range(3):
        put(tmp_path / "outputs", "sst2", seed, {"accuracy": 0.9 + seed / 100})
    for seed in range(2):
        put(tmp_path / "outputs", "cola", seed, {"matthews": 0.6})
    row = md_row(build(tmp_path) / "glue_test.md", "lora_r8")
    assert row["SST-2"].endswith("(n=3)") and row["CoLA"] == "60.00 ± 0.00 (n=2)"


def test_conflict_names_both_files(tmp_path):
    a = put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9}, where="a")
    b = put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.8}, where="b")
    with pytest.raises(TablesError) as err:
        build(tmp_path)
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_conflicting_runs_in_separate_subfolders_become_labelled_rows(tmp_path):
    """A diagnostic sweep whose runs share an identity (made before run folders carried their settings): each
    subfolder's rows are labelled by its name, as the report does, instead of failing the whole build."""
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9}, where="diag/base/sst2/seed0")
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.8}, where="diag/lr3/sst2/seed0")
    rows = {r["method"]: r for r in read_csv(build(tmp_path) / "glue_test.csv")}
    assert float(rows["base/lora_r8"]["sst2"]) == pytest.approx(90.0)
    assert float(rows["lr3/lora_r8"]["sst2"]) == pytest.approx(80.0)


def test_identical_duplicates_are_deduplicated(tmp_path):
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9}, where="a")
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9}, where="copy/a")
    records, files = tables.load_records([tmp_path / "outputs"])
    assert (len(records), files) == (1, 2)
    assert read_csv(build(tmp_path) / "glue_test.csv")[0]["sst2_n"] == "1"


@pytest.mark.parametrize(
    "text",
    ['{"task": "sst2", "metrics": {', "[1, 2]", json.dumps({"task": "sst2", "seed": 0})],
    ids=["truncated", "not-an-object", "missing-keys"],
)
def test_malformed_record_names_the_file(tmp_path, text):
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9})
    bad = tmp_path / "outputs" / "broken" / "record.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(text)
    with pytest.raises(TablesError, match="malformed record") as err:
        build(tmp_path)
    assert str(bad) in str(err.value)


def test_missing_paired_metric_names_the_file(tmp_path):
    path = put(tmp_path / "outputs", "mnli", 0, {"accuracy_matched": 0.9})
    with pytest.raises(TablesError, match="accuracy_mismatched") as err:
        build(tmp_path)
    assert str(path) in str(err.value)


def test_published_rows_beside_ours(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "x.csv").write_text(
        "preset,method,backbone,params,sst2,cola,avg,source\n"
        'glue_test,LoRA,bb,0.3M,95.1,n/a,n/a,"Someone et al., Table 9"\n'
    )
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9})
    put(tmp_path / "outputs", "cola", 0, {"matthews": 0.6})
    out = build(tmp_path, ref)
    md = (out / "glue_test.md").read_text()
    row = md_row(out / "glue_test.md", "LoRA (published [1])")
    assert row["SST-2"] == "95.1" and row["CoLA"] == "—" and row["#adapter params"] == "0.3M"
    assert "[1] Someone et al., Table 9" in md
    assert md.index("(published [1])") < md.index("| lora_r8 |")


def test_reference_column_that_matches_nothing_is_an_error(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "x.csv").write_text("preset,method,backbone,params,sst_2,source\nglue_test,LoRA,bb,1M,95.1,s\n")
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9})
    with pytest.raises(TablesError, match="sst_2"):
        build(tmp_path, ref)


def test_committed_references_join_their_presets(tmp_path):
    refs = load_references(REFERENCE)
    assert {"glue_deberta", "glue_roberta", "vtab_vit", "e2e_gpt2"} <= set(refs)
    for preset, task, metrics, family in [
        ("glue_deberta", "mnli", glue_metrics("mnli", 0.9), "glue"),
        ("glue_roberta", "stsb", glue_metrics("stsb", 0.9), "glue"),
        ("vtab_vit", "dtd", {"top1": 0.7}, "vtab"),
    ]:
        main = "top1" if family == "vtab" else GLUE_MAIN.get(task, "accuracy")
        put(tmp_path / "outputs", task, 0, metrics, experiment=preset, task_family=family, main_metric=main)
    out = build(tmp_path, REFERENCE)
    deberta = md_row(out / "glue_deberta.md", "LoRA r=8 (published [1])")
    assert deberta["MNLI m/mm"] == "90.65 / 90.69" and deberta["Avg"] == "88.34"
    roberta = md_row(out / "glue_roberta.md", "LoRA (published [1])")
    assert roberta["MNLI"] == "87.5" and roberta["STS-B"] == "91.5" and roberta["Avg"] == "87.24"
    vit = md_row(out / "vtab_vit.md", "Full FT (published [1])")
    assert vit["Mean (19)"] == "65.57" and vit["DTD"] == "—" and vit["Mean (groups)"] == "—"


def _ref_rows(name: str) -> list[dict]:
    return read_csv(REFERENCE / name)


def test_reference_averages_agree_with_their_cells():
    """The transcribed cells reproduce each published average (up to the paper's rounding)."""
    for r in _ref_rows("glue_deberta_adalora_table1.csv"):
        f = {k: float(v) for k, v in r.items() if k not in tables.REFERENCE_META}
        tasks = [(f["mnli_m"] + f["mnli_mm"]) / 2, (f["qqp_acc"] + f["qqp_f1"]) / 2]
        tasks += [f[t] for t in ("sst2", "cola", "qnli", "rte", "mrpc", "stsb")]
        assert np.mean(tasks) == pytest.approx(f["avg"], abs=0.01), r["method"]
    for r in _ref_rows("glue_roberta_lora.csv"):  # the paper prints one decimal: FT 86.35 -> 86.4
        assert np.mean([float(r[t]) for t in tables.GLUE_TASKS]) == pytest.approx(float(r["avg"]), abs=0.0501)
    lora = _ref_rows("vtab_vit_lora.csv")[0]
    assert np.mean([float(lora[t]) for t in VTAB_19]) == pytest.approx(float(lora["mean19"]), abs=0.005)


def test_human_count():
    assert [human_count(n) for n in (1327104, 28400, 294912, 512, 999999, 184_000_000)] == [
        "1.33M",
        "28.4K",
        "295K",
        "512",
        "1.00M",
        "184M",
    ]


def test_throughput_table(tmp_path):
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9}, train_samples_per_s=100.0, step_time_s=0.2)
    put(tmp_path / "outputs", "cola", 0, {"matthews": 0.6}, train_samples_per_s=300.0, step_time_s=0.4)
    row = md_row(build(tmp_path) / "throughput.md", "lora_r8")
    assert row["train samples/s"] == "200.0" and row["step time (ms)"] == "300.0" and row["records"] == "2"


def test_cli_reports_and_imports_no_training_code(tmp_path):
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.9}, experiment=None)
    code = (
        "import sys, runpy; sys.argv = ['qpeft.tables', '--roots', 'outputs', '--out', 'tables'];"
        "import qpeft.tables;"
        # torch, transformers and peft come with `import qpeft` (it registers the Quantum-PEFT tuner with peft);
        # the harness's training code and its dependencies must not
        "bad = [m for m in ('qpeft.train', 'qpeft.adapters', 'qpeft.config', 'hydra', 'datasets', 'timm')"
        " if m in sys.modules];"
        "assert not bad, bad;"
        "sys.exit(qpeft.tables.main(sys.argv[1:]))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "read 1 record files (1 distinct runs)" in res.stdout
    assert "tables/adhoc.md" in res.stdout and (tmp_path / "tables" / "adhoc.tex").exists()


def test_cli_error_exit(tmp_path, capsys):
    """A record that cannot be read, or no record at all: exit 2, one line saying why, no tables."""
    (tmp_path / "outputs" / "x").mkdir(parents=True)
    (tmp_path / "outputs" / "x" / "record.json").write_text("{")
    assert tables.main(["--roots", str(tmp_path / "outputs"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qpeft error: ") and "record.json" in err
    (tmp_path / "empty").mkdir()
    assert tables.main(["--roots", str(tmp_path / "empty"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qpeft error: no record.json under") and "--roots" in err
    assert not (tmp_path / "t").exists()


def test_a_subset_preset_has_its_own_columns_and_average(tmp_path):
    """minilm_glue sweeps five GLUE tasks: five columns, and Avg over those five once all are present."""
    tasks = ["sst2", "cola", "mrpc", "stsb", "rte"]
    for i, task in enumerate(tasks[:4]):
        put(tmp_path / "outputs", task, 0, glue_metrics(task, 0.5 + 0.1 * i), experiment="minilm_glue")
    row = md_row(build(tmp_path) / "minilm_glue.md", "lora_r8")
    assert "MNLI m/mm" not in row and "QNLI" not in row and row["RTE"] == "—" and row["Avg"] == "—"
    put(tmp_path / "outputs", "rte", 0, glue_metrics("rte", 0.9), experiment="minilm_glue")
    row = md_row(build(tmp_path) / "minilm_glue.md", "lora_r8")
    assert row["Avg"] == f"{np.mean([50, 60, 70, 80, 90]):.2f}"


def test_make_tables_marks_your_runs_beside_the_committed_ones(tmp_path, monkeypatch, capsys):
    """`make tables` with no arguments: results/records -> results/tables; your records under outputs/ join them in
    outputs/tables as rows marked (yours), a note says so; a copy of a committed run is not yours; results/tables
    holds the committed records only."""
    from qpeft.tables import cli

    monkeypatch.chdir(tmp_path)
    put(tmp_path / "results" / "records", "sst2", 0, {"accuracy": 0.90})
    put(tmp_path / "results" / "records", "rte", 0, {"accuracy": 0.70})
    put(tmp_path / "outputs", "sst2", 0, {"accuracy": 0.90})  # a copy of the committed run
    put(tmp_path / "outputs", "rte", 0, {"accuracy": 0.60})  # yours: the same run, another result
    put(tmp_path / "outputs", "sst2", 1, {"accuracy": 0.80})
    assert cli.main(["--reference", str(REFERENCE)]) == 0
    out = capsys.readouterr().out
    assert "2 runs of yours (rows marked '(yours)'), 1 copies of committed runs" in out
    ours = md_row(tmp_path / "results" / "tables" / "glue_test.md", "lora_r8")
    assert ours["SST-2"] == "90.00" and ours["RTE"] == "70.00"
    assert "(yours)" not in (tmp_path / "results" / "tables" / "glue_test.md").read_text()
    text = (tmp_path / "outputs" / "tables" / "glue_test.md").read_text()
    yours = md_row(tmp_path / "outputs" / "tables" / "glue_test.md", "lora_r8 (yours)")
    assert yours["RTE"] == "60.00" and yours["SST-2"] == "80.00"
    assert md_row(tmp_path / "outputs" / "tables" / "glue_test.md", "lora_r8")["RTE"] == "70.00"
    assert "Rows marked (yours): your runs under outputs/" in text


def test_make_tables_on_a_fresh_clone_needs_no_outputs(tmp_path, monkeypatch, capsys):
    from qpeft.tables import cli

    monkeypatch.chdir(tmp_path)
    put(tmp_path / "results" / "records", "sst2", 0, {"accuracy": 0.90})
    assert cli.main(["--reference", str(REFERENCE)]) == 0
    assert not (tmp_path / "outputs").exists() and "outputs" not in capsys.readouterr().out
    assert (tmp_path / "results" / "tables" / "glue_test.md").exists()
