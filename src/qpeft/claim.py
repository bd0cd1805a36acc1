"""The claim study (experiment=claim_minilm, `make claim`, docs/claim.md): its lr rule, what the rule still asks
for, and the answer with its uncertainty.

    python -m qpeft.claim [--records outputs/claim_minilm] [--pending]
    python -m qpeft.claim --preset claim_gpu_sst2 --records results/records/claim_gpu_sst2

`--eta` prints how many runs each point still needs (at least: an lr grid may yet be extended) and about how
long they take at the median wall time of the finished runs. `--pending` prints, one per line, the run.py
arguments the rule still asks for: grid runs missing on seeds 0 and 1,
the grid extended by 5x past a winning edge, then each point's other seeds at its chosen lr and the linear-head
runs. Without it: `results/tables/claim_minilm_claims.{md,csv}` and `results/figures/claim_<task>_curves.png`.
`--preset claim_gpu_sst2`: the same points run on a GPU on SST-2's full training set at one shared lr
(scripts/gpu_claim.sh): no lr is chosen, every point is taken at the one lr it ran at
(`results/tables/claim_gpu_sst2_claims.md`, `results/figures/claim_gpu_sst2_sst2_curves.png`).
"""

from __future__ import annotations

import argparse
import fcntl
import math
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qpeft.errors import QpeftError, output_folder, print_error
from qpeft.frontier import TASK_LABELS
from qpeft.records import Record
from qpeft.stats import family_wise, welch
from qpeft.tables.load import load_records
from qpeft.tables.render import csv_text, markdown

PRESET = "claim_minilm"
FIXED_LR_PRESETS = {  # presets of the same points at one shared lr: nothing chosen -> their page's title
    "claim_gpu_sst2": "the claim points on SST-2's full training set (one epoch, GPU), at the shared lr 8e-4",
}
GRID = (1.6e-4, 8e-4, 4e-3)  # every point's lr grid, 5x apart around the shared 8e-4 (fixed before the runs)
STEP = 5.0  # the grid is extended by one such step past a winning edge ...
LR_RANGE = (1e-5, 0.5)  # ... within these bounds
CHOICE_SEEDS = (0, 1)  # the lr is chosen on the held-out mean over these
TASKS = ("sst2", "stsb")  # the study's tasks: the rule asks for their grids before anything has run
DEFAULT = "quantum_kfull_l1_ws"
STANDARD, LINEAR = "minilm_l6", "minilm_l6_linear"  # the head: classifier + BERT's pooler, or a linear one


@dataclass(frozen=True)
class PointSpec:
    label: str
    adapter: str  # the adapter config that runs it
    seeds: int  # seeds at the chosen lr
    linear: bool = False  # also run with the linear head (at the chosen lr, seeds 0-2)


POINTS: dict[str, PointSpec] = {
    DEFAULT: PointSpec(
        "Quantum-PEFT default (Pauli, full rank)", "frontier/quantum_kfull_l1_ws_alr", 5, True
    ),
    "lora_r1": PointSpec("LoRA r=1", "frontier/lora_r1_alr", 5, True),
    "lora_r8": PointSpec("LoRA r=8", "frontier/lora_r8_alr", 5, True),
    "lora_qv_r1": PointSpec("LoRA r=1 on q, v (the default's budget)", "claim/lora_qv_r1_alr", 5, True),
    "vera_r256": PointSpec("VeRA r=256", "frontier/vera_r256_alr", 5, True),
    "head_only": PointSpec("head only", "claim/head_only_lr", 5, True),
    "quantum_k64_l1_ws": PointSpec("Pauli K=64, rank-stable", "frontier/quantum_k64_l1_ws_alr", 3),
    "quantum_k8_l1_paper": PointSpec("the paper's rule (Pauli K=8)", "claim/paper_k8_l1_alr", 3),
    "quantum_taylor_k1_o8": PointSpec("Taylor K=1", "frontier/quantum_taylor_k1_o8_alr", 3),
    "fourierft_n100": PointSpec("FourierFT n=100", "frontier/fourierft_n100_alr", 3),
}
CLAIMS = [(DEFAULT, other) for other in ("lora_r1", "lora_r8", "lora_qv_r1", "vera_r256", "head_only")]
CLAIM_POINTS = [DEFAULT, *(other for _, other in CLAIMS)]  # the default first: the figures' line order
FAMILY = len(CLAIMS) * len(TASKS)  # the claim gaps declared before the runs, read together by `family_wise`
# the 126-step frontier's comparisons (qpeft.frontier.CLAIMS) are judged again on this study's points; its settings
# are named the same here, except the paper's rule (the same config). Its other settings did not run here.
FRONTIER_PRESET = "frontier_minilm"
FRONTIER_RECORDS = Path("results/records") / FRONTIER_PRESET
FRONTIER_SETTINGS = {"quantum_k8_l1": "quantum_k8_l1_paper"}


@dataclass
class Run:
    """One finished run of the study, as the rule and the tables read it."""

    task: str
    setting: str
    lr: float
    seed: int
    backbone: str
    dev: float  # main metric x100
    heldout: float
    adapter_params: int
    head_params: int
    commit: str = ""
    curve: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    wall_s: float = math.nan  # the run's wall time (the --eta estimate)


