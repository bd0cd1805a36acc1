"""The command-line tools in the package: parameter counts and scaling, the sweep listing, old script paths."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from qpeft import params

REPO = Path(__file__).resolve().parents[1]


def test_scaling_counts_equal_closed_forms():
    """Per N x N matrix: LoRA 2N, Taylor 2NK - K^2, Pauli 2 P(N, L) + K with P = (2L + 1) log2 N - 2L."""
    for n in (64, 1024, 65536):
        q = int(math.log2(n))
        got = params.scaling_counts(n)
        assert got["LoRA r=1"] == 2 * n and got["Taylor K=1"] == 2 * n - 1
        for layers in (1, 2):
            assert got[f"Pauli L={layers}, K=1"] == 2 * ((2 * layers + 1) * q - 2 * layers) + 1


def test_scaling_figure_is_reproducible(tmp_path):
    a, b = params.scaling_figure(tmp_path / "a.png"), params.scaling_figure(tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes() and a.read_bytes().startswith(b"\x89PNG")


def test_old_script_paths_still_work():
    """scripts/params.py is a thin wrapper now; its last line is still the published DeBERTa LoRA count."""
    cmd = [sys.executable, "scripts/params.py", "backbone=deberta_v3_base", "adapter=lora", "adapter.r=8"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "adapter_params=1327104"  # AdaLoRA paper, Table 1


def test_jobs_lists_a_preset_sweep(capsys):
    from qpeft import jobs

    jobs.main(["experiment=minilm_glue", "seed=0", "output_root=/nonexistent"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("55 jobs (0 finished, 0 running, 55 to run)")  # 5 tasks x 11 adapters
