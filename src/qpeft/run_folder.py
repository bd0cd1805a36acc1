"""A run's folder: its lock, the settings it was made with, its checkpoints and its trained weights.

`<output_root>/<experiment>/<task>/<backbone>/<adapter tag>/seed<N>`: the run's identity decides the folder, so a
rerun or a requeued job resumes from the last checkpoint and a finished run (one with record.json) is returned,
not repeated. `settings.json` guards the folder against a run asked for with other settings.
"""

from __future__ import annotations

import csv
import fcntl
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import IO

import torch

from qpeft import guard, records
from qpeft.errors import QpeftError

SETTINGS_NAME = "settings.json"
TRAINED_NAME = "trained.safetensors"
METRICS_NAME = "metrics.csv"


class RunFolder:
    """One run's folder on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.record_path = self.path / records.RECORD_NAME
        self._lock: IO | None = None

    def claim(self) -> bool:
        """Take an exclusive lock on the folder, held until release() or the process ends (the kernel drops it
        if the process dies); False if another live process holds it: the same sweep launched twice splits
        the jobs."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / ".lock", "w")
        except OSError as e:  # a read-only output_root, or a file in the way
            raise QpeftError(
                f"cannot write the run folder {self.path} ({e.strerror or type(e).__name__}): set output_root= "
                "(or QPEFT_OUTPUT_DIR) to a folder you can write"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _damaged(self, path: Path, why: str) -> QpeftError:
        return QpeftError(f"{path} is damaged ({why}): delete that file, then run again")

    def finished_record(self) -> dict | None:
        """The finished run's record, checked; None if there is none; a QpeftError naming a damaged one."""
        try:
            data = records.read_record(self.record_path)
            if data is not None:
                records.Record.from_dict(data, self.record_path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._damaged(self.record_path, f"{type(e).__name__}: {e}") from None
        except records.RecordError as e:
            raise self._damaged(
                self.record_path, str(e).removeprefix(f"malformed record {self.record_path}: ")
            ) from None
        return data

    def checkpoints(self) -> list[Path]:
        return sorted(self.path.glob("checkpoint-*"))

    def stored_settings(self) -> dict | None:
        """The settings the folder was started with: settings.json, or for records older than it the record
        (whose `config` is the whole resolved config)."""
        path = self.path / SETTINGS_NAME
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise self._damaged(path, f"{type(e).__name__}: {e}") from None
            groups = stored.get("config", stored.get("adapter_cfg")) if isinstance(stored, dict) else None
            if not isinstance(groups, dict):
                raise self._damaged(path, "not the JSON object of settings qpeft writes")
            return stored
        return self.finished_record()

    def check_settings(self, settings: dict) -> None:
        """Stop before a finished run is returned, or a checkpoint resumed, under settings it was not made with
        (`guard.run_settings`: every result-deciding key of the composed config, and the data's content)."""
        if not self.record_path.exists() and not self.checkpoints():
            return  # nothing to protect: a fresh folder, or one whose run failed before its first checkpoint
        stored = self.stored_settings()
        if stored is None:
            return
        diffs = guard.differences(stored, settings)
        if diffs:
            raise QpeftError(
                f"{self.path} holds a run made with other settings ({'; '.join(diffs)}): give this variant its "
                "own folder with experiment_name=<name> (or output_root=...), or delete that folder to redo it"
            )

    def write_settings(self, settings: dict) -> None:
        records.write_record(self.path / SETTINGS_NAME, settings)

    def last_complete_checkpoint(self) -> str | None:
        """Newest checkpoint that can be resumed from, or None (start afresh), said in one line either way.

        One without a whole trainer_state.json (the Trainer writes it last) was left by a job killed mid-save:
        removed, so the resumed run rewrites it. One whose state is whole but whose weight, optimiser or other
        tensor file cannot be read (truncated: a kill or a full disk while the file system wrote it) is set
        aside as damaged-checkpoint-<step> (kept for inspection; the Trainer ignores it) and the one before it
        is tried."""
        steps = sorted(
            (int(m.group(1)), d)
            for d in (self.path.iterdir() if self.path.is_dir() else [])
            if d.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", d.name))
        )
        for _, d in reversed(steps):
            try:
                json.loads((d / "trainer_state.json").read_text())
            except (OSError, ValueError):
                print(f"[qpeft] {d} is incomplete (killed while saving); removing it", flush=True)
                shutil.rmtree(d, ignore_errors=True)
                continue
            problem = unreadable_file(d)
            if problem is None:
                return str(d)
            aside = d.with_name(f"damaged-{d.name}")
            shutil.rmtree(aside, ignore_errors=True)
            d.rename(aside)
            print(f"[qpeft] {d} cannot be loaded ({problem}): set aside as {aside.name}", flush=True)
        if steps:
            print(f"[qpeft] no checkpoint of {self.path} can be resumed from: starting afresh", flush=True)
        return None

    def start_metrics(self, checkpoint: str | None) -> None:
        """metrics.csv before (re)training: cut back to the checkpoint's step on a resume (rows a killed try
        logged after its last checkpoint come again), set aside as metrics.<n>.csv when training starts afresh
        (the rows of a failed try, a NaN loss's among them, are not the finished run's)."""
        path = self.path / METRICS_NAME
        if not path.exists():
            return
        if checkpoint is None:
            n = 1
            while (aside := self.path / f"metrics.{n}.csv").exists():
                n += 1
            path.rename(aside)
            print(f"[qpeft] training afresh: the previous {METRICS_NAME} is kept as {aside.name}", flush=True)
            return
        step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        if len(kept) < len(rows):
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(kept)
            tmp.replace(path)

    def drop_checkpoints(self) -> None:
        for d in self.checkpoints():
            shutil.rmtree(d, ignore_errors=True)

    def keep_trained_weights(self, model: torch.nn.Module) -> None:
        """After the record: the trained parameters (adapter and head; masks and other buffers are not
        parameters) go to trained.safetensors and the checkpoints, needed only to resume, are removed (one
        of a non-peft method holds the whole model: ~700 MB for DeBERTaV3-base, per run)."""
        from safetensors.torch import save_file

        state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(state, str(self.path / TRAINED_NAME))
        self.drop_checkpoints()


def unreadable_file(checkpoint: Path) -> str | None:
    """Why a checkpoint's tensor files cannot be loaded (the first one found), or None if they all can: a
    safetensors file must be as long as its header says, a torch file (zip) must have its central directory,
    which sits at its end. Reads headers only, not the tensors."""
    for f in sorted(checkpoint.rglob("*")):
        try:
            if f.suffix == ".safetensors":
                with open(f, "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    if 8 + n > f.stat().st_size:
                        return f"{f.name}: {f.stat().st_size} bytes, shorter than its header"
                    header = json.loads(fh.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                if f.stat().st_size != 8 + n + end:
                    return f"{f.name}: {f.stat().st_size} bytes, its header says {8 + n + end}"
            elif f.suffix in (".bin", ".pt", ".pth"):
                with zipfile.ZipFile(f) as z:
                    z.infolist()
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            return f"{f.name}: {type(e).__name__}: {e}"
    return None