def _setting(tag: str) -> str:
    return re.sub(r"_a?lr[^_]*$", "", tag)


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def to_run(record: Record) -> Run:
    cfg = record.adapter_cfg or {}
    lr = cfg.get("adapter_lr") if record.adapter != "head_only" else cfg.get("lr")
    setting = _setting(record.adapter_tag)
    if setting not in POINTS or lr is None:
        raise QpeftError(
            f"record {record.task}/{record.adapter_tag}: not a point of {PRESET} (docs/claim.md)"
        )
    metric = record.main_metric
    return Run(
        record.task,
        setting,
        float(lr),
        record.seed,
        record.backbone,
        record.metrics[metric] * 100,
        record.metrics.get(f"{metric}_heldout", math.nan) * 100,
        int(record.adapter_params or 0),
        int(record.head_params or 0),
        record.git_commit or "unknown",
        record.curve or [],
        record.data or {},
        float(record.wall_time_s) if record.wall_time_s is not None else math.nan,
    )


def _ranked(score: float) -> float:
    return -math.inf if math.isnan(score) else score  # a constant prediction (nan correlation) ranks last


@dataclass
class Choice:
    """The rule's state for one task and point (standard head): the held-out mean over CHOICE_SEEDS of every lr
    tried on both, the lr chosen (None while the rule still asks for runs) and the runs it asks for."""

    task: str
    setting: str
    scores: dict[float, float]  # lr -> held-out mean over CHOICE_SEEDS (x100), complete lrs only
    chosen: float | None
    missing: list[tuple[float, int]]  # (lr, seed) the grid (with its extensions) still lacks


def choose(runs: list[Run], task: str, setting: str) -> Choice:
    mine = [r for r in runs if r.task == task and r.setting == setting and r.backbone == STANDARD]
    tried = sorted({r.lr for r in mine} | set(GRID))
    have = {(r.lr, r.seed): r.heldout for r in mine}
    missing = [
        (lr, s) for lr in tried for s in CHOICE_SEEDS if not any(_same(lr, a) and s == b for a, b in have)
    ]
    scores = {}
    for lr in tried:
        values = [v for (a, s), v in have.items() if _same(a, lr) and s in CHOICE_SEEDS]
        if len(values) == len(CHOICE_SEEDS):
            scores[lr] = float(np.mean(values))
    if missing:
        return Choice(task, setting, scores, None, missing)
    best = max(
        sorted(scores), key=lambda lr: _ranked(scores[lr])
    )  # max keeps the first of equals: the smaller
    beyond = best / STEP if _same(best, tried[0]) else best * STEP if _same(best, tried[-1]) else None
    if beyond is not None and LR_RANGE[0] <= beyond <= LR_RANGE[1]:
        return Choice(task, setting, scores, None, [(float(f"{beyond:.3g}"), s) for s in CHOICE_SEEDS])
    return Choice(task, setting, scores, best, [])


def choices(runs: list[Run]) -> list[Choice]:
    tasks = sorted(set(TASKS) | {r.task for r in runs})
    return [choose(runs, task, setting) for task in tasks for setting in POINTS]


def fixed_choices(runs: list[Run]) -> list[Choice]:
    """A preset run at one shared lr: each point is taken at the one lr it ran at (nothing is chosen)."""
    out = []
    for task in sorted({r.task for r in runs}):
        for setting in POINTS:
            mine = [r for r in runs if (r.task, r.setting, r.backbone) == (task, setting, STANDARD)]
            lrs = sorted({r.lr for r in mine})
            if len(lrs) > 1:
                raise QpeftError(f"{task}/{setting} ran at several lrs {lrs}: not a one-lr preset")
            if lrs:
                out.append(
                    Choice(task, setting, {lrs[0]: float(np.mean([r.heldout for r in mine]))}, lrs[0], [])
                )
    return out


def _args(task: str, setting: str, lr: float, seeds: list[int], backbone: str = STANDARD) -> str:
    spec = POINTS[setting]
    preset, lr_key = (
        ("claim_minilm_head", "adapter.lr") if setting == "head_only" else (PRESET, "adapter.adapter_lr")
    )
    line = f"run.py -m experiment={preset} task=glue/{task} adapter={spec.adapter} {lr_key}={lr:g}"
    line += f" seed={','.join(map(str, seeds))}"
    return line + (f" backbone={backbone}" if backbone != STANDARD else "")


@dataclass(frozen=True)
class Pending:
    """Runs the rule asks for: one point on one task at one lr, these seeds, this head."""

    task: str
    setting: str
    lr: float
    seeds: tuple[int, ...]
    backbone: str = STANDARD

    def args(self, seeds: Sequence[int] | None = None) -> str:
        """run.py's arguments (a multirun over the seeds)."""
        return _args(
            self.task, self.setting, self.lr, list(self.seeds if seeds is None else seeds), self.backbone
        )

    def run_dir(self, root: Path, seed: int) -> Path:
        """The run's folder under `root` (output_root/claim_minilm): the adapter tag is the setting, `_lr` (the
        head alone) or `_alr`, and the lr as Hydra writes it."""
        kind = "lr" if self.setting == "head_only" else "alr"
        return (
            root / self.task / self.backbone / f"{self.setting}_{kind}{float(f'{self.lr:g}')}" / f"seed{seed}"
        )


