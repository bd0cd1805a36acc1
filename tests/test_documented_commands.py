"""Every `python run.py ...` command in README.md and docs/*.md composes and passes the settings check as typed
(compose only: a sweep is checked at each value of each swept setting, the others at their first values, as
run.py's own precheck does)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, run.py arguments) of every documented `python run.py` command (code blocks and inline code)."""
    found = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            for match in re.finditer(r"python run\.py([^`#&>|]*)", line):
                args = shlex.split(match.group(1))
                if "<" in match.group(1) or "..." in match.group(1):
                    continue  # a template (<overrides>, ...), not a command
                found.append((f"{path.name}:{n}", args))
    return found


COMMANDS = documented_commands()


def load_run_py():
    spec = importlib.util.spec_from_file_location("qpeft_run", REPO / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_hold_commands():
    assert len(COMMANDS) >= 15, COMMANDS  # README's top three among them
    assert any("task=glue/sst2" in a and "adapter=quantum" in a for _, a in COMMANDS)


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_composes_as_typed(where, args, capsys):
    run = load_run_py()
    if "--help" in args:
        return
    try:
        run.check_choices(args)
        run.precheck(args)
    except SystemExit as e:
        pytest.fail(
            f"{where}: python run.py {' '.join(args)} -> {capsys.readouterr().err.strip()} ({e.code})"
        )
