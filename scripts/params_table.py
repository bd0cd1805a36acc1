"""Adapter parameter counts of every method and setting on every backbone -> results/tables/params.{md,tex}.

Each cell is `scripts/params.py`'s count (meta backbone, the adapter really injected), with each
backbone's protocol targets for every method (like-for-like). Published counts (shared/docs/protocols.md)
stand beside ours; no other number is published here. Quantum rows use the quantum adapter when it
composes and applies; otherwise the angle-count formula of qpeft.quantum on the same target shapes,
marked "f"; without qpeft.quantum they are left out.

    python scripts/params_table.py          # ~3 min on two CPU cores
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import params  # noqa: E402  (scripts/params.py)

from qpeft import adapters, backbones  # noqa: E402
from qpeft.adapters.peft_methods import dims  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "tables"

# column -> the overrides that give it its protocol (task only sets the head's size, counted apart)
BACKBONES = {
    "deberta_v3_base": ["protocol=adalora_deberta"],
    "roberta_base": ["protocol=lora_roberta"],
    "roberta_large": ["protocol=lora_roberta"],
    "vit_b16_in21k": ["task=vtab/cifar100", "protocol=vit_vtab"],
    "gpt2_medium": [],
    "mistral_7b": [],
}

# published adapter-only counts (shared/docs/protocols.md): exact where the source is exact
PUBLISHED = {
    ("lora_r8", "deberta_v3_base"): "1,327,104",
    ("lora_r2", "deberta_v3_base"): "331,776",
    ("lora_r8", "roberta_base"): "294,912",
    ("lora_r8", "vit_b16_in21k"): "294,912",
    ("adalora_t8", "deberta_v3_base"): "1.27M",
    ("adalora_t2", "deberta_v3_base"): "0.32M",
    ("bitfit", "deberta_v3_base"): "0.1M",
}

# Quantum adapter settings: (row key, label, overrides, formula (kind, L or K, K)). The override names
# are the quantum config's; if they do not compose, the formula on the same target shapes is used.
QUANTUM = [
    *[
        (
            f"pauli_L{L}",
            f"Quantum-PEFT Pauli L={L}, K=8",
            ["adapter=quantum", f"adapter.layers={L}", "adapter.rank=8"],
            ("pauli", L, 8),
        )
        for L in (1, 2, 3)
    ],
    *[
        (
            f"taylor_K{K}",
            f"Quantum-PEFT Taylor K={K}",
            ["adapter=quantum_taylor", f"adapter.rank={K}"],
            ("taylor", 0, K),
        )
        for K in (1, 2, 8)
    ],
]

ROWS = [
    *[(f"lora_r{r}", f"LoRA r={r}", ["adapter=lora", f"adapter.r={r}"]) for r in (1, 2, 4, 8)],
    *[
        (
            f"adalora_t{t}",
            f"AdaLoRA target r={t}, init r={i} (b(T)={72 * t} on DeBERTa)",
            ["adapter=adalora", f"adapter.target_r={t}", f"adapter.init_r={i}"],
        )
        for t, i in ((2, 4), (4, 6), (8, 12))
    ],
    *[(f"oft_b{b}", f"OFT block {b}", ["adapter=oft", f"adapter.block_size={b}"]) for b in (16, 32)],
    *[
        (
            f"boft_b{b}_m{m}",
            f"BOFT block {b}, m={m}",
            ["adapter=boft", f"adapter.block_size={b}", f"adapter.n_butterfly_factor={m}"],
        )
        for b, m in ((8, 2), (16, 2))
    ],
    ("bitfit", "BitFit (all biases)", ["adapter=bitfit"]),
]


def formula(cfg, kind: str, layers: int, k: int) -> int:
    """Quantum count from the target shapes: per matrix P(d_out) + P(d_in) + K (Taylor: its factor count)."""
    from qpeft.quantum import pauli_num_params, taylor_num_params

    bb = cfg.backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = backbones.build(
            params._Resolved({**OmegaConf.to_container(bb, resolve=True), "meta": True}), 2
        )
    factor = (
        (lambda n: pauli_num_params(n, layers)) if kind == "pauli" else (lambda n: taylor_num_params(n, k))
    )
    total = 0
    for m in adapters.target_modules(model, list(bb.targets), list(bb.head)).values():
        d_in, d_out = dims(m)
        total += factor(d_out) + factor(d_in) + k
    return total


def cell(overrides: list[str], fallback=None) -> tuple[str, str | None]:
    """(count or 'n/a', a note): the count of one setting, or the reason it cannot be applied."""
    try:
        return f"{params.count(compose(config_name='config', overrides=overrides))['adapter_params']:,}", None
    except Exception as e:  # noqa: BLE001 - every failure becomes a visible note in the table
        error = e
    if fallback is not None:  # quantum: the formula on the same target shapes
        base = [o for o in overrides if o.startswith(("backbone=", "protocol=", "task="))]
        try:
            n = formula(compose(config_name="config", overrides=[*base, "adapter=lora"]), *fallback)
            return f"{n:,} f", None
        except Exception as e:  # noqa: BLE001
            error = e
    return "n/a", str(error).splitlines()[0]


def quantum_rows() -> list:
    """The quantum rows, or none (and a message) when neither the adapter nor qpeft.quantum is there."""
    try:
        import qpeft.quantum  # noqa: F401
    except ImportError as e:
        print(f"[params_table] quantum rows left out: {e}", flush=True)
        return []
    return QUANTUM


def build_table() -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows (label, then one cell per backbone) and the notes of the cells that failed."""
    header = ["method"] + list(BACKBONES)
    rows, notes = [], []
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        targets = ["targets (matrices)"]
        for b, extra in BACKBONES.items():
            c = params.count(
                compose(config_name="config", overrides=[f"backbone={b}", "adapter=lora", *extra])
            )
            targets.append(f"{c['targets']} ({c['matrices']})")
        rows.append(targets)
        settings = [(key, label, ov, None) for key, label, ov in ROWS] + quantum_rows()
        for key, label, overrides, fallback in settings:
            row = [label]
            for b, extra in BACKBONES.items():
                value, note = cell([f"backbone={b}", *extra, *overrides], fallback)
                if note:  # one footnote per distinct reason
                    if note not in notes:
                        notes.append(note)
                    value = f"n/a [{notes.index(note) + 1}]"
                if (key, b) in PUBLISHED:
                    value += f" (pub. {PUBLISHED[key, b]})"
                row.append(value)
            rows.append(row)
            print(" | ".join(row), flush=True)
    return header, rows, notes


