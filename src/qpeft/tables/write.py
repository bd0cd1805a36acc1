"""The cells of the preset and throughput tables, written through the one renderer; `build_tables`."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from qpeft.records import Record
from qpeft.tables import render
from qpeft.tables.aggregate import Row, Stat, Table, build_table, throughput_rows
from qpeft.tables.load import TablesError, load_labelled_records, load_references
from qpeft.tables.presets import ADHOC, DASH, SUMMARY_LABELS


def _count_cell(values: list[int], human: bool = True) -> str:
    if not values:
        return DASH
    fmt = render.human_count if human else str
    return fmt(values[0]) if len(values) == 1 else f"{fmt(values[0])}–{fmt(values[-1])}"


def _seed_counts(table: Table) -> set[int]:
    return {s.n for row in table.rows if not row.published for s in row.stats.values()}


def _stat_text(stat: Stat, show_n: bool, pm: str) -> str:
    text = f"{stat.mean:.2f}"
    if stat.std is not None:
        text += f"{pm}{stat.std:.2f}"
    return text + (f" (n={stat.n})" if show_n else "")


def _cells(table: Table, row: Row, pm: str) -> list[str]:
    """The displayed cells of a row after Backbone and Method: tasks, summaries, params, speed, memory."""
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


def notes(table: Table) -> list[str]:
    """The notes under a preset's table: what a cell is, how averages are made, the published sources."""
    counts = _seed_counts(table)
    out = []
    if counts:
        if len(counts) == 1:
            n = counts.pop()
            what = "mean ± sample std (ddof=1)" if n > 1 else "single run"
            out.append(f"Ours: {what} over {n} seed{'s' if n > 1 else ''}, metrics x100.")
        else:
            out.append("Ours: mean ± sample std (ddof=1) over the n seeds given in each cell, metrics x100.")
    if any(len(c.parts) > 1 for c in table.columns):
        out.append("Tasks with two numbers count as their mean in averages (as AdaLoRA Table 1).")
    if "avg" in table.summaries:
        out.append("Avg: mean over tasks of the per-task means, shown only when every task is present.")
    if "mean19" in table.summaries:
        out.append(
            "VTAB: group means and Mean (19) only when every task of the group (all 19) is present; "
            "Mean (groups) is the mean of the three group means."
        )
    out.append(
        "Peak memory: the largest over the row's runs; samples/s and min/run (wall clock of a run: loading, "
        "training, evaluation; a resumed run counts its last part): means over its runs."
    )
    out.append(code_note(table))
    if any(row.label.endswith(YOURS) for row in table.rows):
        out.append(
            f"Rows marked{YOURS}: your runs under outputs/, not in results/records (the other rows are committed "
            "records)."
        )
    return out + [f"[{i}] {s}" for i, s in enumerate(table.sources, 1)]


def code_note(table: Table) -> str:
    """The commits behind each row of ours (runs per commit where they differ; "+dirty": uncommitted changes,
    kept as code.diff in the run folder by runs made since records carry code_diff_sha256)."""
    parts = []
    for row in table.rows:
        if row.published or not row.commits:
            continue
        shown = ", ".join(f"{c} ({n})" if len(row.commits) > 1 else c for c, n in sorted(row.commits.items()))
        parts.append(f"{row.label}: {shown}")
    return "Code (the commit each row's runs ran at): " + "; ".join(parts) + "."


def _align(n_columns: int) -> str:
    return "ll" + "r" * (n_columns - 2)


def to_markdown(table: Table, heading: str | None = None) -> str:
    """The table as GitHub Markdown, under `heading` (default: `# <preset>`)."""
    headers = _headers(table)
    rows = [[row.backbone, _label(row), *_cells(table, row, " ± ")] for row in table.rows]
    before = [heading or f"# {table.preset}", "", f"{table.n_records} records.", ""]
    return render.markdown(headers, rows, align=_align(len(headers)), before=before, notes=notes(table))


def to_latex(table: Table) -> str:
    """The table as a LaTeX (booktabs) table."""
    headers = _headers(table)
    rows = [[row.backbone, _label(row), *_cells(table, row, "±")] for row in table.rows]
    return render.latex_table(
        headers,
        rows,
        align=_align(len(headers)),
        comment=f"{table.preset}: generated by qpeft.tables from {table.n_records} records",
        notes=notes(table),
        caption=table.preset,
    )


def _plain(text: str) -> str:
    return text.replace("–", "-").replace(DASH, "")


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
    rows = []
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
                _plain(_count_cell(row.adapter_params, human=False)),
                _count_cell(row.adapter_params).replace(DASH, ""),
                _plain(_count_cell(row.head_params, human=False)),
                "" if row.samples_per_s is None else f"{row.samples_per_s:.3f}",
                "" if row.minutes is None else f"{row.minutes:.2f}",
                "" if row.peak_mem_gib is None else f"{row.peak_mem_gib:.3f}",
            ]
        rows.append(out)
    return render.csv_text(header, rows)


