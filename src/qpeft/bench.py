"""Train-step time, step memory and inference time of every method against LoRA, on one backbone shape.

    qpeft-bench                                   # DeBERTaV3-base shape, batch 8 x seq 128, CPU
    qpeft-bench --backbone vit_b16_in21k --batch 8 # ViT-B/16 shape, random 224x224 pixels
    qpeft-bench --backbone gpt2_medium --device cuda --dtype bf16
    (or python -m qpeft.bench ..., or python scripts/bench.py ...)

The backbone is built once with random weights from its config (`kind: hf_config` / `timm_config`, no
download) and copied for every method (same seed, same weights); frozen weights outside the target and head
modules are shared between the copies (nothing writes them), so many methods fit in memory. Every method
is timed in the same process, interleaved round-robin (each round runs every method once, the starting
method rotating), and reported as medians.

- train step: zero-grad, forward with labels, backward, AdamW step, the method's `on_step` (AdaLoRA's
  importance update); wall time (CUDA synchronised).
- peak memory: the bytes allocated by torch during the first (warm-up, untimed) train step above what was
  allocated when it started: activations, gradients, AdamW state and temporaries, i.e. what training needs
  on top of the weights. CUDA:
  `max_memory_allocated` after `reset_peak_memory_stats`. CPU: the running total of torch's CPU allocator as
  recorded by torch.profiler (`profile_memory=True`, allocation events). It does not see memory that BLAS /
  oneDNN allocate outside torch's allocator, nor Python objects, and counts requested bytes (no allocator
  caching), so it is comparable between methods but is not the process RSS.
- ops / step: the aten ops one (untimed) train step dispatches, views excluded (KernelCount): on a GPU
  about one kernel launch each, so for a host-bound step (a base-size model at batch 32 x 128 on an
  H200: Python and dispatch per op) a proxy of its time that any device measures exactly.
- inference: eval mode, no_grad, unmerged and merged (the method's `merge`), and the bare backbone (no
  adapter), interleaved the same way (one untimed round before the unmerged ones).

CPU threads: `--threads` (default 1 on CPU, recorded). On a shared machine, multi-threaded timings stall at
OpenMP barriers whenever another process holds a core (2 cores with two background runs: LoRA's step took
35.5 s with 2 threads, 17.4 s with 1); on a dedicated machine pass --threads <cores>. Time on a loaded
2-core CPU with the defaults: 35 min measured (estimated ~10-15 min on an idle one).

Writes results/bench/<device>.csv and .md; the last line printed is the quantum K=8 L=1 / LoRA step ratio.
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import gc
import os
import platform
import re
import shlex
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils._python_dispatch import TorchDispatchMode

from qpeft import adapters, backbones
from qpeft.errors import QpeftError
from qpeft.tables import render

REPO = Path(__file__).resolve().parents[2]
LORA = "lora_r8"
QUANTUM = "quantum_k8_l1"
BARE = "backbone"
TOTAL_STEPS = 10_000  # AdaLoRA's schedule: the bench stays before its first allocation (tinit)

# name -> (adapter config file under configs/adapter, overrides): add a line to bench another method.
METHODS: dict[str, tuple[str, dict]] = {
    "head_only": ("head_only", {}),
    LORA: ("lora", {"r": 8}),
    "adalora_t8_i12": ("adalora", {"target_r": 8, "init_r": 12, "tinit": 200, "tfinal": 200, "deltaT": 10}),
    "oft_b32": ("oft", {}),
    "boft_b8_m2": ("boft", {}),
    QUANTUM: ("quantum", {"rank": 8, "layers": 1}),
    "quantum_k8_l2": ("quantum", {"rank": 8, "layers": 2}),
    "quantum_kfull_l1": ("quantum", {"rank": "full", "layers": 1}),
    "quantum_kfull_l2": ("quantum", {"rank": "full", "layers": 2}),
    # K=full never folded (adapter.fold=never): the low-rank path in float32, where the default folds
    "quantum_kfull_l1_unfolded": ("quantum", {"rank": "full", "layers": 1, "fold": "never"}),
    "quantum_taylor_k1": ("quantum_taylor", {"rank": 1}),
}
# benched only when --methods names them (the GPU check does; on CPU the float32 low-rank path at full rank is
# several times the fold's step, minutes of `make bench`)
ON_REQUEST = ("quantum_kfull_l1_unfolded",)


def backbone_config(name: str) -> DictConfig:
    """The backbone config with random weights built from its inline arch (no download)."""
    cfg = OmegaConf.load(REPO / "configs" / "backbone" / f"{name}.yaml")
    with open_dict(cfg):
        cfg.meta = False
        cfg.kind = {"hf": "hf_config", "timm": "timm_config"}.get(cfg.kind, cfg.kind)
        cfg.tokenizer = None  # random token ids: no tokenizer needed
    return cfg


def adapter_config(method: str, targets: list[str]) -> DictConfig:
    """The adapter config file of `method` with the bench overrides and the backbone's targets."""
    from qpeft.config import register_resolvers  # ${protocol:...}: a bench process composes no Hydra config

    register_resolvers()
    file, overrides = METHODS[method]
    raw = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "adapter" / f"{file}.yaml"))
    raw.pop("defaults", None)
    raw.update(overrides, targets=list(targets))
    # no task here: the values a file takes from the task protocol (${protocol:alpha}, ...) are null
    context = OmegaConf.create({"task": {"name": "bench", "protocols": {"bench": {}}}, "protocol": "bench"})
    context.adapter = raw
    return OmegaConf.create(OmegaConf.to_container(context.adapter, resolve=True))


