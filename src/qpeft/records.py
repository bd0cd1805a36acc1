"""One JSON record per finished run: the `Record` dataclass, written atomically, read back and checked.

The record is the only thing `qpeft.tables` and `qpeft.report` read. Its keys on disk are the field names
below (plus any unknown keys an older or newer writer put there, kept as they are), so every committed
`results/records/**/record.json` loads, and `Record.from_dict(d).to_dict() == d` for each of them.
This module imports only the standard library: reading results never imports training code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qpeft.errors import QpeftError

RECORD_NAME = "record.json"
SCHEMA = 1


class RecordError(QpeftError):
    """A record file that cannot be read as a record; the message names the file."""


@dataclass
class Record:
    """The facts of one finished run (docs/design.md, "Run record").

    The first six fields are required (a table cannot be made without them); the rest are optional so
    that records written before a field existed still load (missing -> None).
    """

    task: str
    backbone: str
    adapter_tag: str  # the adapter setting's name, e.g. lora_r8: one table row per (backbone, adapter_tag)
    seed: int
    metrics: dict[str, float]  # every metric of the final evaluation, as fractions (x100 in tables)
    main_metric: str  # the key of `metrics` the task is ranked by
    schema: int = SCHEMA
    run_id: str | None = None
    experiment: str | None = None  # the preset (experiment_name); None outside a preset ("adhoc")
    task_family: str | None = None  # glue, vtab
    task_group: str | None = None  # VTAB: natural, specialized, structured
    adapter: str | None = None  # the method (lora, quantum, ...)
    adapter_cfg: dict | None = None
    protocol: str | None = None
    hyperparameters: dict | None = None
    score: float | None = None  # metrics[main_metric]
    adapter_params: int | None = None  # adapter only, head apart (AdaLoRA: the final budget)
    head_params: int | None = None
    total_params: int | None = None
    train_samples: int | None = None
    eval_samples: dict[str, int] | None = None
    optimizer_steps: int | None = None
    step_time_s: float | None = None
    train_samples_per_s: float | None = None
    train_tokens_per_s: float | None = None
    peak_mem_bytes: int | None = None
    peak_mem_kind: str | None = None  # cuda_max_allocated, cpu_peak_rss, ...; under DDP + "_max_of_<n>_ranks"
    wall_time_s: float | None = None
    resumed_from: str | None = None
    config: dict | None = None  # the resolved run config
    versions: dict | None = None
    git_commit: str | None = None
    argv: list[str] | None = None
    finished_at: str | None = None  # ISO 8601, UTC
    adapter_extra: dict | None = None  # the method's record_facts (AdaLoRA's budget); absent when None
    metrics_unavailable: list[str] | None = None  # E2E without Java: metrics not computed; absent when None
    adapter_file_bytes: int | None = (
        None  # size of the adapter file written (run folder adapter/); absent: None
    )
    world_size: int | None = None  # data-parallel processes of a multi-process run; absent when None (one)
    # sha256 of the run folder's code.diff: the uncommitted changes that, applied to git_commit, rebuild the code
    # the run ran (git_commit then ends in "+dirty"); absent for a clean tree
    code_diff_sha256: str | None = None
    # facts of the data read (the held-out slice's size and labels); absent when None
    data: dict | None = None
    # the eval sets' main metric at fixed steps (trainer.eval_steps): [{"step": s, "<metric>": v, ...}]
    curve: list[dict] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to disk: every field by name, the optional facts only when set, and a NaN
        or infinite number as null (strict JSON: jq and JavaScript reject Python's bare `NaN` token)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in OPTIONAL_FACTS:
            if out[key] is None:
                del out[key]
        return _finite_or_null({**self.extra, **out})

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike = "<record>") -> Record:
        """A record from its JSON object; RecordError naming `source` if a required key is missing or wrong."""
        if not isinstance(data, dict):
            raise RecordError(f"malformed record {source}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise RecordError(f"malformed record {source}: missing keys {missing}")
        metrics = data["metrics"]
        if not isinstance(metrics, dict) or not all(v is None or is_number(v) for v in metrics.values()):
            raise RecordError(
                f"malformed record {source}: 'metrics' must map names to numbers, got {metrics!r}"
            )
        # null is an undefined metric (STS-B's correlation of a constant prediction): NaN in memory, as computed
        data = {**data, "metrics": {k: math.nan if v is None else v for k, v in metrics.items()}}
        if data["main_metric"] not in metrics:
            raise RecordError(
                f"malformed record {source}: main_metric '{data['main_metric']}' not in {sorted(metrics)}"
            )
        known = {k: v for k, v in data.items() if k in FIELDS}
        return cls(**known, extra={k: v for k, v in data.items() if k not in FIELDS})

    @property
    def run_key(self) -> tuple:
        """The identity of a run across copies of its record: (experiment, task, backbone, adapter_tag, seed)."""
        return (self.experiment, self.task, self.backbone, self.adapter_tag, self.seed)


FIELDS = {f.name for f in dataclasses.fields(Record)} - {"extra"}
# written only when set, so records made before a fact existed round-trip unchanged
OPTIONAL_FACTS = (
    "adapter_extra",
    "metrics_unavailable",
    "world_size",
    "adapter_file_bytes",
    "code_diff_sha256",
    "data",
    "curve",
)
REQUIRED = tuple(
    f.name for f in dataclasses.fields(Record) if f.default is dataclasses.MISSING and f.name != "extra"
)


def _finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it (dicts, lists) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def is_number(x: object) -> bool:
    """An int or float (NaN included), not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def write_record(path: str | os.PathLike, record: dict | Record) -> None:
    """Write `record` as JSON to `path` atomically (temp file in the same folder, fsync, rename)."""
    # a Record's to_dict already writes NaN as null; a plain dict is made strict JSON here
    record = record.to_dict() if isinstance(record, Record) else _finite_or_null(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a record should be as readable as any other file
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=str, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: str | os.PathLike) -> dict | None:
    """The JSON object at `path` (a record, or settings.json), or None if there is none; unchecked."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def load_record(path: str | os.PathLike) -> Record:
    """The record at `path`, checked; RecordError naming `path` when it is unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"malformed record {path}: {e}") from e
    return Record.from_dict(data, path)


def find_records(*roots: str | os.PathLike) -> list[Path]:
    """Every record file under the given folders, sorted."""
    return sorted(p for r in roots if Path(r).exists() for p in Path(r).rglob(RECORD_NAME))
