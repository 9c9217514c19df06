"""Layer samplers: exact inclusion probabilities (systematic) vs the reference's flattening draw."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import itertools

import numpy as np
import pytest

from fedhello.allocation.patterns import pattern_probabilities
from fedhello.allocation.samplers import (
    inclusion_probabilities,
    sample_layers,
    systematic_sample,
    weighted_without_replacement,
)

BOTTLENECK = pattern_probabilities("bottleneck", 12, [6, 9, 12])
DRAWS = 20000


def _frequencies(sampler, p, b, seed=0, n=DRAWS):
    rng = np.random.default_rng(seed)
    freq = np.zeros(len(p))
    pairs = np.zeros((len(p), len(p)))
    for _ in range(n):
        layers = sampler(p, b, rng)
        assert len(layers) == b, layers
        assert len(set(layers)) == b, f"layer drawn twice: {layers}"
        assert layers == sorted(layers)
        freq[layers] += 1
        pairs[np.ix_(layers, layers)] += 1
    return freq / n, pairs


def test_inclusion_probabilities_are_b_times_p_when_uncapped():
    pi = inclusion_probabilities(BOTTLENECK, 6)
    assert np.allclose(pi, 6 * BOTTLENECK, atol=1e-12)
    assert pi.sum() == pytest.approx(6)


def test_capped_redistribution_exact():
    # one cap: 2*[.6,.2,.1,.1] = [1.2, .4, .2, .2] -> 1, then mass 1 over [.2,.1,.1]
    pi = inclusion_probabilities([0.6, 0.2, 0.1, 0.1], 2)
    assert np.allclose(pi, [1.0, 0.5, 0.25, 0.25], atol=1e-12)
    # cascade: 3*[.5,.3,.1,.05,.05] caps layer 0; the redistributed share caps layer 1 too
    pi = inclusion_probabilities([0.5, 0.3, 0.1, 0.05, 0.05], 3)
    assert np.allclose(pi, [1.0, 1.0, 0.5, 0.25, 0.25], atol=1e-12)
    # unnormalised weights are fine
    assert np.allclose(inclusion_probabilities([5, 3, 1, 0.5, 0.5], 3), pi)
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.dirichlet(np.full(12, 0.3))
        for b in range(0, 13):
            pi = inclusion_probabilities(p, b)
            assert pi.sum() == pytest.approx(b, abs=1e-9)
            assert (pi <= 1.0).all() and (pi >= 0).all()
            # uncapped layers keep the proportions of p
            free = pi < 1.0 - 1e-12
            if free.sum() >= 2 and p[free].sum() > 0:
                ratio = pi[free] / np.where(p[free] > 0, p[free], np.nan)
                ratio = ratio[np.isfinite(ratio)]
                assert np.allclose(ratio, ratio[0])


def test_zero_weight_layers_only_fill_when_needed():
    assert np.allclose(inclusion_probabilities([1, 0, 0, 0], 2), [1, 1 / 3, 1 / 3, 1 / 3])
    rng = np.random.default_rng(1)
    for _ in range(200):
        assert 0 in systematic_sample([1, 0, 0, 0], 2, rng)
        assert 0 in weighted_without_replacement([1, 0, 0, 0], 2, rng)
    # zero-weight layers are never drawn while enough positive ones exist
    p = pattern_probabilities("triangle", 12, [2, 4])  # layers 4..11 have weight 0
    assert (p[4:] == 0).all()
    freq, _ = _frequencies(systematic_sample, p, 2, n=2000)
    assert (freq[4:] == 0).all()


@pytest.mark.parametrize("b", [6, 9])
def test_systematic_inclusion_frequencies_match_target(b):
    pi = inclusion_probabilities(BOTTLENECK, b)
    freq, pairs = _frequencies(systematic_sample, BOTTLENECK, b)
    # The count of layer l over n independent draws is Binomial(n, pi_l): its
    # frequency has standard error sqrt(pi(1-pi)/n) (<= 0.0034 at n=20000).
    # 5 standard errors: a false failure has probability < 1e-6 per layer.
    se = np.sqrt(pi * (1 - pi) / DRAWS)
    assert (np.abs(freq - pi) <= 5 * se + 1e-12).all(), (freq, pi)
    # pi=1 layers are always drawn (b=9: the six end layers)
    assert (freq[pi == 1.0] == 1.0).all()
    # the random layer order per draw makes joint inclusion non-degenerate:
    # with a fixed order, neighbours whose intervals cannot share a point would
    # never be drawn together; here every pair of layers is drawn together
    for i, j in itertools.combinations(range(12), 2):
        assert pairs[i, j] > 0, (i, j)


def test_weighted_without_replacement_flattens_the_pattern():
    b = 6
    pi = inclusion_probabilities(BOTTLENECK, b)
    freq, _ = _frequencies(weighted_without_replacement, BOTTLENECK, b)
    se = np.sqrt(pi * (1 - pi) / DRAWS)
    z = (freq - pi) / se
    # heavy (end) layers are drawn measurably less than b*p, light (middle) ones more
    assert (z[pi > 0.6] < -8).all(), z
    assert (z[(pi > 0.2) & (pi < 0.25)] > 8).all(), z
    # the spread between the ends and the middle shrinks: flattening
    assert freq.max() - freq.min() < pi.max() - pi.min() - 0.05


def test_budget_at_least_l_gives_all_layers():
    rng = np.random.default_rng(0)
    for sampler in ("systematic", "weighted_without_replacement"):
        assert sample_layers(BOTTLENECK, 12, rng, sampler) == list(range(12))
        assert sample_layers(BOTTLENECK, 15, rng, sampler) == list(range(12))
        assert sample_layers(BOTTLENECK, 0, rng, sampler) == []
    assert np.allclose(inclusion_probabilities(BOTTLENECK, 12), 1)


def test_reproducible_and_validated():
    a = [systematic_sample(BOTTLENECK, 6, np.random.default_rng(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    with pytest.raises(ValueError):
        systematic_sample([0.5, -0.1, 0.6], 1, np.random.default_rng(0))
    with pytest.raises(ValueError):
        systematic_sample([0, 0, 0], 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_layers(BOTTLENECK, 3, np.random.default_rng(0), "gumbel")
