"""qpeft.report: the page builds from the committed records; its numbers equal numpy's over the seeds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from qpeft.records import find_records
from qpeft.report import build_report, pareto

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def build(tmp_path: Path, records: Path, **kw) -> tuple[Path, list[Path]]:
    out = tmp_path / "results" / "report.md"
    args = dict(
        reference=RESULTS / "reference",
        tables=RESULTS / "tables",
        bench=RESULTS / "bench",
        param_figure=RESULTS / "figures" / "param_scaling.png",
    )
    args.update(kw)
    written = build_report(records, out, tmp_path / "results" / "figures" / "report", **args)
    return out, written


def linked_files(report: Path) -> list[Path]:
    return [report.parent / link for link in re.findall(r"\]\(([^)#]+)\)", report.read_text())]


def md_table(text: str, heading: str) -> dict[str, dict[str, str]]:
    """The Markdown table under `## heading`: {Method: {header: cell}}."""
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[1]] = dict(zip(headers, cells))
    return rows


def test_report_from_committed_records(tmp_path):
    report, written = build(tmp_path / "one", RESULTS / "records")
    text = report.read_text()
    presets = {json.loads(p.read_text())["experiment"] for p in find_records(RESULTS / "records")}
    assert presets == {"minilm_glue", "diag_sst2", "frontier_minilm", "claim_minilm", "claim_gpu_sst2"}
    for preset in presets:
        assert f"\n## {preset}\n" in text, preset
    links = linked_files(report)
    figures = [p for p in links if "figures/report" in p.as_posix()]
    # a seed plot and an efficiency plot per preset, and the frontier study's two figures per task (SST-2, STS-B)
    assert len(figures) == 2 * len(presets) + 4 and "\n## Frontier\n" in text
    assert {p.name for p in figures} >= {"frontier_minilm_sst2.png", "frontier_minilm_all_stsb.png"}
    for path in links:
        assert path.exists(), path
    for path in figures:
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 10_000, path
        assert path in written
    # the report's table of a preset is the committed table's (same cells)
    committed = (RESULTS / "tables" / "minilm_glue.md").read_text()
    body = committed.split("\n", 1)[1]  # without its "# minilm_glue" heading
    assert body in text
    assert "### Bench: deberta_v3_base on cpu-amd-epyc" in text and "## Parameter counts" in text
    # diag_sst2 holds one run identity under several settings: each row says which subfolder it is
    diag = md_table(text, "diag_sst2")
    assert {"base/lora_r8", "a128/quantum_k8_l1", "lr3/quantum_k8_l1", "base/head_only"} <= set(diag)
    # deterministic: a second build writes the same bytes (CI regenerates it without noise)
    report2, written2 = build(tmp_path / "two", RESULTS / "records")
    assert len(written) == len(written2)
    for a, b in zip(written, written2):
        assert a.read_bytes() == b.read_bytes(), a


def put(root: Path, experiment: str, task: str, tag: str, adapter: str, seed: int, value: float, params: int):
    rec = {
        "experiment": experiment,
        "task": task,
        "backbone": "bb",
        "adapter": adapter,
        "adapter_tag": tag,
        "seed": seed,
        "metrics": {"accuracy": value},
        "main_metric": "accuracy",
        "adapter_params": params,
        "head_params": 10,
    }
    folder = root / experiment / task / tag / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(rec))


def test_report_numbers_equal_numpy_over_seeds(tmp_path):
    rng = np.random.default_rng(1)
    methods = {"head_only": ("head_only", 0), "lora_r4": ("lora", 4000), "quantum_k8_l1": ("quantum", 300)}
    tasks = ["alpha", "beta"]  # not GLUE: the table's columns are these two, and Avg covers both
    values = {}
    for tag, (adapter, params) in methods.items():
        for task in tasks:
            for seed in range(3):
                values[tag, task, seed] = float(rng.uniform(0.5, 0.95))
                put(tmp_path / "records", "synth", task, tag, adapter, seed, values[tag, task, seed], params)
    report, _ = build(tmp_path, tmp_path / "records", bench=tmp_path / "none", tables=tmp_path / "none")
    rows = md_table(report.read_text(), "synth")
    labels = {"alpha": "alpha", "beta": "beta"}
    for tag in methods:
        task_means = []
        for task in tasks:
            x = 100 * np.array([values[tag, task, s] for s in range(3)])
            assert rows[tag][labels[task]] == f"{x.mean():.2f} ± {x.std(ddof=1):.2f}", (tag, task)
            task_means.append(x.mean())
        assert rows[tag]["Avg"] == f"{np.mean(task_means):.2f}"
    assert "No bench report" in report.read_text()


def test_frontier_section_lists_the_pareto_front(tmp_path):
    rng = np.random.default_rng(2)
    settings = {f"lora_r{r}": ("lora", 1000 * r) for r in (1, 2, 4, 8)}
    settings |= {f"quantum_l{L}": ("quantum", 100 * L) for L in (1, 2, 3)}
    score = {tag: float(rng.uniform(0.5, 0.9)) for tag in settings}
    for tag, (adapter, params) in settings.items():
        put(tmp_path / "records", "frontier_sst2", "sst2", tag, adapter, 0, score[tag], params)
    report, written = build(tmp_path, tmp_path / "records")
    text = report.read_text()
    assert "\n## Frontier\n" in text and any(p.name == "frontier_sst2_frontier.png" for p in written)
    # brute force: on the front iff no other setting has no more parameters and a higher score
    front = [
        t
        for t, (_, n) in settings.items()
        if not any(settings[u][1] <= n and score[u] > score[t] for u in settings if u != t)
    ]
    front.sort(key=lambda t: settings[t][1])
    row = next(ln for ln in text.split("\n## Frontier\n")[1].splitlines() if ln.startswith("| SST-2"))
    assert row.split("|")[2].strip() == ", ".join(front)


def test_the_front_leaves_out_settings_tried_on_fewer_seeds(tmp_path):
    """A setting run on one seed of three (an lr grid's unchosen point) is drawn but not put on the front, even
    with the best score for the fewest parameters: the front would otherwise select on the score it shows."""
    for seed in (0, 1):
        put(tmp_path / "records", "frontier_x", "sst2", "lora_r8", "lora", seed, 0.80, 8000)
        put(tmp_path / "records", "frontier_x", "sst2", "vera_lr1", "vera", seed, 0.70, 500)
    put(tmp_path / "records", "frontier_x", "sst2", "vera_lr2", "vera", 0, 0.95, 500)  # one seed, best
    text = build(tmp_path, tmp_path / "records")[0].read_text()
    row = next(ln for ln in text.split("\n## Frontier\n")[1].splitlines() if ln.startswith("| SST-2"))
    assert row.split("|")[2].strip() == "vera_lr1, lora_r8"


def test_pareto_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(50):
        pts = [(float(x), float(y), str(i)) for i, (x, y) in enumerate(rng.uniform(0, 1, (12, 2)))]
        brute = {p[2] for p in pts if not any(q[0] <= p[0] and q[1] > p[1] for q in pts if q is not p)}
        assert {p[2] for p in pareto(pts)} == brute


def test_latest_bench_of_each_backbone_is_shown(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    head = "# Bench: bb on dev\n\n- command: `x`\n- date: {}, wall 1.0 min\n\n| method |\n|---|\n| {} |\n"
    (bench / "a.md").write_text(head.format("2026-01-02T00:00:00", "newer"))
    (bench / "b.md").write_text(head.format("2026-01-01T00:00:00", "older"))
    put(tmp_path / "records", "synth", "sst2", "lora_r8", "lora", 0, 0.9, 10)
    report, _ = build(tmp_path, tmp_path / "records", bench=bench)
    text = report.read_text()
    assert "| newer |" in text and "| older |" not in text and "[b.md](" in text


def test_latest_bench_of_each_dtype_is_shown(tmp_path):
    """A later bf16 bench of the same backbone and device does not hide the fp32 one (files without a dtype
    are fp32: the bench wrote none before it had --dtype)."""
    bench = tmp_path / "bench"
    bench.mkdir()
    head = "# Bench: bb on dev\n\n- date: {}, wall 1.0 min\n{}\n| method |\n|---|\n| {} |\n"
    fp32 = "- device: dev, torch threads: 1, dtype: fp32\n"
    bf16 = "- device: dev, torch threads: 1, dtype: bf16\n"
    (bench / "a.md").write_text(head.format("2026-01-01T00:00:00", "", "fp32 undated dtype"))
    (bench / "b.md").write_text(head.format("2026-01-02T00:00:00", fp32, "fp32 newer"))
    (bench / "c.md").write_text(head.format("2026-01-03T00:00:00", bf16, "bf16 newest"))
    put(tmp_path / "records", "synth", "sst2", "lora_r8", "lora", 0, 0.9, 10)
    report, _ = build(tmp_path, tmp_path / "records", bench=bench)
    text = report.read_text()
    assert "| fp32 newer |" in text and "| bf16 newest |" in text and "| fp32 undated dtype |" not in text
    assert "[a.md](" in text


def test_committed_report_is_current(tmp_path):
    """results/report.md is what `make report` builds from the committed results (rebuild it if this fails)."""
    import shutil

    copy = tmp_path / "results"
    for name in ("records", "reference", "bench"):
        shutil.copytree(RESULTS / name, copy / name)
    (copy / "tables").mkdir()
    shutil.copy(RESULTS / "tables" / "params.md", copy / "tables" / "params.md")
    (copy / "figures").mkdir()
    shutil.copy(RESULTS / "figures" / "param_scaling.png", copy / "figures" / "param_scaling.png")
    written = build_report(
        copy / "records",
        copy / "report.md",
        copy / "figures" / "report",
        copy / "reference",
        copy / "tables",
        copy / "bench",
        copy / "figures" / "param_scaling.png",
    )
    fresh = (copy / "report.md").read_text().replace(str(copy), "results")
    assert fresh == (RESULTS / "report.md").read_text(), "results/report.md is stale: run `make report`"
    for path in written[:-1]:
        committed = RESULTS / "figures" / "report" / path.name
        assert committed.exists(), f"{committed} is missing: run `make report`"


def test_published_rows_join_their_preset(tmp_path):
    """A glue_deberta record: the report's table carries AdaLoRA Table 1's rows beside ours."""
    put(tmp_path / "records", "glue_deberta", "sst2", "lora_r8", "lora", 0, 0.95, 1_327_104)
    put(tmp_path / "records", "glue_deberta", "sst2", "head_only", "head_only", 0, 0.90, 0)
    report, written = build(tmp_path, tmp_path / "records")
    rows = md_table(report.read_text(), "glue_deberta")
    assert rows["LoRA r=8 (published [1])"]["SST-2"] == "94.95"  # results/reference, AdaLoRA Table 1
    assert rows["lora_r8"]["SST-2"] == "95.00" and rows["head_only"]["SST-2"] == "90.00"
    assert all(p.exists() for p in written)


def test_labels_are_drawn_over_neither_each_other_nor_other_markers():
    from qpeft.report import LABEL_PT, label_offsets

    line, char, r = 1.3 * LABEL_PT, 0.6 * LABEL_PT, 3.0

    def boxes(shown, offsets):
        out = []
        for (x, y, text), (dx, dy, ha) in zip(shown, offsets):
            width = char * len(text)
            left = x + dx if ha == "left" else x + dx - width
            out.append((left, left + width, y + dy, y + dy + line))
        return out

    def cross(a, b):
        return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]

    # display positions in points: two markers at one x, 1 pt apart; one far away at the same height; one whose
    # label would run past the axes' right edge at 400; one right above another's label spot
    shown = [(100.0, 50.0, "lr3/quantum_k8_l1"), (100.0, 51.0, "a128/quantum_k8_l1")]
    shown += [
        (300.0, 50.0, "lora_r1"),
        (395.0, 80.0, "base/lora_r8"),
        (130.0, 10.0, "oft"),
        (133.0, 16.0, "boft"),
    ]
    offsets = label_offsets(shown, right=400.0, ceiling=200.0, floor=0.0)
    placed = boxes(shown, offsets)
    for i, box in enumerate(placed):
        assert 0.0 <= box[2] and box[3] <= 200.0 and box[1] <= 400.0
        assert not any(cross(box, other) for j, other in enumerate(placed) if j != i), shown[i]
        markers = [(x - r, x + r, y - r, y + r) for j, (x, y, _) in enumerate(shown) if j != i]
        assert not any(cross(box, m) for m in markers), shown[i]
    assert offsets[2] == (3.0, 2.0, "left")  # a marker whose label meets nothing keeps its place, above-right
    assert offsets[3][2] == "right" and offsets[3][0] == -3.0  # at the right edge the label sits on the left
    assert (
        offsets[0] == (3.0, 2.0, "left") and offsets[1][1] < 0
    )  # the upper of two close markers: below-right

    # under the axes' top (60) the upper of two labels at one height goes below its marker, not above the top
    (_, dy_low, _), (_, dy_high, _) = label_offsets(
        [(100.0, 50.0, "a/quantum_k8_l1"), (100.0, 50.5, "b/quantum_k8_l1")], right=400.0, ceiling=60.0
    )
    assert 50.0 + dy_low + line <= 60.0 and dy_high < 0


def test_the_legend_names_the_head_line_only_where_one_is_drawn(tmp_path, monkeypatch):
    """Both figures of a preset list "head alone" in their legend iff its records have a head-only row."""
    from matplotlib.figure import Figure

    legends: dict[str, list[str]] = {}

    def keep_legend(fig, path, **_):
        legends[Path(path).name] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]

    monkeypatch.setattr(Figure, "savefig", keep_legend)
    for seed in (0, 1):
        put(tmp_path / "records", "with_head", "sst2", "lora_r8", "lora", seed, 0.80, 8000)
        put(tmp_path / "records", "with_head", "sst2", "head_only", "head_only", seed, 0.60, 0)
        put(tmp_path / "records", "no_head", "sst2", "lora_r8", "lora", seed, 0.80, 8000)
    build(tmp_path, tmp_path / "records", bench=tmp_path / "none", tables=tmp_path / "none")
    drawn = {name: any("head alone" in text for text in texts) for name, texts in legends.items()}
    with_head = {name: v for name, v in drawn.items() if name.startswith("with_head")}
    no_head = {name: v for name, v in drawn.items() if name.startswith("no_head")}
    assert len(with_head) >= 2 and all(with_head.values()), drawn
    assert len(no_head) >= 2 and not any(no_head.values()), drawn
