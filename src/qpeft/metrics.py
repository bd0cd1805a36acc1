"""GLUE and VTAB metrics, computed with scikit-learn and SciPy (evaluate.load needs the network)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def glue_metrics(names: list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The GLUE metrics `names` for class predictions (or regression scores for STS-B)."""
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out["accuracy"] = float(accuracy_score(labels, preds))
        elif name == "f1":
            out["f1"] = float(f1_score(labels, preds))
        elif name == "matthews":
            out["matthews"] = float(matthews_corrcoef(labels, preds))
        elif name == "pearson":
            out["pearson"] = float(pearsonr(preds, labels)[0])
        elif name == "spearman":
            out["spearman"] = float(spearmanr(preds, labels)[0])
        else:
            raise ValueError(f"unknown GLUE metric '{name}'")
    if "pearson" in out and "spearman" in out:  # the AdaLoRA table reports their average for STS-B
        out["pearson_spearman"] = (out["pearson"] + out["spearman"]) / 2
    return out


def top1(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy (VTAB, CIFAR-10)."""
    return {"top1": float(np.mean(np.asarray(preds) == np.asarray(labels)))}


def predictions(logits: np.ndarray) -> np.ndarray:
    """Class ids from logits, or the scores themselves for a single-output regression head."""
    logits = np.asarray(logits)
    return logits[:, 0] if logits.ndim == 2 and logits.shape[1] == 1 else logits.argmax(-1)


def compute(task, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics of task config `task` from raw logits."""
    preds = predictions(logits)
    if task.family == "glue":
        return glue_metrics(list(task.metrics), preds, np.asarray(labels))
    return top1(preds, labels)
