"""Classification metrics from predicted and true class indices (numpy only).

- ``accuracy``: share of correct predictions.
- ``macro_f1``: unweighted mean of the per-class F1 over the classes that occur
  among the true labels or the predictions (scikit-learn's ``f1_score(average=
  "macro")`` convention, used by LexGLUE for LEDGAR); a class with no true and no
  predicted sample has no F1 and is left out rather than counted as 0.
- ``micro_f1``: F1 of the pooled counts. For single-label classification every
  false positive of one class is a false negative of another, so it equals the
  accuracy; it is reported because papers report it (LEDGAR).
- ``f1_positive``: F1 of one class (binary tasks: QQP, SST-2), the positive class
  being label index 1 unless ``eval.positive_label`` names another.

F1 of a class is ``2 tp / (2 tp + fp + fn)``; when that denominator is 0 (the
class neither occurs nor is predicted) it is 0, as scikit-learn's
``zero_division=0``.
"""

from __future__ import annotations

import numpy as np

#: metric names recorded for every evaluation (f1_positive only for two classes)
METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "micro_f1", "f1_positive")


def _counts(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, false positives, false negatives."""
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {labels.shape[0]} labels")
    tp = np.bincount(labels[preds == labels], minlength=num_classes)
    pred_n = np.bincount(preds, minlength=num_classes)
    true_n = np.bincount(labels, minlength=num_classes)
    return tp, pred_n - tp, true_n - tp


def _f1(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)


def accuracy(preds, labels) -> float:
    """Share of correct predictions; NaN when there are no labels."""
    preds, labels = np.asarray(preds).reshape(-1), np.asarray(labels).reshape(-1)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(preds == labels))


def per_class_f1(preds, labels, num_classes: int | None = None) -> np.ndarray:
    """F1 of every class index ``0 .. n-1`` (0 for a class neither true nor predicted).

    ``n`` is the largest index seen plus one, at least ``num_classes``.
    """
    preds, labels = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    n = int(max(preds.max(initial=-1), labels.max(initial=-1)) + 1)
    n = max(n, num_classes or 0)
    return _f1(*_counts(preds, labels, n))


def macro_f1(preds, labels) -> float:
    """Mean F1 over the classes that occur among the labels or predictions; NaN without labels."""
    preds, labels = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    present = np.union1d(preds.reshape(-1), labels.reshape(-1))
    return float(per_class_f1(preds, labels)[present].mean())


def micro_f1(preds, labels) -> float:
    """F1 of the pooled counts (equal to the accuracy for single-label data); NaN without labels."""
    preds, labels = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    n = int(max(preds.max(), labels.max()) + 1)
    tp, fp, fn = _counts(preds, labels, n)
    return float(_f1(tp.sum(), fp.sum(), fn.sum()))


def f1_of_class(preds, labels, positive: int = 1) -> float:
    """F1 of class ``positive`` (``f1_positive`` of binary tasks); NaN without labels."""
    preds, labels = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    p, t = preds == positive, labels == positive
    return float(_f1(np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)))


def classification_metrics(preds, labels, num_classes: int, positive: int = 1) -> dict[str, float]:
    """Every metric of :data:`METRICS` that applies (f1_positive: two classes only)."""
    out = {
        "accuracy": accuracy(preds, labels),
        "macro_f1": macro_f1(preds, labels),
        "micro_f1": micro_f1(preds, labels),
    }
    if num_classes == 2:
        out["f1_positive"] = f1_of_class(preds, labels, positive)
    return out
