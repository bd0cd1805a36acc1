"""Adapter parameter counts, as the published tables count them (adapter only, head apart), without weights.

    qpeft-params count backbone=deberta_v3_base adapter=lora adapter.r=8   # last line: adapter_params=1327104
    qpeft-params table      # every method x backbone -> results/tables/params.{md,tex} (~3 min, 2 CPU cores)
    qpeft-params scaling    # parameters per N x N matrix against N -> results/figures/param_scaling.png

A count builds the backbone on the meta device (full-size shapes, no weights, no network), really
injects the adapter with its own `apply` and counts with its module's `adapter_params` (or the generic
count). The table runs that count for each method and setting on each backbone with the backbone's
protocol targets (like-for-like); published counts (shared/docs/protocols.md) stand beside ours.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from qpeft import adapters, backbones
from qpeft.tables import render

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TABLE_OUT = REPO / "results" / "tables"
SCALING_OUT = REPO / "results" / "figures" / "param_scaling.png"

# AdaLoRA's schedule needs a run length (tinit < total - tfinal); no count depends on it.
TOTAL_STEPS = 1_000_000


class _Resolved(dict):
    """A resolved backbone config with attribute access, its lists plain Python lists.

    transformers' strict config classes reject OmegaConf ListConfig values (DeBERTa's pos_att_type).
    """

    __getattr__ = dict.__getitem__


def compose(overrides: list[str]) -> DictConfig:
    """The run config `python run.py <overrides>` would compose (configs/ of this checkout)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


# ---------------------------------------------------------------------------------------------- one count


def adapter_settings(cfg: DictConfig) -> DictConfig:
    """The adapter settings a run would use: the task protocol fills alpha and AdaLoRA's ranks and schedule."""
    from qpeft.config import resolved
    from qpeft.errors import QpeftError

    try:
        acfg = OmegaConf.create(resolved(cfg.adapter, "adapter"))
    except QpeftError:  # a task without this protocol: the protocol's values (alpha, schedule) stay open
        protocols = OmegaConf.create({"task": {"protocols": {cfg.protocol: {}}}})
        acfg = OmegaConf.create(resolved(OmegaConf.merge(cfg, protocols).adapter, "adapter"))
    if acfg.method == "adalora":  # a schedule the protocol leaves open changes no count
        for key, value in (("tinit", 0), ("tfinal", 0), ("deltaT", 1)):
            if acfg.get(key) is None:
                acfg[key] = value
    return acfg


def count(cfg: DictConfig) -> dict:
    """Build the backbone on meta, apply the adapter, count; returns the numbers of one table cell."""
    bb = cfg.backbone
    with open_dict(bb):
        bb.meta = True
    acfg = adapter_settings(cfg)
    num_labels = cfg.task.get("num_labels") or cfg.task.get("num_classes") or 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = backbones.build(_Resolved(OmegaConf.to_container(bb, resolve=True)), num_labels)
        head = list(bb.head)
        targets = list(acfg.get("targets") or bb.targets)
        backbone_params = sum(p.numel() for p in model.parameters())
        matrices = len(adapters.target_modules(model, targets, head))
        method = adapters.get_method(acfg.method)(adapters.settings_from_config(acfg))
        model = method.apply(model, targets, head, TOTAL_STEPS)
    return dict(
        backbone=bb.name,
        adapter=acfg.name,
        targets=",".join(targets),
        matrices=matrices,
        adapter_params=int(method.adapter_params(model, head)),
        head_params=int(adapters.head_params(model, head)),
        backbone_params=int(backbone_params),
    )


def show(row: dict) -> str:
    """A small two-column listing of one count."""
    width = max(len(k) for k in row)
    return "\n".join(f"{k:<{width}}  {f'{v:,}' if isinstance(v, int) else v}" for k, v in row.items())


# ---------------------------------------------------------------------------------------------- the table

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

# (row key, label, overrides): add a method's settings here to give it rows.
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

FOOTER = [
    "Adapter parameters only; the head (and DeBERTa's pooler) is trained by every method and counted apart.",
    "Each backbone uses its protocol targets for every method. pub. = the published count (protocols.md).",
    "AdaLoRA: the final budget, target_r * sum over matrices of (d_in + d_out + 1) before allocation; "
    "a run reports its realised ranks (the paper's 1.27M / 0.32M are realised counts).",
    "OFT: peft stores b(b-1)/2 angles per block; BOFT: peft stores full b x b blocks (m factors) plus d_out scales.",
    "f = quantum count from the angle-count formula on the target shapes (the quantum adapter was not used).",
]


def formula(cfg: DictConfig, kind: str, layers: int, k: int) -> int:
    """Quantum count from the target shapes: per matrix P(d_out) + P(d_in) + K (Taylor: its factor count)."""
    from qpeft.adapters.peft_methods import dims
    from qpeft.quantum import pauli_num_params, taylor_num_params

    bb = cfg.backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = backbones.build(_Resolved({**OmegaConf.to_container(bb, resolve=True), "meta": True}), 2)
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
        return f"{count(compose(overrides))['adapter_params']:,}", None
    except Exception as e:  # noqa: BLE001 - every failure becomes a visible note in the table
        error = e
    if fallback is not None:  # quantum: the formula on the same target shapes
        base = [o for o in overrides if o.startswith(("backbone=", "protocol=", "task="))]
        try:
            return f"{formula(compose([*base, 'adapter=lora']), *fallback):,} f", None
        except Exception as e:  # noqa: BLE001
            error = e
    return "n/a", str(error).splitlines()[0]


