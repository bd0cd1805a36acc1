"""Weights & Biases for a run, as its users expect it: the run named by its tag, grouped by experiment, job type
= task, tags for method / backbone / task / seed, the composed config as the run config, the record as the run
summary and the final metrics under `eval/`. Offline unless WANDB_MODE=online (then `wandb sync <run folder>/wandb`
uploads offline runs). A stable id (from the run's identity) lets a requeued job continue its W&B run."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig


def start(
    logger: DictConfig, run_dir: Path, run_id: str, name: str, config: dict, tags: list[str], job_type: str
):
    """wandb.init before the Trainer (its WandbCallback then logs into this run); None when W&B is off."""
    if not logger.get("wandb"):
        return None
    import wandb

    return wandb.init(
        project=logger.project,
        entity=logger.get("entity"),
        group=str(logger.get("group")) if logger.get("group") else None,
        job_type=job_type,
        name=name,
        id=run_id,
        resume="allow",
        tags=tags,
        config=config,
        dir=str(run_dir.resolve()),
        mode=os.environ.get("WANDB_MODE") or logger.get("mode") or "offline",
    )


def finish(run, record: dict | None) -> None:
    """Final metrics under eval/ and the record (without its config, which is the run config) as the summary."""
    if run is None:
        return
    if record is not None:
        final = {f"eval/{k}": v for k, v in record["metrics"].items()}
        run.log(final)
        run.summary.update({k: v for k, v in record.items() if k not in ("config", "metrics")} | final)
    run.finish()
