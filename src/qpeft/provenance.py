"""Where a run came from: library versions, the git commit, a stable run id, and its peak memory."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
from pathlib import Path

import torch


def versions() -> dict:
    """Library versions that decide results, recorded in every run."""
    import peft
    import timm
    import transformers

    import qpeft

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "timm": timm.__version__,
        "qpeft": qpeft.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
    }


def git_commit() -> str | None:
    """The commit of the qpeft checkout, with '+dirty' when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None


def run_id(experiment: str, task: str, backbone: str, adapter_tag: str, seed: int) -> str:
    """A stable id from the run's identity: the same for a rerun or a requeued job (W&B resumes it)."""
    ident = f"{task}/{backbone}/{adapter_tag}/seed{seed}/{experiment}"
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def reset_peak_memory() -> None:
    """Start this run's peak-memory count (a sweep runs many jobs in one process)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: "5" resets the peak resident set size (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory() -> tuple[int, str]:
    """Peak memory since reset_peak_memory: the CUDA allocator's peak on a GPU, else the peak resident set size
    (VmHWM; where /proc is missing, the process's lifetime peak, ru_maxrss)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "cpu_peak_rss"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_max_rss_process"
