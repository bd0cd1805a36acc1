"""Read an offline W&B run file (`run-<id>.wandb`) back, independently of wandb's writer: the file is a 7-byte
header (':W&B', magic, version) then LevelDB-log records (32 KiB blocks; each chunk: crc32, length, type), each
record one `wandb_internal_pb2.Record` protobuf."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    out, pos, parts = [], 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        parts.append(chunk)
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
    return out


def run_facts(path: Path) -> dict:
    """The run's name, group, job type, tags, config and final summary as plain Python values."""
    facts: dict = {"config": {}, "summary": {}}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            facts.update(
                id=r.run_id, name=r.display_name, group=r.run_group, job_type=r.job_type, tags=list(r.tags)
            )
            facts["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            facts["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            facts["summary"].update({u.key: json.loads(u.value_json) for u in rec.summary.update if u.key})
        elif kind == "history":
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                facts.setdefault("history", {})[key] = json.loads(item.value_json)
    return facts