def pending_runs(runs: list[Run]) -> list[Pending]:
    """Every run the rule still asks for (empty: the study is complete), the claims' runs first, so that a partial
    study answers whole claims: the claim points' grids and seeds with the standard head (point by point, both
    tasks), then their linear-head runs, then the other points."""

    def rank(c: Choice, backbone: str) -> tuple:
        return (c.setting not in CLAIM_POINTS, backbone == LINEAR, list(POINTS).index(c.setting), c.task)

    out: list[tuple[tuple, Pending]] = []
    for c in choices(runs):
        if c.chosen is None:
            by_lr: dict[float, list[int]] = {}
            for lr, seed in c.missing:
                by_lr.setdefault(lr, []).append(seed)
            out += [
                (rank(c, STANDARD), Pending(c.task, c.setting, lr, tuple(seeds)))
                for lr, seeds in sorted(by_lr.items())
            ]
            continue
        spec = POINTS[c.setting]
        for backbone, n in [(STANDARD, spec.seeds)] + [(LINEAR, 3)] * spec.linear:
            done = {r.seed for r in at_choice(runs, c, backbone)}
            seeds = tuple(s for s in range(n) if s not in done)
            if seeds:
                out.append((rank(c, backbone), Pending(c.task, c.setting, c.chosen, seeds, backbone)))
    return [p for _, p in sorted(out, key=lambda item: item[0])]  # stable: lrs stay in order


def pending(runs: list[Run]) -> list[str]:
    """run.py's arguments for every run the rule still asks for, in `pending_runs`' order."""
    return [p.args() for p in pending_runs(runs)]


def held(run_dir: Path) -> bool:
    """Whether a live process holds the run folder's lock (RunFolder.claim); a folder not made yet is free."""
    lock = run_dir / ".lock"
    if not lock.is_file():
        return False
    with open(lock, "a") as handle:  # "a": opening must not touch what the holder wrote
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def next_run(runs: list[Run], root: Path) -> str | None:
    """run.py's arguments for the first run the rule asks for that no other worker is running (one seed), or None
    when every such run is taken (or none is left): what each worker of `make claim` takes next."""
    for p in pending_runs(runs):
        for seed in p.seeds:
            if not held(p.run_dir(root, seed)):
                return p.args([seed])
    return None


def runs_left(runs: list[Run]) -> list[tuple[str, str, int]]:
    """(task, point, runs) the study still needs for each point, at least: the grid's missing runs (an extension
    past a winning edge is not foreseen), then the point's other seeds and its linear-head runs."""
    out = []
    for c in choices(runs):
        spec = POINTS[c.setting]
        left = len(c.missing)
        for backbone, n in [(STANDARD, spec.seeds)] + [(LINEAR, 3)] * spec.linear:
            done = {r.seed for r in at_choice(runs, c, backbone)} if c.chosen is not None else set()
            if backbone == STANDARD and c.chosen is None:
                done = set(CHOICE_SEEDS)  # counted in `missing`
            left += n - len(done)
        if left:
            out.append((c.task, c.setting, left))
    return out


def eta_lines(runs: list[Run]) -> list[str]:
    """What is left and about how long it takes: each point's runs left times the median wall time of the finished
    runs of that task and point (of the task, where the point has none yet), in worker-hours. A task with no
    finished run has no estimate; the total says how many runs it leaves out."""
    lines, total, unknown = [], 0.0, 0
    left_by_point = runs_left(runs)
    for task, setting, left in left_by_point:
        mine = [r.wall_s for r in runs if (r.task, r.setting) == (task, setting) and not math.isnan(r.wall_s)]
        pool = mine or [r.wall_s for r in runs if r.task == task and not math.isnan(r.wall_s)]
        label = f"{TASK_LABELS.get(task, task)}  {POINTS[setting].label}: {left} runs"
        if not pool:
            unknown += left
            lines.append(f"{label} (no finished run of the task: no estimate)")
            continue
        minutes = float(np.median(pool)) / 60
        total += left * minutes
        basis = "its runs" if mine else "the task's runs"
        lines.append(f"{label} x {minutes:.0f} min ({basis})")
    n = sum(left for *_, left in left_by_point)
    tail = f", {unknown} of them not estimated" if unknown else ""
    lines.append(
        f"at least {n} runs left{tail}; about {total / 60:.1f} worker-hours at the median wall times above"
    )
    return lines


def chosen_runs(
    runs: list[Run], cs: list[Choice], task: str, setting: str, backbone: str = STANDARD
) -> list[Run]:
    """The runs of `setting` on `task` at its chosen lr (none while the rule still asks for runs)."""
    c = next((c for c in cs if (c.task, c.setting) == (task, setting)), None)
    return at_choice(runs, c, backbone) if c is not None else []


def is_at_choice(run: Run, c: Choice) -> bool:
    """Whether `run` is of `c`'s point and task (either head) at the lr its rule chose."""
    return (run.task, run.setting) == (c.task, c.setting) and c.chosen is not None and _same(run.lr, c.chosen)


