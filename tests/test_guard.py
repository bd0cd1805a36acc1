"""The run-folder guard compares everything that can change a result (the composed config by exclusion, the data by
content): a finished run asked for again under any other such setting is refused with the setting named, and
returned as it is when only a setting that cannot change a result (threads, logging, output paths) differs."""

import json
import shutil

import pytest
from conftest import run_cli
from test_errors import TINY, assert_one_line_error

from qpeft import guard


@pytest.fixture(scope="module")
def finished(tmp_path_factory, glue_dir):
    """One finished tiny SST-2 run, read from a copy of the GLUE folder (so the data test can change it)."""
    root = tmp_path_factory.mktemp("guard")
    data = root / "glue"
    shutil.copytree(glue_dir / "SST-2", data / "SST-2")
    args = [*TINY, "adapter=lora", f"task.data_dir={data}", f"output_root={root / 'out'}"]
    out = run_cli(args)
    assert out.returncode == 0, out.stderr[-3000:]
    return args, root


# each setting the old, inclusion-list guard let through (issue: "a rerun with a changed setting can return the
# old run"), and a few others of every config group
CHANGED = [
    ("trainer.max_grad_norm=0.5", "trainer.max_grad_norm"),
    ("trainer.label_smoothing=0.1", "trainer.label_smoothing"),
    ("trainer.adam_epsilon=1e-6", "trainer.adam_epsilon"),
    ("backbone.arch.intermediate_size=48", "backbone.arch.intermediate_size"),
    ("trainer.eval_batch_size=16", "trainer.eval_batch_size"),
    ("adapter.dropout=0.1", "adapter.dropout"),
    ("trainer.lr=1e-3", "trainer.lr"),
]


@pytest.mark.parametrize("override,named", CHANGED)
def test_a_changed_setting_is_refused_and_named(finished, override, named):
    args, root = finished
    record = next(root.rglob("record.json"))
    before = record.read_bytes()
    out = run_cli([*args, override])
    assert_one_line_error(out, named, "other settings")
    assert record.read_bytes() == before


def test_settings_that_cannot_change_a_result_return_the_finished_run(finished):
    args, root = finished
    out = run_cli([*args, "trainer.threads=1", "trainer.logging_steps=7", "trainer.save_steps=3"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finished already, not retrained" in out.stdout


def test_other_data_under_the_same_path_is_refused(finished):
    """task.data_dir counts by content: the same folder with one label changed is other data."""
    args, root = finished
    train = root / "glue" / "SST-2" / "train.tsv"
    original = train.read_text(encoding="utf-8")
    lines = original.splitlines(keepends=True)
    sentence, label = lines[1].rstrip("\n").rsplit("\t", 1)
    lines[1] = f"{sentence}\t{1 - int(label)}\n"
    train.write_text("".join(lines), encoding="utf-8")
    try:
        out = run_cli(args)
        assert_one_line_error(out, "the data", "task.data_dir")
    finally:
        train.write_text(original, encoding="utf-8")
    assert run_cli(args).returncode == 0  # the original contents: the same run again


def test_the_same_data_elsewhere_is_the_same_run(finished, tmp_path):
    args, root = finished
    moved = tmp_path / "elsewhere"
    shutil.copytree(root / "glue", moved)
    out = run_cli([a if not a.startswith("task.data_dir=") else f"task.data_dir={moved}" for a in args])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finished already" in out.stdout


def test_vtab_mode_is_compared(tmp_path):
    args = [
        "task=vtab/cifar10",
        "backbone=tiny_vit",
        "adapter=lora",
        "trainer.max_steps=1",
        "trainer.epochs=1",
    ]
    args += [
        "trainer.train_limit=8",
        "trainer.eval_limit=8",
        "trainer.batch_size=4",
        f"output_root={tmp_path}",
    ]
    out = run_cli([*args, "task.mode=tune"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert_one_line_error(run_cli([*args, "task.mode=final"]), "task.mode")


def test_differences_reads_every_schema():
    """settings.json of schema 2, a record (its whole resolved config) and an old settings.json (adapter and a few
    trainer keys: only those are compared)."""
    now = {"config": {"trainer.lr": 0.001, "trainer.max_grad_norm": 1.0, "adapter.r": 8}, "data": "abc"}
    assert guard.differences({"schema": 2, **now}, now) == []
    assert guard.differences({"schema": 2, **now, "data": "xyz"}, now) == [
        "the data: other file contents there (task.data_dir / its environment variable)"
    ]
    old_record = {"config": {"trainer": {"lr": None}, "adapter": {"r": 8}}, "hyperparameters": {"lr": 0.001}}
    # max_grad_norm was added later with the value those runs had (1.0)
    assert guard.differences(old_record, now) == []
    assert guard.differences(
        old_record, {**now, "config": {**now["config"], "trainer.max_grad_norm": 0.5}}
    ) == ["trainer.max_grad_norm: 1.0 there, 0.5 now"]
    # a record alone (committed records have no settings.json): its data facts may carry the fingerprint
    record = {**old_record, "data": {"heldout_examples": 500, "fingerprint": "abc"}}
    assert guard.differences(record, now) == []
    assert guard.differences(record, {**now, "data": "xyz"})[0].startswith("the data")
    assert guard.differences({**old_record, "data": {"heldout_examples": 500}}, {**now, "data": "xyz"}) == []
    old_settings = {"adapter_cfg": {"r": 8}, "trainer": {"sampling": "random"}}
    assert guard.differences(old_settings, now) == []  # lr is not in it: not compared
    assert guard.differences(old_settings, {**now, "config": {**now["config"], "adapter.r": 4}}) == [
        "adapter.r: 8 there, 4 now"
    ]


def test_result_config_drops_only_the_documented_keys():
    resolved = {
        "output_root": "x",
        "run_dir": "y",
        "logger": {"wandb": True},
        "protocol": "p",
        "task": {"data_dir": "/d", "name": "t", "protocols": {"p": {"lr": 1}, "q": {"lr": 2}}},
        "trainer": {"threads": 1, "lr": 3, "heldout": None, "heldout_clean": True, "save_steps": 5},
    }
    assert guard.result_config(resolved) == {
        "protocol": "p",
        "task.name": "t",
        "protocol_values.lr": 1,
        "trainer.lr": 3,
        "trainer.heldout": None,
    }


def test_data_fingerprint_counts_content_not_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "images").mkdir(parents=True)
        (d / "train.tsv").write_text("x\t1\n")
        (d / "images" / "0.jpg").write_bytes(b"\xff" * 10)
    assert guard.data_fingerprint(a) == guard.data_fingerprint(b)
    (b / "train.tsv").write_text("x\t0\n")
    assert guard.data_fingerprint(a) != guard.data_fingerprint(b)
    (b / "train.tsv").write_text("x\t1\n")
    (b / "images" / "0.jpg").write_bytes(b"\xff" * 11)
    assert guard.data_fingerprint(a) != guard.data_fingerprint(b)
    assert guard.data_fingerprint(tmp_path / "missing") is None
    json.dumps(guard.data_fingerprint(a))
