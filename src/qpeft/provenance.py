"""Where a run came from: library versions, the git commit, a stable run id, and its peak memory."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
from dataclasses import dataclass
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


REPO = Path(__file__).resolve().parents[2]
# untracked files here are code a run may import or read (a new module, preset or script): they go into the diff
CODE_FOLDERS = ("src", "configs", "scripts")
DIFF_NAME = "code.diff"


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


@dataclass(frozen=True)
class CodeState:
    """The code a run ran: its commit and, when the tree had uncommitted changes, the patch that rebuilds it
    (`git apply` on a checkout of the commit): tracked changes and untracked files under CODE_FOLDERS."""

    commit: str
    diff: str  # "" for a clean tree

    @property
    def label(self) -> str:
        """The record's `git_commit`: the sha, with '+dirty' when a diff is needed to rebuild the code."""
        return self.commit + ("+dirty" if self.diff else "")

    @property
    def diff_sha256(self) -> str | None:
        return hashlib.sha256(self.diff.encode()).hexdigest() if self.diff else None


def code_state() -> CodeState | None:
    """The checkout's commit and its uncommitted changes; None outside a git checkout (an installed wheel)."""
    sha = _git("rev-parse", "HEAD")
    if sha is None or sha.returncode != 0:
        return None
    tracked = _git("diff", "HEAD", "--binary")
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *CODE_FOLDERS)
    if tracked is None or untracked is None:
        return None
    parts = [tracked.stdout]
    for name in untracked.stdout.splitlines():  # each new file as a patch that creates it
        added = _git("diff", "--no-index", "--binary", "--", "/dev/null", name)
        parts.append(added.stdout if added is not None else "")
    return CodeState(sha.stdout.strip(), "".join(parts))


def git_commit() -> str | None:
    """The commit of the qpeft checkout, with '+dirty' when it has uncommitted changes."""
    state = code_state()
    return state.label if state else None


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
