"""The accuracy-per-parameter frontier (experiment=frontier_minilm, `make frontier`): a table and two figures per task.

    python -m qpeft.frontier [--records outputs/frontier_minilm] [--preset frontier_minilm]

Reads the preset's run records and writes `results/tables/<preset>_points.{md,csv}`,
`results/figures/frontier_<task>.{png,svg}` and `results/figures/frontier_all_<task>.{png,svg}` (300 dpi PNG): the
task's main metric on the dev set against adapter parameters (log axis). The first shows each method family once,
its best setting per budget chosen on the held-out slice at the lr chosen there, the dev mean over seeds with the
95% t-interval of the mean as a band, the head alone as the floor and the band of 5x to 25x fewer parameters than
LoRA r=8 (the paper's claim) shaded; the second every setting, one panel per family. The held-out training slice's metric
(`trainer.heldout`) sits beside the dev metric in the table, and the Quantum-PEFT setting with the best held-out
score (mean over tasks) is named there: the one value this study chooses, chosen without the dev set.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qpeft.errors import QpeftError, output_folder, print_error
from qpeft.records import Record
from qpeft.stats import Gap, family_wise, welch
from qpeft.tables.load import load_records
from qpeft.tables.render import csv_text, markdown

TASK_LABELS = {"sst2": "SST-2", "stsb": "STS-B", "mrpc": "MRPC", "cola": "CoLA", "rte": "RTE"}
REFERENCE_TAG = "lora_r8"  # the paper's claim is counted against LoRA r=8
BAND = (5, 25)  # "5 to 25-fold reduction in trainable parameters compared to LoRA"
FAMILY_ORDER = ["LoRA", "LoRA, own lr", "Pauli L=1", "Pauli L=2", "Pauli L=4", "Pauli L=1, rank-stable"]
FAMILY_ORDER += ["Pauli L=1, rank-stable, own lr", "Pauli, rank mask"]
FAMILY_ORDER += ["Pauli, paper rule"]
FAMILY_ORDER += [
    "Taylor",
    "Taylor, own lr",
    "VeRA",
    "VeRA, own lr",
    "FourierFT",
    "FourierFT, own lr",
    "TinyLoRA",
]
FAMILY_ORDER += ["TinyLoRA, own lr", "head only"]
# lines whose points also ran at an adapter.adapter_lr grid (experiment=frontier_minilm_lr, _pauli, _lora,
# _tinylora, _taylor): one lr chosen per task and budget
LR_SECTION = (
    "At their own learning rate: LoRA, VeRA, FourierFT, TinyLoRA, Taylor and the rank-stable Pauli points"
)
OWN_LR = ("LoRA", "VeRA", "FourierFT", "TinyLoRA", "Taylor", "Pauli L=1, rank-stable")


@dataclass
class Point:
    """One adapter setting on one task: its parameter count and metric over seeds."""

    task: str
    tag: str
    family: str
    params: int
    dev: list[float] = field(default_factory=list)  # main metric on the dev set, one per seed
    heldout: list[float] = field(default_factory=list)  # main metric on the held-out training slice
    seeds: list[int] = field(default_factory=list)
    # the adapter's own lr, adapter.adapter_lr (None: the protocol's, trainer.lr)
    adapter_lr: float | None = None
    # the lr its adapter parameters trained at: adapter_lr, else the run's trainer.lr (None: not recorded)
    lr: float | None = None
    head_params: int = 0  # the trained head (classifier and pooler), counted apart from the adapter

    @staticmethod
    def stat(values: list[float]) -> tuple[float, float]:
        """(mean, sample std) x100; std nan for one seed."""
        a = np.asarray(values, dtype=float) * 100
        return (
            (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan) if len(a) else (math.nan,) * 2
        )


def family(record: Record) -> str:
    """The line a record's setting belongs to; with its own adapter_lr, that line's name + ", own lr"."""
    cfg = record.adapter_cfg or {}
    base = _family(record.adapter, cfg, record)
    return f"{base}, own lr" if cfg.get("adapter_lr") is not None else base


def _family(method: str, cfg: dict, record: Record) -> str:
    if method == "quantum":
        if (cfg.get("scaling") or "rank") == "rank" and cfg.get("circuit_lr") is None:
            return "Pauli, paper rule"
        if cfg.get("rank_mask") is not None:
            return "Pauli, rank mask"
        if cfg.get("scaling") == "width_sqrt":
            return f"Pauli L={cfg.get('layers')}, rank-stable"
        return f"Pauli L={cfg.get('layers')}"
    names = {
        "lora": "LoRA",
        "quantum_taylor": "Taylor",
        "vera": "VeRA",
        "fourierft": "FourierFT",
        "tinylora": "TinyLoRA",
        "head_only": "head only",
    }
    if method not in names:
        raise QpeftError(
            f"record of {record.task}/{record.adapter_tag}: method {method} has no frontier family"
        )
    return names[method]


def collect(records: list[tuple[Path, Record]]) -> list[Point]:
    points: dict[tuple[str, str], Point] = {}
    for path, r in records:
        key = (r.task, r.adapter_tag)
        if key not in points:
            adapter_lr = (r.adapter_cfg or {}).get("adapter_lr")
            lr = adapter_lr if adapter_lr is not None else (r.hyperparameters or {}).get("lr")
            points[key] = Point(
                r.task,
                r.adapter_tag,
                family(r),
                int(r.adapter_params or 0),
                adapter_lr=adapter_lr,
                lr=lr,
                head_params=int(r.head_params or 0),
            )
        p = points[key]
        p.seeds.append(r.seed)
        p.dev.append(r.metrics[r.main_metric])
        held = r.metrics.get(f"{r.main_metric}_heldout")
        if held is None:
            raise QpeftError(
                f"{path}: no {r.main_metric}_heldout (run the preset, which holds out training data)"
            )
        p.heldout.append(held)
    return sorted(points.values(), key=lambda p: (p.task, FAMILY_ORDER.index(p.family), p.params, p.tag))


def chosen_quantum(points: list[Point]) -> tuple[str, float] | None:
    """The Quantum-PEFT setting (Pauli under a width rule: any K, L, plain or rank-stable) with the best held-out
    score averaged over the tasks that all have it: (tag, mean held-out x100); None if there is none."""
    tasks = {p.task for p in points}
    by_tag: dict[str, list[float]] = {}
    for p in points:
        if p.family.startswith("Pauli L=") and p.adapter_lr is None:  # the shared lr's settings only
            by_tag.setdefault(p.tag, []).append(Point.stat(p.heldout)[0])
    scores = {t: float(np.mean(v)) for t, v in by_tag.items() if len(v) == len(tasks)}
    return max(scores.items(), key=lambda kv: _ranked(kv[1])) if scores else None


def _ranked(score: float) -> float:
    """A score as choices rank it: nan (a correlation of constant predictions, a run that learned nothing) last;
    max() would otherwise keep a leading nan, as nothing compares greater than it."""
    return -math.inf if math.isnan(score) else score


@dataclass
class LrChoice:
    """A method's own learning rate (a line of OWN_LR) at one budget on one task, chosen on the held-out slice."""

    task: str
    method: str  # a line of OWN_LR
    candidates: list[tuple[Point, float]]  # every lr tried, with its held-out mean over `seeds` (x100)
    seeds: list[int]  # the seeds every candidate has: the choice compares these only
    chosen: Point

    @property
    def setting(self) -> str:
        """The study's setting the grid belongs to: the chosen tag without its `_alr<lr>` suffix."""
        return self.chosen.tag.split("_alr")[0]


