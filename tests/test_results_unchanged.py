"""The committed tables are exactly what the committed records tabulate to, and every record round-trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qpeft.records import Record, RecordError, find_records, load_record, write_record
from qpeft.tables import build_tables

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "results" / "records"
TABLES = REPO / "results" / "tables"
# every committed table `make tables` builds from results/records (params.* come from `make params`, no records)
COMMITTED = [
    f"{stem}.{ext}"
    for stem in ("claim_gpu_sst2", "claim_minilm", "diag_sst2", "frontier_minilm", "minilm_glue")
    for ext in ("md", "tex", "csv")
] + ["throughput.md", "throughput.csv", "frontier_minilm_points.md", "frontier_minilm_points.csv"]
COMMITTED += [f"{stem}_claims.{ext}" for stem in ("claim_minilm", "claim_gpu_sst2") for ext in ("md", "csv")]
# the claim study's learning curves, which `make tables` draws with its page
CURVES = [
    f"{stem}_curves.{ext}"
    for stem in ("claim_sst2", "claim_stsb", "claim_gpu_sst2_sst2")
    for ext in ("png", "svg")
]


def test_committed_tables_rebuild_byte_for_byte(tmp_path, monkeypatch):
    """`make tables` (python -m qpeft.tables, no arguments) on a fresh clone: every committed table again, from
    results/records alone, byte for byte; no outputs/ needed and none written. The claim curves it draws show what
    the committed ones show (the digest of their lines, in each PNG's metadata): a figure left from older records
    fails here. README's and docs/claim.md's claim summaries, which it rewrites, are already what it writes (it
    writes copies here: a test never edits the checkout)."""
    from qpeft import claim
    from qpeft.claim import figure_digest
    from qpeft.tables import cli

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(cli, "YOURS_ROOT", tmp_path / "no_outputs")
    summaries = claim.SUMMARY_FILES
    copies = [tmp_path / "summaries" / path for path in summaries]
    for path, copy in zip(summaries, copies):
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes((REPO / path).read_bytes())
    monkeypatch.setattr(claim, "SUMMARY_FILES", tuple(copies))
    assert cli.main(["--out", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures")]) == 0
    for path, copy in zip(summaries, copies):
        assert copy.read_bytes() == (REPO / path).read_bytes(), (
            f"{path}'s claim summary is stale: make tables"
        )
    written = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert written == sorted(COMMITTED)
    for name in COMMITTED:
        assert (tmp_path / "tables" / name).read_bytes() == (TABLES / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(CURVES)
    for name in [n for n in CURVES if n.endswith(".png")]:
        drawn = figure_digest(tmp_path / "figures" / name)
        assert drawn is not None and figure_digest(REPO / "results" / "figures" / name) == drawn, name
    assert sorted(p.name for p in TABLES.iterdir()) == sorted(COMMITTED + ["params.md", "params.tex"])


def test_the_minilm_glue_table_is_its_records(tmp_path):
    written, n_records, _ = build_tables([RECORDS / "minilm_glue"], tmp_path, REPO / "results" / "reference")
    assert n_records == 165
    assert (tmp_path / "minilm_glue.md").read_bytes() == (TABLES / "minilm_glue.md").read_bytes()


def test_every_committed_record_round_trips():
    paths = find_records(RECORDS)
    assert len(paths) >= 175
    for path in paths:
        raw = json.loads(path.read_text())
        rec = load_record(path)
        assert rec.to_dict() == raw, path  # same keys, same values: nothing lost, nothing added
        assert rec.extra == {}, path  # every key of today's records is a field


def _strict_json(text: str):
    """JSON as a strict reader (jq, JavaScript) parses it: NaN and Infinity are no JSON tokens."""

    def reject(token: str):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=reject)


def test_every_committed_record_is_strict_json():
    for path in find_records(RECORDS):
        _strict_json(path.read_text())


def test_an_undefined_metric_is_written_as_null_and_read_back_as_nan(tmp_path):
    # STS-B's correlation is NaN when a run predicts one constant value
    nan = float("nan")
    rec = Record(
        task="stsb", backbone="b", adapter_tag="t", seed=0, main_metric="pearson",
        metrics={"pearson": nan, "spearman": 0.5}, score=nan, step_time_s=float("inf"),
    )  # fmt: skip
    path = tmp_path / "record.json"
    write_record(path, rec)
    raw = _strict_json(path.read_text())
    assert raw["metrics"] == {"pearson": None, "spearman": 0.5}
    assert raw["score"] is None and raw["step_time_s"] is None
    back = load_record(path)
    assert math.isnan(back.metrics["pearson"]) and back.metrics["spearman"] == 0.5
    assert back.to_dict() == raw


def test_older_record_without_optional_keys_loads(tmp_path):
    minimal = {"task": "sst2", "backbone": "b", "adapter_tag": "t", "seed": 0, "metrics": {"accuracy": 0.5}}
    minimal["main_metric"] = "accuracy"
    rec = Record.from_dict({**minimal, "future_key": [1]})
    assert rec.adapter_params is None and rec.experiment is None and rec.extra == {"future_key": [1]}
    assert rec.to_dict()["future_key"] == [1] and "adapter_extra" not in rec.to_dict()


@pytest.mark.parametrize("drop", ["task", "metrics", "main_metric", "seed"])
def test_missing_required_key_names_the_file(tmp_path, drop):
    data = {"task": "sst2", "backbone": "b", "adapter_tag": "t", "seed": 0, "metrics": {"accuracy": 0.5}}
    data["main_metric"] = "accuracy"
    del data[drop]
    path = tmp_path / "record.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=drop) as err:
        load_record(path)
    assert str(path) in str(err.value)


def _parse_params_md(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The committed params.md back into header, rows and its numbered failure notes."""
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split(" | ")]  # noqa: E731
    notes = [ln.split("] ", 1)[1] for ln in text.splitlines() if ln.startswith("- [")]
    return split(table[0]), [split(ln) for ln in table[2:]], notes


