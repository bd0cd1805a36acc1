"""A run in several processes (torchrun, or a SLURM job with several tasks): who does what.

Every rank runs the whole of train.py; rank 0 alone touches the run folder (lock, settings, record, metrics.csv,
trained weights) and decides, for all ranks, whether the run is trained, returned finished, skipped because another
job holds it, or refused (a QpeftError): `from_main` runs the decision on rank 0 and broadcasts its outcome, so no
rank returns early while the others wait in a collective. The process group is started here, before the Trainer,
so those decisions can be shared; the Trainer (accelerate) uses the group it finds. docs/design.md, "Distributed
runs".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from qpeft.errors import QpeftError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank (global), world size, local rank (the GPU it uses)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_env() -> Ranks:
    """The ranks torchrun (or `slurm_env`) exported; one process when none are set."""
    return Ranks(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def slurm_env() -> None:
    """In a submitit job with several tasks (hydra.launcher.tasks_per_node > 1), export what torchrun would:
    MASTER_ADDR/PORT (first node, a port drawn from the job id), RANK, WORLD_SIZE, LOCAL_RANK. Each task keeps
    every GPU of its node visible and uses the one of its local rank. No-op elsewhere, or if RANK is set."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", 1)) <= 1:
        return
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return  # srun/sbatch without submitit: use torchrun (or export the variables yourself)
    from submitit.helpers import TorchDistributedEnvironment

    # overwrite: MASTER_ADDR/PORT of the submitting shell do not apply (a MASTER_PORT set is kept as the port)
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def start(cpu: bool) -> Ranks:
    """Start the process group of a multi-process run (gloo on CPU; NCCL for CUDA tensors with gloo for the
    CPU objects `from_main` sends); a no-op in a single process or when it is already started."""
    ranks = from_env()
    if ranks.distributed and not dist.is_initialized():
        if cpu:
            backend = "gloo"
        else:
            torch.cuda.set_device(ranks.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world_size)
    return ranks


def from_main(decide: Callable[[], T]) -> T:
    """`decide()` run on rank 0 only, its value (or its QpeftError, raised on every rank) given to every rank.
    Any other exception on rank 0 is raised there and stops the others with a RuntimeError, not a hang."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decide()
    outcome: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            outcome[0] = ("ok", decide())
        except QpeftError as e:
            outcome[0] = ("qpeft_error", str(e))
        except BaseException as e:
            dist.broadcast_object_list([("crash", f"{type(e).__name__}: {e}")], src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "qpeft_error":
        raise QpeftError(value)
    if kind == "crash":
        raise RuntimeError(f"rank 0 failed ({value}); see its log")
    return value


def state_digest(model: nn.Module, facts: dict) -> dict[str, str]:
    """A fingerprint of what a method's updates decide: every buffer (Quantum-PEFT's masks and sensitivity
    scores), every trainable parameter (AdaLoRA's masked singular values), and the method's record facts
    (AdaLoRA's rank pattern, the mean active rank), one SHA-1 each."""

    def sha(t: torch.Tensor) -> str:
        return hashlib.sha1(
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        ).hexdigest()

    out = {f"buffer:{n}": sha(b) for n, b in model.named_buffers() if not b.is_meta}
    out |= {f"param:{n}": sha(p) for n, p in model.named_parameters() if p.requires_grad}
    out["facts"] = hashlib.sha1(repr(sorted(facts.items())).encode()).hexdigest()
    return out


def differing(digests: list[dict[str, str]]) -> list[str]:
    """The entries of rank 0's digest that some other rank has different (or lacks)."""
    first = digests[0]
    return sorted({k for d in digests[1:] for k in first.keys() | d.keys() if d.get(k) != first.get(k)})


def max_over_ranks(value: int) -> tuple[int, int]:
    """(the largest `value` any rank passed, the number of ranks): every rank must call it; (value, 1) in a
    single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value, 1
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return max(values), len(values)


def check_same_state(model: nn.Module, facts: dict) -> None:
    """After training: stop if the ranks ended with different adapter state (a method update computed from
    rank-local statistics would show here); a no-op in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, state_digest(model, facts))
    diff = differing(digests)
    if diff:
        raise RuntimeError(f"the ranks ended with different state in {diff[:5]} ({len(diff)} entries)")