def chosen_lrs(points: list[Point]) -> list[LrChoice]:
    """For each task and OWN_LR budget (line and parameter count) run at more than one lr: the lr (the study's
    shared one, or an adapter.adapter_lr) with the best held-out score over the seeds all of them have; a tie
    goes to the smaller lr. Budgets whose candidates share no seed are left out."""
    groups: dict[tuple[str, str, int], list[Point]] = {}
    for p in points:
        method = p.family.removesuffix(", own lr")
        if method in OWN_LR:
            groups.setdefault((p.task, method, p.params), []).append(p)
    choices = []
    for (task, method, _), members in sorted(groups.items()):
        seeds = sorted(set.intersection(*(set(p.seeds) for p in members)))
        if len(members) < 2 or not seeds:
            continue
        members.sort(key=lambda p: (p.lr is not None, p.lr or 0.0))  # by lr (an unrecorded one first)
        scored = [(p, float(np.mean([p.heldout[p.seeds.index(s)] for s in seeds])) * 100) for p in members]
        best = max(scored, key=lambda ps: _ranked(ps[1]))  # max keeps the first of equals: the smaller lr
        choices.append(LrChoice(task, method, scored, seeds, best[0]))
    return choices


def rechosen_quantum(choices: list[LrChoice]) -> list[tuple[str, float]]:
    """The default setting chosen again, each Pauli point at its own lr: the rank-stable points with an lr chosen on
    every task, as (setting, held-out x100 of the chosen lr over all its seeds, averaged over the tasks), best first.
    chosen_quantum compares the settings at the shared lr; this says whether own lrs would change its choice."""
    tasks = {c.task for c in choices}
    by_tag: dict[str, list[float]] = {}
    for c in choices:
        if c.method == "Pauli L=1, rank-stable":
            by_tag.setdefault(c.setting, []).append(Point.stat(c.chosen.heldout)[0])
    scores = [(t, float(np.mean(v))) for t, v in by_tag.items() if len(v) == len(tasks)]
    return sorted(scores, key=lambda ts: (-_ranked(ts[1]), ts[0]))


