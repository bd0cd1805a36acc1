"""Against a live SLURM cluster (scripts/slurm_cluster.sh start): sbatch, the submitit launcher, requeue.

Run with `pytest -m slurm`; skipped when SLURM is not installed or the cluster is not up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
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


APP = """
import os, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    runs = out / "starts.txt"
    with open(runs, "a") as f:
        f.write(f"{os.environ.get('SLURM_JOB_ID')} {os.environ.get('SLURM_RESTART_COUNT', '0')}\\n")
    began = time.time()
    time.sleep(cfg.sleep)
    (out / "result.txt").write_text(f"{cfg.x} {os.environ.get('OMP_NUM_THREADS')} {began} {time.time()}\\n")
    return cfg.x

if __name__ == "__main__":
    main()
"""


def launch(tmp_path: Path, overrides: list[str]) -> subprocess.Popen:
    """Start a throwaway Hydra app as a multirun through configs/hydra/launcher/slurm.yaml."""
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "conf" / "app.yaml").write_text(
        f"x: 0\nsleep: 1\nhydra:\n  searchpath: ['file://{REPO / 'configs'}']\n  sweep:\n    dir: sweep\n"
    )
    env = {**os.environ, **LAUNCHER_ENV}
    cmd = [sys.executable, "app.py", "-m", "hydra/launcher=slurm", *overrides]
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_submitit_launcher_runs_jobs_in_parallel(slurm, tmp_path):
    proc = launch(tmp_path, ["x=1,2", "sleep=5"])
    log, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, log
    results = [r.read_text().split() for r in sorted((tmp_path / "sweep").glob("*/result.txt"))]
    assert [r[:2] for r in results] == [["1", "1"], ["2", "1"]]  # x, OMP_NUM_THREADS from slurm.yaml's setup
    (began1, ended1), (began2, ended2) = [(float(r[2]), float(r[3])) for r in results]
    assert max(began1, began2) < min(ended1, ended2), "the two single-CPU jobs did not run at the same time"


def test_requeue_after_signal(slurm, tmp_path):
    """USR2 (what SLURM sends before the time limit) makes submitit requeue the job, which runs again."""
    proc = launch(tmp_path, ["x=7", "sleep=20"])
    starts = tmp_path / "sweep" / "0" / "starts.txt"
    deadline = time.time() + 60
    while not starts.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert starts.exists(), "the job never started"
    job_id = starts.read_text().split()[0]
    array_id = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True
    ).stdout
    subprocess.run(["scancel", "--signal=USR2", array_id.strip() or job_id], check=True)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log
    assert (tmp_path / "sweep" / "0" / "result.txt").read_text().split()[0] == "7"
    restarts = [line.split()[1] for line in starts.read_text().splitlines()]
    assert restarts == ["0", "1"], starts.read_text()
