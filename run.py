"""qpeft entry point: python run.py task=glue/sst2 adapter=quantum [backbone=... seed=...]."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
CONFIGS = Path(__file__).resolve().parent / "configs"


def check_choices(argv: list[str]) -> None:
    """Stop on an unknown task/backbone/adapter name with the list of valid ones (Hydra omits it for task)."""
    for arg in argv:
        group, eq, values = arg.partition("=")
        if not eq or group not in ("task", "backbone", "adapter"):
            continue
        valid = sorted(
            str(p.relative_to(CONFIGS / group).with_suffix(""))
            for p in (CONFIGS / group).rglob("*.yaml")
            if not p.name.startswith("_")
        )
        for name in values.split(","):
            if name not in valid:
                sys.exit(
                    f"qpeft error: unknown {group} '{name}'. Valid names for {group}=: {', '.join(valid)}"
                )


FAILED: list[str] = []  # jobs of a local sweep that stopped with a qpeft error


def in_local_sweep() -> bool:
    """A -m sweep on Hydra's basic launcher: its jobs run one after another in this process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and hc.launcher._target_.endswith("BasicLauncher")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from qpeft.errors import QpeftError
    from qpeft.train import train

    try:
        record = train(cfg)
    except QpeftError as e:
        print(f"qpeft error: {e}", file=sys.stderr, flush=True)
        if not in_local_sweep():
            sys.exit(2)
        # an unattended local sweep goes on with its next job; the failures are listed at the end
        FAILED.append(f"{cfg.run_dir}: {e}")
        return None
    return None if record is None else record["score"]


if __name__ == "__main__":
    check_choices(sys.argv[1:])
    main()
    if FAILED:
        print(
            f"qpeft error: {len(FAILED)} job(s) of this sweep failed:", *FAILED, sep="\n  ", file=sys.stderr
        )
        sys.exit(2)
