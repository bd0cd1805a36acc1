"""GLUE: read the official TSV files or the Hub's `nyu-mll/glue`, tokenize, and pad per batch."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets
from datasets import Dataset

from qpeft.data import check_train_limit
from qpeft.errors import QpeftError

csv.field_size_limit(1 << 24)
datasets.disable_progress_bars()  # tokenizing a few thousand rows needs no bar; training keeps its own


def eval_name(split: str) -> str:
    """Metric suffix of an eval split: '' for the only dev set, 'matched'/'mismatched' for MNLI."""
    return "" if split == "validation" else split.removeprefix("validation_")


def _label(raw: str, where: str, label_map: dict | None, num_labels: int) -> int | float:
    """One row's label: a class index in [0, num_labels), or a number for a regression task (num_labels 1)."""
    if label_map:
        if raw not in label_map:
            raise QpeftError(f"{where}: label {raw!r} is not one of the task's labels {sorted(label_map)}")
        return label_map[raw]
    try:
        value = float(raw) if num_labels == 1 else int(raw)
    except ValueError:
        kind = "a number" if num_labels == 1 else "a class index"
        raise QpeftError(f"{where}: label {raw!r} is not {kind}") from None
    if num_labels > 1 and not 0 <= value < num_labels:
        raise QpeftError(
            f"{where}: label {value} is outside the task's {num_labels} classes 0..{num_labels - 1}"
        )
    return value


def _read_tsv(path: Path, spec, num_labels: int) -> dict[str, list]:
    """Rows of one GLUE TSV as columns text_a, text_b, label (QUOTE_NONE: SST-2/CoLA have bare quotes);
    a QpeftError naming the file (and line) when it holds no examples or a label the task does not have."""
    if not path.exists():
        raise QpeftError(
            f"GLUE file {path} not found: set task.data_dir (or QPEFT_GLUE_DIR) to the GLUE folder"
        )
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, rows = (rows[0], rows[1:]) if spec.header and rows else (None, rows)
    if not rows:
        raise QpeftError(
            f"GLUE file {path} holds no examples ({'a header only' if header else 'empty'}): restore it, or "
            "point task.data_dir (QPEFT_GLUE_DIR) at a complete GLUE folder"
        )

    def col(key):
        if key is None:
            return None
        if isinstance(key, int):
            return key
        if key not in header:
            raise QpeftError(f"{path}: no column '{key}' in header {header}")
        return header.index(key)

    ia, ib, il = col(spec.text[0]), col(spec.text[1]), col(spec.label)
    label_map = dict(spec.label_map) if spec.label_map else None
    out = {"text_a": [], "text_b": [], "label": []}
    for n, r in enumerate(rows, start=2 if spec.header else 1):
        if len(r) <= max(i for i in (ia, ib, il) if i is not None):
            raise QpeftError(
                f"{path}, line {n}: expected at least {max(ia, il, ib or 0) + 1} tab-separated fields"
            )
        label = _label(r[il], f"{path}, line {n}", label_map, num_labels)
        out["text_a"].append(r[ia])
        out["text_b"].append(r[ib] if ib is not None else None)
        out["label"].append(label)
    return out


def _local(task, data_dir: str) -> tuple[dict, dict[str, dict]]:
    root = Path(data_dir).expanduser() / task.folder
    if not root.is_dir():
        raise QpeftError(
            f"GLUE folder {root} not found: set task.data_dir (or the environment variable QPEFT_GLUE_DIR) to a "
            "folder holding <TASK>/train.tsv and dev.tsv, e.g. ../shared/data/glue"
        )
    train = _read_tsv(root / "train.tsv", task.local, task.num_labels)
    evals = {split: _read_tsv(root / f, task.local, task.num_labels) for split, f in task.eval_files.items()}
    return train, evals


def _hub(task) -> tuple[dict, dict[str, dict]]:
    from datasets import load_dataset

    try:
        ds = load_dataset("nyu-mll/glue", task.hub_config)
    except Exception as e:  # ConnectionError, OfflineModeIsEnabled, ...
        raise QpeftError(
            f"could not download GLUE {task.hub_config} from the Hub ({type(e).__name__}): set task.data_dir "
            "(or QPEFT_GLUE_DIR) to a local GLUE folder"
        ) from None
    a, b = task.text_keys

    def cols(split):
        d = ds[split]
        return {"text_a": d[a], "text_b": d[b] if b else [None] * len(d), "label": d["label"]}

    return cols("train"), {split: cols(split) for split in task.eval_files}


def load(
    task,
    tokenizer,
    max_length: int,
    data_dir: str | None,
    seed: int,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    heldout: int | None = None,
) -> tuple[Dataset, dict[str, Dataset]]:
    """Tokenized (train, {eval split: dataset}); train_limit keeps a seeded random subset.

    With `heldout`, the training set is shuffled with the seed, its last `heldout` examples become the eval
    split "heldout" and the first `train_limit` of the rest are trained on: disjoint whatever the limit."""
    data_dir = data_dir or os.environ.get("QPEFT_GLUE_DIR")
    train, evals = _local(task, data_dir) if data_dir else _hub(task)
    is_regression = task.num_labels == 1

    def encode(cols: dict | Dataset, limit: int | None, shuffle: bool) -> Dataset:
        ds = cols if isinstance(cols, Dataset) else Dataset.from_dict(cols)
        if shuffle and limit:
            ds = ds.shuffle(seed=seed)
        if limit:
            ds = ds.select(range(min(limit, len(ds))))

        def tok(batch):
            pair = [batch["text_b"]] if batch["text_b"][0] is not None else []
            enc = tokenizer(batch["text_a"], *pair, truncation=True, max_length=max_length)
            enc["labels"] = [float(x) for x in batch["label"]] if is_regression else batch["label"]
            return enc

        return ds.map(tok, batched=True, remove_columns=ds.column_names, desc=None)

    def by_length(ds: Dataset) -> Dataset:
        """Eval sets shortest first: batches padded to similar lengths (the metrics ignore order)."""
        lengths = [len(ids) for ids in ds["input_ids"]]
        return ds.select(sorted(range(len(ds)), key=lengths.__getitem__))

    evals = {s: by_length(encode(c, eval_limit, False)) for s, c in evals.items()}
    n = len(train["label"])
    if heldout and heldout >= n:
        raise QpeftError(f"trainer.heldout={heldout} leaves no training data ({n} examples): lower it")
    check_train_limit(
        train_limit, n - (heldout or 0), task.name, " left beside trainer.heldout" if heldout else ""
    )
    if heldout:
        pool = Dataset.from_dict(train).shuffle(seed=seed)
        evals["heldout"] = by_length(encode(pool.select(range(n - heldout, n)), None, False))
        rest = pool.select(range(n - heldout))
        return encode(rest, train_limit, False), evals
    return encode(train, train_limit, True), evals
