"""What a run's result depends on, for the run-folder guard: the composed config, by exclusion, and its data.

A finished run asked for again is returned only if it was made with the same settings; a checkpoint is resumed
only under them. "The same" is decided over every resolved key of the composed config except the few in
NOT_RESULT_KEYS, which cannot change a result (threads, logging, checkpoint cadence, output paths, W&B), so a
setting added tomorrow is compared without anyone listing it. The data folder a task reads counts by its content
(`data_fingerprint`), not by its path. docs/configuration.md, "The settings guard".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qpeft.config import PROTOCOL_KEYS

# dotted keys (and everything below them) that cannot change a result
NOT_RESULT_KEYS = (
    "hydra",
    "output_root",
    "run_dir",
    "logger",  # W&B on or off
    "task.data_dir",  # a path: the data count by content instead (`data`)
    "task.protocols",  # the selected protocol's block is kept (`protocol_values`); the others are not used
    "task.default_protocol",  # which protocol runs is `protocol`, compared
    "trainer.threads",
    "trainer.num_workers",
    "trainer.device",  # a run folder is the same run on CPU or GPU, as on 1 or N GPUs
    "trainer.logging_steps",
    "trainer.save_steps",
    "trainer.save_total_limit",
    "trainer.keep_checkpoints",
)
# keys added to the config after runs were recorded, with the value those runs were made with: a stored run
# without the key is compared as if it had this value (and refused under any other)
ADDED_LATER: dict[str, Any] = {
    "adapter.fold": "float32",
    "adapter.adapter_lr": None,
    "adapter.scaling": None,  # Quantum-PEFT's s = alpha / K, the only rule then
    "trainer.adam_epsilon": 1e-8,  # the Trainer's default, which runs used before it was a setting
    "trainer.max_grad_norm": 1.0,
    "trainer.label_smoothing": 0.0,
    "trainer.cls_dropout": None,
    "trainer.drop_path": None,
    "trainer.gradient_checkpointing": False,
    "trainer.heldout": None,
    "trainer.eval_steps": None,
    "trainer.heldout_clean": False,
}
# files hashed by content; any other file of a data folder (images) counts by its name and size
TEXT_SUFFIXES = (".tsv", ".txt", ".csv", ".json", ".jsonl")


def _excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_RESULT_KEYS)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values (a target list is compared whole)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def result_config(resolved: dict) -> dict[str, Any]:
    """The resolved config as the guard compares it: flattened, NOT_RESULT_KEYS dropped, the selected protocol's
    values kept (E2E reads its decoding settings there), JSON-normalised (1e-3 and 0.001 are one value)."""
    flat = {k: v for k, v in flatten(resolved).items() if not _excluded(k)}
    if flat.get("trainer.heldout") is None:
        flat.pop("trainer.heldout_clean", None)  # nothing is held out: it has nothing to clean
    protocol = resolved.get("protocol")
    block = ((resolved.get("task") or {}).get("protocols") or {}).get(protocol)
    if block is not None:
        flat.update(flatten(block, "protocol_values"))
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


def data_fingerprint(folder: Path | None) -> str | None:
    """sha256 over a data folder's files: text files by content, others (images) by relative path and size.
    None when the folder is unknown or absent (the Hub; the loader then says what is missing)."""
    if folder is None or not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest.update(rel.encode() + b"\0")
        if path.suffix.lower() in TEXT_SUFFIXES:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(str(path.stat().st_size).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def data_folder(task: DictConfig) -> Path | None:
    """The folder a task's data are read from (its family's setting or environment variable); None: the Hub."""
    env = {"glue": "QPEFT_GLUE_DIR", "vtab": "QPEFT_VTAB_DIR", "e2e": "QPEFT_E2E_DIR"}.get(task.family)
    root = task.get("data_dir") or (os.environ.get(env) if env else None)
    if not root:
        return None
    if task.family == "glue":
        return Path(root).expanduser() / task.folder
    if task.family == "vtab" and task.get("source", "folder") == "folder":
        return Path(root).expanduser() / task.name
    return Path(root).expanduser()


def run_settings(cfg: DictConfig) -> dict:
    """What a run folder's settings.json holds: the result config and the data fingerprint."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {"schema": 2, "config": result_config(resolved), "data": data_fingerprint(data_folder(cfg.task))}


def legacy_settings(stored: dict) -> tuple[dict[str, Any], bool]:
    """A settings.json or record written before schema 2, as (flat config, complete): a record's `config` is the
    whole resolved config (complete: a key it lacks was added later); an old settings.json held only the adapter
    and a few trainer keys (incomplete: keys it lacks are not compared)."""
    if "config" in stored and isinstance(stored["config"], dict):
        flat = result_config(stored["config"])
        # the oldest records left trainer and adapter values null in the config and applied the protocol's in
        # code (alpha, AdaLoRA's schedule): the values a run trained with are its `hyperparameters`
        used = flatten(stored.get("hyperparameters") or {})
        by_leaf: dict[str, list] = {}
        for key, value in used.items():
            by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(value)
        for name in [n for n, v in flat.items() if v is None]:
            group, leaf = name.split(".", 1)[0], name.rsplit(".", 1)[-1]
            if group == "trainer" and leaf in PROTOCOL_KEYS and leaf in used:
                flat[name] = used[leaf]
            elif group == "adapter" and leaf != "lr" and len(by_leaf.get(leaf, ())) == 1:
                flat[name] = by_leaf[leaf][0]
        return json.loads(json.dumps(flat, default=str)), True
    flat = flatten(stored.get("adapter_cfg") or {}, "adapter")
    flat.update(flatten(stored.get("trainer") or {}, "trainer"))
    return json.loads(json.dumps(flat, default=str)), False


def differences(stored: dict, now: dict) -> list[str]:
    """The keys whose values differ between stored settings (any schema) and `run_settings` now, as
    'key: <there> there, <now> now'."""
    if stored.get("schema") == 2:
        there, complete = stored.get("config") or {}, True
    else:
        there, complete = legacy_settings(stored)
    diffs = []
    for key in sorted(set(there) | set(now["config"])):
        if key not in now["config"]:
            continue  # a key the config no longer has (an older method's protocol alpha) changes nothing now
        if key in there:
            old = there[key]
        elif key in ADDED_LATER:
            old = ADDED_LATER[key]
        elif complete:
            old = "<absent>"
        else:
            continue
        if old != now["config"][key]:
            diffs.append(f"{key}: {old!r} there, {now['config'][key]!r} now")
    # settings.json keeps the fingerprint as `data`; a record keeps it inside its data facts
    facts = stored.get("data")
    data_there = (
        facts if stored.get("schema") == 2 else facts.get("fingerprint") if isinstance(facts, dict) else None
    )
    if data_there is not None and now.get("data") is not None and data_there != now["data"]:
        diffs.append("the data: other file contents there (task.data_dir / its environment variable)")
    return diffs
