"""One page from the committed results alone: `results/report.md`, its figures under `results/figures/report/`.

    python -m qpeft.report            # make report; qpeft-report

Per preset (the records' `experiment`): its table (the same cells as `python -m qpeft.tables`), a dot
plot of every method on every task (each seed a marker, the mean a bar, the head alone as a floor line,
published rows as stars) and metric against adapter parameters (log x). Then a frontier section for
presets named `frontier*`, the parameter table and scaling figure, and the latest bench.

A folder whose records conflict (two runs with one identity and different metrics, as in diagnostic
sweeps made before run folders carried their settings) is shown with each row labelled by its subfolder.
The output is deterministic (no dates, PNGs without software metadata), so CI can regenerate it from the
committed records and a change in the page means a change in the results. Matplotlib only (Agg canvas
on Figure objects: no pyplot state, no global backend switch); figures are readable in grayscale
(markers and line styles carry the distinctions, not colour).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from qpeft.errors import QpeftError, output_file, output_folder, print_error
from qpeft.records import Record
from qpeft.tables import render
from qpeft.tables.aggregate import Column, Table, build_table, seed_frame
from qpeft.tables.load import TablesError, load_labelled_records, load_references
from qpeft.tables.presets import PART_LABELS, TASK_LABELS
from qpeft.tables.write import by_preset, file_stem, to_markdown

HEAD_ONLY = "head_only"
FRONTIER_PREFIX = "frontier"
# presets with a page of their own (qpeft.claim: <tables>/<preset>_claims.md), and what their rows here are
CLAIM_PRESETS = {
    "claim_minilm": "Every run of the study is a row here, every lr it tried included; its lrs are chosen on the "
    "held-out slice, never on these dev scores. The score-against-parameters figure draws each point at its "
    "chosen lr only (a point whose grid is unfinished is left out).",
    "claim_gpu_sst2": "Every point ran at the one shared lr: nothing was chosen.",
}
MAX_LABELS = 12  # a score-against-parameters panel names its points only up to this many (the rest: markers)
# Grayscale styles per adapter method: marker and line style carry the difference, not colour.
METHOD_STYLE = {
    "full": ("s", "-"),
    "bitfit": ("P", ":"),
    "lora": ("o", "-"),
    "adalora": ("D", "--"),
    "oft": ("v", "-."),
    "boft": ("^", "-."),
    "quantum": ("p", "-"),
    "quantum_taylor": ("X", "--"),
    "vera": ("<", ":"),
    "fourierft": (">", ":"),
    "tinylora": ("h", "--"),
}
SPARE_STYLES = [("d", ":"), ("H", "-"), ("8", "--"), ("1", "-.")]  # "*" is kept for published rows
DPI = 120


@dataclass
class Group:
    """The records shown as one section: one preset."""

    preset: str
    records: list[tuple[Path, Record]]
    variants: bool = False  # rows carry the subfolder they come from (load_labelled_records)


def load_groups(root: Path) -> list[Group]:
    """The sections under `root`, one per preset; rows of conflicting records labelled by their subfolder
    (qpeft.tables.load.load_labelled_records)."""
    records, _, labelled = load_labelled_records([root])
    return [Group(p, recs, p in labelled) for p, recs in by_preset(records).items()]


# ---------------------------------------------------------------------------------------------- figures


def _style(method: str | None) -> tuple[str, str]:
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    return SPARE_STYLES[sum(map(ord, method or "")) % len(SPARE_STYLES)]


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: regeneration is byte-stable


def _panel_title(col: Column, key: str, metric: str) -> str:
    label = TASK_LABELS.get(col.task, col.task)
    part = key[len(col.task) + 1 :] if key != col.task else ""
    return f"{label} {PART_LABELS.get(part, part)}".strip() + f"\n({metric})"


def _shown_parts(table: Table, seeds) -> list[tuple[Column, str, str]]:
    """(column, csv key, metric name) of every column part that has at least one of our values."""
    keys = set(seeds["key"])
    out = []
    for col in table.columns:
        for key, metric in col.parts:
            if key in keys:
                main = seeds.loc[seeds["key"] == key, "metric"].iloc[0]
                out.append((col, key, metric or main))
    return out


def _grid(n: int, max_cols: int = 5) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _row_names(table: Table) -> list[str]:
    several = len({r.backbone for r in table.rows}) > 1
    names = []
    for r in table.rows:
        name = f"{r.label} (published)" if r.published else r.label
        names.append(f"{r.backbone} / {name}" if several else name)
    return names


def seed_figure(table: Table, seeds, head_tags: set[tuple[str, str]], title: str, path: Path) -> None:
    """Dot plot: one panel per task (part), one line per method; seeds, their mean, head floor, published."""
    parts = _shown_parts(table, seeds)
    names = _row_names(table)
    n_rows, n_cols = _grid(len(parts))
    height = 0.8 + 0.28 * len(table.rows)
    fig = Figure(figsize=(max(2.5 * n_cols + 1.6, 7.0), height * n_rows + 0.6))
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, sharey=True, squeeze=False)).ravel()
    y_of = {i: len(table.rows) - 1 - i for i in range(len(table.rows))}  # first row on top
    head_drawn = False
    for ax, (col, key, metric) in zip(axes, parts):
        here = seeds[seeds["key"] == key]
        for i, row in enumerate(table.rows):
            y = y_of[i]
            if row.published:
                if key in row.printed:
                    ax.plot(float(row.printed[key]), y, "*", color="black", markersize=9, zorder=3)
                continue
            values = here[(here["backbone"] == row.backbone) & (here["adapter_tag"] == row.label)]["value"]
            values = values.to_numpy(dtype=float)
            if not values.size:
                continue
            finite = values[np.isfinite(values)]
            offsets = np.linspace(-0.18, 0.18, len(values)) if len(values) > 1 else np.zeros(1)
            ok = np.isfinite(values)
            ax.plot(values[ok], y + offsets[ok], "o", mfc="none", mec="0.35", markersize=4.5, zorder=2)
            if finite.size == values.size:
                ax.plot(values.mean(), y, "|", color="black", markersize=14, mew=2.2, zorder=3)
            if finite.size < values.size:  # a NaN metric has no place on the axis: say so on the row
                ax.annotate(
                    f"{values.size - finite.size} NaN",
                    (1.0, y),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="center",
                    fontsize=6.5,
                    style="italic",
                )
            if (row.backbone, row.label) in head_tags and finite.size == values.size:
                ax.axvline(values.mean(), color="0.25", linestyle="--", linewidth=1.0, zorder=1)
                head_drawn = True
        ax.set_title(_panel_title(col, key, metric), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="x", color="0.85", linewidth=0.6)
        ax.set_xlabel("x100", fontsize=7)
    for ax in axes[len(parts) :]:
        ax.set_visible(False)
    axes[0].set_yticks(range(len(table.rows)), [names[i] for i in sorted(y_of, key=y_of.get)], fontsize=7)
    axes[0].set_ylim(-0.6, len(table.rows) - 0.4)
    handles = [
        Line2D([], [], marker="o", mfc="none", mec="0.35", linestyle="none", label="one seed"),
        Line2D([], [], marker="|", color="black", markersize=12, mew=2.2, linestyle="none", label="mean"),
    ]
    if head_drawn:
        handles.append(Line2D([], [], color="0.25", linestyle="--", label="head alone (mean)"))
    if any(r.published for r in table.rows):
        handles.append(
            Line2D([], [], marker="*", color="black", linestyle="none", markersize=9, label="published")
        )
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    _save(fig, path)


_COUNT = re.compile(r"^\s*([\d.]+)\s*([KMB]?)\s*$")


def parse_count(text: str) -> float | None:
    """A published parameter count ("0.3M", "184M", "512") as a number; None for n/a or a range."""
    m = _COUNT.match(text.replace(",", ""))
    if not m:
        return None
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[m.group(2)]


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats with no more parameters and a higher score (upper-left envelope)."""
    best, out = -math.inf, []
    for x, y, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            out.append((x, y, name))
            best = y
    return out


