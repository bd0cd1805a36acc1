"""The one exception type for mistakes a user can fix (run.py and every CLI print its sentence, no traceback,
exit 2), and the up-front checks of where a command will write, so a bad path fails before anything is written."""

from __future__ import annotations

import sys
from pathlib import Path


class QpeftError(Exception):
    """A user-fixable error; the message says which setting to change."""


def print_error(message: object) -> int:
    """The contract's one line on stderr, `qpeft error: <message>`; returns the exit code, 2 (run.py prints its
    own, to answer --help without importing qpeft)."""
    print(f"qpeft error: {message}", file=sys.stderr, flush=True)
    return 2


def output_folder(path: str | Path, setting: str) -> Path:
    """`path` as a folder a command writes into; QpeftError naming `setting` if it, or a folder above it, is a file."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            raise QpeftError(f"{setting} {path}: {p} is a file, not a folder; give a folder")
    return path


def output_file(path: str | Path, setting: str) -> Path:
    """`path` as a file a command writes; QpeftError naming `setting` if it is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise QpeftError(f"{setting} {path}: is a folder; give a file name")
    output_folder(path.parent, setting)
    return path
