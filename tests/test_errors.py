"""One error contract: every mistake a user can make ends with exit code 2 and one line
`qpeft error: <what is wrong and which setting to change>`, no traceback, no record, nothing lost."""

import csv
import json
import os
from pathlib import Path

import pytest
from conftest import VTAB_DIR, run_cli

TINY = [
    "task=glue/sst2",
    "backbone=tiny_bert",
    "protocol=minilm_cpu",
    "trainer.max_length=32",
    "trainer.train_limit=32",
    "trainer.eval_limit=32",
    "trainer.max_steps=2",
]


def assert_one_line_error(out, *words: str) -> None:
    lines = [line for line in out.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in lines if line.startswith("qpeft error: ")]
    assert len(errors) == 1, lines
    for word in words:
        assert word in errors[0], (word, errors[0])


# Refused while the config is checked, before any model or data is loaded (each names its setting).
SETTINGS = [
    (["adapter=quantum", "adapter.rank=1000"], ["adapter.rank"]),
    (["adapter=quantum", "adapter.layers=-1"], ["adapter.layers"]),
    (["adapter=lora", "adapter.r=0"], ["adapter.r"]),
    (["adapter=quantum", "trainer.lr=abc"], ["trainer.lr"]),
    (["adapter=quantum", "adapter.quant_bits=0"], ["adapter.quant_bits"]),
    (["adapter=quantum", "adapter.init=banana"], ["adapter.init"]),
    (["adapter=quantum", "adapter.fold=sometimes"], ["adapter.fold"]),
    (["adapter=quantum", "adapter.adapter_lr=0"], ["adapter.adapter_lr"]),
    (["adapter=vera", "adapter.adapter_lr=-1"], ["adapter.adapter_lr"]),
    (["adapter=tinylora", "adapter.adapter_lr=0"], ["adapter.adapter_lr"]),
    (["adapter=oft", "adapter.block_size=7"], ["adapter.block_size"]),
    (["adapter=quantum", "trainer.batch_size=0"], ["trainer.batch_size"]),
    (["adapter=quantum", "+adapter.colour=red"], ["adapter.colour"]),
    (["adapter=quantum", "adapter.colour=red"], ["adapter.colour"]),
    (["adapter=lora", "adapter.r=100"], ["adapter.r"]),  # larger than tiny_bert's layers
    (["adapter=lora", "trainer.scheduler=sometimes"], ["trainer.scheduler"]),
    (["adapter=lora", "trainer.warmup_ratio=1.5"], ["trainer.warmup_ratio"]),
    (["adapter=lora", "trainer.heldout=0"], ["trainer.heldout"]),
    (["adapter=lora", "protocol=vit_vtab"], ["protocol="]),
    (["adapter=lora", "task=glue/sts"], ["task", "glue/stsb"]),
]


@pytest.mark.parametrize("overrides,words", SETTINGS, ids=[" ".join(o) for o, _ in SETTINGS])
def test_bad_setting_is_one_line_and_exit_2(tmp_path, overrides, words):
    out = run_cli([*TINY, *overrides, f"output_root={tmp_path}"], timeout=300)
    assert_one_line_error(out, *words)
    assert not list(tmp_path.rglob("record.json")) and not list(tmp_path.rglob("settings.json"))


