"""Every results CLI checks where it will write before writing anything: an output folder that is a file (or lies
under one), or an output file that is a folder, ends in one line naming the setting and exit 2, not a traceback
after half the files were written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qpeft import claim, frontier, report
from qpeft.errors import QpeftError, output_file, output_folder
from qpeft.tables import cli as tables_cli

REPO = Path(__file__).resolve().parents[1]
CLAIM_RECORDS = REPO / "results" / "records" / "claim_minilm"
FRONTIER_RECORDS = REPO / "results" / "records" / "frontier_minilm"


def test_output_folder_and_file(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert output_folder(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert output_file(tmp_path / "new" / "page.md", "--out") == tmp_path / "new" / "page.md"
    for bad in [a_file, a_file / "below"]:
        with pytest.raises(QpeftError, match=f"^--figures {bad}: {a_file} is a file, not a folder"):
            output_folder(bad, "--figures")
    with pytest.raises(QpeftError, match="^--out .*: is a folder; give a file name"):
        output_file(tmp_path, "--out")
    with pytest.raises(QpeftError, match="is a file, not a folder"):
        output_file(a_file / "page.md", "--out")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def committed_tree(root: Path) -> None:
    """A results/records tree for `make tables` with no arguments: one plain run."""
    rec = {
        "schema": 1,
        "experiment": "glue_test",
        "task": "rte",
        "task_family": "glue",
        "task_group": None,
        "backbone": "bb",
        "adapter": "lora",
        "adapter_tag": "lora_r8",
        "seed": 0,
        "metrics": {"accuracy": 0.7},
        "main_metric": "accuracy",
        "adapter_params": 10,
        "head_params": 10,
    }
    folder = root / "results" / "records" / "glue_test" / "rte" / "seed0"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(rec))


def cases(tmp: Path) -> list[tuple[str, object, list[str]]]:
    """(the setting at fault, the CLI's main, its arguments) with that setting pointing at a file."""
    f = str(tmp / "a_file")
    out = str(tmp / "out")
    ref = str(REPO / "results" / "reference")
    return [
        ("--out", tables_cli.main, ["--out", f, "--reference", ref]),
        ("--figures", tables_cli.main, ["--out", out, "--figures", f, "--reference", ref]),
        ("--yours-out", tables_cli.main, ["--out", out, "--yours-out", f + "/below", "--reference", ref]),
        ("--out", tables_cli.main, ["--roots", str(CLAIM_RECORDS), "--out", f]),
        ("--figures", report.main, ["--records", str(CLAIM_RECORDS), "--out", out + ".md", "--figures", f]),
        ("--out", report.main, ["--records", str(CLAIM_RECORDS), "--out", str(tmp), "--figures", out]),
        (
            "--param-figure",
            report.main,
            ["--records", str(CLAIM_RECORDS), "--out", out + ".md", "--param-figure", f + "/p.png"],
        ),
        ("--tables", claim.main, ["--records", str(CLAIM_RECORDS), "--tables", f, "--figures", out]),
        ("--figures", frontier.main, ["--records", str(FRONTIER_RECORDS), "--tables", out, "--figures", f]),
    ]


@pytest.mark.parametrize("case", range(len(cases(Path("x")))))
def test_a_wrong_kind_of_output_path_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    committed_tree(tmp_path)
    (tmp_path / "a_file").write_text("mine")
    setting, main, argv = cases(tmp_path)[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"qpeft error: {setting} "), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "a_file").read_text() == "mine"