def at_choice(runs: list[Run], c: Choice, backbone: str) -> list[Run]:
    return sorted((r for r in runs if r.backbone == backbone and is_at_choice(r, c)), key=lambda r: r.seed)


def records_at_choice(records: list[tuple[Path, Record]], preset: str = PRESET) -> list[tuple[Path, Record]]:
    """The study's records of runs at their point's chosen lr (either head); none of a point whose lr the rule
    has not chosen yet. What a figure of each point at its best draws (the report's score against parameters)."""
    runs = [to_run(r) for _, r in records]
    cs = fixed_choices(runs) if preset in FIXED_LR_PRESETS else choices(runs)
    by_point = {(c.task, c.setting): c for c in cs}
    return [
        pair
        for pair, run in zip(records, runs)
        if (c := by_point.get((run.task, run.setting))) is not None and is_at_choice(run, c)
    ]


def _pm(values: list[float]) -> str:
    if not values:
        return ""
    mean = float(np.mean(values))
    return f"{mean:.2f}" if len(values) < 2 else f"{mean:.2f} ± {float(np.std(values, ddof=1)):.2f}"


def tables_of(
    runs: list[Run], records: list[tuple[Path, Record]], cs: list[Choice], preset: str = PRESET
) -> tuple[list[str], str]:
    """The study's markdown page and its CSV (one row per task, point and head)."""
    fixed = preset in FIXED_LR_PRESETS
    title = FIXED_LR_PRESETS.get(preset, "the paper's claim at 1,000 steps")
    family = len(CLAIMS) * (len({r.task for r in runs}) if fixed else len(TASKS))  # the claims it declares
    command = "python -m qpeft.claim" + (f" --preset {preset}" if preset != PRESET else "")
    lines = [
        f"# {preset}: {title}",
        "",
        f"Built by `{command}` from {len(records)} records (docs/claim.md has the protocol"
        + (" and the lr rule" if not fixed else "; every point ran at the one lr, nothing was chosen")
        + "). Metrics x100; mean ± sample std over seeds; gaps are differences of means with their 95% Welch "
        "interval; `ahead` / `behind` only where the interval excludes zero.",
        "",
        "## The held-out slices",
        "",
    ]
    facts_rows = []
    for task in sorted({r.task for r in runs}):
        facts = {r.seed: r.data for r in runs if r.task == task and r.data}
        if not facts:
            continue
        dropped = sorted({f.get("train_clashes_dropped") for f in facts.values()})
        counts = facts[min(facts)].get("heldout_label_counts")
        balance = ", ".join(f"{k}: {v}" for k, v in counts.items()) if counts else "mean score "
        balance += "" if counts else f"{facts[min(facts)].get('heldout_label_mean', math.nan):.2f}"
        facts_rows.append(
            [
                TASK_LABELS.get(task, task),
                str(facts[min(facts)].get("heldout_examples")),
                f"{balance} (seed {min(facts)})",
                f"{dropped[0]:,}-{dropped[-1]:,}" if len(dropped) > 1 else f"{dropped[0]:,}",
                f"{min(f.get('train_pool', 0) for f in facts.values()):,}",
            ]
        )
    headers = [
        "task",
        "held out",
        "labels",
        "training examples dropped (sharing text)",
        "training pool (min)",
    ]
    lines += [markdown(headers, facts_rows, align="lrlrr").rstrip("\n"), ""]

    rows = []
    for c in [] if fixed else cs:
        tried = ", ".join(
            f"{lr:g}: {'constant' if math.isnan(s) else f'{s:.2f}'}" for lr, s in sorted(c.scores.items())
        )
        state = f"{c.chosen:g}" if c.chosen is not None else f"pending ({len(c.missing)} runs)"
        rows.append([TASK_LABELS.get(c.task, c.task), POINTS[c.setting].label, tried, state])
    if rows:
        lines += [
            "## The lr choices (held-out mean over seeds 0 and 1)",
            "",
            "`constant`: a seed predicted one value for every example (an undefined correlation); it ranks last.",
            "",
        ]
        lines += [
            markdown(["task", "point", "held-out by lr", "chosen"], rows, align="llll").rstrip("\n"),
            "",
        ]

    csv_rows = []
    for backbone, head_title in [(STANDARD, "classifier + pooler"), (LINEAR, "linear, without the pooler")]:
        rows = []
        for c in cs:
            mine = at_choice(runs, c, backbone)
            if not mine:
                continue
            adapter, head = mine[0].adapter_params, mine[0].head_params
            dev, held = [r.dev for r in mine], [r.heldout for r in mine]
            rows.append(
                [
                    TASK_LABELS.get(c.task, c.task),
                    POINTS[c.setting].label,
                    f"{c.chosen:g}",
                    f"{adapter:,}",
                    f"{adapter + head:,}",
                    _pm(dev),
                    _pm(held),
                    ",".join(str(r.seed) for r in mine),
                    ", ".join(
                        sorted(
                            {r.commit[:7] + ("+dirty" if r.commit.endswith("+dirty") else "") for r in mine}
                        )
                    ),
                ]
            )
            csv_rows.append([c.task, c.setting, backbone, c.chosen, adapter, adapter + head])
            csv_rows[-1] += [float(np.mean(dev)), float(np.mean(held)), len(mine)]
        if rows:
            headers = [
                "task",
                "point",
                "lr",
                "adapter params",
                "trainable params",
                "dev",
                "held-out",
                "seeds",
            ]
            lines += [f"## Points at {'the shared' if fixed else 'their chosen'} lr, head: {head_title}", ""]
            lines += [markdown(headers + ["code"], rows, align="lllrrrrll").rstrip("\n"), ""]
        lines += claim_lines(runs, cs, backbone, head_title, family)
    heads = [
        "task",
        "point",
        "head",
        "lr",
        "adapter_params",
        "trainable_params",
        "dev_mean",
        "heldout_mean",
        "seeds",
    ]
    return lines, csv_text(heads, csv_rows)


