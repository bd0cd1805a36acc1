"""Reading: record files under some folders (checked, duplicates merged) and the published reference CSVs."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from qpeft.errors import QpeftError
from qpeft.records import RECORD_NAME, Record, RecordError, load_record
from qpeft.tables.presets import REFERENCE_META, VTAB_GROUPS


class TablesError(QpeftError):
    """A problem with the records or reference files, naming the file(s) involved."""


class ConflictingRecords(TablesError):
    """Two records of the same run (experiment, task, backbone, adapter_tag, seed) with different metrics."""


def read_record(path: Path) -> Record:
    """One record, checked for what the tables need; TablesError naming `path` otherwise."""
    try:
        rec = load_record(path)
    except RecordError as e:
        raise TablesError(str(e)) from e
    for name, tasks in VTAB_GROUPS.items():
        if rec.task in tasks and rec.task_group is not None and rec.task_group != name:
            raise TablesError(
                f"record {path}: task {rec.task} has task_group '{rec.task_group}', expected '{name}'"
            )
    return rec


def load_records(roots: list[str | Path]) -> tuple[list[tuple[Path, Record]], int]:
    """Every record under `roots`, identical duplicates dropped; returns (records, files read).

    Two records of the same run (experiment, task, backbone, adapter_tag, seed) with different metrics
    are an error naming both files: a table never silently picks one.
    """
    paths: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise TablesError(f"no such folder: {root}")
        paths += sorted(root.rglob(RECORD_NAME))
    seen_paths: set[Path] = set()
    read: list[tuple[Path, Record]] = []
    for path in paths:
        real = path.resolve()
        if real in seen_paths:  # overlapping roots
            continue
        seen_paths.add(real)
        read.append((path, read_record(path)))
    return merge_duplicates(read), len(read)


def merge_duplicates(records: list[tuple[Path, Record]]) -> list[tuple[Path, Record]]:
    """One record per run (experiment, task, backbone, adapter_tag, seed): copies with the same metrics
    merge into the first; copies with different metrics are ConflictingRecords naming both files."""
    by_key: dict[tuple, tuple[Path, Record]] = {}
    for path, rec in records:
        key = rec.run_key
        if key in by_key:
            other_path, other = by_key[key]
            if json.dumps(other.metrics, sort_keys=True) != json.dumps(rec.metrics, sort_keys=True):
                raise ConflictingRecords(
                    f"conflicting records for (experiment, task, backbone, adapter_tag, seed) = {key}: "
                    f"{other_path} and {path} have different metrics"
                )
            continue
        by_key[key] = (path, rec)
    return list(by_key.values())


def _folder_records(folder: Path) -> tuple[list[tuple[Path, Record]], int, bool]:
    """The records under `folder`, the files read, and whether they conflicted: then each subfolder's rows are
    labelled by its name."""
    try:
        return (*load_records([folder]), False)
    except ConflictingRecords:
        subfolders = sorted(d for d in folder.iterdir() if d.is_dir())
        if not subfolders:
            raise
    out, files = [], 0
    for sub in subfolders:
        records, n, _ = _folder_records(sub)
        out += [(p, replace(r, adapter_tag=f"{sub.name}/{r.adapter_tag}")) for p, r in records]
        files += n
    return out, files, True


def load_labelled_records(roots: list[str | Path]) -> tuple[list[tuple[Path, Record]], int, set[str]]:
    """Every record under `roots` as load_records reads them, except where two runs of one identity differ
    (diagnostic sweeps made before run folders carried their settings): then the top-level folders of that
    root are read one by one, and inside one whose records conflict every row is labelled
    `<subfolder>/<adapter_tag>` by the subfolder it sits in, so that no table silently picks one. Returns the
    records, the files read and the experiments whose rows were labelled. A conflict between records of one
    leaf folder stays an error."""
    records, files, labelled = [], 0, set()
    for root in roots:
        root = Path(root)
        try:
            recs, n = load_records([root])
            records, files = records + recs, files + n
            continue
        except ConflictingRecords:
            if not any(d.is_dir() for d in root.iterdir()):
                raise
        for folder in sorted(d for d in root.iterdir() if d.is_dir()):
            recs, n, variants = _folder_records(folder)
            records, files = records + recs, files + n
            labelled |= {rec.experiment for _, rec in recs} if variants else set()
    return merge_duplicates(records), files, labelled  # one run copied into two folders counts once


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


def ref_number(text: str, path: Path, column: str) -> float | None:
    """A published cell as a number; None for an empty or n/a cell; TablesError for anything else."""
    text = text.strip()
    if text in ("", "n/a"):
        return None
    try:
        return float(text)
    except ValueError:
        raise TablesError(
            f"reference file {path}: column {column} has '{text}', not a number or n/a"
        ) from None
