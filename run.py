"""qpeft entry point: python run.py task=glue/sst2 adapter=quantum [backbone=... seed=...]."""

import os
import sys

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from qpeft.errors import QpeftError
    from qpeft.train import train

    try:
        record = train(cfg)
    except QpeftError as e:
        print(f"qpeft error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    return record["score"]


if __name__ == "__main__":
    main()
