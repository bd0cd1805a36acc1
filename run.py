"""qpeft entry point: python run.py task=glue/sst2 adapter=quantum [backbone=... seed=...]. `--help` for more."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
CONFIGS = Path(__file__).resolve().parent / "configs"
GROUPS = ("task", "backbone", "adapter", "experiment", "trainer", "logger")

HELP = """qpeft: Quantum-PEFT and its baselines under one protocol (Hydra 1.3 command line).

  python run.py task=glue/sst2 adapter=quantum                # qpeft's default rule (DeBERTaV3-base, GPU + Hub)
  python run.py task=glue/sst2 adapter=quantum_paper          # the paper's literal rule (GPU + Hub)
  python run.py -m hydra/launcher=slurm task=glue/sst2,glue/rte adapter=quantum,lora seed=0,1,2
  python run.py -m experiment=glue_deberta                    # a paper preset: its whole sweep
  make tables                                                 # paper-style tables from the run records

  python run.py experiment=demo                               # offline: real MiniLM, SST-2, 2 CPU cores
  python run.py --cfg job --resolve <overrides>               # print the config that would run, every value

Quantum-PEFT: adapter=quantum_paper is the paper's literal rule (Pauli, K=8, L=1, s = alpha / K, angles at the
task's lr). adapter=quantum is qpeft's default: full rank, L=1, the rank-stable step rule the frontier study
chose on held-out data (docs/frontier.md, docs/method.md section 8). Every paper preset runs both.

Config groups (choose with group=name):
{groups}

Any value: trainer.lr=1e-3 trainer.epochs=3 adapter.rank=full seed=1 protocol=lora_roberta ...
A task family brings its backbone and protocol (GLUE: deberta_v3_base + adalora_deberta; VTAB: vit_b16_in21k +
vit_vtab); an explicit backbone= / protocol= wins. Docs: README.md, docs/configuration.md, docs/reproducing.md,
docs/library.md, docs/method.md. Hydra's own help: --hydra-help.
"""


def options(group: str) -> list[str]:
    """The public options of a config group (files starting with '_' are shared pieces, not options)."""
    return sorted(
        str(p.relative_to(CONFIGS / group).with_suffix(""))
        for p in (CONFIGS / group).rglob("*.yaml")
        if not p.name.startswith("_")
    )


def print_help() -> None:
    """The help text: each group's options, the study settings (adapter=<study>/<setting>) as one line per study
    pointing to its doc, not among the adapters a user picks from."""
    studies = {"frontier": "docs/frontier.md", "claim": "docs/claim.md"}
    lines = []
    for g in GROUPS:
        names = options(g)
        nested = {}
        if g == "adapter":
            nested = {s: [n for n in names if n.startswith(s + "/")] for s in studies}
            names = [n for n in names if not any(n in v for v in nested.values())]
        lines.append(f"  {g + ':':12s}{', '.join(names)}")
        for study, members in nested.items():
            if members:
                lines.append(
                    f"  {'':12s}+ {len(members)} {study} study settings ({study}/...): {studies[study]}"
                )
    print(HELP.format(groups="\n".join(lines)))


def fail(message: str) -> None:
    print(f"qpeft error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


MODES = {"-m": "--multirun", "--multirun": "--multirun", "-c": "--cfg", "--cfg": "--cfg", "--info": "--info"}
MODES |= {
    "-r": "--run",
    "--run": "--run",
    "-sc": "--shell-completion",
    "--shell-completion": "--shell-completion",
}


def check_mode(argv: list[str]) -> None:
    """Hydra takes one mode at a time; two (`-m --cfg job`) would end in its traceback."""
    modes = sorted({MODES[a] for a in argv if a in MODES})
    if len(modes) > 1:
        fail(
            f"{' and '.join(modes)} together: give one (`python run.py --cfg job <settings>` prints one job's "
            "config; `python scripts/jobs.py <settings>` lists a sweep's jobs)"
        )


def check_choices(argv: list[str]) -> None:
    """Stop on an unknown task/backbone/adapter/experiment name with the list of valid ones."""
    for arg in argv:
        group, eq, values = arg.partition("=")
        if not eq or group not in ("task", "backbone", "adapter", "experiment"):
            continue
        valid = options(group)
        for name in values.split(","):
            if name not in valid:
                fail(f"unknown {group} '{name}'. Valid names for {group}=: {', '.join(valid)}")


def precheck(argv: list[str]) -> DictConfig:
    """Compose the config as Hydra will and check every setting, so a mistyped or out-of-range value stops here,
    in one line, before anything is loaded or any folder made. A sweep (-m): its first job, then each other
    value of each swept setting (the command line's and the preset's) with the rest at their first values:
    a setting wrong for every job stops the sweep before its first job starts. The first job's config (with
    Hydra's)."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from qpeft.config import hydra_configs, run_spec
    from qpeft.errors import QpeftError

    overrides, skip = [], False
    for a in argv:  # Hydra's own flags, and the value of those that take one
        if not skip and not a.startswith("-"):
            overrides.append(a)
        skip = a in VALUE_FLAGS
    multirun = "-m" in argv or "--multirun" in argv
    job = ""
    try:
        parser = OverridesParser.create()
        parsed = parser.parse_overrides(overrides)
        swept = [o for o in parsed if o.is_sweep_override()]
        if swept and not multirun:
            fail(
                f"{swept[0].input_line} gives several values: add -m to run one job per value (a sweep), or "
                "give one value"
            )
        with hydra_configs():
            # each setting at its first value; the swept ones (key -> values) varied one at a time below
            first = {o.get_key_element(): o.input_line for o in parsed}
            values = {o.get_key_element(): list(o.sweep_string_iterator()) for o in swept}
            for key, vals in values.items():
                first[key] = f"{key}={vals[0]}"
            cfg = compose("config", overrides=list(first.values()), return_hydra_config=True)
            if multirun:
                preset = cfg.hydra.sweeper.get("params") or {}
                for o in parser.parse_overrides([f"{k}={v}" for k, v in preset.items() if k not in first]):
                    key = o.get_key_element()
                    first[key] = o.input_line
                    if o.is_sweep_override():
                        values[key] = list(o.sweep_string_iterator())
                        first[key] = f"{key}={values[key][0]}"
            checked = []
            jobs = [dict(first)] + [
                {**first, key: f"{key}={value}"} for key, vals in values.items() for value in vals[1:]
            ]
            for n, overrides_of_job in enumerate(jobs):
                job = " ".join(overrides_of_job[k] for k in values) if values else ""
                cfg = compose("config", overrides=list(overrides_of_job.values()), return_hydra_config=True)
                if n == 0 and multirun:
                    check_writable(cfg.hydra.sweep.dir, argv)
                check_writable(cfg.run_dir, argv)
                run_spec(cfg)
                checked.append(cfg)
        return checked[0]
    except QpeftError as e:
        fail(f"{e} (the sweep's job {job})" if multirun and job else str(e))
    except (HydraException, OmegaConfBaseException) as e:
        text = str(e)
        if text.startswith("Could not override '") and "not in struct" in str(e.__cause__):
            key = text.split("'")[1]
            fail(f"unknown setting {key}: check its spelling (python run.py --cfg job lists every setting)")
        fail(" ".join(text.split("\n")[:2]).strip())


