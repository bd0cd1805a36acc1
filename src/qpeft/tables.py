"""Run records -> paper-style tables (Markdown, LaTeX, CSV), with published rows beside ours.

    python -m qpeft.tables [--roots outputs ...] [--out results/tables] [--reference results/reference]

Reads every `record.json` under the roots (nothing is skipped: a malformed record, or two records of the
same run with different metrics, is an error naming the files), groups them by `experiment` (the preset;
null goes to `adhoc`) and writes `<out>/<preset>.{md,tex,csv}` plus `<out>/throughput.{md,csv}`.
Only the standard library and numpy: this module never imports training code.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RECORD_NAME = "record.json"
REQUIRED_KEYS = ("task", "backbone", "adapter_tag", "seed", "metrics", "main_metric")
ADHOC = "adhoc"
DASH = "—"

GLUE_TASKS = ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]  # AdaLoRA Table 1 order
VTAB_GROUPS = {
    "natural": ["cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": [
        "clevr_count",
        "clevr_dist",
        "dmlab",
        "kitti",
        "dsprites_loc",
        "dsprites_ori",
        "smallnorb_azi",
        "smallnorb_ele",
    ],
}
VTAB_TASKS = [t for tasks in VTAB_GROUPS.values() for t in tasks]
TASK_LABELS = {
    "mnli": "MNLI",
    "sst2": "SST-2",
    "cola": "CoLA",
    "qqp": "QQP",
    "qnli": "QNLI",
    "rte": "RTE",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "cifar100": "CIFAR-100",
    "caltech101": "Caltech101",
    "dtd": "DTD",
    "oxford_flowers102": "Flowers102",
    "oxford_iiit_pet": "Pets",
    "svhn": "SVHN",
    "sun397": "Sun397",
    "patch_camelyon": "Camelyon",
    "eurosat": "EuroSAT",
    "resisc45": "Resisc45",
    "diabetic_retinopathy": "Retinopathy",
    "clevr_count": "Clevr-Count",
    "clevr_dist": "Clevr-Dist",
    "dmlab": "DMLab",
    "kitti": "KITTI-Dist",
    "dsprites_loc": "dSpr-Loc",
    "dsprites_ori": "dSpr-Ori",
    "smallnorb_azi": "sNORB-Azim",
    "smallnorb_ele": "sNORB-Elev",
}
# Adapter methods in table order (records' `adapter`); unknown methods come last, by name.
METHOD_ORDER = ["full", "head_only", "bitfit", "lora", "adalora", "oft", "boft", "quantum", "quantum_taylor"]

# How a task's cell is made: (part, metric key) pairs, the column key being `task` or `task_part`. The
# default is AdaLoRA Table 1 (MNLI m/mm, QQP acc/F1, STS-B mean of Pearson and Spearman); a task not
# listed shows its record's main_metric. A task's score (for averages) is the mean of its parts.
DEFAULT_PARTS = {
    "mnli": [("m", "accuracy_matched"), ("mm", "accuracy_mismatched")],
    "qqp": [("acc", "accuracy"), ("f1", "f1")],
    "stsb": [("", "pearson_spearman")],
}
# Presets whose published table gives one number per task (the LoRA paper: MNLI-m, QQP acc, STS-B Pearson).
PRESET_PARTS = {
    "glue_roberta": {
        "mnli": [("", "accuracy_matched")],
        "qqp": [("", "accuracy")],
        "stsb": [("", "pearson")],
    },
}
# Presets that sweep a subset of a benchmark: their columns (and their average) are those tasks only.
PRESET_TASKS = {"minilm_glue": ["sst2", "cola", "mrpc", "stsb", "rte"]}
PART_LABELS = {"m": "m", "mm": "mm", "acc": "acc", "f1": "F1"}
SUMMARY_LABELS = {
    "avg": "Avg",
    "natural": "Natural",
    "specialized": "Specialized",
    "structured": "Structured",
    "mean19": "Mean (19)",
    "mean_groups": "Mean (groups)",
}
REFERENCE_META = ("preset", "method", "backbone", "params", "source")


class TablesError(Exception):
    """A problem with the records or reference files, naming the file(s) involved."""


# ---------------------------------------------------------------------------------------------- reading


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_record(path: Path) -> dict:
    """One record, checked for the keys the tables need; TablesError naming `path` otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TablesError(f"malformed record {path}: {e}") from e
    if not isinstance(rec, dict):
        raise TablesError(f"malformed record {path}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise TablesError(f"malformed record {path}: missing keys {missing}")
    metrics = rec["metrics"]
    if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
        raise TablesError(f"malformed record {path}: 'metrics' must map names to numbers, got {metrics!r}")
    if rec["main_metric"] not in metrics:
        raise TablesError(
            f"malformed record {path}: main_metric '{rec['main_metric']}' not in {sorted(metrics)}"
        )
    group = rec.get("task_group")
    for name, tasks in VTAB_GROUPS.items():
        if rec["task"] in tasks and group is not None and group != name:
            raise TablesError(
                f"record {path}: task {rec['task']} has task_group '{group}', expected '{name}'"
            )
    return rec


def run_key(rec: dict) -> tuple:
    """The identity of a run across copies of its record: (experiment, task, backbone, adapter_tag, seed)."""
    return (rec.get("experiment"), rec["task"], rec["backbone"], rec["adapter_tag"], rec["seed"])


def load_records(roots: list[str | Path]) -> tuple[list[tuple[Path, dict]], int]:
    """Every record under `roots`, identical duplicates dropped; returns (records, files read)."""
    paths: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise TablesError(f"no such folder: {root}")
        paths += sorted(root.rglob(RECORD_NAME))
    seen_paths: set[Path] = set()
    by_key: dict[tuple, tuple[Path, dict]] = {}
    files = 0
    for path in paths:
        real = path.resolve()
        if real in seen_paths:  # overlapping roots
            continue
        seen_paths.add(real)
        files += 1
        rec = read_record(path)
        key = run_key(rec)
        if key in by_key:
            other_path, other = by_key[key]
            if json.dumps(other["metrics"], sort_keys=True) != json.dumps(rec["metrics"], sort_keys=True):
                raise TablesError(
                    f"conflicting records for (experiment, task, backbone, adapter_tag, seed) = {key}: "
                    f"{other_path} and {path} have different metrics"
                )
            continue
        by_key[key] = (path, rec)
    return list(by_key.values()), files


@dataclass
class Reference:
    """Published rows of one reference CSV."""

    path: Path
    rows: list[dict[str, str]]


def load_references(folder: str | Path | None) -> dict[str, list[Reference]]:
    """Reference CSVs under `folder`, by preset; {} when the folder is None or absent."""
    out: dict[str, list[Reference]] = defaultdict(list)
    if folder is None or not Path(folder).is_dir():
        return out
    for path in sorted(Path(folder).glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        missing = [k for k in REFERENCE_META if k not in rows[0]]
        if missing:
            raise TablesError(f"reference file {path} lacks columns {missing}")
        by_preset: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in rows:
            if None in row or any(v is None for v in row.values()):
                raise TablesError(
                    f"reference file {path}: row {row.get('method')!r} has the wrong number of cells"
                )
            by_preset[row["preset"]].append(row)
        for preset, prows in by_preset.items():
            out[preset].append(Reference(path, prows))
    return out


def _ref_number(text: str, path: Path, column: str) -> float | None:
    text = text.strip()
    if text in ("", "n/a"):
        return None
    try:
        return float(text)
    except ValueError:
        raise TablesError(
            f"reference file {path}: column {column} has '{text}', not a number or n/a"
        ) from None


# ---------------------------------------------------------------------------------------------- tables


@dataclass
class Stat:
    """A cell of ours: per-seed values (x100), their mean and sample standard deviation (ddof=1)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None


@dataclass
class Column:
    """One displayed task column, made of one or two parts (CSV keys)."""

    task: str
    parts: list[tuple[str, str]]  # (csv key, metric key)
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


@dataclass
class Table:
    """A preset's table: columns, rows, summaries and notes."""

    preset: str
    columns: list[Column]
    summaries: list[str]
    rows: list[Row]
    sources: list[str]
    n_records: int


def _parts_for(preset: str, task: str, main_metric: str | None) -> list[tuple[str, str]]:
    spec = PRESET_PARTS.get(preset, {}).get(task) or DEFAULT_PARTS.get(task)
    if spec is None:
        return [(task, main_metric or "")]
    return [(f"{task}_{p}" if p else task, metric) for p, metric in spec]


def _header(task: str, parts: list[tuple[str, str]]) -> str:
    label = TASK_LABELS.get(task, task)
    names = [key[len(task) + 1 :] for key, _ in parts if key != task]
    return f"{label} {'/'.join(PART_LABELS.get(n, n) for n in names)}" if len(names) > 1 else label


def _task_order(tasks: set[str]) -> list[str]:
    known = [t for t in GLUE_TASKS + VTAB_TASKS if t in tasks]
    return known + sorted(tasks - set(known))


def _method_rank(method: str | None) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _mean_if_all(values: list[float | None]) -> float | None:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def build_table(preset: str, records: list[tuple[Path, dict]], refs: list[Reference]) -> Table:
    """The table of one preset from its records and its published rows."""
    tasks = {rec["task"] for _, rec in records}
    ref_tasks: set[str] = set()
    for ref in refs:
        for key in ref.rows[0]:
            if key not in REFERENCE_META and key not in SUMMARY_LABELS:
                ref_tasks.add(key)
    if preset in PRESET_TASKS:
        tasks |= set(PRESET_TASKS[preset])
    elif len(tasks & set(GLUE_TASKS)) >= 2 or any(k.split("_")[0] in GLUE_TASKS for k in ref_tasks):
        tasks |= set(GLUE_TASKS)
    if tasks & set(VTAB_TASKS) or ref_tasks & set(VTAB_TASKS):
        tasks |= set(VTAB_TASKS)
    main_of = {rec["task"]: rec["main_metric"] for _, rec in records}
    columns = []
    for task in _task_order(tasks):
        parts = _parts_for(preset, task, main_of.get(task))
        columns.append(Column(task, parts, _header(task, parts)))
    has_vtab = bool(tasks & set(VTAB_TASKS))
    summaries = []
    if len(columns) >= 2 and not (has_vtab and tasks <= set(VTAB_TASKS)):
        summaries.append("avg")
    if has_vtab:
        summaries += ["natural", "specialized", "structured", "mean19", "mean_groups"]

    ours: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for _, rec in records:
        ours[(rec["backbone"], rec["adapter_tag"])].append(rec)
    rows: list[Row] = []
    for (backbone, tag), recs in ours.items():
        rows.append(_our_row(backbone, tag, recs, columns, summaries, records))

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
                if _ref_number(r[key], ref.path, key) is not None:
                    row.printed[key] = r[key].strip()
            for key in summaries:
                row.summary[key] = _ref_number(r[key], ref.path, key) if key in r else None
                if row.summary[key] is not None:
                    row.printed[key] = r[key].strip()
            rows.append(row)
    rows.sort(key=lambda row: (row.backbone, row.order))
    return Table(preset, columns, summaries, rows, sources, len(records))


def _our_row(
    backbone: str, tag: str, recs: list[dict], columns: list[Column], summaries: list[str], all_records
) -> Row:
    path_of = {id(rec): path for path, rec in all_records}
    method = recs[0].get("adapter")
    row = Row(backbone, tag, published=False, order=(1, _method_rank(method), _natural(tag)))
    task_scores: dict[str, float | None] = {}
    for col in columns:
        crecs = [r for r in recs if r["task"] == col.task]
        if not crecs:
            task_scores[col.task] = None
            continue
        per_seed = []
        for key, metric in col.parts:
            values = []
            for rec in crecs:
                name = metric or rec["main_metric"]
                if name not in rec["metrics"]:
                    raise TablesError(
                        f"record {path_of[id(rec)]}: no metric '{name}' for column {col.header} "
                        f"(has {sorted(rec['metrics'])})"
                    )
                values.append(100.0 * rec["metrics"][name])
            row.stats[key] = Stat(values)
            per_seed.append(values)
        task_scores[col.task] = float(np.mean(np.mean(per_seed, axis=0)))
    if "avg" in summaries:
        row.summary["avg"] = _mean_if_all([task_scores[c.task] for c in columns])
    if "mean19" in summaries:
        groups = {g: _mean_if_all([task_scores.get(t) for t in ts]) for g, ts in VTAB_GROUPS.items()}
        row.summary.update(groups)
        row.summary["mean19"] = _mean_if_all([task_scores.get(t) for t in VTAB_TASKS])
        row.summary["mean_groups"] = _mean_if_all(list(groups.values()))
    row.adapter_params = sorted(
        {int(r["adapter_params"]) for r in recs if r.get("adapter_params") is not None}
    )
    row.head_params = sorted({int(r["head_params"]) for r in recs if r.get("head_params") is not None})
    row.samples_per_s = _mean_of(recs, "train_samples_per_s")
    wall = _mean_of(recs, "wall_time_s")
    row.minutes = None if wall is None else wall / 60
    peaks = [r["peak_mem_bytes"] for r in recs if _is_number(r.get("peak_mem_bytes"))]
    row.peak_mem_gib = max(peaks) / 2**30 if peaks else None
    return row


def _mean_of(recs: list[dict], key: str) -> float | None:
    values = [r[key] for r in recs if _is_number(r.get(key)) and not math.isnan(r[key])]
    return float(np.mean(values)) if values else None


# ---------------------------------------------------------------------------------------------- formatting


def human_count(n: int) -> str:
    """A parameter count for humans: 1327104 -> 1.33M, 28400 -> 28.4K, 512 -> 512."""
    if n < 1000:
        return str(n)
    for unit, scale in (("K", 1e3), ("M", 1e6), ("B", 1e9)):
        v = n / scale
        text = f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
        if float(text) < 1000 or unit == "B":
            return text + unit
    raise AssertionError("unreachable")


def _count_cell(values: list[int], human: bool = True) -> str:
    if not values:
        return DASH
    fmt = human_count if human else str
    return fmt(values[0]) if len(values) == 1 else f"{fmt(values[0])}–{fmt(values[-1])}"


def _seed_counts(table: Table) -> set[int]:
    return {s.n for row in table.rows if not row.published for s in row.stats.values()}


def _stat_text(stat: Stat, show_n: bool, pm: str) -> str:
    text = f"{stat.mean:.2f}"
    if stat.std is not None:
        text += f"{pm}{stat.std:.2f}"
    return text + (f" (n={stat.n})" if show_n else "")


def _cells(table: Table, row: Row, pm: str) -> list[str]:
    show_n = len(_seed_counts(table)) > 1
    cells = []
    for col in table.columns:
        parts = []
        for key, _ in col.parts:
            if row.published:
                parts.append(row.printed.get(key, DASH))
            else:
                parts.append(_stat_text(row.stats[key], show_n, pm) if key in row.stats else DASH)
        cells.append(DASH if all(p == DASH for p in parts) else " / ".join(parts))
    for key in table.summaries:
        if row.published:
            cells.append(row.printed.get(key, DASH))
        else:
            value = row.summary.get(key)
            cells.append(DASH if value is None else f"{value:.2f}")
    if row.published:
        cells += [row.params_text, DASH, DASH, DASH, DASH]
    else:
        cells += [
            _count_cell(row.adapter_params),
            _count_cell(row.head_params),
            DASH if row.samples_per_s is None else f"{row.samples_per_s:.1f}",
            DASH if row.minutes is None else f"{row.minutes:.1f}",
            DASH if row.peak_mem_gib is None else f"{row.peak_mem_gib:.2f}",
        ]
    return cells


def _label(row: Row) -> str:
    return f"{row.label} (published [{row.source_ref}])" if row.published else row.label


def _headers(table: Table) -> list[str]:
    return (
        ["Backbone", "Method"]
        + [c.header for c in table.columns]
        + [SUMMARY_LABELS[k] for k in table.summaries]
        + ["#adapter params", "#head params", "train samples/s", "min/run", "peak mem (GiB)"]
    )


def _notes(table: Table) -> list[str]:
    counts = _seed_counts(table)
    notes = []
    if counts:
        if len(counts) == 1:
            n = counts.pop()
            what = "mean ± sample std (ddof=1)" if n > 1 else "single run"
            notes.append(f"Ours: {what} over {n} seed{'s' if n > 1 else ''}, metrics x100.")
        else:
            notes.append(
                "Ours: mean ± sample std (ddof=1) over the n seeds given in each cell, metrics x100."
            )
    if any(len(c.parts) > 1 for c in table.columns):
        notes.append("Tasks with two numbers count as their mean in averages (as AdaLoRA Table 1).")
    if "avg" in table.summaries:
        notes.append("Avg: mean over tasks of the per-task means, shown only when every task is present.")
    if "mean19" in table.summaries:
        notes.append(
            "VTAB: group means and Mean (19) only when every task of the group (all 19) is present; "
            "Mean (groups) is the mean of the three group means."
        )
    notes.append(
        "Peak memory: the largest over the row's runs; samples/s and min/run (wall clock of a run: loading, "
        "training, evaluation; a resumed run counts its last part): means over its runs."
    )
    notes += [f"[{i}] {s}" for i, s in enumerate(table.sources, 1)]
    return notes


def to_markdown(table: Table) -> str:
    """The table as GitHub Markdown."""
    lines = [f"# {table.preset}", "", f"{table.n_records} records.", ""]
    headers = _headers(table)
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(headers) - 2)) + "|")
    for row in table.rows:
        cells = [row.backbone, _label(row)] + _cells(table, row, " ± ")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in _notes(table)]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    text = text.replace("\\", "\\textbackslash{}")
    for ch in "&%$#_{}":
        text = text.replace(ch, "\\" + ch)
    return text.replace("—", "--").replace("–", "--").replace("±", "$\\pm$")


