"""Aggregation: the records of one preset -> a table model (per-seed values grouped and averaged by pandas).

A cell of ours is the mean and sample standard deviation (ddof=1) over a row's seeds of one metric x100.
A task's score (for averages) is, per seed, the mean of its parts (MNLI m and mm), then the mean over
seeds; an average is shown only when every task it covers is present. A NaN metric (a correlation of
constant predictions) stays NaN in every number made from it: it is never dropped silently.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qpeft.records import Record, is_number
from qpeft.tables.load import Reference, TablesError, ref_number
from qpeft.tables.presets import (
    DASH,
    GLUE_TASKS,
    PRESET_TASKS,
    REFERENCE_META,
    SUMMARY_LABELS,
    VTAB_GROUPS,
    VTAB_TASKS,
    header,
    method_rank,
    parts_for,
    task_order,
)

ROW = ["backbone", "adapter_tag"]  # one table row of ours per (backbone, adapter setting)


@dataclass
class Stat:
    """A cell of ours: mean and sample standard deviation (ddof=1; None for one seed) over n seeds, x100."""

    mean: float
    std: float | None
    n: int


@dataclass
class Column:
    """One displayed task column, made of one or two parts (CSV keys)."""

    task: str
    parts: list[tuple[str, str]]  # (csv key, metric key; "" = the record's main metric)
    header: str


@dataclass
class Row:
    """One table row: ours (stats per csv key) or published (numbers and text as printed)."""

    backbone: str
    label: str
    published: bool
    order: tuple = ()
    stats: dict[str, Stat] = field(default_factory=dict)
    printed: dict[str, str] = field(default_factory=dict)  # published cells as transcribed
    summary: dict[str, float | None] = field(default_factory=dict)
    adapter_params: list[int] = field(default_factory=list)
    head_params: list[int] = field(default_factory=list)
    params_text: str = DASH
    samples_per_s: float | None = None
    minutes: float | None = None  # wall time per run
    peak_mem_gib: float | None = None
    source_ref: int | None = None
    commits: dict[str, int] = field(default_factory=dict)  # short commit ("+dirty" kept) -> runs made at it


@dataclass
class Table:
    """A preset's table: columns, rows, summaries and the sources of its published rows."""

    preset: str
    columns: list[Column]
    summaries: list[str]
    rows: list[Row]
    sources: list[str]
    n_records: int


def natural_key(s: str) -> list:
    """Sort key that orders digit runs by value: lora_r2 before lora_r16."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _number(x: object) -> float:
    return float(x) if is_number(x) else math.nan


def _optional(x: float) -> float | None:
    return None if pd.isna(x) else float(x)


# pandas groups, numpy reduces: np.mean's pairwise sum is what the tables have always printed (pandas'
# own compensated sum differs in the last bit, visible in the unrounded CSV columns).
def mean_all(values: pd.Series) -> float:
    """Mean of every value; one NaN makes it NaN."""
    return float(np.mean(values.to_numpy(dtype=float)))


def std_all(values: pd.Series) -> float:
    """Sample standard deviation (ddof=1) of every value; NaN for fewer than two."""
    return float(np.std(values.to_numpy(dtype=float), ddof=1)) if len(values) > 1 else math.nan


def mean_present(values: pd.Series) -> float:
    """Mean of the values that are there (NaN = not measured); NaN when none is."""
    present = values.dropna().to_numpy(dtype=float)
    return float(np.mean(present)) if present.size else math.nan


def short_commit(commit: str | None) -> str:
    """A record's commit as the tables name it: 7 hex digits, "+dirty" where its tree had uncommitted changes."""
    if not commit:
        return "unknown"
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")


def run_frame(records: list[tuple[Path, Record]]) -> pd.DataFrame:
    """One row per record: its table row, task, method and the run facts the tables show."""
    frame = pd.DataFrame(
        {
            "backbone": [r.backbone for _, r in records],
            "adapter_tag": [r.adapter_tag for _, r in records],
            "adapter": [r.adapter for _, r in records],
            "task": [r.task for _, r in records],
            "adapter_params": pd.array([r.adapter_params for _, r in records], dtype="Int64"),
            "head_params": pd.array([r.head_params for _, r in records], dtype="Int64"),
            "commit": [short_commit(r.git_commit) for _, r in records],
            **{
                key: [_number(getattr(r, key)) for _, r in records]
                for key in (
                    "train_samples_per_s",
                    "train_tokens_per_s",
                    "step_time_s",
                    "wall_time_s",
                    "peak_mem_bytes",
                )
            },
        }
    )
    frame.index.name = "run"
    return frame


