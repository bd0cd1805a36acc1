"""scripts/gpu_check.py on CPU (--tiny): the script a GPU owner runs keeps working without a GPU."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_gpu_check_tiny_on_cpu(tmp_path):
    """Two methods on the tiny Mistral through run.py in fp32 and bf16, data synthesised by the script
    itself (no GLUE folder needed), and the summary table written."""
    cmd = [sys.executable, "scripts/gpu_check.py", "--tiny", "--device", "cpu", "--only", "mistral"]
    cmd += ["--methods", "lora,quantum", "--threads", "1", "--no-bench", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "tiny-cpu" / "summary.md").read_text()
    for method in ("lora", "quantum"):
        row = next(line for line in summary.splitlines() if line.startswith(f"| mistral | {method} |"))
        assert row.count("| ok, loss") == 2, row  # fp32 and bf16
    assert "0 failed runs" in summary
