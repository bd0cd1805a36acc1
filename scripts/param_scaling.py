"""Trainable parameters per N x N matrix against N: LoRA grows linearly, Quantum-PEFT Pauli logarithmically.

-> results/figures/param_scaling.png. Counts per square matrix (docs: shared/docs/method.md section 2, 4):
LoRA r=1: 2N; Taylor K=1: 2NK - K^2 (with lambda); Pauli L: 2 P(N, L) + K with K=1, where
P(N, L) = (2L + 1) log2 N - 2L for powers of two (qpeft.quantum.pauli_num_params when importable, which
also covers the real widths that are not powers of two).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "figures" / "param_scaling.png"
WIDTHS = {384: "MiniLM 384", 768: "base 768", 1024: "large / GPT-2 M 1024", 4096: "7B 4096"}

try:
    from qpeft.quantum import pauli_num_params

    SOURCE = "qpeft.quantum.pauli_num_params"
except ImportError:  # closed form, powers of two only (every N plotted here is one)

    def pauli_num_params(n: int, layers: int) -> int:
        """P(N, L) = (2L + 1) log2 N - 2L, for N a power of two."""
        q = int(math.log2(n))
        if 2**q != n:
            raise ValueError(f"the closed form needs a power of two, got {n}")
        return (2 * layers + 1) * q - 2 * layers

    SOURCE = "closed form (powers of two)"


def counts(n: int, k: int = 1) -> dict[str, int]:
    """Trainable parameters of each method on one n x n matrix."""
    return {
        "LoRA r=1": 2 * n * k,
        "Taylor K=1": 2 * n * k - k * k,
        "Pauli L=1, K=1": 2 * pauli_num_params(n, 1) + k,
        "Pauli L=2, K=1": 2 * pauli_num_params(n, 2) + k,
    }


def main() -> None:
    ns = [2**q for q in range(6, 17)]
    table = {n: counts(n) for n in ns}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=150)
    print(f"[param_scaling] Pauli counts from {SOURCE}; wrote {OUT}")
    for n in (64, 1024, 65536):
        print(n, table[n])


if __name__ == "__main__":
    main()
