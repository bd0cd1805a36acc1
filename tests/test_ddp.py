"""Two processes (torchrun --nproc_per_node=2, CPU, gloo) against one: same numbers, one writer, no deadlock.

The reference is a single-process run of the same command: trainer.batch_size is the global batch, so each rank
takes half of it. The comparison is meaningful because (1) dropout is 0 (the tiny BERT's hidden/attention
dropout; every adapter's is 0 already), so no per-rank random draws enter the forward pass, and (2) the data
order is the same: accelerate shards the one seeded permutation batch by batch, so the two ranks' halves of a
step are exactly the single process's batch of that step. What is left is float summation order (DDP's gradient
mean over the ranks' batch means vs one mean): losses agree to ~1e-7 here; we allow 1e-5 (per-step losses,
final metrics). Discrete state (Quantum-PEFT's adaptive masks, AdaLoRA's rank pattern) must match exactly.
Each two-process run also checks itself that every rank ended with the same adapter state
(qpeft.distributed.check_same_state), and fails if not.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from conftest import GLUE_DIR, REPO, VTAB_DIR, run_cli, wait_for_checkpoint

from qpeft.distributed import differing, state_digest
from qpeft.run_folder import RunFolder

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
TOL = 1e-5
TINY = [
    "task=glue/sst2",
    "backbone=tiny_bert",
    "protocol=minilm_cpu",
    "trainer.max_length=32",
    "trainer.eval_limit=64",
    "trainer.train_limit=256",
    "trainer.epochs=1",
    "trainer.batch_size=16",  # the global batch: 8 per rank with two ranks
    "trainer.lr=0.005",  # large enough that the runs move away from their start within 16 steps
    "trainer.logging_steps=1",
    "trainer.eval_every_epoch=false",
    "+backbone.arch.hidden_dropout_prob=0.0",
    "+backbone.arch.attention_probs_dropout_prob=0.0",
]
# every method with its step-hook updates switched on within the 16 steps
METHODS = {
    "quantum": ["adapter=quantum", "adapter.rank_mask=adaptive", "adapter.mask_interval=2"],
    "quantum_taylor": [
        "adapter=quantum_taylor",
        "adapter.rank=4",
        "adapter.rank_mask=adaptive",
        "adapter.mask_interval=2",
    ],
    "lora": ["adapter=lora"],
    "adalora": ["adapter=adalora", "adapter.deltaT=2"],
    "oft": ["adapter=oft"],
}
ENV = {
    "QPEFT_GLUE_DIR": str(GLUE_DIR),
    "QPEFT_VTAB_DIR": str(VTAB_DIR),
    "OMP_NUM_THREADS": "1",
    "WANDB_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
}


def torchrun_cmd(args: list[str]) -> list[str]:
    # --standalone: a rendezvous on a free local port, so tests never collide on one
    return [TORCHRUN, "--standalone", "--nproc_per_node=2", "run.py", *args]


def torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 run.py args`; a hang (a rank waiting for the other) times out."""
    return subprocess.run(
        torchrun_cmd(args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **ENV},
    )


def run_dir(root: Path) -> Path:
    return next(root.rglob("settings.json")).parent


def metric_rows(folder: Path) -> list[tuple[int, str, float]]:
    with open(folder / "metrics.csv") as f:
        return [(int(r["step"]), r["key"], float(r["value"])) for r in csv.DictReader(f)]


def losses(folder: Path) -> dict[int, float]:
    return {step: v for step, key, v in metric_rows(folder) if key == "loss"}


def record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


def assert_one_writer(folder: Path, out: subprocess.CompletedProcess) -> None:
    """Rank 0 alone wrote the folder: metrics.csv has each (step, key) once, one `done` line, trained weights."""
    rows = [(step, key) for step, key, _ in metric_rows(folder)]
    assert len(rows) == len(set(rows)), "metrics.csv has rows written twice (by both ranks?)"
    assert out.stdout.count("[qpeft] done:") == 1, out.stdout[-3000:]
    assert (folder / "trained.safetensors").exists() and not list(folder.glob("checkpoint-*"))
    assert record(folder)["world_size"] == 2
    assert record(folder)["peak_mem_kind"].endswith("_max_of_2_ranks")  # the busiest rank's, not rank 0's


def assert_same_run(ddp: Path, one: Path, method: str) -> None:
    """The two-rank run equals the one-process run: per-step losses, final metrics, the methods' discrete state."""
    a, b = record(ddp), record(one)
    assert a["optimizer_steps"] == b["optimizer_steps"] == 16
    la, lb = losses(ddp), losses(one)
    assert sorted(la) == sorted(lb) == list(range(1, 17))
    print(f"{method}: largest per-step loss difference {max(abs(la[s] - lb[s]) for s in la):.2e}")
    assert la == pytest.approx(lb, abs=TOL), {s: la[s] - lb[s] for s in la}
    assert la[16] != pytest.approx(la[1], abs=1e-3), "the run did not move: the comparison would be empty"
    assert a["metrics"] == pytest.approx(b["metrics"], abs=TOL)
    assert a["adapter_params"] == b["adapter_params"]
    if method.startswith("quantum"):  # the adaptive mask was updated, to the same kept entries
        extra, rank = a["adapter_extra"], a["adapter_extra"]["rank"]
        assert extra["active_rank_mean"] < rank, extra
        assert extra["active_rank_mean"] == b["adapter_extra"]["active_rank_mean"]
    if method == "adalora":  # the budget was allocated, to the same ranks
        budget = a["adapter_extra"]["adalora"]
        assert budget["rank_pattern"], budget
        assert budget == b["adapter_extra"]["adalora"]


