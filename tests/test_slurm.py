"""Against a live SLURM cluster (scripts/slurm_cluster.sh start): sbatch, the submitit launcher, requeue.

Run with `pytest -m slurm`; skipped when SLURM is not installed or the cluster is not up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GLUE_DIR, REPO, wait_for_checkpoint

pytestmark = pytest.mark.slurm

# Small enough for the single-node test cluster (2 CPUs); real clusters take the slurm.yaml defaults.
LAUNCHER_ENV = {
    "QPEFT_SLURM_GPUS_PER_NODE": "0",
    "QPEFT_SLURM_CPUS_PER_TASK": "1",
    "QPEFT_SLURM_MEM_GB": "1",
    "QPEFT_SLURM_TIMEOUT_MIN": "20",
}


@pytest.fixture(scope="module")
def slurm() -> None:
    """Skip unless sbatch/squeue exist and `scontrol ping` reports the controller UP."""
    missing = [c for c in ("sinfo", "sbatch", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        pytest.skip(
            f"SLURM client commands missing ({', '.join(missing)}): run scripts/slurm_cluster.sh start"
        )
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.skip("`scontrol ping` timed out: the cluster is not up (scripts/slurm_cluster.sh start)")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        why = (ping.stdout.strip() or ping.stderr.strip() or "no answer").splitlines()[0]
        pytest.skip(f"SLURM controller not up ({why}): run scripts/slurm_cluster.sh start")


def job_state(job_id: str) -> str:
    """The job's state from scontrol (kept MinJobAge seconds after the end; no accounting needed)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "UNKNOWN"


def wait_for(job_id: str, timeout: float = 120) -> str:
    """Wait until the job leaves the queue; return its final state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job_state(job_id) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
            return job_state(job_id)
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still queued after {timeout} s (state {job_state(job_id)})")


def test_sbatch_wrap(slurm, tmp_path):
    out = tmp_path / "job.out"
    res = subprocess.run(
        ["sbatch", "--parsable", "-o", str(out), "--wrap", "echo hello from $SLURM_JOB_ID"],
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = res.stdout.strip().split(";")[0]
    assert wait_for(job_id) == "COMPLETED"
    assert out.read_text().strip() == f"hello from {job_id}"


TINY = [
    "task=glue/sst2",
    "backbone=tiny_bert",
    "protocol=minilm_cpu",
    "trainer.max_length=32",
    "trainer.train_limit=256",
    "trainer.eval_limit=64",
    "trainer.epochs=1",
    "trainer.batch_size=16",
]


def qpeft_multirun(out: Path, overrides: list[str]) -> subprocess.Popen:
    """`python run.py -m hydra/launcher=slurm ...` as a user types it, outputs under `out`."""
    env = {
        **os.environ,
        **LAUNCHER_ENV,
        "QPEFT_OUTPUT_DIR": str(out),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "QPEFT_GLUE_DIR": str(GLUE_DIR),
    }
    cmd = [sys.executable, "run.py", "-m", "hydra/launcher=slurm", *TINY, *overrides]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_multirun_on_slurm_writes_four_records_and_builds_the_table(slurm, tmp_path):
    """Two adapters x two seeds as SLURM jobs; then `qpeft.tables` builds the table from the records."""
    proc = qpeft_multirun(
        tmp_path / "outputs", ["adapter=quantum,lora", "seed=0,1", "experiment_name=slurm_test"]
    )
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    recs = sorted((tmp_path / "outputs").rglob("record.json"))
    assert len(recs) == 4, log[-4000:]
    jobs = {json.loads(r.read_text())["versions"]["slurm_job_id"] for r in recs}
    assert None not in jobs and len(jobs) == 4  # each run was its own SLURM job
    tables = subprocess.run(
        [
            sys.executable,
            "-m",
            "qpeft.tables",
            "--roots",
            str(tmp_path / "outputs"),
            "--out",
            str(tmp_path / "tables"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert tables.returncode == 0, tables.stderr
    md = (tmp_path / "tables" / "slurm_test.md").read_text()
    rows = [
        line
        for line in md.splitlines()
        if line.startswith("|") and ("quantum_k" in line or "lora_r8" in line)
    ]
    assert len(rows) == 2 and all("±" in r for r in rows), md  # mean ± std over the two seeds


def test_requeued_job_resumes_from_its_checkpoint(slurm, tmp_path):
    """`scontrol requeue` kills a running job and queues it again: it must resume, not restart. submitit lets the
    job run on through SIGTERM until srun's and SLURM's kill waits (8 s here) end: the run must outlast them
    (1,600 steps; 320 finished within the wait on an idle machine and left nothing to resume)."""
    out = tmp_path / "outputs"
    proc = qpeft_multirun(out, ["adapter=lora", "seed=0", "trainer.epochs=100", "trainer.save_steps=8"])
    wait_for_checkpoint(proc, out, poll_s=0.5)
    job_id = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    rec = json.loads(next(out.rglob("record.json")).read_text())
    assert rec["resumed_from"] and "/checkpoint-" in rec["resumed_from"], rec["resumed_from"]
    assert rec["optimizer_steps"] == 1600  # 256 examples / 16 x 100 epochs, counted once
    assert rec["versions"]["slurm_restart_count"] == "1"


def test_two_task_job_trains_one_run_on_two_ranks(slurm, tmp_path):
    """hydra.launcher.tasks_per_node=2: one SLURM job, two tasks, each a rank (gloo on CPU here; one task per GPU
    on a GPU cluster); one record, written by rank 0, with the global batch split over the two."""
    out = tmp_path / "outputs"
    proc = qpeft_multirun(
        out,
        [
            "adapter=lora",
            "seed=0",
            "trainer.max_steps=4",
            "trainer.logging_steps=1",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.mem_gb=4",  # two processes
        ],
    )
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    recs = list(out.rglob("record.json"))
    assert len(recs) == 1, log[-4000:]
    rec = json.loads(recs[0].read_text())
    # world_size 2: both tasks joined the process group (rank 0 alone would wait there, not finish)
    assert rec["world_size"] == 2 and rec["optimizer_steps"] == 4 and rec["versions"]["slurm_job_id"]
    rows = [line.split(",")[:3:2] for line in (recs[0].parent / "metrics.csv").read_text().splitlines()[1:]]
    assert len(rows) == len({tuple(r) for r in rows}), "metrics.csv written by both ranks"