def test_params_table_renders_as_committed():
    """The parameter table's cells, rendered through the shared renderer, give the committed files."""
    from qpeft import params

    header, rows, notes = _parse_params_md((TABLES / "params.md").read_text())
    assert len(rows) == 19 and header[0] == "method" and notes
    assert params.markdown(header, rows, notes) == (TABLES / "params.md").read_text()
    assert params.latex(header, rows, notes) == (TABLES / "params.tex").read_text()


@pytest.mark.parametrize("preset", ["minilm_glue", "frontier_minilm"])
def test_committed_runs_are_found_again_under_todays_settings(preset):
    """The settings guard accepts every committed run of the preset asked for with the same preset today: the
    composed config (protocol values by interpolation, typed settings) still describes the runs those records
    came from, so a sweep continued from them skips them instead of refusing (a preset that renamed or
    re-pinned a setting its records were made with fails here, not hours into `make frontier`)."""
    from conftest import compose_cfg

    from qpeft import jobs
    from qpeft.config import run_spec
    from qpeft.guard import run_settings
    from qpeft.run_folder import RunFolder

    by_folder = {p.parent.relative_to(RECORDS): p for p in find_records(RECORDS / preset)}
    matched = set()
    # the frontier study's tree also holds its lr grids (VeRA, FourierFT; the Pauli points; LoRA; TinyLoRA; Taylor)
    lr_grids = [
        "frontier_minilm_lr",
        "frontier_minilm_lr_pauli",
        "frontier_minilm_lr_lora",
        "frontier_minilm_lr_tinylora",
        "frontier_minilm_lr_taylor",
    ]
    presets = [preset] + (lr_grids if preset == "frontier_minilm" else [])
    for job in [[f"experiment={p}", *job] for p in presets for job in jobs.expand([f"experiment={p}"])[0]]:
        cfg = compose_cfg(job)
        spec = run_spec(cfg)
        folder = Path(spec.run_dir).relative_to("outputs")
        if folder not in by_folder:
            continue  # a job of the preset not (yet) run
        record_path = by_folder[folder]
        # raises QpeftError naming any difference
        RunFolder(record_path.parent).check_settings(run_settings(cfg))
        assert json.loads(record_path.read_text())["hyperparameters"]["lr"] == spec.trainer.lr
        matched.add(folder)
    assert matched == set(by_folder)  # every committed record is a job of today's preset


def test_committed_claim_runs_are_found_again_under_todays_settings():
    """Every committed record of the claim study, asked for again as `python -m qpeft.claim --pending` would ask
    for it (its point's adapter config, lr, seed and head), is accepted by the settings guard, data included."""
    from conftest import GLUE_DIR, compose_cfg

    from qpeft import claim
    from qpeft.guard import run_settings
    from qpeft.records import load_record
    from qpeft.run_folder import RunFolder

    paths = find_records(RECORDS / "claim_minilm")
    for path in paths:
        run = claim.to_run(load_record(path))
        preset, key = (
            ("claim_minilm_head", "adapter.lr")
            if run.setting == "head_only"
            else ("claim_minilm", "adapter.adapter_lr")
        )
        overrides = [
            f"experiment={preset}",
            f"task=glue/{run.task}",
            f"adapter={claim.POINTS[run.setting].adapter}",
        ]
        overrides += [
            f"{key}={run.lr:g}",
            f"seed={run.seed}",
            f"backbone={run.backbone}",
            f"task.data_dir={GLUE_DIR}",
        ]
        RunFolder(path.parent).check_settings(run_settings(compose_cfg(overrides)))
