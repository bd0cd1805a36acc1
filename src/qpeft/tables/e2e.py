"""The E2E NLG table (preset e2e_gpt2): the five official metrics in their published units beside the
published rows (results/reference/e2e_gpt2_lora.csv): BLEU, METEOR, ROUGE-L in percent, NIST and CIDEr raw.

Kept apart from qpeft.tables, whose columns are one x100 score per task; `render` takes plain records and
reference rows and returns the files' texts.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict

# (record metric / reference CSV column, header, factor from the record's value, decimals)
COLUMNS = [
    ("bleu", "BLEU", 100.0, 1),
    ("nist", "NIST", 1.0, 2),
    ("meteor", "METEOR", 100.0, 1),
    ("rouge_l", "ROUGE-L", 100.0, 1),
    ("cider", "CIDEr", 1.0, 2),
]
METHOD_ORDER = ["full", "bitfit", "lora", "adalora", "quantum", "quantum_taylor"]


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n:,}"


def _cell(values: list[float], decimals: int) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def rows(records: list[dict], reference_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Table rows, published first: method, backbone, params, seeds, one cell per metric, source.
    Our cells are mean ± sample std over seeds; a metric a run could not compute (no Java: METEOR, ROUGE-L,
    CIDEr are None) makes its cell n/a rather than a mean over the other seeds."""
    out = [
        {
            "method": f"{r['method']} (published)",
            "backbone": r["backbone"],
            "params": r["params"],
            "seeds": "",
            **{header: r.get(key, "").strip() or "n/a" for key, header, _, _ in COLUMNS},
            "source": r["source"],
        }
        for r in reference_rows
    ]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for rec in records:
        groups[(rec["backbone"], rec["adapter_tag"])].append(rec)

    def order(key: tuple[str, str]) -> tuple:
        method = groups[key][0].get("adapter")
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        return key[0], rank, key[1]

    for backbone, tag in sorted(groups, key=order):
        recs = groups[(backbone, tag)]
        row = {"method": tag, "backbone": backbone}
        counts = sorted({int(r["adapter_params"]) for r in recs if r.get("adapter_params") is not None})
        row["params"] = " / ".join(_params(n) for n in counts) or "n/a"
        row["seeds"] = str(len({r["seed"] for r in recs}))
        for key, header, factor, decimals in COLUMNS:
            values = [r["metrics"].get(key) for r in recs]
            ok = all(v is not None and math.isfinite(v) for v in values)
            row[header] = _cell([factor * v for v in values], decimals) if ok else "n/a"
        row["source"] = "ours"
        out.append(row)
    return out


def markdown(table_rows: list[dict[str, str]], preset: str) -> str:
    headers = ["Method", "Backbone", "Params", "Seeds", *[h for _, h, _, _ in COLUMNS]]
    keys = ["method", "backbone", "params", "seeds", *[h for _, h, _, _ in COLUMNS]]
    lines = [f"# {preset}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in table_rows]
    sources = sorted({r["source"] for r in table_rows if r["source"] != "ours"})
    lines += [
        "",
        "E2E NLG test set (one output per distinct MR, all its references), beam search as LoRA's "
        "(docs/e2e.md). BLEU, METEOR, ROUGE-L in percent; NIST and CIDEr raw, as published. Ours: mean ± "
        "sample std over seeds; Params: adapter parameters.",
        *[f"Published: {s}." for s in sources],
    ]
    return "\n".join(lines) + "\n"


def to_csv(table_rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table_rows[0]) if table_rows else ["method"])
    writer.writeheader()
    writer.writerows(table_rows)
    return buf.getvalue()


def render(preset: str, records: list[dict], reference_rows: list[dict[str, str]]) -> dict[str, str]:
    """{file suffix: text} of the preset's table."""
    table_rows = rows(records, reference_rows)
    return {".md": markdown(table_rows, preset), ".csv": to_csv(table_rows)}