def lr_choice_lines(choices: list[LrChoice], shared_lr: str) -> list[str]:
    """The choices as a markdown table, and the run.py commands for the seeds a chosen lr still lacks."""
    if not choices:
        return []
    headers = ["task", "setting", "held-out (seeds)", "chosen", "dev of the chosen", "seeds"]
    rows = []
    for c in choices:
        tried = ", ".join(f"{_lr(p.adapter_lr, shared_lr)}: {h:.2f}" for p, h in c.candidates)
        seeds = "+".join(map(str, c.seeds))
        rows.append(
            [
                TASK_LABELS.get(c.task, c.task),
                f"`{c.setting}`",
                f"{tried} ({seeds})",
                _lr(c.chosen.adapter_lr, shared_lr),
                _pm(Point.stat(c.chosen.dev)),
                str(len(c.chosen.seeds)),
            ]
        )
    lines = [
        f"## {LR_SECTION}",
        "",
        "`experiment=frontier_minilm_lr` (VeRA, FourierFT), `frontier_minilm_lr_lora` (LoRA r=1, 2, 8), "
        "`frontier_minilm_lr_tinylora` (TinyLoRA), `frontier_minilm_lr_taylor` (Taylor K = 1, 2, 4) and "
        "`frontier_minilm_lr_pauli` (Pauli under the rank-stable rule "
        "at K = 8, 64 and full rank, the default): the adapter's parameters at `adapter.adapter_lr` (the "
        "head at the shared lr), "
        "tried on seed 0; for each task and budget the lr with the best held-out score is chosen (held-out x100, "
        "mean over the seeds every lr has), and its dev score is reported over all the seeds it has. The figures "
        "draw each family at the lrs chosen (every setting's figure marks them `held-out lr`).",
        "",
        markdown(headers, rows, align="llllrr").rstrip("\n"),
        "",
    ]
    rechosen = rechosen_quantum(choices)
    if rechosen:
        ranked = ", ".join(f"`{tag}` {score:.2f}" for tag, score in rechosen)
        lines += [
            "The default chosen again with each rank-stable Pauli point at its own lr (the held-out score of the lr "
            f"chosen on each task, over all its seeds, averaged over the tasks): {ranked}.",
            "",
        ]
    todo = pending_runs(choices)
    if todo:
        lines += [
            "Seeds still to run at the chosen lr (`python -m qpeft.frontier --pending` lists them):",
            "",
        ]
        lines += [f"    python {args}" for args in todo] + [""]
    return lines


def pending_runs(choices: list[LrChoice]) -> list[str]:
    """run.py's arguments for the seeds a chosen adapter lr lacks (the seeds any lr of its budget has)."""
    runs = []
    for c in choices:
        seeds = sorted({s for p, _ in c.candidates for s in p.seeds} - set(c.chosen.seeds))
        if seeds and c.chosen.adapter_lr is not None:
            runs.append(
                f"run.py -m experiment=frontier_minilm_lr task=glue/{c.task} "
                f"adapter=frontier/{c.setting}_alr adapter.adapter_lr={c.chosen.adapter_lr:g} "
                f"seed={','.join(map(str, seeds))}"
            )
    return runs