def efficiency_points(table: Table, records: list[tuple[Path, Record]], key: str | None):
    """(x, lo, hi, y, yerr, label, method, seeds) per row of ours with adapter parameters (x the median count,
    lo / hi its range); key None = the row's Avg, whose seeds are the fewest of its cells."""
    params: dict[tuple[str, str], list[int]] = {}
    method: dict[tuple[str, str], str | None] = {}
    for _, rec in records:
        if rec.adapter_params is not None:
            params.setdefault((rec.backbone, rec.adapter_tag), []).append(int(rec.adapter_params))
        method.setdefault((rec.backbone, rec.adapter_tag), rec.adapter)
    out = []
    for row in table.rows:
        if row.published:
            continue
        if key is None:
            y, err = row.summary.get("avg"), None
            n = min((stat.n for stat in row.stats.values()), default=0)
        elif key in row.stats:
            y, err, n = row.stats[key].mean, row.stats[key].std, row.stats[key].n
        else:
            continue
        counts = params.get((row.backbone, row.label), [])
        if y is None or not math.isfinite(y) or not counts:
            continue
        out.append(
            (
                float(np.median(counts)),
                min(counts),
                max(counts),
                y,
                err,
                row.label,
                method[row.backbone, row.label],
                n,
            )
        )
    return out