def claim_lines(
    runs: list[Run], cs: list[Choice], backbone: str, title: str, family: int = FAMILY
) -> list[str]:
    rows, gaps = [], []
    by = {(c.task, c.setting): c for c in cs}
    for task in sorted({r.task for r in runs}):
        for a, b in CLAIMS:
            if (task, a) not in by or (task, b) not in by:
                continue
            ra, rb = at_choice(runs, by[(task, a)], backbone), at_choice(runs, by[(task, b)], backbone)
            if not ra or not rb:
                continue
            dev = welch([r.dev for r in ra], [r.dev for r in rb])
            held = welch([r.heldout for r in ra], [r.heldout for r in rb])
            gaps.append(dev)
            total_a = ra[0].adapter_params + ra[0].head_params
            total_b = rb[0].adapter_params + rb[0].head_params
            rows.append(
                [
                    TASK_LABELS.get(task, task),
                    POINTS[b].label,
                    f"{rb[0].adapter_params / max(ra[0].adapter_params, 1):.2f}x",
                    f"{total_b / total_a:.2f}x",
                    dev.text(),
                    held.text(),
                    f"{dev.n_a}/{dev.n_b}",
                    f"**{dev.verdict}**",
                ]
            )
    if not rows:
        return []
    n_tasks = family // len(CLAIMS)
    for row, gap, reading in zip(rows, gaps, family_wise(gaps, family), strict=True):
        row += ["" if math.isnan(gap.p) else f"{gap.p:.3f}" if gap.p >= 0.001 else "<0.001", reading]
    headers = [
        "task",
        "the default against",
        "its adapter params",
        "its trainable params",
        "dev gap [95% CI]",
    ]
    headers += ["held-out gap [95% CI]", "seeds", "the default is", "p", f"of {family} (Holm)"]
    return [
        f"### The claims, head: {title}",
        "",
        "Gap: the default minus the other point. `its ... params`: the other point's count over the default's. "
        "`the default is`: the verdict of the rule fixed before the runs, from each gap's own 95% interval. "
        f"`of {family} (Holm)`: the same dev gaps read as one family of the {family} claims "
        f"({len(CLAIMS)} pairs on {n_tasks} task{'s' if n_tasks > 1 else ''}, the undecided ones counted as not rejected), Holm's "
        "step-down at family-wise 5%; `stands` where an ahead / behind verdict survives it. This reading was "
        "added after the runs began.",
        "",
        markdown(headers, rows, align="llrrllrlrl").rstrip("\n"),
        "",
    ]


SUMMARY_BEGIN = (
    "<!-- claim_minilm: written by `make tables` (qpeft.claim.summary_block) from the committed records -->"
)
SUMMARY_END = "<!-- /claim_minilm -->"
SUMMARY_FILES = (Path("README.md"), Path("docs/claim.md"))  # where `make tables` keeps the summary current


def summary_block(runs: list[Run], cs: list[Choice], judgements: Sequence[Judgement] = ()) -> str:
    """The claims' summary that README and docs/claim.md carry (standard head): each pair's dev gap on each
    task with its 95% Welch interval and verdict, or `pending`, and how many runs the study still needs."""
    tasks = sorted({c.task for c in cs})
    rows, gaps, named = [], [], []
    for a, b in CLAIMS:
        cells, ratio = [], ""
        for task in tasks:
            ra, rb = chosen_runs(runs, cs, task, a), chosen_runs(runs, cs, task, b)
            gap = welch([r.dev for r in ra], [r.dev for r in rb])
            gaps.append(gap)
            named.append(f"{gap.verdict} {POINTS[b].label} ({TASK_LABELS.get(task, task)})")
            if gap.verdict == "?":
                cells.append(f"pending ({len(ra)}/{len(rb)} seeds)")
                continue
            cells.append(f"{gap.text()} **{gap.verdict}** ({gap.n_a}/{gap.n_b} seeds)")
            if not ratio and ra[0].adapter_params:
                ratio = f"{rb[0].adapter_params / ra[0].adapter_params:.2f}x"
                total_a, total_b = (r[0].adapter_params + r[0].head_params for r in (ra, rb))
                ratio += f" / {total_b / total_a:.2f}x"
        rows.append([POINTS[b].label, ratio, *cells])
    readings = family_wise(gaps, FAMILY)  # a reading added after the runs began; the verdicts stay per gap
    stand = [n for n, r in zip(named, readings, strict=True) if r == "stands"]
    fall = [n for n, r in zip(named, readings, strict=True) if r == "not family-wise"]
    family = (
        f" Read as one family of the study's {FAMILY} claims (Holm's step-down at family-wise 5%, a reading added "
        f"after the runs began), the verdicts that stand: {', '.join(stand) or 'none'}; that do not: "
        f"{', '.join(fall) or 'none'}."
        if stand or fall
        else ""
    )
    left = sum(n for *_, n in runs_left(runs))
    status = f"the study is running: at least {left} runs to go" if left else "the study is complete"
    headers = [
        "the default against",
        "its adapter / trainable params",
        *(f"{TASK_LABELS.get(t, t)} dev gap" for t in tasks),
    ]
    return "\n".join(
        [
            SUMMARY_BEGIN,
            "",
            markdown(headers, rows, align="lr" + "l" * len(tasks)).rstrip("\n"),
            "",
            *textwrap.wrap(
                f"From {len(runs)} runs of `results/records/claim_minilm` ({status}). Gap: the default minus the "
                "other point, dev x100, each at its held-out lr, with its 95% Welch interval over seeds; `level` "
                "where it holds zero. `its ... params`: the other point's count over the default's. The study's "
                "page: `results/tables/claim_minilm_claims.md`."
                + family
                + (f" {held_sentence(list(judgements))}" if judgements else ""),
                width=115,
                break_on_hyphens=False,
            ),
            "",
            SUMMARY_END,
        ]
    )


