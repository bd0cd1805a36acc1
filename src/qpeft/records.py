"""One JSON record per finished run, written atomically; reading them back."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RECORD_NAME = "record.json"
SCHEMA = 1


def write_record(path: str | os.PathLike, record: dict) -> None:
    """Write `record` as JSON to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a record should be as readable as any other file
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: str | os.PathLike) -> dict | None:
    """The record at `path`, or None if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def find_records(*roots: str | os.PathLike) -> list[Path]:
    """Every record file under the given folders, sorted."""
    return sorted(p for r in roots if Path(r).exists() for p in Path(r).rglob(RECORD_NAME))