# the comparisons README and docs/frontier.md state: (setting, against), each at the lr chosen for it on the held-out
# slice where it had a grid (else at the shared lr); the default is `quantum_kfull_l1_ws`
CLAIMS = [
    ("quantum_kfull_l1_ws", "lora_r8"),
    ("quantum_kfull_l1_ws", "lora_r1"),
    ("quantum_kfull_l1_ws", "vera_r64"),
    ("quantum_kfull_l1_ws", "vera_r256"),
    ("quantum_kfull_l1_ws", "fourierft_n1000"),
    ("quantum_k64_l1_ws", "fourierft_n100"),
    ("quantum_k8_l1_ws", "tinylora_r2_u64"),
    ("quantum_k64_l1_ws", "quantum_kfull_l1_ws"),
    ("quantum_taylor_k1_o8", "lora_r1"),
    ("quantum_k8_l1", "head_only"),
]


def at_own_lr(points: list[Point], choices: list[LrChoice], task: str, setting: str) -> Point | None:
    """A setting's point on a task at the lr chosen for it (its own-lr grid), else at the shared lr."""
    for c in choices:
        if c.task == task and c.setting == setting:
            return c.chosen
    return next((p for p in points if p.task == task and p.tag == setting), None)


@dataclass(frozen=True)
class Comparison:
    """One CLAIMS pair on one task, each side at its own held-out lr: the gap of the means over seeds (x100)."""

    task: str
    setting: str  # CLAIMS' names, without the lr suffix of the chosen tag
    against: str
    a: Point
    b: Point
    dev: Gap
    heldout: Gap


def comparisons(points: list[Point], choices: list[LrChoice]) -> list[Comparison]:
    """Each CLAIMS pair on each task where both ran: the gaps on dev and held-out with their 95% Welch interval."""
    out = []
    for task in sorted({p.task for p in points}):
        for a, b in CLAIMS:
            pa, pb = at_own_lr(points, choices, task, a), at_own_lr(points, choices, task, b)
            if pa is None or pb is None:
                continue
            dev = welch([v * 100 for v in pa.dev], [v * 100 for v in pb.dev])
            held = welch([v * 100 for v in pa.heldout], [v * 100 for v in pb.heldout])
            out.append(Comparison(task, a, b, pa, pb, dev, held))
    return out


def claim_rows(points: list[Point], choices: list[LrChoice]) -> list[list[str]]:
    """Each comparison as a row: the dev and held-out gaps, the verdict on dev (ahead / behind only where the
    interval excludes zero), and whether it stands when the CLAIMS on every task are read as one family (Holm)."""
    comps = comparisons(points, choices)
    family = len(CLAIMS) * len({p.task for p in points})
    return [
        [
            TASK_LABELS.get(c.task, c.task),
            f"`{c.a.tag}` ({c.a.params:,})",
            f"`{c.b.tag}` ({c.b.params:,})",
            c.dev.text(),
            f"{c.dev.p:.2f}" if not math.isnan(c.dev.p) else "",
            c.heldout.text(),
            f"{c.dev.n_a}/{c.dev.n_b}",
            c.dev.verdict,
            reading,
        ]
        for c, reading in zip(comps, family_wise([c.dev for c in comps], family), strict=True)
    ]


def claim_lines(points: list[Point], choices: list[LrChoice]) -> list[str]:
    rows = claim_rows(points, choices)
    if not rows:
        return []
    headers = [
        "task",
        "setting",
        "against",
        "dev gap [95% CI]",
        "p",
        "held-out gap [95% CI]",
        "seeds",
        "on dev",
        f"of {len(CLAIMS) * len({p.task for p in points})} (Holm)",
    ]
    return [
        "## The comparisons, with their uncertainty",
        "",
        "Each setting at the lr chosen for it on the held-out slice (the shared lr where it had no grid). Gap: "
        "the difference of the means over seeds x100, with the 95% Welch interval and its two-sided p-value "
        "(dev). `ahead` / `behind` only where the interval excludes zero, else `level`. Three seeds a side: an "
        "interval this wide says the study cannot tell, not that the two are equal. `of N (Holm)`: the dev gaps "
        "read as one family of the N comparisons stated here on every task (Holm's step-down at family-wise 5%, "
        "added after the study); `stands` where an ahead / behind verdict survives it.",
        "",
        markdown(headers, rows, align="lllllrrll").rstrip("\n"),
        "",
    ]