def _glue_copy(tmp_path: Path, glue_dir: Path, damage: str) -> Path:
    root = tmp_path / "glue"
    (root / "SST-2").mkdir(parents=True)
    lines = (glue_dir / "SST-2" / "train.tsv").read_text().splitlines()[:200]
    dev = (glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[:50]
    if damage == "missing column":
        lines[0] = "text\tlabel"
    if damage == "short row":
        lines[5] = "only one field"
    for bad in ("5", "-1", "pos"):
        if damage == f"label {bad}":
            lines[7] = lines[7].rsplit("\t", 1)[0] + "\t" + bad
    if damage == "header only":
        lines = lines[:1]
    if damage == "empty":
        lines = []
    (root / "SST-2" / "train.tsv").write_text("".join(line + "\n" for line in lines))
    (root / "SST-2" / "dev.tsv").write_text("\n".join(dev) + "\n")
    return root


GLUE_DAMAGE = {  # damage -> words of its one line (beside the file's name)
    "missing folder": ["SST-2", "task.data_dir"],
    "missing column": ["train.tsv"],
    "short row": ["train.tsv", "line 6"],
    "empty": ["train.tsv", "no examples", "empty"],
    "header only": ["train.tsv", "no examples", "a header only"],
    "label 5": ["train.tsv", "line 8", "label 5", "2 classes"],
    "label -1": ["train.tsv", "line 8", "label -1", "2 classes"],
    "label pos": ["train.tsv", "line 8", "'pos'", "not a class index"],
}


@pytest.mark.parametrize("damage", list(GLUE_DAMAGE))
def test_missing_or_malformed_glue_folder(glue_dir, tmp_path, damage):
    root = tmp_path / "nowhere" if damage == "missing folder" else _glue_copy(tmp_path, glue_dir, damage)
    out = run_cli([*TINY, "adapter=lora", f"task.data_dir={root}", f"output_root={tmp_path / 'out'}"])
    assert_one_line_error(out, *GLUE_DAMAGE[damage])
    assert not list(tmp_path.rglob("record.json"))


def _vtab_copy(root: Path, damage: str) -> None:
    """cifar10 in the VTAB-1k layout: 8 real training images (one of them corrupt) and 4 test images."""
    src = VTAB_DIR / "cifar10"
    if not (src / "test.txt").exists():
        pytest.fail(f"VTAB-1k cifar10 not found at {VTAB_DIR}: set QPEFT_VTAB_DIR")
    task = root / "cifar10"
    (task / "images").mkdir(parents=True)
    for split, n in (("train800val200", 8), ("test", 4)):
        lines = (src / f"{split}.txt").read_text().splitlines()[:n]
        for line in lines:
            rel = line.rsplit(maxsplit=1)[0]
            (task / rel).parent.mkdir(parents=True, exist_ok=True)
            (task / rel).write_bytes((src / rel).read_bytes())
        if damage == "corrupt image" and split == "train800val200":
            rel = lines[3].rsplit(maxsplit=1)[0]
            (task / rel).write_bytes((src / rel).read_bytes()[:40])  # cut short, as a failed copy leaves it
        if damage == "empty split" and split == "train800val200":
            lines = []
        (task / f"{split}.txt").write_text("".join(line + "\n" for line in lines))


VTAB_DAMAGE = {
    "missing folder": ["task.data_dir"],
    "bad label": ["train800val200.txt", "label 12"],
    "empty split": ["train800val200.txt", "lists no images"],
    "corrupt image": ["cannot be read", "images/train800/000003.jpg"],
    "train_limit": ["trainer.train_limit=50", "8 training examples"],
}


@pytest.mark.parametrize("damage", list(VTAB_DAMAGE))
def test_missing_or_malformed_vtab_folder(tmp_path, damage):
    root = tmp_path / "vtab"
    if damage == "bad label":
        (root / "cifar10").mkdir(parents=True)
        (root / "cifar10" / "train800val200.txt").write_text("images/a.jpg 12\n")
    elif damage != "missing folder":
        _vtab_copy(root, damage)
    args = ["task=vtab/cifar10", "backbone=tiny_vit", "adapter=lora", "trainer.max_steps=1"]
    args += ["trainer.batch_size=8", "trainer.eval_every_epoch=false"]
    if damage == "train_limit":
        args.append("trainer.train_limit=50")
    out = run_cli([*args, f"task.data_dir={root}", f"output_root={tmp_path / 'out'}"])
    assert_one_line_error(out, *VTAB_DAMAGE[damage])
    assert not list(tmp_path.rglob("record.json"))


def test_heldout_slice_that_does_not_fit_is_one_line(glue_dir, tmp_path):
    """A held-out slice as large as the training set (refused when the data is read), and one asked of a task
    family that has no held-out support (VTAB), each end in one line naming trainer.heldout."""
    root = _glue_copy(tmp_path, glue_dir, "none")  # 199 training sentences
    out = run_cli(
        [*TINY, "adapter=lora", f"task.data_dir={root}", "trainer.heldout=199", f"output_root={tmp_path}"]
    )
    assert_one_line_error(out, "trainer.heldout")
    vit = [
        "task=vtab/cifar10",
        "backbone=tiny_vit",
        "adapter=lora",
        "trainer.max_steps=1",
        "trainer.heldout=10",
    ]
    out = run_cli([*vit, f"output_root={tmp_path}"])
    assert_one_line_error(out, "trainer.heldout")
    assert not list(tmp_path.rglob("record.json"))


def test_nothing_already_written_is_lost(glue_dir, tmp_path):
    """A finished run asked for again with a bad setting keeps its record byte for byte."""
    ok = run_cli([*TINY, "adapter=lora", f"output_root={tmp_path}"])
    assert ok.returncode == 0, ok.stderr[-2000:]
    record = next(tmp_path.rglob("record.json"))
    before = record.read_bytes()
    for bad in (["trainer.lr=abc"], ["trainer.lr=0.5"], ["adapter.r=0"]):
        out = run_cli([*TINY, "adapter=lora", *bad, f"output_root={tmp_path}"])
        assert_one_line_error(out)
    assert record.read_bytes() == before


# Refused before anything loads or any folder is made: the launch, the sweep, the output folder, the pairing of
# task and backbone. Each: (arguments, words of the one line).
LAUNCH = [
    (["trainer.lr=1e-3,abc"], ["trainer.lr=1e-3,abc", "-m"]),  # a sweep without -m
    (["-m", "experiment=minilm_glue", "trainer.lr=abc"], ["trainer.lr", "the sweep's job"]),
    (["-m", "adapter=lora", "trainer.lr=1e-3,abc"], ["trainer.lr", "trainer.lr=abc"]),  # its 2nd job
    (["-m", "hydra/launcher=slurm", "task=glue/sst2,glue/rte"], ["hydra/launcher=slurm", "sbatch"]),
    (["task=vtab/cifar10", "backbone=tiny_bert"], ["backbone=tiny_bert", "images"]),
    (["task=glue/sst2", "backbone=tiny_vit"], ["backbone=tiny_vit", "text"]),
    (["-m", "--cfg", "job", "adapter=lora"], ["--cfg and --multirun", "jobs.py"]),  # Hydra takes one mode
]


@pytest.mark.parametrize("args,words", LAUNCH, ids=[" ".join(a) for a, _ in LAUNCH])
def test_bad_launch_is_one_line_and_makes_no_folder(tmp_path, args, words):
    out = run_cli([*args, f"output_root={tmp_path / 'out'}"], env={"PATH": str(tmp_path)}, timeout=300)
    assert_one_line_error(out, *words)
    assert not (tmp_path / "out").exists(), list((tmp_path / "out").rglob("*"))


@pytest.mark.parametrize("where", ["a file", "unwritable"])
def test_unusable_output_root_is_one_line(tmp_path, where):
    root = tmp_path / "taken"
    root.write_text("not a folder")
    if where == "unwritable":  # read-only to every user, root included (this suite may run as root)
        root = Path("/proc/qpeft-outputs")
    out = run_cli([*TINY, "adapter=lora", f"output_root={root}"])
    assert_one_line_error(out, "output_root", str(root if where == "a file" else "/proc"))


def test_max_length_above_the_backbones_positions(tmp_path):
    out = run_cli([*TINY, "adapter=lora", "trainer.max_length=600", f"output_root={tmp_path}"])
    assert_one_line_error(out, "trainer.max_length=600", "512 positions", "backbone=tiny_bert")
    assert not list(tmp_path.rglob("record.json"))


def test_train_limit_above_the_data_names_both(glue_dir, tmp_path):
    root = _glue_copy(tmp_path, glue_dir, "none")  # 199 training sentences
    out = run_cli(
        [*TINY, "adapter=lora", f"task.data_dir={root}", "trainer.train_limit=500", f"output_root={tmp_path}"]
    )
    assert_one_line_error(out, "trainer.train_limit=500", "199 training examples")
    assert not list(tmp_path.rglob("record.json"))


TINY_UNSTEPPED = [a for a in TINY if not a.startswith("trainer.max_steps=")]


def _finished_run(tmp_path: Path, *extra: str) -> Path:
    """A finished TINY LoRA run (`extra` may set its own trainer.max_steps); its folder."""
    steps = [] if any(a.startswith("trainer.max_steps=") for a in extra) else ["trainer.max_steps=2"]
    ok = run_cli([*TINY_UNSTEPPED, "adapter=lora", *steps, *extra, f"output_root={tmp_path}"])
    assert ok.returncode == 0, ok.stderr[-2000:]
    return next(tmp_path.rglob("record.json")).parent


FOLDER_DAMAGE = {  # file -> (damage, words)
    "record.json truncated": ("record.json", lambda t: t[: len(t) // 2]),
    "record.json a list": ("record.json", lambda t: "[1, 2]"),
    "record.json without metrics": ("record.json", lambda t: json.dumps({"task": "sst2"})),
    "settings.json truncated": ("settings.json", lambda t: t[: len(t) // 2]),
    "settings.json wrong types": ("settings.json", lambda t: json.dumps({"trainer": [1]})),
}


@pytest.mark.parametrize("damage", list(FOLDER_DAMAGE))
def test_damaged_run_folder_names_the_file_to_delete(glue_dir, tmp_path, damage):
    run_dir = _finished_run(tmp_path)
    name, change = FOLDER_DAMAGE[damage]
    (run_dir / name).write_text(change((run_dir / name).read_text()))
    out = run_cli([*TINY, "adapter=lora", f"output_root={tmp_path}"])
    assert_one_line_error(out, str(run_dir / name), "delete")
    (run_dir / name).unlink()  # as the line says: then the run is returned (settings.json) or redone (record)
    again = run_cli([*TINY, "adapter=lora", f"output_root={tmp_path}"])
    assert again.returncode == 0, again.stderr[-2000:]


def metrics_rows(run_dir: Path, name: str = "metrics.csv") -> list[tuple[int, str, str]]:
    with open(run_dir / name, newline="") as f:
        return [(int(r["step"]), r["key"], r["value"]) for r in csv.DictReader(f)]


CKPT = [
    "trainer.max_steps=4",
    "trainer.save_steps=2",
    "trainer.save_total_limit=null",
    "trainer.logging_steps=1",
]


@pytest.mark.parametrize("damaged", [["checkpoint-4"], ["checkpoint-4", "checkpoint-2"]])
def test_unloadable_checkpoint_is_set_aside_and_the_run_goes_on(glue_dir, tmp_path, damaged):
    """A checkpoint whose weights were cut short (kill, full disk) is renamed damaged-checkpoint-N; the run
    resumes from the one before, or starts afresh with the old metrics.csv kept aside, and says which; either
    way metrics.csv ends with one row per step and key."""
    ref = metrics_rows(_finished_run(tmp_path / "ref", *CKPT))
    tmp_path = tmp_path / "run"
    run_dir = _finished_run(tmp_path, *CKPT, "trainer.keep_checkpoints=true")
    (run_dir / "record.json").unlink()  # as if killed after its last checkpoint
    for name in damaged:
        weights = run_dir / name / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    keep = "trainer.keep_checkpoints=true"
    out = run_cli([*TINY_UNSTEPPED, "adapter=lora", *CKPT, keep, f"output_root={tmp_path}"])
    assert out.returncode == 0, out.stderr[-2000:]
    for name in damaged:
        assert f"{name} cannot be loaded" in out.stdout and (run_dir / f"damaged-{name}").is_dir()
    rows = metrics_rows(run_dir)
    assert len(rows) == len({r[:2] for r in rows}), "metrics.csv repeats a step's key"
    assert [r[:2] for r in rows] == [r[:2] for r in ref]
    if len(damaged) == 1:
        assert "resuming from" in out.stdout and "checkpoint-2" in out.stdout
        assert json.loads((run_dir / "record.json").read_text())["resumed_from"].endswith("checkpoint-2")
    else:
        assert "starting afresh" in out.stdout and "metrics.1.csv" in out.stdout
        assert metrics_rows(run_dir, "metrics.1.csv")  # the first try's rows, kept aside


def test_restart_after_a_nan_loss_keeps_no_nan_rows(glue_dir, tmp_path):
    """A NaN loss drops the checkpoints; the retry trains afresh with the failed try's rows kept aside."""
    args = [a for a in TINY_UNSTEPPED if "train_limit" not in a] + ["trainer.train_limit=64", "adapter=full"]
    args += ["trainer.max_steps=4", "trainer.logging_steps=1", f"output_root={tmp_path}"]
    bad = run_cli([*args, "trainer.lr=1e30"])
    assert_one_line_error(bad, "trainer.lr")
    run_dir = next(tmp_path.rglob("metrics.csv")).parent
    ok = run_cli(args)
    assert ok.returncode == 0, ok.stderr[-2000:]
    rows = metrics_rows(run_dir)
    assert len(rows) == len({r[:2] for r in rows}) and not [r for r in rows if r[2] in ("nan", "inf")]
    assert metrics_rows(run_dir, "metrics.1.csv")


def test_local_sweep_lists_every_failed_job_whatever_the_exception(glue_dir, tmp_path):
    """A job that stops with an unexpected exception (here injected: a RuntimeError for CoLA) does not end the
    sweep: its traceback is printed, the next job runs, and the sweep ends with exit 2 and one line per failure."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import qpeft.train as t\n"
        "real = t.train\n"
        "def train(cfg):\n"
        "    if cfg.task.name == 'cola':\n"
        "        raise RuntimeError('injected failure')\n"
        "    return real(cfg)\n"
        "t.train = train\n"
    )
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    args = ["-m", "task=glue/cola,glue/sst2", *TINY[1:], "adapter=lora"]
    out = run_cli([*args, f"output_root={tmp_path / 'out'}"], env={"PYTHONPATH": path})
    assert out.returncode == 2, out.stderr[-3000:]
    listed = out.stderr.split("job(s) of this sweep failed:")[1].strip().splitlines()
    assert len(listed) == 1 and "cola" in listed[0] and "RuntimeError: injected failure" in listed[0]
    assert [p.parts[-5] for p in (tmp_path / "out").rglob("record.json")] == ["sst2"]