def write_summary(path: Path, block: str) -> bool:
    """Put `block` between the file's markers; False (nothing written) where it has none."""
    text = path.read_text(encoding="utf-8")
    if SUMMARY_BEGIN not in text or SUMMARY_END not in text:
        return False
    head, rest = text.split(SUMMARY_BEGIN, 1)
    _, tail = rest.split(SUMMARY_END, 1)
    new = head + block + tail
    if new != text:
        path.write_text(new, encoding="utf-8")
    return True


@dataclass(frozen=True)
class Judgement:
    """One comparison docs/frontier.md states, judged again here."""

    task: str
    setting: str  # the frontier's names (`quantum_kfull_l1_ws - lora_r8`)
    against: str
    then: str  # the 126-step gap with its interval and verdict
    then_verdict: str
    here: str  # this study's gap, or how many seeds each side has
    outcome: str  # held / did not hold / not run here / pending / too few seeds


def frontier_judgements(
    runs: list[Run], cs: list[Choice], frontier_root: Path, fixed: bool = False
) -> list[Judgement]:
    """Which of the 126-step frontier's comparisons held here: each pair's dev gap there (each side at its own
    held-out lr, qpeft.frontier) beside the same pair's dev gap here (at this study's choices, standard head).
    `held` where the verdicts agree (ahead, level or behind), `did not hold` where they differ; `not run here`
    where this study has no such point, `pending` while a side lacks two seeds at its chosen lr (a one-lr
    preset: `too few seeds`)."""
    from qpeft import frontier

    points = frontier.collect(frontier.preset_records(frontier_root, FRONTIER_PRESET))
    tasks = {r.task for r in runs}
    out = []
    for f in frontier.comparisons(points, frontier.chosen_lrs(points)):
        if f.task not in tasks:
            continue
        a, b = (FRONTIER_SETTINGS.get(x, x) for x in (f.setting, f.against))
        here, outcome = "", "not run here"
        if a in POINTS and b in POINTS:
            ra, rb = chosen_runs(runs, cs, f.task, a), chosen_runs(runs, cs, f.task, b)
            gap = welch([r.dev for r in ra], [r.dev for r in rb])
            if gap.verdict == "?":  # the study's rule still asks for runs; a one-lr preset ran what it ran
                here, outcome = f"{len(ra)}/{len(rb)} seeds", "too few seeds" if fixed else "pending"
            else:
                here = f"{gap.text()} {gap.verdict} ({gap.n_a}/{gap.n_b} seeds)"
                outcome = "held" if gap.verdict == f.dev.verdict else "did not hold"
        then = f"{f.dev.text()} {f.dev.verdict}"
        out.append(Judgement(f.task, f.setting, f.against, then, f.dev.verdict, here, outcome))
    return out


def frontier_lines(judgements: list[Judgement], fixed: bool = False) -> list[str]:
    """The page's section on which of the 126-step frontier's conclusions held (`frontier_judgements`)."""
    if not judgements:
        return []
    rows = [
        [
            TASK_LABELS.get(j.task, j.task),
            f"`{j.setting} - {j.against}`",
            j.then,
            j.here,
            "**did not hold**" if j.outcome == "did not hold" else j.outcome,
        ]
        for j in judgements
    ]
    at = (
        "at the one lr every point ran at (a point whose best lr lies elsewhere is judged off its best)"
        if fixed
        else "at this study's held-out lr choices"
    )
    return [
        "## Which conclusions of the 126-step frontier held",
        "",
        f"The comparisons docs/frontier.md states (`python -m qpeft.frontier`, {FRONTIER_PRESET}: 126 steps on "
        "2,000 examples, each side at its own held-out lr), each judged again here: the dev gap (the first "
        f"setting minus the second, x100) with its 95% Welch interval, {at}. `held`: the same verdict; `level` at "
        "both says only that neither study separates the two. `quantum_k8_l1` is the paper's rule "
        "(`quantum_k8_l1_paper` here).",
        "",
        markdown(["task", "comparison", "126 steps", "here", "held?"], rows, align="lllll").rstrip("\n"),
        "",
    ]


