"""`python -m qpeft.tables` / `qpeft-tables`: build every table from the records under some folders."""

from __future__ import annotations

import argparse
import sys

from qpeft.tables.load import TablesError
from qpeft.tables.write import build_tables


def main(argv: list[str] | None = None) -> int:
    """Command line: build the tables, print what was read and written; 1 on an error or no records."""
    parser = argparse.ArgumentParser(
        prog="python -m qpeft.tables",
        description="Run records -> paper-style tables (Markdown, LaTeX, CSV), with published rows beside ours.",
    )
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