def device_name(device: torch.device) -> str:
    """results/bench/<this>: the CUDA device name or cpu-<cpu model>, lower case, [a-z0-9-] only."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1]
                    break
        except OSError:
            pass
        name = "cpu-" + re.sub(r"\((r|tm)\)|cpu @.*|processor|\d+-core", "", name, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def share_frozen(base: torch.nn.Module, targets: list[str], head: list[str]) -> torch.nn.Module:
    """A deep copy of `base` that shares every parameter outside the target and head modules (never written)."""
    memo = {}
    for name, p in base.named_parameters():
        owner = name.rpartition(".")[0]
        if not adapters.in_head(name, head) and not adapters.is_target(owner, targets):
            memo[id(p)] = p
    return copy.deepcopy(base, memo)


def make_inputs(cfg: DictConfig, model: torch.nn.Module, batch: int, seq: int, device) -> dict:
    """Random inputs with labels: token ids (text, causal LM labels = ids) or 224x224 pixels (image)."""
    g = torch.Generator().manual_seed(0)
    if cfg.task_type == "image_cls":
        size = int(cfg.image_size)
        x = {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
        x["labels"] = torch.randint(0, 2, (batch,), generator=g)
    else:
        vocab = model.config.vocab_size
        ids = torch.randint(1, vocab, (batch, seq), generator=g)
        x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        x["labels"] = (
            ids.clone() if cfg.task_type == "causal_lm" else torch.randint(0, 2, (batch,), generator=g)
        )
    return {k: v.to(device) for k, v in x.items()}


class Bench:
    """One method's model, optimizer and step functions."""

    def __init__(self, name: str, model: torch.nn.Module, module, head: list[str], args, device):
        self.name, self.model, self.module, self.args, self.device = name, model, module, args, device
        params = [p for p in model.parameters() if p.requires_grad]
        self.adapter_params = int(module.adapter_params(model, head)) if module is not None else 0
        self.opt = torch.optim.AdamW(params, lr=1e-4) if params else None
        self.step_count = 0
        self.times: dict[str, list[float]] = {"train": [], "infer": [], "merged": []}
        self.peak_mem = float("nan")
        self.kernel_ops = 0

    def autocast(self):
        if self.args.dtype == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, inputs: dict) -> None:
        """Forward with labels, backward, AdamW step, on_step, zero_grad (as the Trainer does)."""
        with self.autocast():
            loss = self.model(**inputs).loss
        loss.backward()
        if self.opt is not None:
            self.opt.step()
        self.step_count += 1
        self.module.on_step(self.model, self.step_count)
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(self, inputs: dict) -> None:
        with self.autocast():
            self.model(**inputs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, inputs: dict, device: torch.device) -> float:
    """Wall time of fn(inputs) in ms (CUDA synchronised); a gc pass first, outside the timing."""
    gc.collect()
    sync(device)
    t0 = time.perf_counter()
    fn(inputs)
    sync(device)
    return 1e3 * (time.perf_counter() - t0)


