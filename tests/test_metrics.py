"""Metric functions against values computed by hand (and scikit-learn as a cross-check)."""

import math

import numpy as np
import pytest

from fedhello.metrics import accuracy, classification_metrics, f1_of_class, macro_f1, micro_f1, per_class_f1

# 3 classes, 8 samples
LABELS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 2, 2, 2, 0]
# class 0: tp 2, fp 1 (the last sample), fn 1 (sample 2)   -> F1 = 4/6 = 2/3
# class 1: tp 1, fp 1 (sample 2), fn 1 (sample 4)          -> F1 = 2/4 = 1/2
# class 2: tp 2, fp 1 (sample 4), fn 1 (the last sample)   -> F1 = 4/6 = 2/3
# accuracy 5/8; micro F1 = 2*5 / (2*5 + 3 + 3) = 10/16 = 5/8


def test_hand_computed_multiclass():
    assert accuracy(PREDS, LABELS) == 5 / 8
    assert per_class_f1(PREDS, LABELS) == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert macro_f1(PREDS, LABELS) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert micro_f1(PREDS, LABELS) == pytest.approx(5 / 8)


def test_binary_positive_class_f1():
    labels = [1, 1, 1, 0, 0, 0, 0]
    preds = [1, 0, 1, 1, 0, 0, 0]
    # class 1: tp 2, fp 1, fn 1 -> 4/6; class 0: tp 3, fp 1, fn 1 -> 6/8
    assert f1_of_class(preds, labels, 1) == pytest.approx(2 / 3)
    assert f1_of_class(preds, labels, 0) == pytest.approx(3 / 4)
    m = classification_metrics(preds, labels, num_classes=2)
    assert m == pytest.approx({"accuracy": 5 / 7, "macro_f1": (2 / 3 + 3 / 4) / 2, "micro_f1": 5 / 7, "f1_positive": 2 / 3})
    assert classification_metrics(preds, labels, num_classes=2, positive=0)["f1_positive"] == pytest.approx(3 / 4)
    # more than two classes: no positive class
    assert "f1_positive" not in classification_metrics(PREDS, LABELS, num_classes=3)


def test_absent_classes_and_zero_division():
    # class 3 never occurs and is never predicted: left out of the macro mean
    assert macro_f1([0, 1], [0, 1]) == 1.0
    assert per_class_f1([0, 1], [0, 1], num_classes=4).tolist() == [1.0, 1.0, 0.0, 0.0]
    # a class predicted but never true counts with F1 0
    assert macro_f1([0, 2], [0, 1]) == pytest.approx((1 + 0 + 0) / 3)
    # no positive at all: F1 0, not nan
    assert f1_of_class([0, 0], [0, 0], 1) == 0.0
    assert math.isnan(accuracy([], [])) and math.isnan(macro_f1([], []))
    with pytest.raises(ValueError):
        micro_f1([0, 1], [0])


def test_agrees_with_scikit_learn_on_random_data():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for n_cls in (2, 5, 100):
        y = rng.integers(0, n_cls, 500)
        p = np.where(rng.random(500) < 0.4, y, rng.integers(0, n_cls, 500))
        assert macro_f1(p, y) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
        assert micro_f1(p, y) == pytest.approx(f1_score(y, p, average="micro"))
        if n_cls == 2:
            assert f1_of_class(p, y, 1) == pytest.approx(f1_score(y, p, average="binary"))