def quantum_rows() -> list:
    """The quantum rows, or none (and a message) when qpeft.quantum cannot be imported."""
    try:
        import qpeft.quantum  # noqa: F401
    except ImportError as e:
        print(f"[params] quantum rows left out: {e}", flush=True)
        return []
    return QUANTUM


def build_table() -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows (label, then one cell per backbone) and the notes of the cells that failed."""
    from hydra import initialize_config_dir

    header = ["method", *BACKBONES]
    rows, notes = [], []
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        targets = ["targets (matrices)"]
        for b, extra in BACKBONES.items():
            c = count(compose([f"backbone={b}", "adapter=lora", *extra]))
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


def footer(rows: list[list[str]]) -> list[str]:
    """The notes under the table; the formula mark only where a cell uses it."""
    used = any(c.endswith(" f") or " f (" in c for r in rows for c in r[1:])
    return FOOTER if used else FOOTER[:-1]


def markdown(header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    """The table as Markdown: every row, then the footer and the numbered failure notes."""
    all_notes = footer(rows) + [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return render.markdown(header, rows, notes=all_notes)


def latex(header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    """The table as a LaTeX tabular without the targets row; the notes as comments."""
    lines = render.latex_tabular(header, rows[1:], align="l" + "r" * (len(header) - 1))
    lines += [f"% {f}" for f in footer(rows)] + [f"% [{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def write_table(out: Path = TABLE_OUT) -> list[Path]:
    """Count every setting on every backbone; write <out>/params.md and .tex."""
    header, rows, notes = build_table()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "params.md", out / "params.tex"]
    paths[0].write_text(markdown(header, rows, notes))
    paths[1].write_text(latex(header, rows, notes))
    return paths


# ---------------------------------------------------------------------------------------------- scaling

WIDTHS = {384: "MiniLM 384", 768: "base 768", 1024: "large / GPT-2 M 1024", 4096: "7B 4096"}


def scaling_counts(n: int, k: int = 1) -> dict[str, int]:
    """Trainable parameters of each method on one n x n matrix (method.md sections 2 and 4).

    LoRA r=1: 2N; Taylor K=1: 2NK - K^2 (with lambda); Pauli L: 2 P(N, L) + K with K=1, P from
    qpeft.quantum.pauli_num_params.
    """
    from qpeft.quantum import pauli_num_params

    return {
        "LoRA r=1": 2 * n * k,
        "Taylor K=1": 2 * n * k - k * k,
        "Pauli L=1, K=1": 2 * pauli_num_params(n, 1) + k,
        "Pauli L=2, K=1": 2 * pauli_num_params(n, 2) + k,
    }


def scaling_figure(path: Path = SCALING_OUT) -> Path:
    """Parameters per N x N matrix against N (log-log): LoRA grows linearly, Pauli logarithmically."""
    from matplotlib.figure import Figure

    ns = [2**q for q in range(6, 17)]
    table = {n: scaling_counts(n) for n in ns}
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    styles = {"LoRA r=1": "o-", "Taylor K=1": "s--", "Pauli L=1, K=1": "^-", "Pauli L=2, K=1": "v-"}
    for name, style in styles.items():
        ax.plot(ns, [table[n][name] for n in ns], style, label=name, markersize=4)
    for w, label in WIDTHS.items():
        ax.axvline(w, color="0.7", linewidth=0.8, zorder=0)
        ax.text(
            w * 1.05,
            0.97,
            label,
            rotation=90,
            va="top",
            ha="left",
            fontsize=7,
            color="0.4",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("matrix width N (N x N)")
    ax.set_ylabel("trainable parameters per matrix")
    ax.set_title("Adapter parameters per matrix")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, metadata={"Software": None})
    for n in (64, 1024, 65536):
        print(n, table[n])
    return path


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`qpeft-params count <overrides>` | `qpeft-params table [--out DIR]` | `qpeft-params scaling [--out PNG]`."""
    p = argparse.ArgumentParser(prog="qpeft-params", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("count", help="one setting: Hydra overrides as for run.py")
    c.add_argument("overrides", nargs="*")
    t = sub.add_parser("table", help="every method and setting on every backbone")
    t.add_argument("--out", type=Path, default=TABLE_OUT)
    s = sub.add_parser("scaling", help="parameters per N x N matrix against N")
    s.add_argument("--out", type=Path, default=SCALING_OUT)
    args = p.parse_args(argv)
    if args.command == "count":
        row = count(compose(args.overrides))
        print(show(row))
        print(f"adapter_params={row['adapter_params']}")
    elif args.command == "table":
        for path in write_table(args.out):
            print(f"[params] wrote {path}")
    else:
        print(f"[params] wrote {scaling_figure(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