def held_sentence(judgements: list[Judgement]) -> str:
    """One sentence for the summary: how many of the frontier's conclusions this study runs, and which held."""
    judged = [j for j in judgements if j.outcome in ("held", "did not hold")]
    waiting = sum(j.outcome in ("pending", "too few seeds") for j in judgements)
    absent = sum(j.outcome == "not run here" for j in judgements)

    def named(outcome: str) -> str:
        picked = [j for j in judged if j.outcome == outcome]
        names = "; ".join(
            f"{TASK_LABELS.get(j.task, j.task)} `{j.setting} - {j.against}` {j.then_verdict}" for j in picked
        )
        return f"{len(picked)} {outcome}" + (f" ({names})" if picked else "")

    # a finished study has nothing waiting: say nothing of it rather than "0 wait"
    rest = f"{waiting} wait for runs and " if waiting else ""
    return (
        f"Of the 126-step frontier's {len(judgements)} stated conclusions on these tasks, {named('held')}, "
        f"{named('did not hold')}; {rest}{absent} compare settings this study does not run "
        "(the page's last section)."
    )


CURVES_TAG = "qpeft.claim learning curves"  # a curve figure's Description: this, then its curves_digest


def _curve_metric(task: str) -> str:
    return {"sst2": "accuracy"}.get(task, "pearson_spearman")


@dataclass(frozen=True)
class Curve:
    """One line of a learning-curve figure: a claim point's metric on one eval set against the step."""

    setting: str
    split: str  # "dev" or "held-out"
    label: str
    steps: tuple[int, ...]
    means: tuple[float, ...]  # over seeds, x100
    lows: tuple[float, ...]  # the lowest seed
    highs: tuple[float, ...]  # the highest seed


def curves(runs: list[Run], cs: list[Choice], task: str) -> list[Curve]:
    """The claim points' dev and held-out curves on `task` (standard head, chosen lr), what curve_figure draws."""
    metric = _curve_metric(task)
    out = []
    for split, suffix in [("dev", ""), ("held-out", "_heldout")]:
        for setting in CLAIM_POINTS:
            c = next((c for c in cs if c.task == task and c.setting == setting), None)
            mine = [r for r in at_choice(runs, c, STANDARD) if r.curve] if c else []
            if not mine:
                continue
            # each run's last point is its end, wherever it fell (seeds keep different numbers of examples)
            end = max(r.curve[-1]["step"] for r in mine)
            points = [(end if p is r.curve[-1] else p["step"], p) for r in mine for p in r.curve]
            shown, means, lows, highs = [], [], [], []
            for step in sorted({step for step, _ in points}):
                v = [
                    100 * p[metric + suffix]
                    for at, p in points
                    if at == step and p.get(metric + suffix) is not None
                ]
                if v:
                    shown.append(step)
                    means.append(float(np.mean(v)))
                    lows.append(min(v))
                    highs.append(max(v))
            label = (
                f"{POINTS[setting].label}: {mine[0].adapter_params:,} adapter / "
                f"{mine[0].adapter_params + mine[0].head_params:,} trainable params, {len(mine)} seeds"
            )
            out.append(Curve(setting, split, label, tuple(shown), tuple(means), tuple(lows), tuple(highs)))
    return out


def curves_digest(lines: list[Curve]) -> str:
    """A short hash of what a curve figure shows (to 4 decimals), kept in the figure's metadata, so a test can tell
    a figure drawn from other records than the committed ones (`make tables` redraws them)."""
    import hashlib
    import json

    rounded = [[c.setting, c.split, c.label, c.steps, *(np.round(v, 4).tolist() for v in (c.means, c.lows, c.highs))]
               for c in lines]  # fmt: skip
    return hashlib.sha256(json.dumps(rounded).encode()).hexdigest()[:16]


def figure_digest(png: Path) -> str | None:
    """The curves digest a figure was drawn with (its PNG's Description), None if it has none."""
    from PIL import Image

    with Image.open(png) as image:
        found = re.search(CURVES_TAG + r" ([0-9a-f]{16})", image.text.get("Description", ""))
    return found.group(1) if found else None


