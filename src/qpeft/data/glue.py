"""GLUE: read the official TSV files or the Hub's `nyu-mll/glue`, tokenize, and pad per batch."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets
import numpy as np
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


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def clashing(train: list[tuple[str, ...]], heldout: list[tuple[str, ...]]) -> list[int]:
    """Indices of the training examples that share text with a held-out example: one of its texts contains a
    held-out text, or is contained in one, word for word (case and spacing aside). SST-2's training rows are
    phrases cut from the same parse trees, so a random held-out phrase often sits inside a training phrase;
    in the pair tasks a sentence can recur in several pairs."""
    owner: dict[str, list[int]] = {}  # a training text -> the examples that have it
    for i, texts in enumerate(train):
        for t in texts:
            if t and (n := _normal(t)):
                owner.setdefault(n, []).append(i)
    held = {n for texts in heldout for t in texts if t and (n := _normal(t))}
    out: set[int] = set()
    # a training text inside a held-out one: every word span of the held-out text, looked up
    longest = max((len(t.split()) for t in owner), default=0)
    for h in held:
        words = h.split()
        for a in range(len(words)):
            for b in range(a + 1, min(len(words), a + longest) + 1):
                out.update(owner.get(" ".join(words[a:b]), ()))
    # a held-out text inside a training one: one search of each over all training texts, at word boundaries
    texts = list(owner)
    joined = "\n".join(f" {t} " for t in texts)
    starts = np.cumsum([0] + [len(t) + 3 for t in texts[:-1]])
    for h in held:
        needle, at = f" {h} ", 0
        while (at := joined.find(needle, at)) >= 0:
            out.update(owner[texts[int(np.searchsorted(starts, at, side="right")) - 1]])
            at += 1
    return sorted(out)


def load(
    task,
    tokenizer,
    max_length: int,
    data_dir: str | None,
    seed: int,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    heldout: int | None = None,
    heldout_clean: bool = True,
) -> tuple[Dataset, dict[str, Dataset], dict | None]:
    """Tokenized (train, {eval split: dataset}, facts); train_limit keeps a seeded random subset.

    With `heldout`, the training set is shuffled with the seed, its last `heldout` examples become the eval
    split "heldout" and the first `train_limit` of the rest are trained on: disjoint whatever the limit. With
    `heldout_clean`, training examples that share text with a held-out one (`clashing`) are dropped from the rest
    first, so no part of a held-out example is trained on. `facts` (None without heldout): the held-out slice's
    size and labels, and how many training examples were dropped."""
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
    if not heldout:
        check_train_limit(train_limit, n, task.name, "")
        return encode(train, train_limit, True), evals, None
    if heldout >= n:
        raise QpeftError(f"trainer.heldout={heldout} leaves no training data ({n} examples): lower it")
    pool = Dataset.from_dict(train).shuffle(seed=seed)
    held = pool.select(range(n - heldout, n))
    rest = pool.select(range(n - heldout))
    dropped = 0
    if heldout_clean:

        def texts(ds: Dataset) -> list[tuple[str, ...]]:
            return [(a, b) if b is not None else (a,) for a, b in zip(ds["text_a"], ds["text_b"])]

        clash = set(clashing(texts(rest), texts(held)))
        dropped = len(clash)
        rest = rest.select([i for i in range(len(rest)) if i not in clash])
    check_train_limit(train_limit, len(rest), task.name, " left beside trainer.heldout")
    evals["heldout"] = by_length(encode(held, None, False))
    labels = held["label"]
    facts = {
        "heldout_examples": len(held),
        "heldout_clean": heldout_clean,
        "train_clashes_dropped": dropped,
        "train_pool": len(rest),
        "heldout_label_mean": float(np.mean(labels)),
    }
    if not is_regression:
        facts["heldout_label_counts"] = {str(k): labels.count(k) for k in sorted(set(labels))}
    return encode(rest, train_limit, False), evals, facts
