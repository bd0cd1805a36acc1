"""A run's folder: its lock, the settings it was made with, its checkpoints and its trained weights.

`<output_root>/<experiment>/<task>/<backbone>/<adapter tag>/seed<N>`: the run's identity decides the folder, so a
rerun or a requeued job resumes from the last checkpoint and a finished run (one with record.json) is returned,
not repeated. `settings.json` guards the folder against a run asked for with other settings.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from pathlib import Path
from typing import IO

import torch

from qpeft import guard, records
from qpeft.errors import QpeftError

SETTINGS_NAME = "settings.json"
TRAINED_NAME = "trained.safetensors"


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
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "w")
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

    def finished_record(self) -> dict | None:
        return records.read_record(self.record_path)

    def checkpoints(self) -> list[Path]:
        return sorted(self.path.glob("checkpoint-*"))

    def stored_settings(self) -> dict | None:
        """The settings the folder was started with: settings.json, or for records older than it the record
        (whose `config` is the whole resolved config)."""
        path = self.path / SETTINGS_NAME
        if path.exists():
            return json.loads(path.read_text())
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
        """Newest checkpoint whose trainer_state.json (the Trainer writes it last) is whole; newer partial ones,
        left by a job killed mid-save, are removed so the resumed run rewrites them."""
        steps = sorted(
            (int(m.group(1)), d)
            for d in (self.path.iterdir() if self.path.is_dir() else [])
            if d.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", d.name))
        )
        for _, d in reversed(steps):
            try:
                json.loads((d / "trainer_state.json").read_text())
                return str(d)
            except (OSError, ValueError):
                print(f"[qpeft] {d} is incomplete (killed while saving); removing it", flush=True)
                shutil.rmtree(d, ignore_errors=True)
        return None

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