LABEL_PT = 5.5  # label font size; a label's line takes about 1.3x this, a character about 0.6x


def label_offsets(
    points: list[tuple[float, float, str]],
    right: float,
    ceiling: float = math.inf,
    floor: float = -math.inf,
    left: float = -math.inf,
    marker: float = 3.0,
) -> list[tuple[float, float, str]]:
    """Offsets (points, from each marker) for labels of markers at display positions (x, y in points), lowest
    marker first. Each label takes the first of these spots that overlaps no label already placed and no other
    marker (a box of half-width `marker`) and stays between `floor` and `ceiling` (the axes' bottom and top):
    above-right of its marker, below-right, above-left, below-left, then the same one line further out, up to
    two lines (one side only where a label on the other would run past `right` or `left`, the axes' edges). Where
    every spot is taken, the one that covers the fewest labels and markers."""
    line, char = 1.3 * LABEL_PT, 0.6 * LABEL_PT
    markers = [(x - marker, x + marker, y - marker, y + marker) for x, y, _ in points]
    placed: list[tuple[float, float, float, float]] = []  # (left, right, bottom, top) of each placed label
    offsets: list[tuple[float, float, str]] = [(0.0, 0.0, "left")] * len(points)

    def box_of(spot: tuple[str, float, float, float]) -> tuple[float, float, float, float]:
        return (spot[1], spot[2], spot[3], spot[3] + line)

    def overlaps(box: tuple[float, float, float, float], others) -> bool:
        return any(box[0] < o[1] and o[0] < box[1] and box[2] < o[3] and o[2] < box[3] for o in others)

    for i in sorted(range(len(points)), key=lambda i: points[i][1]):
        x, y, text = points[i]
        width = char * len(text)
        sides = [("left", x + 3, x + 3 + width), ("right", x - 3 - width, x - 3)]
        sides = [side for side in sides if side[2] <= right and side[1] >= left] or sides[1:]
        others = markers[:i] + markers[i + 1 :]
        spots = [
            (ha, start, end, bottom)
            for k in range(3)  # nearest first: a label far from its marker names the wrong one
            for ha, start, end in sides
            for bottom in (y + 2 + k * line, y - 2 - (k + 1) * line)
        ]
        inside = [spot for spot in spots if floor <= spot[3] and spot[3] + line <= ceiling] or spots
        obstacles = placed + others
        # the nearest free spot; in a crowd, the one that covers the fewest labels and markers
        spot = min(inside, key=lambda spot: sum(overlaps(box_of(spot), [o]) for o in obstacles))
        ha, start, end, bottom = spot
        placed.append((start, end, bottom, bottom + line))
        offsets[i] = ((-3.0 if ha == "right" else 3.0), bottom - y, ha)
    return offsets


