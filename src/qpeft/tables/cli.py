"""`python -m qpeft.tables` / `qpeft-tables` (`make tables`): build every table from run records.

With no `--roots`, every committed table is rebuilt from the committed records, `results/records` ->
`results/tables` (each preset's table, the throughput table, each frontier study's points table and the claim
study's page, whose summary also goes into README.md between its claim_minilm markers, and its learning curves
-> `results/figures`); when
`outputs/` holds runs of your own, they are tabled too, beside the committed ones and marked `(yours)`, into
`outputs/tables` (results/tables stays what the committed records give). With `--roots`, the records under those
folders alone are tabled into `--out`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qpeft.errors import QpeftError, output_folder, print_error
from qpeft.records import RECORD_NAME
from qpeft.tables.load import TablesError, load_labelled_records
from qpeft.tables.write import build_tables, mark_yours, write_tables

COMMITTED = Path("results/records")
YOURS_ROOT = Path("outputs")


def frontier_points(records, records_root: Path, out: Path) -> list[Path]:
    """The points table of every frontier study among `records` (qpeft.frontier), without its figures."""
    from qpeft import frontier

    folders: dict[str, set[str]] = {}  # preset -> the top-level folders of records_root holding its records
    for path, r in records:
        if (r.experiment or "").startswith("frontier"):
            folders.setdefault(r.experiment, set()).add(path.relative_to(records_root).parts[0])
    written = []
    for preset, (folder, *more) in sorted(folders.items()):
        if more:
            raise TablesError(
                f"the records of {preset} lie in several folders of {records_root}: {folder}, {more}"
            )
        written += frontier.build(records_root / folder, preset, out, figures=None)
    return written


def claim_pages(records, records_root: Path, out: Path, figures: Path | None) -> list[Path]:
    """The claim study's page (qpeft.claim: lr choices, points, the claims with their intervals, which of the
    126-step frontier's conclusions held), and that of its points at one shared lr on a GPU; with `figures`, their
    learning curves too (a page is rebuilt with its figures, never without)."""
    from qpeft import claim

    have = {r.experiment for _, r in records}
    frontier_root = records_root / claim.FRONTIER_PRESET  # its comparisons are judged again, where committed
    frontier_root = frontier_root if frontier_root.is_dir() else None
    # README's and docs/claim.md's summary of the claims, from the committed records only
    summaries = [p for p in claim.SUMMARY_FILES if p.is_file()] if records_root == COMMITTED else []
    written = []
    for preset in [claim.PRESET, *claim.FIXED_LR_PRESETS]:
        if preset in have:
            written += claim.build(records_root / preset, out, figures, preset, frontier_root, summaries)
    return written


def committed_and_yours(
    out: Path, yours_out: Path, reference: str, figures: Path = Path("results/figures")
) -> tuple[list[Path], list[str]]:
    """`make tables`: the committed tables from results/records (and the claim study's curves, into `figures`),
    and yours (outputs/) beside them in yours_out."""
    if not COMMITTED.is_dir():
        raise TablesError(f"no such folder: {COMMITTED} (run from the repository root)")
    committed, files, _ = load_labelled_records([COMMITTED])
    written = write_tables(committed, out, reference) + frontier_points(committed, COMMITTED, out)
    written += claim_pages(committed, COMMITTED, out, figures)
    lines = [f"read {files} record files ({len(committed)} distinct runs) under {COMMITTED}"]
    if YOURS_ROOT.is_dir() and any(YOURS_ROOT.rglob(RECORD_NAME)):
        found, n_yours, _ = load_labelled_records([YOURS_ROOT])
        yours = mark_yours(committed, found)
        lines.append(
            f"read {n_yours} record files under {YOURS_ROOT}: {len(yours)} runs of yours (rows marked '(yours)'), "
            f"{len(found) - len(yours)} copies of committed runs; tables of both in {yours_out}"
        )
        if yours:
            written += write_tables(committed + yours, yours_out, reference)
    return written, lines


def main(argv: list[str] | None = None) -> int:
    """Command line: build the tables, print what was read and written; 2 (and the reason, one line) on bad input:
    unreadable or no records, an output folder that is a file."""
    parser = argparse.ArgumentParser(
        prog="python -m qpeft.tables",
        description="Run records -> paper-style tables (Markdown, LaTeX, CSV), with published rows beside ours. "
        "Without --roots: results/records -> results/tables (every committed table), and your runs under "
        "outputs/ beside them, marked (yours), -> outputs/tables.",
    )
    parser.add_argument("--roots", nargs="+", help="only these folders' records (searched for record.json)")
    parser.add_argument("--out", default="results/tables", help="where the tables go")
    parser.add_argument("--reference", default="results/reference", help="published numbers (CSV files)")
    parser.add_argument(
        "--yours-out",
        default=str(YOURS_ROOT / "tables"),
        help="without --roots: where the tables with your runs go",
    )
    parser.add_argument(
        "--figures",
        default="results/figures",
        help="without --roots: where the claim study's learning curves go",
    )
    args = parser.parse_args(argv)
    try:
        out = output_folder(args.out, "--out")  # checked before anything is written
        if args.roots is None:
            yours_out = output_folder(args.yours_out, "--yours-out")
            figures = output_folder(args.figures, "--figures")
            written, lines = committed_and_yours(out, yours_out, args.reference, figures)
        else:
            written, n_records, n_files = build_tables(args.roots, out, args.reference)
            lines = [f"read {n_files} record files ({n_records} distinct runs) under {', '.join(args.roots)}"]
    except QpeftError as e:
        return print_error(e)
    for line in lines:
        print(line)
    if not written:
        return print_error("no tables written from these records")
    for path in written:
        print(f"wrote {path}")
    return 0