def seed_frame(records: list[tuple[Path, Record]], columns: list[Column]) -> pd.DataFrame:
    """Long form: one row per (record, column part) with the metric x100; TablesError if a metric is missing."""
    by_task: dict[str, Column] = {c.task: c for c in columns}
    rows = []
    for run, (path, rec) in enumerate(records):
        col = by_task.get(rec.task)
        if col is None:
            continue
        for key, metric in col.parts:
            name = metric or rec.main_metric
            if name not in rec.metrics:
                raise TablesError(
                    f"record {path}: no metric '{name}' for column {col.header} (has {sorted(rec.metrics)})"
                )
            rows.append((rec.backbone, rec.adapter_tag, rec.task, key, run, 100.0 * rec.metrics[name]))
    return pd.DataFrame(rows, columns=[*ROW, "task", "key", "run", "value"])


def cell_stats(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone, adapter_tag, key): mean, std (ddof=1) and n over the seeds; NaN values propagate."""
    grouped = seeds.groupby([*ROW, "key"], sort=False)["value"]
    return grouped.agg(mean=mean_all, std=std_all, n="size")


def task_scores(seeds: pd.DataFrame) -> pd.Series:
    """Per (backbone, adapter_tag, task): the mean over seeds of the per-seed mean of the task's parts."""
    per_seed = seeds.groupby([*ROW, "task", "run"], sort=False)["value"].agg(mean_all)
    return per_seed.groupby(level=[*ROW, "task"], sort=False).agg(mean_all)


def _mean_if_all(values: list[float | None]) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def table_columns(preset: str, records: list[tuple[Path, Record]], refs: list[Reference]) -> list[Column]:
    """The task columns of a preset: its tasks, completed to the whole benchmark where the table is one."""
    tasks = {rec.task for _, rec in records}
    ref_tasks = {
        key for ref in refs for key in ref.rows[0] if key not in REFERENCE_META and key not in SUMMARY_LABELS
    }
    if preset in PRESET_TASKS:
        tasks |= set(PRESET_TASKS[preset])
    elif len(tasks & set(GLUE_TASKS)) >= 2 or any(k.split("_")[0] in GLUE_TASKS for k in ref_tasks):
        tasks |= set(GLUE_TASKS)
    if tasks & set(VTAB_TASKS) or ref_tasks & set(VTAB_TASKS):
        tasks |= set(VTAB_TASKS)
    main_of = {rec.task: rec.main_metric for _, rec in records}
    columns = []
    for task in task_order(tasks):
        parts = parts_for(preset, task, main_of.get(task))
        columns.append(Column(task, parts, header(task, parts)))
    return columns


def table_summaries(columns: list[Column]) -> list[str]:
    """The summary columns: Avg over tasks; VTAB's group means, Mean (19) and Mean (groups)."""
    tasks = {c.task for c in columns}
    has_vtab = bool(tasks & set(VTAB_TASKS))
    summaries = []
    if len(columns) >= 2 and not (has_vtab and tasks <= set(VTAB_TASKS)):
        summaries.append("avg")
    if has_vtab:
        summaries += ["natural", "specialized", "structured", "mean19", "mean_groups"]
    return summaries


