"""Run records -> paper-style tables (Markdown, LaTeX, CSV), with published rows beside ours.

    python -m qpeft.tables                       # make tables: results/records -> results/tables, yours -> outputs/tables
    python -m qpeft.tables [--roots outputs ...] [--out results/tables] [--reference results/reference]

Reads every `record.json` under the roots (nothing is skipped: a malformed record, or two records of the
same run with different metrics, is an error naming the files, except that such runs in separate subfolders
of one top-level folder, as a diagnostic sweep made before run folders carried their settings, become rows
labelled `<subfolder>/<adapter_tag>`), groups them by `experiment` (the preset; null goes to `adhoc`) and writes `<out>/<preset>.{md,tex,csv}` plus `<out>/throughput.{md,csv}`.
It imports pandas and numpy, never training code (torch, transformers, qpeft.train).

    presets.py    what each benchmark's table looks like (task order, labels, cell recipes, method order)
    load.py       record files -> checked `qpeft.records.Record`s; published reference CSVs
    aggregate.py  records -> a `Table` (pandas groupby: mean, sample std, n per cell; task scores)
    render.py     the one renderer: rows of cells -> Markdown / LaTeX / CSV (also used by params, bench)
    write.py      a Table's cells in each format; `build_tables`
    cli.py        the command line
"""

from qpeft.tables.aggregate import Column, Row, Stat, Table, build_table, throughput_rows
from qpeft.tables.cli import main
from qpeft.tables.load import Reference, TablesError, load_records, load_references, read_record
from qpeft.tables.presets import (
    ADHOC,
    DASH,
    GLUE_TASKS,
    METHOD_ORDER,
    REFERENCE_META,
    SUMMARY_LABELS,
    TASK_LABELS,
    VTAB_GROUPS,
    VTAB_TASKS,
)
from qpeft.tables.render import human_count
from qpeft.tables.write import (
    build_tables,
    by_preset,
    throughput_csv,
    throughput_markdown,
    to_csv,
    to_latex,
    to_markdown,
)

__all__ = [
    "ADHOC",
    "DASH",
    "GLUE_TASKS",
    "METHOD_ORDER",
    "REFERENCE_META",
    "SUMMARY_LABELS",
    "TASK_LABELS",
    "VTAB_GROUPS",
    "VTAB_TASKS",
    "Column",
    "Reference",
    "Row",
    "Stat",
    "Table",
    "TablesError",
    "build_table",
    "build_tables",
    "by_preset",
    "human_count",
    "load_records",
    "load_references",
    "main",
    "read_record",
    "throughput_csv",
    "throughput_markdown",
    "throughput_rows",
    "to_csv",
    "to_latex",
    "to_markdown",
]