def step_peak_bytes(fn, inputs: dict, device: torch.device) -> int:
    """Peak bytes allocated by torch during fn(inputs) above the allocation at its start (see the docstring)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn(inputs)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(inputs)
    nodes, allocs = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while nodes:
        n = nodes.pop()
        nodes.extend(n.children)
        if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu":
            allocs.append((n.start_time_ns, n.extra_fields.alloc_size, n.extra_fields.total_allocated))
    if not allocs:
        return 0
    allocs.sort()
    start = allocs[0][2] - allocs[0][1]
    return max(total for _, _, total in allocs) - start


class KernelCount(TorchDispatchMode):
    """Counts the aten ops dispatched while active, views excluded (ops whose outputs alias an input without
    writing it: view, transpose, unbind, ...). On a GPU nearly every counted op is one kernel launch, and a
    base-size model's step at batch 32 x 128 on an H200 is host-bound (Python and dispatch per op), so the
    count is a proxy of what the step costs; on any device it is exact and repeatable, unlike a time. `_unsafe_view` (a reshape whose result autograd
    does not track as a view) is counted though it launches nothing, as in every committed count."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.by_name: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        returns = func._schema.returns
        if not any(r.alias_info is not None and not r.alias_info.is_write for r in returns):
            self.ops += 1
            self.by_name[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def kernel_ops(fn, *args) -> int:
    """The aten ops (views excluded) that fn(*args) dispatches: see KernelCount."""
    return kernel_op_names(fn, *args).total()


def kernel_op_names(fn, *args) -> collections.Counter[str]:
    """kernel_ops by aten op name (e.g. "bmm", "slice_backward")."""
    with KernelCount() as count:
        fn(*args)
    return count.by_name


def profile_step(b: Bench, inputs: dict, device: torch.device) -> None:
    """torch.profiler's top operators (self time) of one train step of `b`, printed."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        b.train_step(inputs)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"== {b.name}: one train step, top operators by self time")
    print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=40))


def rounds(benches: list, fn_name: str, key: str, inputs: dict, n: int, device, warm: bool) -> None:
    """n rounds, each running every bench once (starting method rotating); timings kept unless `warm`."""
    for r in range(n):
        for b in benches[r % len(benches) :] + benches[: r % len(benches)]:
            t = timed(getattr(b, fn_name), inputs, device)
            if not warm:
                b.times[key].append(t)
        if not warm:
            print(f"  {key} round {r + 1}/{n}", file=sys.stderr, flush=True)


def build(args, device) -> tuple[DictConfig, list[Bench], Bench]:
    """The bare backbone and one model per method, all from the same random weights."""
    cfg = backbone_config(args.backbone)
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, _ = backbones.build(cfg, num_labels=2)
    base.to(device)
    targets, head = list(cfg.targets), list(cfg.head)
    benches = []
    for name in args.methods:
        acfg = adapter_config(name, targets)
        module = adapters.get_method(acfg.method)(adapters.settings_from_config(acfg))
        torch.manual_seed(args.seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = module.apply(share_frozen(base, targets, head), targets, head, TOTAL_STEPS)
        except QpeftError as e:  # e.g. OFT / BOFT on GPT-2's Conv1D
            print(f"skip {name}: {e}", file=sys.stderr)
            continue
        benches.append(Bench(name, model.to(device).train(), module, head, args, device))
    bare = Bench(BARE, base.eval(), None, head, args, device)
    bare.adapter_params = 0
    return cfg, benches, bare


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b == b and b > 0 else float("nan")


def table_rows(benches: list[Bench], bare: Bench) -> list[dict]:
    """One CSV row per method (and the bare backbone): medians in ms, MB, ratios to LoRA / bare."""
    by = {b.name: b for b in benches}
    lora = by.get(LORA)
    lt = median(lora.times["train"]) if lora else float("nan")
    lm = lora.peak_mem if lora else float("nan")
    lo = lora.kernel_ops if lora else float("nan")
    li = median(lora.times["infer"]) if lora else float("nan")
    bi, bm = median(bare.times["infer"]), median(bare.times["merged"])
    rows = []
    for b in [*benches, bare]:
        t, i, m = median(b.times["train"]), median(b.times["infer"]), median(b.times["merged"])
        rows.append(
            dict(
                method=b.name,
                adapter_params=b.adapter_params,
                train_step_ms=round(t, 2),
                train_step_min_ms=round(min(b.times["train"]), 2) if b.times["train"] else float("nan"),
                train_ratio_lora=round(ratio(t, lt), 3),
                peak_mem_mb=round(b.peak_mem / 2**20, 3),
                mem_ratio_lora=round(ratio(b.peak_mem, lm), 3),
                kernel_ops=b.kernel_ops,
                ops_ratio_lora=round(ratio(b.kernel_ops, lo), 3),
                infer_ms=round(i, 2),
                infer_ratio_lora=round(ratio(i, li), 3),
                infer_ratio_bare=round(ratio(i, bi), 3),
                merged_infer_ms=round(m, 2),
                merged_ratio_bare=round(ratio(m, bm), 3),
                steps=len(b.times["train"]),
            )
        )
    return rows


def fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(rows: list[dict], args, dev: str, command: str, wall: float) -> str:
    """The Markdown report: setup, then one table row per method."""
    import peft
    import transformers

    cols = [
        ("method", "method"),
        ("adapter_params", "adapter params"),
        ("train_step_ms", "train step ms"),
        ("train_ratio_lora", "x LoRA"),
        ("peak_mem_mb", "step peak MB"),
        ("mem_ratio_lora", "x LoRA"),
        ("kernel_ops", "ops / step"),
        ("ops_ratio_lora", "x LoRA"),
        ("infer_ms", "infer ms"),
        ("infer_ratio_lora", "x LoRA"),
        ("merged_infer_ms", "merged infer ms"),
        ("merged_ratio_bare", "x bare"),
    ]
    lines = [
        f"# Bench: {args.backbone} on {dev}",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}, wall {wall / 60:.1f} min",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"python {platform.python_version()}",
        f"- device: {dev}, torch threads: {torch.get_num_threads()}, dtype: {args.dtype}",
        f"- batch {args.batch} x seq {args.seq}"
        + (" (image 224x224)" if "vit" in args.backbone else "")
        + f", {args.steps} timed train rounds after {args.warmup} warm-up, {args.infer_steps} inference rounds"
        + f" per phase; methods not in the table: {', '.join(m for m in METHODS if m not in args.methods) or 'none'}",
        "- medians over interleaved round-robin rounds; train step = forward + backward + AdamW + on_step; "
        "inference = eval, no_grad; merged ratio against the bare backbone measured in the same rounds",
        "- step peak MB: torch allocations during the first train step (AdamW state included) above those at its "
        "start (CUDA: max_memory_allocated; CPU: torch.profiler allocation events, excludes BLAS-internal buffers)",
        "- ops / step: aten ops one train step dispatches, views excluded (`qpeft.bench.KernelCount`); on a GPU "
        "about one kernel launch each, a proxy of what a host-bound step costs",
        "",
    ]
    table = [[fmt(r[k]) for k, _ in cols] for r in rows]
    align = "".join("l" if k == "method" else "r" for k, _ in cols)
    return render.markdown([h for _, h in cols], table, align=align, before=lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="deberta_v3_base", help="a configs/backbone/<name>.yaml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128, help="sequence length (text backbones)")
    p.add_argument("--steps", type=int, default=5, help="timed train rounds (median)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (>= 1; the first measures memory)"
    )
    p.add_argument("--infer-steps", type=int, default=3, help="timed inference rounds (each phase)")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated, any of: " + ",".join(METHODS) + f" (default: all but {', '.join(ON_REQUEST)})",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, see above)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "results" / "bench"), help="output folder")
    p.add_argument("--name", default=None, help="file stem (default: the sanitised device name)")
    p.add_argument(
        "--profile", action="store_true", help="print torch.profiler's top ops of one step per method"
    )
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = ",".join(m for m in METHODS if m not in ON_REQUEST)
    args.methods = [m for m in args.methods.split(",") if m]
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else len(os.sched_getaffinity(0))
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step allocates the optimizer state)")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}: choose from {list(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; write <out>/<device>.csv and .md; return the rows."""
    args = parse(argv)
    start = time.time()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, benches, bare = build(args, device)
    gc.collect()
    gc.freeze()  # the models and libraries leave the collector's view: a gc pass per step stays cheap
    inputs = make_inputs(cfg, bare.model, args.batch, args.seq, device)
    infer_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    names = [b.name for b in benches]
    print(f"{args.backbone}: {names} on {device}, {torch.get_num_threads()} threads", file=sys.stderr)

    for b in benches:  # the first step (allocates the AdamW state) measures memory and warms up
        b.peak_mem = step_peak_bytes(b.train_step, inputs, device)
    rounds(benches, "train_step", "train", inputs, args.warmup - 1, device, warm=True)
    for b in benches:  # one more untimed step, its ops counted
        b.kernel_ops = kernel_ops(b.train_step, inputs)
    if args.profile:
        for b in benches:
            profile_step(b, inputs, device)
    rounds(benches, "train_step", "train", inputs, args.steps, device, warm=False)
    for b in benches:
        b.model.eval()
    everyone = [bare, *benches]
    rounds(everyone, "infer", "infer", infer_inputs, 1, device, warm=True)
    rounds(everyone, "infer", "infer", infer_inputs, args.infer_steps, device, warm=False)
    for b in benches:
        b.module.merge(b.model)
    rounds(everyone, "infer", "merged", infer_inputs, args.infer_steps, device, warm=False)

    rows = table_rows(benches, bare)
    dev = device_name(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or dev
    (out / f"{stem}.csv").write_text(render.csv_text(list(rows[0]), [list(r.values()) for r in rows]))
    command = "qpeft-bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    md = markdown(rows, args, dev, command.strip(), time.time() - start)
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out / stem}.csv and .md")
    q = {r["method"]: r for r in rows}
    if QUANTUM in q and LORA in q:
        print(f"{QUANTUM}/{LORA} train step ratio: {q[QUANTUM]['train_ratio_lora']:.2f}")
    return rows


def cli() -> None:
    """Entry point `qpeft-bench`."""
    main()


if __name__ == "__main__":
    cli()