def build_table(preset: str, records: list[tuple[Path, Record]], refs: list[Reference]) -> Table:
    """The table of one preset from its records and its published rows."""
    columns = table_columns(preset, records, refs)
    summaries = table_summaries(columns)
    seeds = seed_frame(records, columns)
    stats = cell_stats(seeds)
    scores = task_scores(seeds)
    runs = run_frame(records)
    per_row = runs.groupby(ROW, sort=False)
    means = per_row[["train_samples_per_s", "wall_time_s"]].agg(mean_present)
    peaks = per_row["peak_mem_bytes"].max()
    method = per_row["adapter"].first(skipna=False)  # the first record's, as printed

    rows: list[Row] = []
    for (backbone, tag), group in per_row:
        row = Row(
            backbone, tag, published=False, order=(1, method_rank(method[backbone, tag]), natural_key(tag))
        )
        for col in columns:
            for key, _ in col.parts:
                if (backbone, tag, key) in stats.index:
                    s = stats.loc[(backbone, tag, key)]
                    n = int(s["n"])
                    row.stats[key] = Stat(float(s["mean"]), float(s["std"]) if n > 1 else None, n)
        score = {
            c.task: float(scores[backbone, tag, c.task]) if (backbone, tag, c.task) in scores.index else None
            for c in columns
        }
        if "avg" in summaries:
            row.summary["avg"] = _mean_if_all([score[c.task] for c in columns])
        if "mean19" in summaries:
            groups = {g: _mean_if_all([score.get(t) for t in ts]) for g, ts in VTAB_GROUPS.items()}
            row.summary.update(groups)
            row.summary["mean19"] = _mean_if_all([score.get(t) for t in VTAB_TASKS])
            row.summary["mean_groups"] = _mean_if_all(list(groups.values()))
        row.adapter_params = sorted(int(v) for v in group["adapter_params"].dropna().unique())
        row.head_params = sorted(int(v) for v in group["head_params"].dropna().unique())
        row.commits = {str(c): int(n) for c, n in group["commit"].value_counts(sort=False).items()}
        row.samples_per_s = _optional(means.loc[(backbone, tag), "train_samples_per_s"])
        wall = _optional(means.loc[(backbone, tag), "wall_time_s"])
        row.minutes = None if wall is None else wall / 60
        peak = _optional(peaks[backbone, tag])
        row.peak_mem_gib = None if peak is None else peak / 2**30
        rows.append(row)

    sources: list[str] = []
    csv_keys = {key for col in columns for key, _ in col.parts}
    for ref in refs:
        for i, r in enumerate(ref.rows):
            unknown = [
                k for k in r if k not in REFERENCE_META and k not in SUMMARY_LABELS and k not in csv_keys
            ]
            if unknown:
                raise TablesError(
                    f"reference file {ref.path}: columns {unknown} match no column of table {preset}"
                )
            if r["source"] not in sources:
                sources.append(r["source"])
            row = Row(
                backbone=r["backbone"],
                label=r["method"],
                published=True,
                order=(0, ref.path.name, i),
                params_text=r["params"] if r["params"] not in ("", "n/a") else DASH,
                source_ref=sources.index(r["source"]) + 1,
            )
            for key in csv_keys & set(r):
                if ref_number(r[key], ref.path, key) is not None:
                    row.printed[key] = r[key].strip()
            for key in summaries:
                row.summary[key] = ref_number(r[key], ref.path, key) if key in r else None
                if row.summary[key] is not None:
                    row.printed[key] = r[key].strip()
            rows.append(row)
    rows.sort(key=lambda row: (row.backbone, row.order))
    return Table(preset, columns, summaries, rows, sources, len(records))


def throughput_rows(records: list[tuple[Path, Record]]) -> list[dict]:
    """Per (backbone, adapter_tag): train samples/s, tokens/s, step time, peak memory, means over records."""
    runs = run_frame(records)
    per_row = runs.groupby(ROW, sort=False)
    means = per_row[["train_samples_per_s", "train_tokens_per_s", "step_time_s", "peak_mem_bytes"]].agg(
        mean_present
    )
    counts = per_row.size()
    tasks = per_row["task"].nunique()
    method = per_row["adapter"].first(skipna=False)  # the first record's, as printed
    rows = []
    for backbone, tag in counts.index:
        m = means.loc[(backbone, tag)]
        peak = _optional(m["peak_mem_bytes"])
        rows.append(
            {
                "backbone": backbone,
                "adapter_tag": tag,
                "records": int(counts[backbone, tag]),
                "tasks": int(tasks[backbone, tag]),
                "train_samples_per_s": _optional(m["train_samples_per_s"]),
                "train_tokens_per_s": _optional(m["train_tokens_per_s"]),
                "step_time_s": _optional(m["step_time_s"]),
                "peak_mem_gib": None if peak is None else peak / 2**30,
            }
        )
    rows.sort(
        key=lambda r: (
            r["backbone"],
            method_rank(method[r["backbone"], r["adapter_tag"]]),
            natural_key(r["adapter_tag"]),
        )
    )
    return rows