def place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Name each (x, y, label) marker on `ax` without labels drawn over each other or over other markers
    (label_offsets)."""
    ax.get_xlim(), ax.get_ylim()  # the data limits as drawn (autoscale is applied lazily)
    scale = 72.0 / ax.figure.dpi  # display pixels -> points
    shown = [(*(ax.transData.transform((x, y)) * scale), label) for x, y, label in points]
    right, ceiling = ax.transAxes.transform((1, 1)) * scale
    left, floor = ax.transAxes.transform((0, 0)) * scale
    for (x, y, label), (dx, dy, ha) in zip(points, label_offsets(shown, right, ceiling, floor, left)):
        ax.annotate(
            label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=LABEL_PT, ha=ha, va="bottom"
        )


def efficiency_figure(
    table: Table,
    seeds,
    records: list[tuple[Path, Record]],
    title: str,
    path: Path,
    envelope: bool = False,
) -> list[tuple[str, list[str]]]:
    """Metric against adapter parameters (log x), one panel per task part and one for Avg.

    Each method has its own marker; the head alone (0 parameters) is a dashed floor; published rows are
    stars at their published count. With `envelope` (frontier presets), the settings of one method are
    joined in parameter order by its line style, and the Pareto front (most score for the fewest
    parameters, over the settings run on the panel's most seeds) is drawn and returned per panel as
    [(panel title, [labels on the front])].
    """
    panels: list[tuple[str, str | None]] = [
        (_panel_title(col, key, metric), key) for col, key, metric in _shown_parts(table, seeds)
    ]
    if any(r.summary.get("avg") is not None and not r.published for r in table.rows):
        panels.append(("Avg over tasks", None))
    n_rows, n_cols = _grid(len(panels), 4)
    fig = Figure(figsize=(max(3.3 * n_cols, 7.0), 2.9 * n_rows + 0.6))  # wide enough for the legend
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    fronts = []
    methods_seen: dict[str | None, None] = {}
    labels = []  # (ax, its markers' (x, y, label)): placed once the layout has fixed the axes' size
    head_drawn = False
    for ax, (name, key) in zip(axes, panels):
        points = efficiency_points(table, records, key)
        floor = [p for p in points if p[0] == 0]
        points = [p for p in points if p[0] > 0]
        by_method: dict[str | None, list] = {}
        for p in points:
            by_method.setdefault(p[6], []).append(p)
        for m, pts in by_method.items():
            marker, line = _style(m)
            methods_seen[m] = None
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [p[3] for p in pts]
            if envelope:  # a frontier sweep: one method's settings in parameter order
                ax.plot(xs, ys, linestyle=line, color="0.55", linewidth=0.9, zorder=1)
            for x, lo, hi, y, err, *_ in pts:
                ax.errorbar(
                    x,
                    y,
                    yerr=err,
                    xerr=[[x - lo], [hi - x]] if hi > lo else None,
                    fmt=marker,
                    color="black",
                    mfc="white",
                    markersize=5.5,
                    elinewidth=0.8,
                    capsize=2,
                    zorder=3,
                )
        for point in floor:  # 0 adapter parameters: the head alone
            ax.axhline(point[3], color="0.25", linestyle="--", linewidth=1.0, zorder=0)
            head_drawn = True
        for row in table.rows:  # published rows with a count and a number for this panel
            x = parse_count(row.params_text) if row.published else None
            value = row.printed.get(key) if key is not None else row.printed.get("avg")
            if row.published and x and value is not None:
                ax.plot(x, float(value), "*", color="black", markersize=9, zorder=3)
                ax.annotate(
                    row.label, (x, float(value)), xytext=(3, -8), textcoords="offset points", fontsize=5.5
                )
        if envelope and points:
            # over the settings run on the panel's most seeds: a setting tried on fewer (an lr grid's point that
            # was not chosen, qpeft.frontier) would put a selection on this very score on the front
            most = max(p[7] for p in points)
            front = pareto([(p[0], p[3], p[5]) for p in points if p[7] == most])
            ax.step(
                [p[0] for p in front],
                [p[1] for p in front],
                where="post",
                color="0.2",
                linewidth=2.2,
                alpha=0.5,
            )
            fronts.append((name.replace("\n", " "), [p[2] for p in front]))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(
            NullFormatter()
        )  # under a decade matplotlib labels minor ticks, over each other
        if len(points) <= MAX_LABELS:  # more labels would be drawn over each other
            labels.append((ax, [(p[0], p[3], p[5]) for p in points]))
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", color="0.88", linewidth=0.6)
        ax.set_xlabel("adapter parameters", fontsize=7)
        ax.set_ylabel("x100", fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [
        Line2D(
            [],
            [],
            marker=_style(m)[0],
            linestyle=_style(m)[1] if envelope else "none",  # lines are drawn only on frontier plots
            color="black",
            mfc="white",
            label=m or "?",
        )
        for m in methods_seen
    ]
    if head_drawn:
        handles.append(Line2D([], [], color="0.25", linestyle="--", label="head alone"))
    if any(r.published for r in table.rows):
        handles.append(Line2D([], [], marker="*", color="black", linestyle="none", label="published"))
    if envelope:
        handles.append(Line2D([], [], color="0.2", linewidth=2.2, alpha=0.5, label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    for ax, points in labels:
        place_labels(ax, points)
    _save(fig, path)
    return fronts


# ---------------------------------------------------------------------------------------------- page


def latest_benches(folder: Path) -> tuple[list[Path], list[Path]]:
    """The latest bench report (by its `- date:` line) of each `# Bench: <backbone> on <device>` and dtype (a
    bf16 bench does not replace the fp32 one), and the rest."""
    latest: dict[tuple[str, str], tuple[str, Path]] = {}
    undated = []
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        text = path.read_text(encoding="utf-8")
        title = re.search(r"^# Bench: (.+)$", text, flags=re.M)
        date = re.search(r"^- date: ([^,\s]+)", text, flags=re.M)
        if not (title and date):
            undated.append(path)
            continue
        dtype = re.search(r"^- device: .*dtype: (\w+)", text, flags=re.M)
        key = (title.group(1), dtype.group(1) if dtype else "fp32")  # reports before --dtype were fp32
        if key not in latest or date.group(1) > latest[key][0]:
            latest[key] = (date.group(1), path)
    shown = [latest[k][1] for k in sorted(latest)]
    rest = [p for p in sorted(folder.glob("*.md")) if p not in shown] if folder.is_dir() else []
    return shown, rest


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _demote(markdown: str, levels: int = 2) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown, flags=re.M)


def build_report(
    records_root: str | Path = "results/records",
    out: str | Path = "results/report.md",
    figures: str | Path = "results/figures/report",
    reference: str | Path | None = "results/reference",
    tables: str | Path = "results/tables",
    bench: str | Path = "results/bench",
    param_figure: str | Path = "results/figures/param_scaling.png",
) -> list[Path]:
    """Write the report and its figures; returns the files written (the page last)."""
    records_root, out, figures = Path(records_root), Path(out), Path(figures)
    if not records_root.is_dir():
        raise TablesError(f"no such folder: {records_root}")
    groups = load_groups(records_root)
    refs = load_references(reference)
    here = out.parent
    written: list[Path] = []
    n_records = sum(len(g.records) for g in groups)
    lines = [
        "# Results report",
        "",
        f"Built by `python -m qpeft.report` (`make report`) from the {n_records} run records under "
        f"`{records_root.as_posix()}` and the files it names below; do not edit it by hand.",
        "Figures: each seed is an open circle, the mean a bar; the dashed line is the head alone "
        "(`head_only`, the floor every adapter should beat); stars are published numbers.",
        "",
    ]
    lines += [f"- [{g.preset}](#{_anchor(g.preset)})" for g in groups]
    frontier = [g for g in groups if g.preset.startswith(FRONTIER_PREFIX)]
    extras = (["Frontier"] if frontier else []) + ["Parameter counts", "Bench"]
    lines += [f"- [{name}](#{_anchor(name)})" for name in extras]
    lines.append("")
    for g in groups:
        table = build_table(g.preset, g.records, refs.get(g.preset, []))
        seeds = _seeds_with_metric(g.records, table.columns)
        heads = {(r.backbone, r.adapter_tag) for _, r in g.records if r.adapter == HEAD_ONLY}
        stem = file_stem(g.preset)
        dots = figures / f"{stem}_seeds.png"
        seed_figure(table, seeds, heads, f"{g.preset}: every method on every task, {_seed_note(table)}", dots)
        eff = figures / f"{stem}_params.png"
        # a claim study: each point at its best (every grid lr, collapsed runs too, would crowd it)
        if g.preset in CLAIM_PRESETS:
            eff_title = _claim_efficiency(g, refs.get(g.preset, []), eff)
        else:
            eff_title = f"{g.preset}: score against adapter parameters"
            efficiency_figure(table, seeds, g.records, eff_title, eff)
        written += [dots, eff]
        lines += [to_markdown(table, heading=f"## {g.preset}").rstrip("\n"), ""]
        if g.preset in CLAIM_PRESETS:
            page = Path(tables) / f"{g.preset}_claims.md"
            lines += [
                f"{CLAIM_PRESETS[g.preset]} Its claims are judged with their intervals on its own page "
                f"(`python -m qpeft.claim`): [{page.name}]({_rel(page, here)}).",
                "",
            ]
        if g.variants:
            lines += [
                f"Rows are labelled `<subfolder>/<adapter_tag>`: the subfolders of `{g.preset}` hold runs of "
                "one identity made with different settings (their records' `config` says which).",
                "",
            ]
        lines += [f"![{g.preset}: every method on every task]({_rel(dots, here)})", ""]
        lines += [f"![{eff_title}]({_rel(eff, here)})", ""]
    if frontier:
        lines += ["## Frontier", ""]
        for g in frontier:
            if _has_heldout(
                g.records
            ):  # a study with a held-out slice: qpeft.frontier's figures and comparisons
                paths = _study_figures(g, figures)
                written += paths
                lines += [f"### {g.preset}", ""]
                lines += [
                    "Each method family once: its best setting per budget, chosen on the held-out slice, at the lr "
                    "chosen there; the dev mean over seeds with its 95% t-interval band (`python -m qpeft.frontier`). "
                    "Every setting, one panel per family, follows each task's figure.",
                    "",
                ]
                lines += [f"![{g.preset}: {p.stem}]({_rel(p, here)})" for p in paths if p.suffix == ".png"]
                lines += [""] + _comparisons(g.records)
                continue
            table = build_table(g.preset, g.records, refs.get(g.preset, []))
            seeds = _seeds_with_metric(g.records, table.columns)
            path = figures / f"{file_stem(g.preset)}_frontier.png"
            fronts = efficiency_figure(
                table, seeds, g.records, f"{g.preset}: Pareto front", path, envelope=True
            )
            written.append(path)
            lines += [f"### {g.preset}", "", f"![{g.preset}: Pareto front]({_rel(path, here)})", ""]
            lines += [
                "The front is taken over the settings run on every seed of the panel; those tried on fewer "
                "seeds (an lr grid's points that were not chosen) are drawn, not put on it.",
                "",
            ]
            rows = [[name, ", ".join(front)] for name, front in fronts]
            lines += [
                render.markdown(["panel", "on the front (fewest parameters first)"], rows).rstrip("\n"),
                "",
                "A setting is on the front by its mean over seeds alone; whether it is ahead of another is "
                "decided by the gaps below, with their intervals.",
                "",
            ]
            lines += _comparisons(g.records)
    lines += ["## Parameter counts", ""]
    params_md = Path(tables) / "params.md"
    if params_md.exists():
        lines += [
            f"From `{params_md.as_posix()}` (`make params`):",
            "",
            params_md.read_text().rstrip("\n"),
            "",
        ]
    else:
        lines += [f"`{params_md.as_posix()}` is missing: `make params` writes it.", ""]
    if Path(param_figure).exists():
        lines += [f"![Adapter parameters per matrix against its width]({_rel(Path(param_figure), here)})", ""]
    lines += ["## Bench", ""]
    shown, rest = latest_benches(Path(bench))
    if not shown:
        lines += [f"No bench report under `{Path(bench).as_posix()}` (`make bench` writes one).", ""]
    else:
        lines += ["The latest report (by its date line) of each backbone, device and dtype:", ""]
    for path in shown:
        lines += [
            f"From `{path.as_posix()}`:",
            "",
            _demote(path.read_text(encoding="utf-8")).rstrip("\n"),
            "",
        ]
    if rest:
        lines += ["Earlier bench reports: " + ", ".join(f"[{p.name}]({_rel(p, here)})" for p in rest), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return [*written, out]


def _seeds_with_metric(records: list[tuple[Path, Record]], columns: list[Column]):
    """seed_frame plus the metric name behind each value (a column's metric, or the record's main one)."""
    seeds = seed_frame(records, columns)
    main = {rec.task: rec.main_metric for _, rec in records}
    metric_of = {key: metric for col in columns for key, metric in col.parts}
    seeds["metric"] = [metric_of[k] or main[t] for k, t in zip(seeds["key"], seeds["task"])]
    return seeds


def _seed_note(table: Table) -> str:
    counts = sorted({s.n for r in table.rows if not r.published for s in r.stats.values()})
    if len(counts) > 1:
        return f"{counts[0]}-{counts[-1]} seeds"
    return f"{counts[0]} seed{'s' if counts[0] > 1 else ''}"


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, spaces to dashes, punctuation other than - and _ dropped."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _claim_efficiency(group: Group, refs: list, path: Path) -> str:
    """A claim study's score against adapter parameters with each point at the lr its rule chose (qpeft.claim),
    points whose lr is still open left out; returns the figure's title."""
    from qpeft import claim

    records = claim.records_at_choice(group.records, group.preset)
    table = build_table(group.preset, records, refs)
    seeds = _seeds_with_metric(records, table.columns)
    lr = "the one shared lr" if group.preset in claim.FIXED_LR_PRESETS else "its chosen lr"
    title = f"{group.preset}: score against adapter parameters, each point at {lr}"
    efficiency_figure(table, seeds, records, title, path)
    return title


def _has_heldout(records: list) -> bool:
    """Whether every record scored the held-out training slice (a frontier study's records do)."""
    return bool(records) and all(f"{r.main_metric}_heldout" in r.metrics for _, r in records)


def _study_figures(group, figures: Path) -> list[Path]:
    """qpeft.frontier's two figures per task (each family's best per budget; every setting), PNG and SVG."""
    from qpeft import frontier

    points = frontier.collect(group.records)
    chosen = frontier.chosen_lrs(points)
    stem = file_stem(group.preset)
    out = []
    for task in sorted({p.task for p in points}):
        label = frontier.TASK_LABELS.get(task, task)
        title = f"{label} ({group.preset})"
        out += frontier.figure(
            points, task, figures / f"{stem}_{task}.png", f"{title}: best per budget", chosen
        )
        out += frontier.figure_all(
            points, task, figures / f"{stem}_all_{task}.png", f"{title}: every setting", chosen
        )
    return out


def _comparisons(records: list) -> list[str]:
    """The frontier study's stated comparisons with their 95% intervals (qpeft.frontier.claim_lines), a level down."""
    from qpeft import frontier

    if not _has_heldout(records):
        return []  # a frontier sweep without a held-out slice: no lr choices, no stated comparisons
    points = frontier.collect(records)
    lines = frontier.claim_lines(points, frontier.chosen_lrs(points))
    return ["#" + line if line.startswith("## ") else line for line in lines]


def main(argv: list[str] | None = None) -> int:
    """Command line: build the report; 2 (and the reason, one line) when the records cannot be read or an output
    path is of the wrong kind."""
    p = argparse.ArgumentParser(prog="python -m qpeft.report", description=__doc__.splitlines()[0])
    p.add_argument("--records", default="results/records", help="folder searched for record.json")
    p.add_argument("--out", default="results/report.md")
    p.add_argument("--figures", default="results/figures/report")
    p.add_argument("--reference", default="results/reference")
    p.add_argument("--tables", default="results/tables", help="where params.md is")
    p.add_argument("--bench", default="results/bench")
    p.add_argument("--param-figure", default="results/figures/param_scaling.png")
    args = p.parse_args(argv)
    try:
        # where it writes, checked before anything is written
        out, param_figure = output_file(args.out, "--out"), output_file(args.param_figure, "--param-figure")
        figures = output_folder(args.figures, "--figures")
        written = build_report(
            args.records, out, figures, args.reference, args.tables, args.bench, param_figure
        )
    except QpeftError as e:
        return print_error(e)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