def curve_figure(runs: list[Run], cs: list[Choice], task: str, path: Path) -> None:
    """The claim points' dev and held-out metric against the step (standard head, chosen lr): the mean over seeds
    as a line, the range over seeds (lowest to highest) as a band, so an ordering that comes from early speed can be
    told from one that holds at the end. Not a t-interval: with two or three seeds its half-width is 4-13 standard
    errors and would cover the figure; the end-of-run gaps with their intervals are in the claims table.
    PNG (300 dpi) and SVG, byte-stable, with the curves' digest in their Description (figure_digest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qpeft.frontier import LINE_COLOURS, save_figure

    lines = curves(runs, cs, task)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for ax, split in [(axes[0], "dev"), (axes[1], "held-out")]:
        for line in [c for c in lines if c.split == split]:
            i = CLAIM_POINTS.index(line.setting)
            colour = LINE_COLOURS[i % len(LINE_COLOURS)]
            ax.plot(line.steps, line.means, linestyle=styles[i], color=colour, label=line.label)
            ax.fill_between(line.steps, line.lows, line.highs, color=colour, alpha=0.12, linewidth=0)
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{TASK_LABELS.get(task, task)} {split}: mean over seeds, band = their range")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{_curve_metric(task)} x100")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    save_figure(fig, path, f"{CURVES_TAG} {curves_digest(lines)}")
    plt.close(fig)


def _study_records(records_root: Path, preset: str) -> list[tuple[Path, Record]]:
    records, _ = load_records([records_root])
    return [(p, r) for p, r in records if r.experiment == preset]


def finished_runs(records_root: Path, preset: str = PRESET) -> list[Run]:
    """The study's finished runs under `records_root`; none where nothing has finished yet (the folder not made, or
    made by the first runs, still going): the rule then asks for every grid."""
    if not records_root.is_dir():
        return []
    return [to_run(r) for _, r in _study_records(records_root, preset)]


def load(records_root: Path, preset: str = PRESET) -> tuple[list[Run], list[tuple[Path, Record]]]:
    records = _study_records(records_root, preset)
    if not records:
        how = "scripts/gpu_claim.sh" if preset in FIXED_LR_PRESETS else "make claim"
        raise QpeftError(f"no records of experiment {preset} under {records_root}: run `{how}` first")
    return [to_run(r) for _, r in records], records


def build(
    records_root: Path,
    tables: Path,
    figures: Path | None,
    preset: str = PRESET,
    frontier_root: Path | None = None,
    summaries: Sequence[Path] = (),
) -> list[Path]:
    """`results/tables/<preset>_claims.{md,csv}` (and with `figures`, the learning-curve figures) from the
    study's records under `records_root`; with `frontier_root` (the 126-step frontier's records), which of its
    conclusions held; into each of `summaries` (README, docs/claim.md), the claims' summary between its markers
    (the study itself only).
    `<preset>.md` is `make tables`' own layout of the same records."""
    runs, records = load(records_root, preset)
    cs = fixed_choices(runs) if preset in FIXED_LR_PRESETS else choices(runs)
    lines, csv = tables_of(runs, records, cs, preset)
    fixed = preset in FIXED_LR_PRESETS
    judgements = [] if frontier_root is None else frontier_judgements(runs, cs, frontier_root, fixed)
    lines += frontier_lines(judgements, fixed)
    written = []
    prefix = "claim" if preset == PRESET else preset
    for task in sorted({r.task for r in runs}):
        name = f"{prefix}_{task}_curves.png"
        if figures is not None:
            curve_figure(runs, cs, task, figures / name)
            written.append(figures / name)
        lines += [f"![{TASK_LABELS.get(task, task)}: learning curves](../figures/{name})", ""]
    tables.mkdir(parents=True, exist_ok=True)
    md, csv_path = tables / f"{preset}_claims.md", tables / f"{preset}_claims.csv"
    md.write_text("\n".join(lines), encoding="utf-8")
    csv_path.write_text(csv, encoding="utf-8")
    if preset == PRESET:
        block = summary_block(runs, cs, judgements)
        written += [path for path in summaries if write_summary(path, block)]
    return [md, csv_path, *written]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", default="outputs/claim_minilm", help="folder with the study's records")
    ap.add_argument("--tables", default="results/tables")
    ap.add_argument("--figures", default="results/figures")
    ap.add_argument(
        "--frontier-records",
        default=str(FRONTIER_RECORDS),
        help="the 126-step frontier's records, to say which of its conclusions held ('' to leave it out)",
    )
    ap.add_argument("--pending", action="store_true", help="only print the run.py arguments still to run")
    ap.add_argument(
        "--next",
        action="store_true",
        help="only print the first run still to run that no other process is running (one seed; nothing if none)",
    )
    ap.add_argument(
        "--eta", action="store_true", help="only print how many runs are left and about how long they take"
    )
    ap.add_argument(
        "--preset",
        default=PRESET,
        choices=[PRESET, *FIXED_LR_PRESETS],
        help="the study, or a preset of its points at one shared lr (nothing chosen)",
    )
    args = ap.parse_args(argv)
    try:
        root = Path(args.records)
        if args.eta:
            print("\n".join(eta_lines(load(root)[0])))
            return 0
        if args.pending or args.next:
            if args.preset != PRESET:
                ap.error("--pending, --next: only the study itself has an lr rule that asks for runs")
            runs = finished_runs(root)
            lines = pending(runs) if args.pending else [line for line in [next_run(runs, root)] if line]
            for line in lines:
                print(line)
            return 0
        tables, figures = output_folder(args.tables, "--tables"), output_folder(args.figures, "--figures")
        frontier_root = Path(args.frontier_records) if args.frontier_records else None
        if frontier_root is not None and not frontier_root.is_dir():
            raise QpeftError(
                f"--frontier-records {frontier_root}: no such folder (the 126-step frontier's records; "
                "'' leaves the section out)"
            )
        for path in build(root, tables, figures, args.preset, frontier_root):
            print(path)
    except QpeftError as e:
        return print_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
