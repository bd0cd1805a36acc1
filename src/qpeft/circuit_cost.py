"""Time to build U by the Pauli mapping (L=1; forward + backward) against N, with an O(N log N) model per K.

    python -m qpeft.circuit_cost            # ~1 min on a CPU core (python scripts/circuit_cost.py)

One circuit (batch 1) of N = 2^8 .. 2^14 and K in {1, 8, 64}: the median wall time of
`PauliStiefel(N, K, 1)()` plus the backward of a random linear loss to every angle. The model
t = a_K + c_K * N log2 N per K, fitted by least squares: a_K is the fixed per-call cost (the ~60 kernels
and autograd nodes of forward + backward, about 1-2 ms on a CPU core), c_K the O(N log N) term. Writes
results/bench/circuit_cost.csv and results/figures/circuit_cost.png (log-log).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from qpeft.quantum import PauliStiefel

REPO = Path(__file__).resolve().parents[2]


def build_time(n: int, k: int, layers: int, reps: int) -> float:
    """Median ms of one forward (angles -> U) and backward (grad to every angle)."""
    torch.manual_seed(0)
    circuit = PauliStiefel(n, k, layers)
    g = torch.randn(n, k)
    times = []
    for r in range(reps + 2):  # two warm-up calls
        t0 = time.perf_counter()
        (circuit() * g).sum().backward()
        if r >= 2:
            times.append(1e3 * (time.perf_counter() - t0))
        circuit.theta.grad = None
    return statistics.median(times)


def fit(ns: list[int], ts: list[float]) -> tuple[float, float]:
    """(a, c) minimising sum (t - a - c N log2 N)^2: a fixed per-call cost plus the O(N log N) term."""
    f = [n * math.log2(n) for n in ns]
    fm, tm = statistics.fmean(f), statistics.fmean(ts)
    c = sum((fi - fm) * (ti - tm) for fi, ti in zip(f, ts)) / sum((fi - fm) ** 2 for fi in f)
    return tm - c * fm, c


def main(argv: list[str] | None = None) -> None:
    """Time the circuits, fit the model, write the CSV and the figure."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--qmin", type=int, default=8)
    p.add_argument("--qmax", type=int, default=14)
    p.add_argument("--ks", default="1,8,64")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ns = [2**q for q in range(args.qmin, args.qmax + 1)]
    ks = [int(k) for k in args.ks.split(",")]
    build_time(ns[-1], ks[-1], args.layers, 2)  # one-time costs (allocator, lazy init) before any timing
    times = {k: [build_time(n, k, args.layers, args.reps) for n in ns] for k in ks}
    rows = []
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for k, ts in times.items():
        a, c = fit(ns, ts)
        model = [a + c * n * math.log2(n) for n in ns]
        for n, t, m in zip(ns, ts, model):
            rows.append(
                dict(
                    n=n,
                    k=k,
                    layers=args.layers,
                    time_ms=round(t, 4),
                    model_ms=round(m, 4),
                    rel_dev=round(t / m - 1, 3),
                    a_k_ms=round(a, 4),
                    c_k_ns=round(1e6 * c, 4),
                    threads=args.threads,
                )
            )
        dots = ax.loglog(ns, ts, "o", label=f"K={k} measured")[0]
        ax.loglog(
            ns, model, "--", color=dots.get_color(), label=f"K={k}: {a:.2g} ms + {1e6 * c:.3g} ns x N log2 N"
        )
        worst = max(abs(t / m - 1) for t, m in zip(ts, model))
        big = max(abs(t / m - 1) for t, m in zip(ts[-3:], model[-3:]))
        print(
            f"K={k}: a = {a:.3g} ms, c = {1e6 * c:.4g} ns per N log2 N; relative deviation: worst {worst:.0%}, "
            f"largest three N {big:.0%}"
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (circuit dimension)")
    ax.set_ylabel("build U, forward + backward (ms)")
    ax.set_title(
        f"Pauli mapping, L={args.layers}, one circuit, {args.threads} CPU thread(s), torch {torch.__version__}",
        fontsize=8,
    )
    ax.text(
        0.98,
        0.03,
        "model: fixed per-call cost + c N log2 N",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = REPO / "results" / "figures" / "circuit_cost.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=150, metadata={"Software": None})
    out = REPO / "results" / "bench" / "circuit_cost.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