def check_launcher(cfg) -> None:
    """hydra/launcher=slurm submits every job with sbatch: without it the sweep cannot start."""
    import shutil

    if "submitit" in cfg.hydra.launcher._target_ and "Slurm" in cfg.hydra.launcher._target_:
        if shutil.which("sbatch") is None:
            fail(
                "hydra/launcher=slurm submits jobs with SLURM's sbatch, which is not on this machine: launch from "
                "the cluster's login node, or drop hydra/launcher=slurm to run the jobs here one after another"
            )


def check_writable(folder: str, argv: list[str]) -> None:
    """A run (or sweep) folder that cannot be made: output_root is a file, or lies where nothing can be written."""
    import tempfile

    if any(a in argv for a in ("--cfg", "-c")):  # printing the config writes nothing
        return
    path = Path(folder).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        fail(
            f"output_root: {path} is a file, not a folder: set output_root= (or QPEFT_OUTPUT_DIR) to a folder"
        )
    try:
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        fail(
            f"output_root: cannot write in {path} ({e.strerror or type(e).__name__}): set output_root= (or "
            "QPEFT_OUTPUT_DIR) to a folder you can write"
        )


VALUE_FLAGS = (
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
)
FAILED: list[str] = []  # jobs of a local sweep that failed, one line each


def in_local_sweep() -> bool:
    """A -m sweep on Hydra's basic launcher: its jobs run one after another in this process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and hc.launcher._target_.endswith("BasicLauncher")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """One job. A qpeft error: one line, exit 2. In a local sweep no failure stops the jobs after it: a qpeft
    error prints its line, any other exception (a bug) its traceback, and the sweep lists them all at the end."""
    import traceback

    from qpeft.config import register_resolvers
    from qpeft.errors import QpeftError

    register_resolvers()  # a SLURM job unpickles this function in a fresh process
    from qpeft.train import train

    try:
        record = train(cfg)
    except Exception as e:
        user_error = isinstance(e, QpeftError)
        if not in_local_sweep():
            if not user_error:
                raise
            print(f"qpeft error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        if user_error:
            print(f"qpeft error: {e}", file=sys.stderr, flush=True)
            reason = str(e).splitlines()[0] if str(e) else ""
        else:
            traceback.print_exc()
            first = str(e).splitlines()[0] if str(e) else ""
            reason = f"{type(e).__name__}: {first} (an unexpected error: its traceback is above)"
        FAILED.append(f"{cfg.run_dir}: {reason}")
        return None
    return None if record is None else record["score"]


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        print_help()
        sys.exit(0)
    check_mode(args)
    check_choices(args)
    if not any(a in args for a in ("--hydra-help", "--info", "--shell-completion", "-sc")):
        import qpeft.config  # noqa: F401  (registers the `protocol` resolver before Hydra composes)

        first_job = precheck(args)
        if "-m" in args or "--multirun" in args:
            check_launcher(first_job)
    main()
    if FAILED:
        print(
            f"qpeft error: {len(FAILED)} job(s) of this sweep failed:", *FAILED, sep="\n  ", file=sys.stderr
        )
        sys.exit(2)