def commits_of(records: list[tuple[Path, Record]]) -> dict[tuple[str, str], str]:
    """(task, tag) -> the commits its records ran at, short, each with its run count ("+dirty": the record's tree
    had uncommitted changes; its run folder kept them as code.diff where the record has code_diff_sha256)."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    for _, r in records:
        commit = r.git_commit or "unknown"
        short = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
        counts = found.setdefault((r.task, r.adapter_tag), {})
        counts[short] = counts.get(short, 0) + 1
    return {k: ", ".join(f"{c} ({n})" if len(v) > 1 else c for c, n in v.items()) for k, v in found.items()}


def _lr(adapter_lr: float | None, shared_lr: str) -> str:
    return f"{adapter_lr:g}" if adapter_lr is not None else f"{shared_lr} (shared)"


def table_rows(
    points: list[Point], commits: dict[tuple[str, str], str] | None = None
) -> tuple[list[str], list[list[str]], list[list[object]]]:
    ref = {p.task: p.params for p in points if p.tag == REFERENCE_TAG}
    commits = commits or {}
    headers = [
        "task",
        "family",
        "setting",
        "adapter params",
        "x fewer than LoRA r=8",
        "trainable params (head incl.)",
        "dev",
        "held-out",
        "seeds",
        "code",
    ]
    rows, raw = [], []
    for p in points:
        dev, held = Point.stat(p.dev), Point.stat(p.heldout)
        fewer = ref[p.task] / p.params if p.task in ref and p.params else math.nan
        rows.append(
            [
                TASK_LABELS.get(p.task, p.task),
                p.family,
                f"`{p.tag}`",
                f"{p.params:,}",
                "" if math.isnan(fewer) else f"{fewer:,.1f}",
                f"{p.params + p.head_params:,}",
                _pm(dev),
                _pm(held),
                str(len(p.seeds)),
                commits.get((p.task, p.tag), ""),
            ]
        )
        raw.append(
            [p.task, p.family, p.tag, p.params, fewer, p.params + p.head_params, *dev, *held, len(p.seeds)]
        )
    return headers, rows, raw


def _pm(stat: tuple[float, float]) -> str:
    mean, std = stat
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


# The main figure: each method family once (at most 8 legend entries). Quantum-PEFT appears under two rules: qpeft's
# (the rank-stable width rule of adapter=quantum, K = 8, 64, full) and the paper's literal one (adapter=quantum_paper);
# the plain width rule at L = 1, 2, 4 and the rank masks are in the all-settings figure. Marker, line style, colour
# (Okabe-Ito; told apart in grayscale by marker and dash).
PAULI_OTHERS = ("Pauli L=1", "Pauli L=2", "Pauli L=4", "Pauli, rank mask")
FAMILIES = {
    "LoRA": ("LoRA",),
    "Quantum-PEFT, qpeft's rule": ("Pauli L=1, rank-stable",),
    "Quantum-PEFT, paper's rule": ("Pauli, paper rule",),
    "Quantum-PEFT, Taylor": ("Taylor",),
    "VeRA": ("VeRA",),
    "FourierFT": ("FourierFT",),
    "TinyLoRA": ("TinyLoRA",),
}
FAMILY_STYLES = {
    "LoRA": ("o", "-", "#0072B2"),
    "Quantum-PEFT, qpeft's rule": ("D", "-", "#000000"),
    "Quantum-PEFT, paper's rule": ("X", ":", "#D55E00"),
    "Quantum-PEFT, Taylor": ("s", "--", "#CC79A7"),
    "VeRA": ("^", "-.", "#009E73"),
    "FourierFT": ("v", (0, (5, 1.5, 1, 1.5, 1, 1.5)), "#E69F00"),
    "TinyLoRA": ("P", (0, (1, 1)), "#56B4E9"),
}
HEAD_STYLE = ("0.45", "--")
# the all-settings figure: one panel per family, every line of it
PANELS = {
    "LoRA": ("LoRA",),
    "Quantum-PEFT, Pauli": FAMILIES["Quantum-PEFT, qpeft's rule"]
    + PAULI_OTHERS
    + FAMILIES["Quantum-PEFT, paper's rule"],
    "Quantum-PEFT, Taylor": ("Taylor",),
    "VeRA": ("VeRA",),
    "FourierFT": ("FourierFT",),
    "TinyLoRA": ("TinyLoRA",),
}
LINE_STYLES = [
    ("o", "-"),
    ("D", "--"),
    ("s", ":"),
    ("^", "-."),
    ("v", (0, (5, 1))),
    ("P", (0, (1, 1))),
    ("X", "-"),
]
LINE_COLOURS = ["#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
DPI = 300


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) x100 of the 95% t-interval of the mean over seeds; low = high = mean for one seed."""
    from scipy.stats import t as student_t

    a = np.asarray(values, dtype=float) * 100
    mean = float(a.mean())
    if len(a) < 2:
        return mean, mean, mean
    half = float(student_t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def candidates(points: list[Point], chosen: list[LrChoice], task: str) -> list[Point]:
    """The settings of `task` each at one lr: the lr chosen on the held-out slice where the budget had a grid
    (the grid's other points left out), else the shared lr."""
    by_budget = {(c.method, c.chosen.params): c.chosen for c in chosen if c.task == task}
    out = []
    for p in points:
        if p.task != task or p.family.endswith(", own lr"):
            continue
        out.append(by_budget.get((p.family, p.params), p))
    out += [c for c in by_budget.values() if c.family.endswith(", own lr")]
    return list({id(p): p for p in out}.values())


def best_per_budget(points: list[Point], chosen: list[LrChoice], task: str) -> dict[str, list[Point]]:
    """For each FAMILIES entry, its best setting at each parameter count by the held-out mean over seeds (never
    dev), each at its held-out lr; in parameter order."""
    out: dict[str, list[Point]] = {}
    for name, lines in FAMILIES.items():
        budget: dict[int, Point] = {}
        for p in candidates(points, chosen, task):
            if p.family.removesuffix(", own lr") not in lines:
                continue
            best = budget.get(p.params)
            if best is None or _ranked(Point.stat(p.heldout)[0]) > _ranked(Point.stat(best.heldout)[0]):
                budget[p.params] = p
        if budget:
            out[name] = [budget[k] for k in sorted(budget)]
    return out


def _band(ax, members: list[Point], marker, line, colour, label: str, zorder: int = 3):
    """A line through the dev means, the 95% t-interval of each mean as a band (and a bar where one point)."""
    xs = [p.params for p in members]
    stats = [t_interval(p.dev) for p in members]
    ys, lows, highs = [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats]
    if len(xs) > 1:
        ax.fill_between(xs, lows, highs, color=colour, alpha=0.13, linewidth=0, zorder=zorder - 2)
    else:
        ax.errorbar(
            xs, ys, yerr=[[ys[0] - lows[0]], [highs[0] - ys[0]]], color=colour, capsize=3, lw=1, zorder=zorder
        )
    (handle,) = ax.plot(
        xs, ys, marker=marker, linestyle=line, color=colour, mfc="white", mew=1.3, ms=6, lw=1.6,
        label=label, zorder=zorder,
    )  # fmt: skip
    return handle


def _head(ax, pts: list[Point]):
    head = next((p for p in pts if p.family == "head only"), None)
    if head is None:
        return None
    mean, low, high = t_interval(head.dev)
    ax.axhspan(low, high, color=HEAD_STYLE[0], alpha=0.12, linewidth=0, zorder=0)
    return ax.axhline(mean, color=HEAD_STYLE[0], linestyle=HEAD_STYLE[1], lw=1.2, zorder=1, label="head only")


def _paper_band(ax, pts: list[Point]):
    ref = next((p.params for p in pts if p.tag == REFERENCE_TAG), None)
    if ref:
        ax.axvspan(ref / BAND[1], ref / BAND[0], facecolor="0.95", edgecolor="0.6", linestyle=":", zorder=-1)
        ax.annotate(
            f"{BAND[0]}-{BAND[1]}x fewer\nthan LoRA r=8",
            (math.sqrt(ref / BAND[1] * ref / BAND[0]), 0.015),
            xycoords=("data", "axes fraction"), fontsize=7, color="0.3", ha="center", va="bottom",
        )  # fmt: skip


def _metric_label(task: str) -> str:
    return "accuracy" if task != "stsb" else "(Pearson + Spearman) / 2"


def save_figure(fig, path: Path, description: str | None = None) -> list[Path]:
    """The figure as a 300 dpi PNG and an SVG beside it, both without dates or software stamps (reproducible);
    `description` goes into both files' metadata."""
    import matplotlib

    path.parent.mkdir(parents=True, exist_ok=True)
    svg = path.with_suffix(".svg")
    described = {"Description": description} if description else {}
    fig.savefig(path, dpi=DPI, metadata={"Software": None, **described})
    with matplotlib.rc_context({"svg.hashsalt": "qpeft", "svg.fonttype": "path"}):
        fig.savefig(svg, metadata={"Date": None, "Creator": None, **described})
    return [path, svg]


def figure(points: list[Point], task: str, path: Path, title: str, chosen: list[LrChoice] = ()) -> list[Path]:
    """The frontier of `task` at a glance: each method family once, its best setting per budget (best_per_budget)
    at its held-out lr, the dev mean over seeds with the 95% t-interval band; the head alone dashed; the paper's 5-25x
    band shaded. Writes `path` (PNG) and its SVG; returns both."""
    from matplotlib.figure import Figure

    pts = [p for p in points if p.task == task]
    fig = Figure(figsize=(7.6, 4.8), layout="constrained")
    ax = fig.subplots()
    _paper_band(ax, pts)
    handles = []
    for z, (name, members) in enumerate(best_per_budget(points, list(chosen), task).items()):
        marker, line, colour = FAMILY_STYLES[name]
        handles.append(_band(ax, members, marker, line, colour, name, zorder=3 + z))
    head = _head(ax, pts)
    if head is not None:
        handles.append(head)
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (the trained head, ~149K, counted apart)")
    ax.set_ylabel(f"dev {_metric_label(task)} x100")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", color="0.9", linewidth=0.6)
    n = {len(p.dev) for ms in best_per_budget(points, list(chosen), task).values() for p in ms}
    seeds = f"{min(n)}-{max(n)}" if len(n) > 1 else f"{n.pop()}" if n else "0"
    fig.legend(
        handles=handles, loc="outside right upper", fontsize=7.5, frameon=False,
        title=f"best setting per budget, chosen\non held-out, at its held-out lr;\ndev mean over {seeds} seeds with\nits 95% t-interval band",
        title_fontsize=7, alignment="left",
    )  # fmt: skip
    return save_figure(fig, path)


def figure_all(
    points: list[Point], task: str, path: Path, title: str, chosen: list[LrChoice] = ()
) -> list[Path]:
    """Every setting of `task`, one panel per family on a shared axis: each line of the family at the shared lr,
    and its points at the lr chosen on held-out (labelled "held-out lr"); dev mean with the 95% t-interval as
    a bar; the head alone dashed in every panel. PNG and SVG."""
    from matplotlib.figure import Figure

    pts = [p for p in points if p.task == task]
    fig = Figure(figsize=(11, 10), layout="constrained")
    axes = fig.subplots(3, 2, sharex=True, sharey=True).ravel()
    for ax, (panel, lines) in zip(axes, PANELS.items()):
        _paper_band(ax, pts)
        _head(ax, pts)
        series = []
        for line in lines:
            shared = sorted((p for p in pts if p.family == line), key=lambda p: p.params)
            if shared:
                series.append((line, shared))
            own = sorted(
                (c.chosen for c in chosen if c.task == task and c.method == line), key=lambda p: p.params
            )
            own = [p for p in own if p.family.endswith(", own lr")]
            if own:
                series.append((f"{line}, held-out lr", own))
        for i, (label, members) in enumerate(series):
            marker, line_style = LINE_STYLES[i % len(LINE_STYLES)]
            colour = LINE_COLOURS[i % len(LINE_COLOURS)]
            xs = [p.params for p in members]
            stats = [t_interval(p.dev) for p in members]
            ys = [s[0] for s in stats]
            err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
            ax.errorbar(
                xs, ys, yerr=err, marker=marker, linestyle=line_style, color=colour, mfc="white", ms=5,
                lw=1.3, capsize=2, label=label.replace("Pauli, ", "").replace("Pauli ", ""),
            )  # fmt: skip
        ax.set_title(panel, fontsize=9)
        ax.set_xscale("log")
        ax.grid(True, which="major", color="0.9", linewidth=0.6)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for ax in axes[4:]:
        ax.set_xlabel("adapter parameters")
    for ax in axes[::2]:
        ax.set_ylabel(f"dev {_metric_label(task)} x100")
    fig.suptitle(title + " (mean, 95% t-interval over seeds; head alone dashed)", fontsize=10)
    return save_figure(fig, path)


def preset_records(records_root: Path, preset: str) -> list[tuple[Path, Record]]:
    records, _ = load_records([records_root])
    records = [(p, r) for p, r in records if r.experiment == preset]
    if not records:
        raise QpeftError(f"no records of experiment {preset} under {records_root}: run `make frontier` first")
    return records


def build(records_root: Path, preset: str, tables: Path, figures: Path | None) -> list[Path]:
    """The points table of `preset` under `tables` and its figures under `figures` (None: the table only)."""
    records = preset_records(records_root, preset)
    points = collect(records)
    headers, rows, raw = table_rows(points, commits_of(records))
    choice = chosen_quantum(points)
    lr_choices = chosen_lrs(points)
    shared_lrs = {(r.hyperparameters or {}).get("lr") for _, r in records} - {None}
    shared_lr = f"{shared_lrs.pop():g}" if len(shared_lrs) == 1 else "trainer.lr"
    tasks = sorted({p.task for p in points})
    seeds = sorted({s for p in points for s in p.seeds})
    lines = [
        f"# {preset}: accuracy per parameter",
        "",
        f"Built by `python -m qpeft.frontier` from {len(records)} records ({', '.join(tasks)}; seeds "
        f"{', '.join(map(str, seeds))}). Metrics x100, mean ± sample std over the seeds a row has; `dev` is the "
        "full official dev set, `held-out` the 500 training examples each run held out (`trainer.heldout`). "
        "`x fewer`: LoRA r=8's adapter parameters over the row's; `trainable params`: adapter and trained head "
        "(classifier and BERT's pooler). `code`: the commits the row's runs ran at "
        "(with the number of runs where they differ; `+dirty`: the tree had uncommitted changes, see "
        "docs/frontier.md, provenance)."
        + (
            " `nan`: a seed predicted one constant, whose correlation is undefined (the run learned nothing)."
            if any(math.isnan(v) for p in points for v in p.dev + p.heldout)
            else ""
        ),
        "",
        markdown(headers, rows, align="llllrrrrrl").rstrip("\n"),
        "",
    ]
    if choice:
        lines += [
            "Chosen on the held-out training slice, never on dev: the Quantum-PEFT setting (Pauli under a width "
            f"rule, plain or rank-stable, any K and L) with the best held-out score averaged over {', '.join(tasks)} "
            f"is `{choice[0]}` ({choice[1]:.2f}).",
            "",
        ]
    lines += lr_choice_lines(lr_choices, shared_lr)
    lines += claim_lines(points, lr_choices)
    # <preset>_points: `make tables` writes <preset>.md in its own layout
    out_md, out_csv = tables / f"{preset}_points.md", tables / f"{preset}_points.csv"
    tables.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines), encoding="utf-8")
    csv_headers = ["task", "family", "setting", "adapter_params", "x_fewer_than_lora_r8", "trainable_params"]
    csv_headers += ["dev_mean", "dev_std", "heldout_mean", "heldout_std", "seeds"]
    out_csv.write_text(csv_text(csv_headers, raw), encoding="utf-8")
    written = [out_md, out_csv]
    for task in tasks if figures is not None else ():
        stem = (
            "frontier" if preset == "frontier_minilm" else preset
        )  # frontier_<task>.png for the study itself
        label = TASK_LABELS.get(task, task)
        written += figure(
            points,
            task,
            figures / f"{stem}_{task}.png",
            f"{label} ({preset}): each family's best setting per budget",
            lr_choices,
        )
        written += figure_all(
            points,
            task,
            figures / f"{stem}_all_{task}.png",
            f"{label}, all-MiniLM-L6 ({preset}): every setting",
            lr_choices,
        )
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", default="outputs/frontier_minilm", help="folder with the preset's records")
    ap.add_argument("--preset", default="frontier_minilm")
    ap.add_argument("--tables", default="results/tables")
    ap.add_argument("--figures", default="results/figures")
    ap.add_argument(
        "--pending",
        action="store_true",
        help="only print, one per line, run.py's arguments for the seeds a chosen adapter lr still lacks",
    )
    args = ap.parse_args(argv)
    try:
        if args.pending:
            for run in pending_runs(chosen_lrs(collect(preset_records(Path(args.records), args.preset)))):
                print(run)
            return 0
        tables, figures = output_folder(args.tables, "--tables"), output_folder(args.figures, "--figures")
        written = build(Path(args.records), args.preset, tables, figures)
    except QpeftError as e:
        return print_error(e)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