THROUGHPUT_COLUMNS = [
    ("preset", "Preset", "l", None, 1),
    ("backbone", "Backbone", "l", None, 1),
    ("adapter_tag", "Method", "l", None, 1),
    ("records", "records", "r", None, 1),
    ("tasks", "tasks", "r", None, 1),
    ("train_samples_per_s", "train samples/s", "r", ".1f", 1),
    ("train_tokens_per_s", "train tokens/s", "r", ".0f", 1),
    ("step_time_s", "step time (ms)", "r", ".1f", 1000),
    ("peak_mem_gib", "peak mem (GiB)", "r", ".2f", 1),
]


def throughput_markdown(rows: list[dict]) -> str:
    """The throughput table as Markdown."""
    cells = []
    for r in rows:
        line = []
        for key, _, _, spec, scale in THROUGHPUT_COLUMNS:
            v = r[key]
            line.append(str(v) if spec is None else DASH if v is None else format(scale * v, spec))
        cells.append(line)
    return render.markdown(
        [h for _, h, _, _, _ in THROUGHPUT_COLUMNS],
        cells,
        align="".join(a for _, _, a, _, _ in THROUGHPUT_COLUMNS),
        before=[
            "# Throughput",
            "",
            "Means over each row's records (all its preset's tasks and seeds); step time in milliseconds. Each "
            "preset ran under its own protocol and machine load: compare rows within a preset.",
            "",
        ],
    )


def throughput_csv(rows: list[dict]) -> str:
    """The throughput table as CSV (unrounded)."""
    header = list(rows[0]) if rows else ["preset", "backbone", "adapter_tag"]
    return render.csv_text(header, [[r[k] for k in header] for r in rows])


def file_stem(preset: str) -> str:
    """A preset name made safe as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", preset)


def by_preset(records: list[tuple[Path, Record]]) -> dict[str, list[tuple[Path, Record]]]:
    """Records grouped by experiment (None -> adhoc), presets sorted by name."""
    groups: dict[str, list[tuple[Path, Record]]] = defaultdict(list)
    for path, rec in records:
        groups[rec.experiment or ADHOC].append((path, rec))
    return {p: groups[p] for p in sorted(groups)}


def build_tables(
    roots: list[str | Path], out: str | Path, reference: str | Path | None = "results/reference"
) -> tuple[list[Path], int, int]:
    """Read the records under `roots`, write every table under `out`; returns (files written, records, files read).
    Runs of one identity with different metrics are rows labelled by their subfolder (load_labelled_records)."""
    records, files, _ = load_labelled_records(roots)
    if not records:
        raise TablesError(
            f"no record.json under {', '.join(map(str, roots))}: no tables written (check --roots)"
        )
    return write_tables(records, out, reference), len(records), files


YOURS = " (yours)"  # the label suffix of a row made from runs under outputs/ that are not committed records


def mark_yours(
    committed: list[tuple[Path, Record]], yours: list[tuple[Path, Record]]
) -> list[tuple[Path, Record]]:
    """Your records (under outputs/) as table rows of their own: each adapter tag gets YOURS appended, so your
    runs never merge into, or conflict with, the committed runs of the same identity. A record equal to a
    committed one (same run, same metrics: a copy, e.g. to continue a sweep) is not yours and is dropped."""
    import json

    known = {rec.run_key: json.dumps(rec.metrics, sort_keys=True) for _, rec in committed}
    out = []
    for path, rec in yours:
        if known.get(rec.run_key) == json.dumps(rec.metrics, sort_keys=True):
            continue
        out.append((path, replace(rec, adapter_tag=rec.adapter_tag + YOURS)))
    return out


def write_tables(
    records: list[tuple[Path, Record]], out: str | Path, reference: str | Path | None = "results/reference"
) -> list[Path]:
    """Every preset's table and the throughput table of `records`, under `out`; returns the files written."""
    refs = load_references(reference)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    groups = by_preset(records)
    for preset, recs in groups.items():
        stem = file_stem(preset)
        if any(rec.task_family == "e2e" for _, rec in recs):  # five metrics in their published units
            from qpeft.tables import e2e

            ref_rows = [row for ref in refs.get(preset, []) for row in ref.rows]
            texts = e2e.render(preset, [rec.to_dict() for _, rec in recs], ref_rows).items()
        else:
            table = build_table(preset, recs, refs.get(preset, []))
            texts = ((".md", to_markdown(table)), (".tex", to_latex(table)), (".csv", to_csv(table)))
        for suffix, text in texts:
            path = out / f"{stem}{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    if records:
        rows = [{"preset": preset, **row} for preset, recs in groups.items() for row in throughput_rows(recs)]
        for suffix, text in ((".md", throughput_markdown(rows)), (".csv", throughput_csv(rows))):
            path = out / f"throughput{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written
