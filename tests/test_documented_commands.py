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


def test_library_page_lists_every_quantum_config_field_with_its_default():
    """docs/library.md's QuantumConfig reference names every field QuantumConfig adds to peft's PeftConfig, in
    order, each with its default as Python writes it (strings in double quotes)."""
    import dataclasses

    from peft.config import PeftConfig

    from qpeft import QuantumConfig

    inherited = {f.name for f in dataclasses.fields(PeftConfig)}
    fields = [f for f in dataclasses.fields(QuantumConfig) if f.name not in inherited]
    text = (REPO / "docs" / "library.md").read_text().split("## QuantumConfig API reference", 1)[1]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, flags=re.M)
    want = [(f.name, json_like(f.default)) for f in fields]
    assert rows == want


def json_like(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def test_help_says_which_quantum_setting_is_the_papers_and_folds_the_study_settings(capsys):
    """`python run.py --help`: adapter=quantum_paper is the paper's literal rule and adapter=quantum qpeft's default;
    the adapters a user picks from hold no study setting (frontier/..., claim/...), each study is one line naming its
    doc and how many settings it has."""
    run = load_run_py()
    run.print_help()
    text = capsys.readouterr().out
    assert "adapter=quantum_paper is the paper's literal rule" in text
    assert "adapter=quantum is qpeft's default" in text
    adapters = next(line for line in text.splitlines() if line.strip().startswith("adapter:"))
    assert "quantum_paper" in adapters and "frontier/" not in adapters and "claim/" not in adapters
    n_frontier = len(list((REPO / "configs" / "adapter" / "frontier").glob("*.yaml")))
    assert f"+ {n_frontier} frontier study settings (frontier/...): docs/frontier.md" in text
    assert "docs/claim.md" in text and "frontier/pauli" not in text