def to_latex(table: Table) -> str:
    """The table as a LaTeX (booktabs) table."""
    headers = _headers(table)
    spec = "ll" + "r" * (len(headers) - 2)
    lines = [
        f"% {table.preset}: generated by qpeft.tables from {table.n_records} records",
        "\\begin{table}[t]",
        "\\centering",
        "\\resizebox{\\linewidth}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_tex_escape(h) for h in headers) + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = [row.backbone, _label(row)] + _cells(table, row, "±")
        lines.append(" & ".join(_tex_escape(c) for c in cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\par\\smallskip", "{\\footnotesize"]
    lines += [_tex_escape(n) + "\\par" for n in _notes(table)]  # \par, not \\ (a next "[1]" is its argument)
    lines += ["}", f"\\caption{{{_tex_escape(table.preset)}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The table as CSV: unrounded means (x100), std and n per column; exact parameter counts."""
    keys = [key for col in table.columns for key, _ in col.parts]
    header = ["backbone", "method", "published", "source"]
    for key in keys:
        header += [key, f"{key}_std", f"{key}_n"]
    header += table.summaries
    header += [
        "adapter_params",
        "adapter_params_h",
        "head_params",
        "train_samples_per_s",
        "minutes_per_run",
        "peak_mem_gib",
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        out: list = [row.backbone, row.label, int(row.published)]
        out.append(table.sources[row.source_ref - 1] if row.published else "")
        for key in keys:
            if row.published:
                out += [row.printed.get(key, ""), "", ""]
            elif key in row.stats:
                s = row.stats[key]
                out += [f"{s.mean:.4f}", "" if s.std is None else f"{s.std:.4f}", s.n]
            else:
                out += ["", "", ""]
        for key in table.summaries:
            if row.published:
                out.append(row.printed.get(key, ""))
            else:
                value = row.summary.get(key)
                out.append("" if value is None else f"{value:.4f}")
        if row.published:
            out += ["", "" if row.params_text == DASH else row.params_text, "", "", "", ""]
        else:
            out += [
                _count_cell(row.adapter_params, human=False).replace("–", "-").replace(DASH, ""),
                _count_cell(row.adapter_params).replace(DASH, ""),
                _count_cell(row.head_params, human=False).replace("–", "-").replace(DASH, ""),
                "" if row.samples_per_s is None else f"{row.samples_per_s:.3f}",
                "" if row.minutes is None else f"{row.minutes:.2f}",
                "" if row.peak_mem_gib is None else f"{row.peak_mem_gib:.3f}",
            ]
        writer.writerow(out)
    return buf.getvalue()


def throughput_rows(records: list[tuple[Path, dict]]) -> list[dict]:
    """Per (backbone, adapter_tag): train samples/s, tokens/s, step time, peak memory, averaged over records."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for _, rec in records:
        groups[(rec["backbone"], rec["adapter_tag"])].append(rec)
    rows = []
    for (backbone, tag), recs in groups.items():
        peak = _mean_of(recs, "peak_mem_bytes")
        rows.append(
            {
                "backbone": backbone,
                "adapter_tag": tag,
                "records": len(recs),
                "tasks": len({r["task"] for r in recs}),
                "train_samples_per_s": _mean_of(recs, "train_samples_per_s"),
                "train_tokens_per_s": _mean_of(recs, "train_tokens_per_s"),
                "step_time_s": _mean_of(recs, "step_time_s"),
                "peak_mem_gib": None if peak is None else peak / 2**30,
                "_order": (backbone, _method_rank(recs[0].get("adapter")), _natural(tag)),
            }
        )
    rows.sort(key=lambda r: r["_order"])
    for r in rows:
        del r["_order"]
    return rows


def throughput_markdown(rows: list[dict]) -> str:
    """The throughput table as Markdown."""

    def fmt(v: float | None, spec: str) -> str:
        return DASH if v is None else format(v, spec)

    lines = [
        "# Throughput",
        "",
        "Means over each row's records (all tasks and seeds); step time in milliseconds.",
        "",
        "| Backbone | Method | records | tasks | train samples/s | train tokens/s | step time (ms) | peak mem (GiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        step_ms = None if r["step_time_s"] is None else 1000 * r["step_time_s"]
        cells = [
            r["backbone"],
            r["adapter_tag"],
            str(r["records"]),
            str(r["tasks"]),
            fmt(r["train_samples_per_s"], ".1f"),
            fmt(r["train_tokens_per_s"], ".0f"),
            fmt(step_ms, ".1f"),
            fmt(r["peak_mem_gib"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def throughput_csv(rows: list[dict]) -> str:
    """The throughput table as CSV (unrounded)."""
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["backbone", "adapter_tag"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- main


def _file_stem(preset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", preset)


def build_tables(
    roots: list[str | Path], out: str | Path, reference: str | Path | None = "results/reference"
) -> tuple[list[Path], int, int]:
    """Read the records under `roots`, write every table under `out`; returns (files written, records, files read)."""
    records, files = load_records(roots)
    refs = load_references(reference)
    by_preset: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for path, rec in records:
        by_preset[rec.get("experiment") or ADHOC].append((path, rec))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for preset in sorted(by_preset):
        stem = _file_stem(preset)
        if any(rec.get("task_family") == "e2e" for _, rec in by_preset[preset]):  # five metrics, own units
            from qpeft import tables_e2e

            ref_rows = [row for ref in refs.get(preset, []) for row in ref.rows]
            texts = tables_e2e.render(preset, [rec for _, rec in by_preset[preset]], ref_rows).items()
        else:
            table = build_table(preset, by_preset[preset], refs.get(preset, []))
            texts = ((".md", to_markdown(table)), (".tex", to_latex(table)), (".csv", to_csv(table)))
        for suffix, text in texts:
            path = out / f"{stem}{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    if records:
        rows = throughput_rows(records)
        for suffix, text in ((".md", throughput_markdown(rows)), (".csv", throughput_csv(rows))):
            path = out / f"throughput{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written, len(records), files


def main(argv: list[str] | None = None) -> int:
    """Command line: build the tables, print what was read and written."""
    parser = argparse.ArgumentParser(prog="python -m qpeft.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--roots", nargs="+", default=["outputs"], help="folders searched for record.json")
    parser.add_argument("--out", default="results/tables", help="where the tables go")
    parser.add_argument("--reference", default="results/reference", help="published numbers (CSV files)")
    args = parser.parse_args(argv)
    try:
        written, n_records, n_files = build_tables(args.roots, args.out, args.reference)
    except TablesError as e:
        print(f"qpeft.tables: error: {e}", file=sys.stderr)
        return 1
    print(f"read {n_files} record files ({n_records} distinct runs) under {', '.join(args.roots)}")
    if not written:
        print("no records found: no tables written")
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
