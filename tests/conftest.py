"""Shared test helpers: compose the real configs, find the offline data, run run.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import qpeft.config  # noqa: F401  (registers the `protocol` resolver the configs use)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QPEFT_SHARED_DATA", REPO.parent / "shared" / "data"))
GLUE_DIR = Path(os.environ.get("QPEFT_GLUE_DIR", SHARED / "glue"))
VTAB_DIR = Path(os.environ.get("QPEFT_VTAB_DIR", SHARED / "vtab-1k"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: each worker, and every run.py it starts, then uses one
    # torch thread (two 2-thread processes on 2 cores wait at every OpenMP barrier for a descheduled peer)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tracked_edits() -> str | None:
    """`git diff HEAD` of the checkout (its tracked files' edits), None outside a git checkout."""
    done = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=REPO, capture_output=True)
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


_EDITS_AT_START: str | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _EDITS_AT_START
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _EDITS_AT_START = _tracked_edits()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test never edits a tracked file of the checkout (README, the committed tables): the session fails if
    `git diff HEAD` changed while it ran, naming the files."""
    if os.environ.get("PYTEST_XDIST_WORKER") or _EDITS_AT_START is None:
        return
    if _tracked_edits() != _EDITS_AT_START:
        names = subprocess.run(
            ["git", "diff", "HEAD", "--name-only"], cwd=REPO, capture_output=True, text=True
        )
        sys.stderr.write(
            "\nFAILED: tracked files of the checkout changed while the tests ran (a test wrote them, or you "
            f"edited them meanwhile): {', '.join(names.stdout.split())}\n"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def compose_cfg(overrides: list[str]) -> DictConfig:
    """The run config exactly as `python run.py <overrides>` composes it."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3").__enter__()
    return compose(config_name="config", overrides=overrides)


def run_cli(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python run.py args` in the repo and capture its output."""
    full_env = {**os.environ, "QPEFT_GLUE_DIR": str(GLUE_DIR), "QPEFT_VTAB_DIR": str(VTAB_DIR), **(env or {})}
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def wait_for_checkpoint(
    proc: subprocess.Popen, root: Path, poll_s: float = 0.2, limit_s: float = 300
) -> None:
    """Wait until a complete checkpoint (its trainer_state.json written last) is somewhere under `root`; fail if
    `proc` ends or `limit_s` passes first (the runs that wait here are sized to outlast their first checkpoint)."""
    deadline = time.time() + limit_s
    while not list(root.rglob("checkpoint-*/trainer_state.json")):  # only the latest is kept
        assert proc.poll() is None and time.time() < deadline, "run ended or stalled before its checkpoint"
        time.sleep(poll_s)


def tiny_bert_config():
    """configs/backbone/tiny_bert.yaml's shape (hidden 32, intermediate 64, 2 layers) with a small vocabulary and
    no dropout."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    """A BERT classifier of `tiny_bert_config()`'s shape, random weights from `seed`, in training mode."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config())


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "SST-2" / "train.tsv").exists():
        pytest.skip(f"GLUE data not found at {GLUE_DIR}: set QPEFT_GLUE_DIR")
    return GLUE_DIR
