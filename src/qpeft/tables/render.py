"""The one renderer of tables: rows of text cells -> GitHub Markdown, LaTeX (booktabs) or CSV.

Every table of the project goes through here: the preset tables and throughput (qpeft.tables), the
parameter table (qpeft.params), the bench (qpeft.bench) and the report (qpeft.report). Callers decide
what the cells say; this module decides only how a table is written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


def markdown(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: str | None = None,
    before: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """A Markdown table: `before` lines, the table, then `notes` as a bullet list after a blank line.

    `align` holds one letter per column, "r" for right-aligned (`---:`), anything else plain (`---`);
    None leaves every column plain. A `|` inside a cell is escaped.
    """
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns")
    lines = list(before)
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def tex_escape(text: str) -> str:
    """Text safe in a LaTeX table cell: specials escaped, dashes and ± in TeX spelling."""
    text = text.replace("\\", "\\textbackslash{}")
    for ch in "&%$#_{}":
        text = text.replace(ch, "\\" + ch)
    return text.replace("—", "--").replace("–", "--").replace("±", "$\\pm$")


def latex_tabular(headers: Sequence[str], rows: Sequence[Sequence[str]], *, align: str) -> list[str]:
    """The lines of a booktabs `tabular` (cells escaped), from `\\begin{tabular}` to `\\end{tabular}`."""
    lines = [
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(tex_escape(h) for h in headers) + " \\\\",
    ]
    lines.append("\\midrule")
    lines += [" & ".join(tex_escape(str(c)) for c in row) + " \\\\" for row in rows]
    return [*lines, "\\bottomrule", "\\end{tabular}"]


def latex_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: str,
    comment: str,
    notes: Sequence[str],
    caption: str,
) -> str:
    """A floating `table` scaled to the line width, its notes in small type under it, then the caption."""
    tabular = latex_tabular(headers, rows, align=align)
    tabular[-1] += "}"  # closes \resizebox
    lines = [f"% {comment}", "\\begin{table}[t]", "\\centering", "\\resizebox{\\linewidth}{!}{%", *tabular]
    lines += ["\\par\\smallskip", "{\\footnotesize"]
    lines += [tex_escape(n) + "\\par" for n in notes]  # \par, not \\ (a next "[1]" would be its argument)
    lines += ["}", f"\\caption{{{tex_escape(caption)}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """CSV with `\\n` line ends; None becomes an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def human_count(n: int) -> str:
    """A parameter count for humans: 1327104 -> 1.33M, 28400 -> 28.4K, 512 -> 512."""
    if n < 1000:
        return str(n)
    for unit, scale in (("K", 1e3), ("M", 1e6), ("B", 1e9)):
        v = n / scale
        text = f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
        if float(text) < 1000 or unit == "B":
            return text + unit
    raise AssertionError("unreachable")
