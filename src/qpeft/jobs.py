"""List the runs a sweep expands to, with their count and status, before launching anything.

    qpeft-jobs experiment=glue_deberta
    qpeft-jobs experiment=minilm_glue seed=0      # extra overrides narrow or extend the sweep

(or python -m qpeft.jobs ..., or python scripts/jobs.py ...). Hydra has no dry run; this is one.
"""

from __future__ import annotations

import fcntl
import itertools
import sys
from pathlib import Path

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser

from qpeft.config import hydra_configs

REPO = Path(__file__).resolve().parents[2]


def expand(overrides: list[str]) -> tuple[list[list[str]], list[str]]:
    """(one override list per job, the fixed overrides) for a preset's hydra.sweeper.params + the CLI."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    with hydra_configs():
        cfg = compose(config_name="config", overrides=plain, return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.get("params") or {})
    fixed = []
    for o in parsed:  # a CLI value replaces the preset's sweep of that key
        key = o.get_key_element()
        if o.is_sweep_override():
            params[key] = ",".join(o.sweep_string_iterator())
        elif key in params:
            params[key] = o.get_value_element_as_str()
        else:
            fixed.append(o.input_line)
    axes = [
        [f"{k}={v}" for v in parser.parse_override(f"{k}={vals}").sweep_string_iterator()]
        if "," in str(vals)
        else [f"{k}={vals}"]
        for k, vals in params.items()
    ]
    return [list(job) for job in itertools.product(*axes)], fixed


def status(run_dir: Path) -> str:
    """done (a record), running (a live process holds the run's lock, see qpeft.run_folder.RunFolder.claim) or todo."""
    if (run_dir / "record.json").exists():
        return "done"
    lock = run_dir / ".lock"
    if lock.exists():
        with open(lock) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return "running"
    return "todo"


def main(argv: list[str] | None = None) -> None:
    """Print every job of the sweep with its status and run folder, then the counts."""
    argv = sys.argv[1:] if argv is None else argv
    jobs, fixed = expand(argv)
    counts = {"done": 0, "running": 0, "todo": 0}
    with hydra_configs():
        for job in jobs:
            cfg = compose(config_name="config", overrides=fixed + job)
            state = status(Path(cfg.run_dir))
            counts[state] += 1
            print(f"{state:7s}  {' '.join(job)}  -> {cfg.run_dir}")
    print(
        f"{len(jobs)} jobs ({counts['done']} finished, {counts['running']} running, {counts['todo']} to run) "
        f"for: {' '.join(argv)}"
    )


if __name__ == "__main__":
    main()