FOOTER = [
    "Adapter parameters only; the head (and DeBERTa's pooler) is trained by every method and counted apart.",
    "Each backbone uses its protocol targets for every method. pub. = the published count (protocols.md).",
    "AdaLoRA: the final budget, target_r * sum over matrices of (d_in + d_out + 1) before allocation; "
    "a run reports its realised ranks (the paper's 1.27M / 0.32M are realised counts).",
    "OFT: peft stores b(b-1)/2 angles per block; BOFT: peft stores full b x b blocks (m factors) plus d_out scales.",
    "f = quantum count from the angle-count formula on the target shapes (the quantum adapter was not used).",
]


def footer(rows) -> list[str]:
    """The notes under the table; the formula mark only where a cell uses it."""
    used = any(c.endswith(" f") or " f (" in c for r in rows for c in r[1:])
    return FOOTER if used else FOOTER[:-1]


def markdown(header, rows, notes) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- {f}" for f in footer(rows)] + [f"- [{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def latex(header, rows, notes) -> str:
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule"]
    lines.append(" & ".join(esc(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in rows[1:]]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {f}" for f in footer(rows)] + [f"% [{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def main() -> None:
    header, rows, notes = build_table()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "params.md").write_text(markdown(header, rows, notes))
    (OUT / "params.tex").write_text(latex(header, rows, notes))
    print(f"[params_table] wrote {OUT / 'params.md'} and {OUT / 'params.tex'}")


if __name__ == "__main__":
    main()
