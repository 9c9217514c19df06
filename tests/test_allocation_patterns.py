"""Geometric patterns of GD-HLA / RGD-HLA (Fed-HeLLo, arXiv:2506.12213)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from fractions import Fraction

import numpy as np
import pytest

from fedhello.allocation.base import spread_evenly
from fedhello.allocation.patterns import (
    PATTERNS,
    deterministic_layers,
    pattern_counts,
    pattern_probabilities,
    pattern_profile,
)


def test_reference_bottleneck_sets_l12():
    assert deterministic_layers("bottleneck", 12, 6) == [0, 1, 2, 9, 10, 11]
    assert deterministic_layers("bottleneck", 12, 9) == [0, 1, 2, 3, 4, 8, 9, 10, 11]
    assert deterministic_layers("bottleneck", 12, 12) == list(range(12))


def test_reference_counts_l12():
    b = [6, 9, 12]
    assert pattern_counts("bottleneck", 12, b).tolist() == [3, 3, 3, 2, 2, 1, 1, 1, 2, 3, 3, 3]
    assert pattern_counts("triangle", 12, b).tolist() == [3, 3, 3, 3, 3, 3, 2, 2, 2, 1, 1, 1]
    assert pattern_counts("inverted_triangle", 12, b).tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    # uniform: every client's layers spread evenly over depth
    assert deterministic_layers("uniform", 12, 6) == spread_evenly(12, 6) == [0, 2, 4, 7, 9, 11]
    assert pattern_counts("uniform", 12, b).tolist() == [3, 2, 2, 2, 3, 1, 2, 3, 2, 2, 2, 3]


def test_reference_bottleneck_probabilities_are_counts_over_27():
    p = pattern_probabilities("bottleneck", 12, [6, 9, 12])
    expected = [Fraction(c, 27) for c in [3, 3, 3, 2, 2, 1, 1, 1, 2, 3, 3, 3]]
    assert np.allclose(p, [float(x) for x in expected], rtol=0, atol=1e-15)
    assert p.sum() == pytest.approx(1.0)
    assert np.allclose(pattern_probabilities("uniform", 12, [6, 9, 12]), 1 / 12)
    assert np.allclose(pattern_probabilities("triangle", 12, [6, 9, 12]) * 27, [3] * 6 + [2] * 3 + [1] * 3)


def test_l6_budgets_2_4_6():
    b = [2, 4, 6]
    assert pattern_counts("triangle", 6, b).tolist() == [3, 3, 2, 2, 1, 1]
    assert pattern_counts("inverted_triangle", 6, b).tolist() == [1, 1, 2, 2, 3, 3]
    assert deterministic_layers("bottleneck", 6, 2) == [0, 5]
    assert deterministic_layers("bottleneck", 6, 4) == [0, 1, 4, 5]
    assert pattern_counts("bottleneck", 6, b).tolist() == [3, 2, 1, 1, 2, 3]
    assert deterministic_layers("uniform", 6, 4) == [0, 2, 3, 5]
    assert pattern_counts("uniform", 6, b).tolist() == [3, 1, 2, 2, 1, 3]


def test_l24_budgets_4_12_24():
    b = [4, 12, 24]
    assert pattern_counts("triangle", 24, b).tolist() == [3] * 4 + [2] * 8 + [1] * 12
    assert pattern_counts("inverted_triangle", 24, b).tolist() == [1] * 12 + [2] * 8 + [3] * 4
    assert deterministic_layers("bottleneck", 24, 4) == [0, 1, 22, 23]
    assert deterministic_layers("bottleneck", 24, 12) == list(range(6)) + list(range(18, 24))
    assert pattern_counts("bottleneck", 24, b).tolist() == [3, 3] + [2] * 4 + [1] * 12 + [2] * 4 + [3, 3]
    p = pattern_probabilities("bottleneck", 24, b)
    assert p.sum() == pytest.approx(1.0)
    assert np.allclose(p, pattern_counts("bottleneck", 24, b) / 40)


def test_bottleneck_odd_budget_rule_generalises():
    # ceil(b/2) from the input side, floor(b/2) from the output side
    for L in range(1, 30):
        for b in range(0, L + 1):
            got = deterministic_layers("bottleneck", L, b)
            if b >= L:
                assert got == list(range(L))
                continue
            low = (b + 1) // 2
            expected = list(range(low)) + list(range(L - (b - low), L))
            assert got == expected, (L, b)
    # odd L: the centre layer comes last
    assert deterministic_layers("bottleneck", 7, 6) == [0, 1, 2, 4, 5, 6]
    assert deterministic_layers("bottleneck", 7, 3) == [0, 1, 6]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_any_l_and_budgets_are_valid(pattern):
    for L in (1, 2, 3, 5, 12, 13, 32):
        for b in range(0, L + 3):
            layers = deterministic_layers(pattern, L, b)
            assert layers == sorted(set(layers))
            assert len(layers) == min(b, L)
            assert all(0 <= x < L for x in layers)
        budgets = [max(1, L // 3), max(1, (2 * L) // 3), L]
        p = pattern_probabilities(pattern, L, budgets)
        assert p.shape == (L,) and p.sum() == pytest.approx(1.0) and (p >= 0).all()


def test_profiles_rank_the_deterministic_sets():
    for pattern in ("triangle", "inverted_triangle", "bottleneck"):
        w = pattern_profile(pattern, 12)
        for b in range(13):
            top = sorted(np.argsort(-w, kind="stable")[:b].tolist())
            assert top == deterministic_layers(pattern, 12, b)
    w = pattern_profile("triangle", 12)
    assert (np.diff(w) < 0).all()
    assert (np.diff(pattern_profile("inverted_triangle", 12)) > 0).all()


def test_nested_sets_make_monotone_profiles():
    # larger budgets contain the smaller ones for the ranked patterns
    for pattern in ("triangle", "inverted_triangle", "bottleneck"):
        for b in range(1, 12):
            assert set(deterministic_layers(pattern, 12, b)) <= set(deterministic_layers(pattern, 12, b + 1))


def test_unknown_pattern():
    with pytest.raises(ValueError, match="unknown pattern"):
        deterministic_layers("diamond", 12, 3)