def test_two_ranks_train_quantum_like_one_process(glue_dir, tmp_path):
    """Quantum-PEFT (the hub's per-forward factors and their no_grad cache, the adaptive-mask step hook) on two
    ranks = one process, and rank 0 alone wrote the run folder. Then the settings guard and the finished-run
    check, which rank 0 alone makes, decide for both ranks (a rank that returned while the other went on would
    hang the job until the timeout): the finished run is returned by both, a rerun with other settings is
    refused on both (the error reaches rank 1 through rank 0's broadcast, not through torchrun's kill)."""
    args = [*TINY, *METHODS["quantum"]]
    ddp = torchrun([*args, f"output_root={tmp_path / 'ddp'}"])
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert "on 2 processes" in ddp.stdout and "another process is running" not in ddp.stdout
    one = run_cli([*args, f"output_root={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert_one_writer(run_dir(tmp_path / "ddp"), ddp)
    assert_same_run(run_dir(tmp_path / "ddp"), run_dir(tmp_path / "one"), "quantum")

    again = torchrun([*args, f"output_root={tmp_path / 'ddp'}"], timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished already, not retrained") == 1

    other = torchrun([*args, "trainer.max_steps=4", f"output_root={tmp_path / 'ddp'}"], timeout=120)
    assert other.returncode != 0
    assert other.stderr.count("qpeft error:") == 2 and "trainer.max_steps" in other.stderr, other.stderr[
        -3000:
    ]


def test_a_held_folder_is_skipped_by_both_ranks(glue_dir, tmp_path):
    """Another job holds the run folder's lock: rank 0 alone tries it, and both ranks skip the run."""
    args = [*TINY, *METHODS["lora"], f"output_root={tmp_path}"]
    holder = RunFolder(tmp_path / "adhoc" / "sst2" / "tiny_bert" / "lora_r8" / "seed0")
    assert holder.claim()
    try:
        out = torchrun(args, timeout=120)
    finally:
        holder.release()
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("another process is running") == 1
    assert not list(tmp_path.rglob("record.json"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["quantum_taylor", "lora", "adalora", "oft"])
def test_two_ranks_train_like_one_process(glue_dir, tmp_path, method):
    args = [*TINY, *METHODS[method]]
    ddp = torchrun([*args, f"output_root={tmp_path / 'ddp'}"])
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    one = run_cli([*args, f"output_root={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert_one_writer(run_dir(tmp_path / "ddp"), ddp)
    assert_same_run(run_dir(tmp_path / "ddp"), run_dir(tmp_path / "one"), method)


def test_killed_two_rank_run_resumes(glue_dir, tmp_path):
    """kill -9 of both ranks after a checkpoint; the relaunched two-rank run resumes from it and ends with the
    uninterrupted one-process run's numbers."""
    args = [*TINY, *METHODS["lora"], "trainer.train_limit=1024", "trainer.epochs=2", "trainer.save_steps=4"]
    ref = run_cli([*args, f"output_root={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]

    proc = subprocess.Popen(
        torchrun_cmd([*args, f"output_root={tmp_path / 'ddp'}"]),
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_checkpoint(proc, tmp_path / "ddp")
    # a preemption kills every process of the job: torchrun and its workers (which have sessions of their own)
    tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "ddp").rglob("record.json")), "a killed run must leave no record"

    again = torchrun([*args, f"output_root={tmp_path / 'ddp'}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resuming from") == 1
    rec, ref_rec = record(run_dir(tmp_path / "ddp")), record(run_dir(tmp_path / "ref"))
    assert rec["resumed_from"] and rec["optimizer_steps"] == ref_rec["optimizer_steps"] == 128
    assert rec["metrics"] == pytest.approx(ref_rec["metrics"], abs=TOL)
    resumed = losses(run_dir(tmp_path / "ddp"))
    reference = losses(run_dir(tmp_path / "ref"))
    assert {s: resumed[s] for s in resumed} == pytest.approx({s: reference[s] for s in resumed}, abs=TOL)


def test_state_digest_sees_a_changed_mask():
    """The cross-rank check compares digests: one flipped mask entry or one changed weight shows."""
    model = torch.nn.Linear(4, 2)
    model.register_buffer("mask_0", torch.ones(3))
    first = state_digest(model, {"rank_pattern": {"a": [1, 0]}})
    assert differing([first, state_digest(model, {"rank_pattern": {"a": [1, 0]}})]) == []
    model.mask_0[1] = 0
    assert differing([first, state_digest(model, {"rank_pattern": {"a": [1, 0]}})]) == ["buffer:mask_0"]
    with torch.no_grad():
        model.weight[0, 0] += 1e-7
    assert "param:weight" in differing([first, state_digest(model, {"rank_pattern": {"a": [1, 0]}})])
    assert "facts" in differing([first, state_digest(model, {"rank_pattern": {"a": [1, 1]}})])


def test_batch_size_is_the_global_batch():
    from qpeft.errors import QpeftError
    from qpeft.hf_trainer import per_device_batch

    assert per_device_batch(32, 1) == 32 and per_device_batch(32, 4) == 8
    with pytest.raises(QpeftError, match="trainer.batch_size=30 .* multiple of 4"):
        per_device_batch(30, 4)


def test_one_output_layer_trains_under_ddp_without_find_unused_parameters():
    """D1: a one-output target (a num_labels=1 head, a Conv1D with nf=1) registers no parameter that never gets a
    gradient, so two gloo ranks train it under plain DDP (which stops at step 2 on an unused parameter) as they
    train LoRA (the control). One torchrun for all methods: each launch costs seconds of imports."""
    methods = ["pauli", "pauli_quantised", "taylor", "lora"]
    out = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "tests/ddp_one_output_worker.py", *methods],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for method in methods:
        assert out.stdout.count(f"ok {method} ") == 1, out.stdout
