"""One error contract: every mistake a user can make ends with exit code 2 and one line
`qpeft error: <what is wrong and which setting to change>`, no traceback, no record, nothing lost."""

from pathlib import Path

import pytest
from conftest import run_cli

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
    (root / "SST-2" / "train.tsv").write_text("\n".join(lines) + "\n")
    (root / "SST-2" / "dev.tsv").write_text("\n".join(dev) + "\n")
    return root


@pytest.mark.parametrize("damage", ["missing folder", "missing column", "short row"])
def test_missing_or_malformed_glue_folder(glue_dir, tmp_path, damage):
    root = tmp_path / "nowhere" if damage == "missing folder" else _glue_copy(tmp_path, glue_dir, damage)
    out = run_cli([*TINY, "adapter=lora", f"task.data_dir={root}", f"output_root={tmp_path / 'out'}"])
    assert_one_line_error(out, "SST-2" if damage == "missing folder" else "train.tsv")
    assert not list(tmp_path.rglob("record.json"))


@pytest.mark.parametrize("damage", ["missing folder", "bad label"])
def test_missing_or_malformed_vtab_folder(tmp_path, damage):
    root = tmp_path / "vtab"
    if damage == "bad label":
        (root / "cifar10").mkdir(parents=True)
        (root / "cifar10" / "train800val200.txt").write_text("images/a.jpg 12\n")
    args = ["task=vtab/cifar10", "backbone=tiny_vit", "adapter=lora", "trainer.max_steps=1"]
    out = run_cli([*args, f"task.data_dir={root}", f"output_root={tmp_path / 'out'}"])
    assert_one_line_error(out, "task.data_dir" if damage == "missing folder" else "label 12")
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
