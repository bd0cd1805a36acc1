"""Many processes writing records at once through qpeft.records.write_record: every file reads back intact."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from qpeft.records import write_record

PROCS = 16
PER_PROC = 20
SHARED_WRITES = 10


def make_record(proc: int, i: int) -> dict:
    """A record big enough (~40 KB) that a torn write would show."""
    return {
        "run_id": f"p{proc}-r{i}",
        "task": "sst2",
        "seed": i,
        "metrics": {"accuracy": proc / 100 + i / 10000},
        "config": {"padding": [f"{proc}:{i}:{k}" for k in range(2500)]},
    }


def writer(root: str, proc: int, barrier) -> None:
    """Write PER_PROC records of our own, and SHARED_WRITES times the one record every process writes."""
    barrier.wait()
    for i in range(PER_PROC):
        write_record(Path(root) / f"p{proc}" / f"r{i}" / "record.json", make_record(proc, i))
        if i < SHARED_WRITES:
            write_record(Path(root) / "shared" / "record.json", make_record(proc, i))


def reader(root: str, barrier, bad) -> None:
    """Read the shared record over and over while the writers run; count reads that fail to parse."""
    path = Path(root) / "shared" / "record.json"
    barrier.wait()
    for _ in range(2000):
        if path.exists():
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError:
                with bad.get_lock():
                    bad.value += 1


def test_concurrent_writes_read_back_intact(tmp_path):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS + 1)
    bad = ctx.Value("i", 0)
    procs = [ctx.Process(target=writer, args=(str(tmp_path), p, barrier)) for p in range(PROCS)]
    procs.append(ctx.Process(target=reader, args=(str(tmp_path), barrier, bad)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    for proc in range(PROCS):
        for i in range(PER_PROC):
            path = tmp_path / f"p{proc}" / f"r{i}" / "record.json"
            assert json.loads(path.read_text()) == make_record(proc, i), path
    shared = json.loads((tmp_path / "shared" / "record.json").read_text())
    proc, i = (int(x[1:]) for x in shared["run_id"].split("-"))
    assert shared == make_record(proc, i)
    assert bad.value == 0, f"{bad.value} reads of a half-written record"
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "record.json"]
    assert leftovers == [], leftovers


def test_record_file_is_as_readable_as_any_new_file(tmp_path):
    """mkstemp creates 0600 files; a record on a shared cluster file system must follow the umask."""
    import os
    import stat

    write_record(tmp_path / "record.json", {"score": 1.0})
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "record.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
