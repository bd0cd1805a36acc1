"""GLUE / VTAB metrics against independent computations on fixed inputs."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from qpeft import metrics

PREDS = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
LABELS = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])
# confusion counts of the arrays above, by hand: tp=4, tn=3, fp=2, fn=1
TP, TN, FP, FN = 4, 3, 2, 1


def test_accuracy_f1_matthews_by_hand_and_sklearn():
    out = metrics.glue_metrics(["accuracy", "f1", "matthews"], PREDS, LABELS)
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert out["accuracy"] == pytest.approx(7 / 10) == accuracy_score(LABELS, PREDS)
    assert out["f1"] == pytest.approx(2 * TP / (2 * TP + FP + FN)) == pytest.approx(f1_score(LABELS, PREDS))
    assert out["matthews"] == pytest.approx(mcc) == pytest.approx(matthews_corrcoef(LABELS, PREDS))


def test_stsb_pearson_spearman_and_their_average():
    scores = np.array([0.1, 2.5, 3.0, 4.9, 1.2, 3.3])
    gold = np.array([0.0, 2.0, 3.5, 5.0, 1.0, 2.8])
    out = metrics.glue_metrics(["pearson", "spearman"], scores, gold)
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731  (no ties here)
    assert (
        out["pearson"]
        == pytest.approx(np.corrcoef(scores, gold)[0, 1])
        == pytest.approx(pearsonr(scores, gold)[0])
    )
    assert out["spearman"] == pytest.approx(np.corrcoef(ranks(scores), ranks(gold))[0, 1])
    assert out["spearman"] == pytest.approx(spearmanr(scores, gold)[0])
    assert out["pearson_spearman"] == pytest.approx((out["pearson"] + out["spearman"]) / 2)


def test_predictions_argmax_or_regression_and_top1():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2]])
    assert metrics.predictions(logits).tolist() == [1, 0, 0]
    assert metrics.predictions(np.array([[0.5], [1.5]])).tolist() == [0.5, 1.5]
    assert metrics.top1(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))["top1"] == 0.75
