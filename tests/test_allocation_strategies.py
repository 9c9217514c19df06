"""HLA strategies, Exclusive/Straggler, client groups and sampling, and the preview (Fed-HeLLo, arXiv:2506.12213)."""

import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json

import numpy as np
import pytest

from fedhello.allocation import ClientSlot, available_strategies, build_strategy
from fedhello.allocation.clients import allocation_rng, assign_groups, group_sizes, sample_clients
from fedhello.allocation.fisher import kmeans_tiers, tier_weights
from fedhello.allocation.patterns import pattern_probabilities
from fedhello.allocation.preview import (
    SCORES_REQUIRED,
    layer_counts,
    preview,
    render_distribution,
)
from fedhello.cli import add_allocate_parser, run_allocate
from fedhello.config import StrategyConfig
from fedhello.errors import ConfigError

L = 12
BUDGETS = [6, 9, 12]
PRIOR = pattern_probabilities("bottleneck", L, BUDGETS)
CLIENTS = [ClientSlot(0, 0, 6), ClientSlot(1, 1, 9), ClientSlot(2, 2, 12), ClientSlot(3, 0, 6)]

# two score vectors with clear tiers (high / mid / low blocks)
S1 = np.array([10, 10, 10, 1, 1, 1, 1, 1, 1, 5, 5, 5], dtype=float)
S2 = S1[::-1].copy()
T1 = [2, 2, 2, 0, 0, 0, 0, 0, 0, 1, 1, 1]
W1 = np.array([3, 3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 2]) / 21
W2 = W1[::-1].copy()


# the paper's Fisher weights (raw-score tiers, no floor); the starvation guard is tested on its own
PAPER = {"fim_scale": "raw", "prob_floor": 0.0}


def make(name, **kw):
    return build_strategy(StrategyConfig(name=name, **{**PAPER, **kw}), L, BUDGETS)


class Provider:
    """Returns S1, S2, S1, ... and records the rounds it was called in."""

    def __init__(self):
        self.calls = []
        self.round = None

    def __call__(self):
        self.calls.append(self.round)
        return (S1 if len(self.calls) % 2 == 1 else S2).copy()


def run_rounds(strategy, rounds, provider=None, clients=CLIENTS, seed=0):
    plans = []
    for t in rounds:
        if provider is not None:
            provider.round = t
        plans.append(strategy.allocate(t, clients, allocation_rng(seed, t), provider))
    return plans


def check_plan(plan, clients=CLIENTS):
    assert set(plan.allocations) == {c.id for c in clients}
    for c in clients:
        layers = plan.allocations[c.id]
        assert layers == sorted(set(layers)) and len(layers) == min(c.budget, L)
        assert all(0 <= x < L for x in layers)


def test_registered():
    for name in ("gd-hla", "rgd-hla", "fim-hla", "fedhello", "exclusive", "straggler", "fedit", "fedra"):
        assert name in available_strategies()


def test_gd_hla_fixed_sets():
    s = make("gd-hla", pattern="bottleneck")
    for plan in run_rounds(s, range(3)):
        check_plan(plan)
        assert plan.allocations[0] == plan.allocations[3] == [0, 1, 2, 9, 10, 11]
        assert plan.allocations[1] == [0, 1, 2, 3, 4, 8, 9, 10, 11]
        assert plan.allocations[2] == list(range(12))
    assert make("gd-hla", pattern="triangle").allocate(0, CLIENTS[:1], allocation_rng(0, 0)).allocations[0] == list(
        range(6)
    )


def test_rgd_hla_uses_pattern_probabilities_and_all_layers_at_budget_l():
    s = make("rgd-hla", pattern="bottleneck")
    plans = run_rounds(s, range(200))
    counts = np.zeros(L)
    for plan in plans:
        check_plan(plan)
        assert np.allclose(plan.info["layer_probs"], PRIOR)
        assert plan.allocations[2] == list(range(12))
        counts[plan.allocations[0]] += 1
        counts[plan.allocations[3]] += 1
    # budget-6 clients: inclusion 6*p_l; 400 draws, standard error <= 0.025, 5 sigma
    pi = 6 * PRIOR
    assert (np.abs(counts / 400 - pi) <= 5 * np.sqrt(pi * (1 - pi) / 400)).all()
    # different rounds give different draws
    assert len({tuple(p.allocations[0]) for p in plans}) > 10


def test_rgd_hla_sampler_option():
    s = make("rgd-hla", pattern="bottleneck", sampler="weighted_without_replacement")
    plan = s.allocate(0, CLIENTS, allocation_rng(0, 0))
    check_plan(plan)


def test_fim_hla_schedule_and_cache():
    s = make("fim-hla", fim_every=3)
    prov = Provider()
    plans = run_rounds(s, range(8), prov)
    assert prov.calls == [0, 3, 6]
    for t, plan in enumerate(plans):
        check_plan(plan)
        expected = W1 if t < 3 or t >= 6 else W2
        assert np.allclose(plan.info["layer_probs"], expected), t
        assert ("fim_scores" in plan.info) == (t in (0, 3, 6))
    assert plans[0].info["fim_scores"] == S1.tolist()
    assert plans[0].info["fim_tiers"] == T1
    assert plans[3].info["fim_tiers"] == T1[::-1]


def test_fim_hla_score_weights():
    s = make("fim-hla", fim_weights="scores")
    plan = s.allocate(0, CLIENTS, allocation_rng(0, 0), lambda: S1)
    assert np.allclose(plan.info["layer_probs"], S1 / S1.sum())


def test_fim_needs_scores():
    with pytest.raises(ValueError, match="ScoreProvider"):
        make("fim-hla").allocate(0, CLIENTS, allocation_rng(0, 0), None)
    s = make("fedhello", warmup_rounds=2)
    s.allocate(0, CLIENTS, allocation_rng(0, 0), None)  # warm-up needs no scores
    with pytest.raises(ValueError, match="ScoreProvider"):
        s.allocate(2, CLIENTS, allocation_rng(0, 2), None)


@pytest.mark.parametrize("combine", ["product", "fim", "reference"])
def test_fedhello_schedule_and_combine(combine):
    W, E = 3, 2
    s = make("fedhello", warmup_rounds=W, fim_every=E, combine=combine, pattern="bottleneck")
    prov = Provider()
    plans = run_rounds(s, range(9), prov)
    assert prov.calls == [3, 5, 7]
    prod1 = PRIOR * W1 / (PRIOR * W1).sum()
    prod2 = PRIOR * W2 / (PRIOR * W2).sum()
    if combine == "product":
        expected = [PRIOR] * 3 + [prod1, prod1, prod2, prod2, prod1, prod1]
    elif combine == "fim":
        expected = [PRIOR] * 3 + [W1, W1, W2, W2, W1, W1]
    else:  # reference: FIM only in the recomputation round
        expected = [PRIOR] * 3 + [W1, PRIOR, W2, PRIOR, W1, PRIOR]
    for t, plan in enumerate(plans):
        check_plan(plan)
        assert np.allclose(plan.info["layer_probs"], expected[t]), (combine, t)
        assert ("fim_tiers" in plan.info) == (t in (3, 5, 7))
    # the tiers used are the exact k-means tiers of the scores
    assert plans[3].info["fim_tiers"] == kmeans_tiers(S1, 3).tolist() == T1
    assert np.allclose(tier_weights(T1, 3), W1)


def test_fedhello_zero_warmup_starts_with_fim():
    s = make("fedhello", warmup_rounds=0, fim_every=5)
    prov = Provider()
    run_rounds(s, range(6), prov)
    assert prov.calls == [0, 5]


@pytest.mark.parametrize("name", ["fim-hla", "fedhello"])
def test_state_dict_round_trip_continues_identically(name):
    kw = {"fim_every": 4} if name == "fim-hla" else {"fim_every": 4, "warmup_rounds": 2}
    full = make(name, **kw)
    prov_full = Provider()
    plans_full = run_rounds(full, range(12), prov_full)

    first = make(name, **kw)
    prov = Provider()
    run_rounds(first, range(7), prov)
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able
    resumed = make(name, **kw)
    resumed.load_state_dict(state)
    # the provider continues its sequence where the first run left it
    plans_resumed = run_rounds(resumed, range(7, 12), prov)
    assert prov.calls == prov_full.calls
    for a, b in zip(plans_full[7:], plans_resumed):
        assert a.allocations == b.allocations
        assert a.info == b.info


def test_exclusive():
    s = make("exclusive")
    assert [s.eligible(c) for c in CLIENTS] == [False, False, True, False]
    plan = s.allocate(0, [CLIENTS[2]], allocation_rng(0, 0))
    assert plan.allocations == {2: list(range(12))}
    with pytest.raises(ValueError):
        s.allocate(0, CLIENTS, allocation_rng(0, 0))
    with pytest.raises(ConfigError, match="no resource group"):
        build_strategy(StrategyConfig(name="exclusive"), 12, [6, 9])


def test_straggler():
    s = make("straggler")
    for plan in run_rounds(s, range(3)):
        assert all(layers == [0, 2, 4, 7, 9, 11] for layers in plan.allocations.values())


# --------------------------------------------------------------------------- clients


def test_group_assignment_and_sampling():
    assert group_sizes(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]
    assert group_sizes(100, [0.5, 0.25, 0.25]) == [50, 25, 25]
    assert group_sizes(7, [0.1, 0.45, 0.45]) == [1, 3, 3]
    groups = assign_groups(30, [1 / 3, 1 / 3, 1 / 3], seed=3)
    assert len(groups) == 30 and sorted(groups) == [0] * 10 + [1] * 10 + [2] * 10
    assert groups == assign_groups(30, [1 / 3, 1 / 3, 1 / 3], seed=3)
    assert groups != assign_groups(30, [1 / 3, 1 / 3, 1 / 3], seed=4)
    picked = sample_clients(range(30), 10, seed=3, round=5)
    assert picked == sorted(set(picked)) and len(picked) == 10
    assert picked == sample_clients(list(range(30))[::-1], 10, seed=3, round=5)
    assert picked != sample_clients(range(30), 10, seed=3, round=6)
    assert sample_clients([4, 2], 10, seed=0, round=0) == [2, 4]


# --------------------------------------------------------------------------- preview


def test_preview_structure():
    out = preview("rgd-hla", "bottleneck", 12, BUDGETS, None, clients=30, per_round=6, rounds=4, seed=1)
    assert out["layers"] == 12
    assert [r["round"] for r in out["rounds"]] == [0, 1, 2, 3]
    groups = assign_groups(30, [1 / 3] * 3, 1)
    for r in out["rounds"]:
        assert len(r["clients"]) == 6
        assert [c["id"] for c in r["clients"]] == sample_clients(range(30), 6, 1, r["round"])
        for c in r["clients"]:
            assert set(c) == {"id", "group", "budget", "layers"}
            assert c["group"] == groups[c["id"]] and c["budget"] == BUDGETS[c["group"]]
            assert len(c["layers"]) == c["budget"]
    json.dumps(out)
    again = preview("rgd-hla", "bottleneck", 12, BUDGETS, None, clients=30, per_round=6, rounds=4, seed=1)
    assert again == out


def test_preview_exclusive_samples_only_eligible():
    out = preview("exclusive", None, 12, BUDGETS, [1 / 3] * 3, clients=30, per_round=5, rounds=3, seed=0)
    assert all(c["budget"] == 12 for r in out["rounds"] for c in r["clients"])


def test_preview_fim_scores():
    with pytest.raises(ConfigError, match="--scores is required"):
        preview("fim-hla", None, 12, BUDGETS, None, clients=10, per_round=3, rounds=2, seed=0)
    # fedhello within warm-up needs no scores
    preview("fedhello", None, 12, BUDGETS, None, clients=10, per_round=3, rounds=2, seed=0, warmup_rounds=2)
    # a warm-up longer than the rounds is refused, as fedhello run refuses it (scores would be ignored)
    for kw in ({"warmup_rounds": 5}, {"warmup_rounds": 5, "scores": S1.tolist()}, {}):
        with pytest.raises(ConfigError, match=r"--warmup-rounds \(strategy.warmup_rounds, default 50\): "
                                              r"\d+ is more than --rounds \(2\)"):
            preview("fedhello", None, 12, BUDGETS, None, clients=10, per_round=3, rounds=2, seed=0, **kw)
    with pytest.raises(ConfigError, match=SCORES_REQUIRED.split(" ")[0]):
        preview("fedhello", None, 12, BUDGETS, None, clients=10, per_round=3, rounds=2, seed=0, warmup_rounds=1)
    out = preview("fim-hla", None, 12, BUDGETS, None, clients=10, per_round=3, rounds=2, seed=0, scores=S1.tolist())
    assert out["rounds"][0]["info"]["fim_tiers"] == T1


def test_render_distribution_shows_bottleneck():
    out = preview("gd-hla", "bottleneck", 12, BUDGETS, None, clients=3, per_round=3, rounds=2, seed=0)
    # one client per budget: the collective distribution is the pattern (twice)
    assert layer_counts(out).tolist() == [6, 6, 6, 4, 4, 2, 2, 2, 4, 6, 6, 6]
    text = render_distribution(out)
    lines = [ln for ln in text.splitlines() if ln.startswith("layer ")]
    assert [int(ln.split()[1]) for ln in lines] == list(range(11, -1, -1))  # output side on top
    bars = [ln.count("#") for ln in lines]
    assert bars[0] == bars[-1] == max(bars)  # wide at both ends
    assert min(bars) == bars[11 - 6] and bars[11 - 6] < bars[11 - 3] < bars[11 - 0]  # narrow in the middle
    assert bars == [40, 40, 40, 27, 13, 13, 13, 27, 27, 40, 40, 40]


def test_cli_allocate(capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_allocate_parser(sub)
    args = parser.parse_args(
        "allocate --strategy fedhello --layers 12 --budgets 6,9,12 --fractions 1/3,1/3,1/3 --clients 20 "
        "--per-round 5 --rounds 4 --seed 2 --warmup-rounds 2 --fim-every 1 --combine fim "
        "--scores 1,1,1,1,1,1,1,1,1,9,9,9 --json".split()
    )
    assert args.func is run_allocate
    assert run_allocate(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layers"] == 12 and len(out["rounds"]) == 4
    assert "fim_tiers" in out["rounds"][2]["info"]
    args = parser.parse_args("allocate --strategy gd-hla --pattern triangle --rounds 1".split())
    assert run_allocate(args) == 0
    text = capsys.readouterr().out
    assert "collective distribution" in text and "layer 11" in text
    with pytest.raises(ConfigError, match="--budgets"):
        run_allocate(parser.parse_args("allocate --strategy gd-hla --budgets 6,x".split()))
    with pytest.raises(ConfigError, match="unknown strategy"):
        run_allocate(parser.parse_args("allocate --strategy nope".split()))



def test_cli_allocate_has_a_flag_per_strategy_option():
    """allocate's strategy flags are generated from the config's strategy section: one per key,
    each reaching the strategy config with its type (no list of flags kept beside the schema)."""
    from fedhello.cli import _strategy_options
    from fedhello.config import StrategyConfig

    parser = argparse.ArgumentParser()
    add_allocate_parser(parser.add_subparsers(dest="command"))
    flags = {a.dest: a for a in parser._subparsers._group_actions[0].choices["allocate"]._actions}
    assert {f"strategy_{k}" for k in StrategyConfig.model_fields if k != "name"} <= set(flags)
    args = parser.parse_args("allocate --strategy hetlora --fim-scale raw --prob-floor 0.5 --fim-tiers 4 "
                             "--ranks 4,8,12 --sampler weighted_without_replacement".split())
    assert _strategy_options(args) == {"fim_scale": "raw", "prob_floor": 0.5, "fim_tiers": 4, "ranks": [4, 8, 12],
                                       "sampler": "weighted_without_replacement"}
    with pytest.raises(SystemExit):
        parser.parse_args("allocate --strategy fedra --fim-scale sqrt".split())  # a Literal's values only


ADVERSARIAL = [
    np.array([1e-12] * (L - 1) + [1e6]),  # the collapse seen on pat-10: all mass on the top layer
    np.array([0.0] * (L - 1) + [1.0]),
    np.array([1e6] + [0.0] * (L - 1)),
    np.array([0.0, 1e9] * (L // 2)),
    np.geomspace(1e-9, 1e3, L),
]


@pytest.mark.parametrize("scores", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
@pytest.mark.parametrize("weights", ["tiers", "scores"])
@pytest.mark.parametrize("name,combine", [("fim-hla", None), ("fedhello", "product"), ("fedhello", "fim"),
                                          ("fedhello", "reference")])
def test_starvation_guard_keeps_every_layer_above_its_floor(scores, weights, name, combine):
    from fedhello.allocation.samplers import inclusion_probabilities

    floor = 0.2
    kw = {"combine": combine, "warmup_rounds": 0} if combine else {}
    s = make(name, fim_scale="log", prob_floor=floor, fim_weights=weights, **kw)
    plan = s.allocate(0, CLIENTS, allocation_rng(0, 0), lambda: scores.copy())
    probs = np.asarray(plan.info["layer_probs"])
    assert probs.sum() == pytest.approx(1.0)
    for b in sorted(set(BUDGETS)):
        pi = inclusion_probabilities(probs, b)
        assert (pi >= floor * b / L - 1e-12).all(), (b, pi)
    # and in the draws: over 300 rounds every layer is trained by the budget-6 clients
    counts = np.zeros(L)
    for t in range(300):
        p = s.allocate(t, CLIENTS, allocation_rng(1, t), lambda: scores.copy())
        counts[p.allocations[0]] += 1
    assert (counts / 300 >= 0.5 * floor * 6 / L).all(), counts


def test_without_the_guard_score_weights_starve_layers():
    from fedhello.allocation.samplers import inclusion_probabilities

    scores = np.array([1e-8] * 6 + [1.0] * 6)  # the lower half scored 1e8 times below the upper half
    paper = make("fim-hla", fim_weights="scores").allocate(0, CLIENTS, allocation_rng(0, 0), lambda: scores.copy())
    pi = inclusion_probabilities(paper.info["layer_probs"], 6)
    assert pi[:6].max() < 1e-7  # a budget-6 client (almost) never trains the lower half
    guarded = make("fim-hla", fim_weights="scores", prob_floor=0.2)
    pi = inclusion_probabilities(guarded.allocate(0, CLIENTS, allocation_rng(0, 0), lambda: scores.copy())
                                 .info["layer_probs"], 6)
    assert pi[:6].min() >= 0.2 * 6 / L
    # raw-score tiers put the 11 lower layers of the pat-10 collapse in the lowest tier
    tiers = make("fim-hla").allocate(0, CLIENTS, allocation_rng(0, 0), lambda: ADVERSARIAL[0].copy()).info["fim_tiers"]
    assert tiers == [0] * (L - 1) + [1]


def test_log_tiers_separate_scores_over_orders_of_magnitude():
    scores = np.array([0.001, 0.002, 0.01, 0.02, 1.0, 2.0] * 2)
    raw = kmeans_tiers(scores, 3)
    from fedhello.allocation.fisher import log_scores

    logt = kmeans_tiers(log_scores(scores), 3)
    assert sorted(set(raw[scores < 0.5].tolist())) == [0]  # raw: every small score in one tier
    assert sorted(set(logt[scores < 0.5].tolist())) == [0, 1]


@pytest.mark.parametrize("change, needle", [
    ({"fim_scores": [1.0, 2.0]}, "fim_scores has shape (2,)"),
    ({"fim_tiers": [0] * (L + 1)}, f"fim_tiers has shape ({L + 1},)"),
    ({"fim_scores": [float("nan")] * L}, "non-finite Fisher scores"),
    ({"fim_round": -3}, "negative Fisher round"),
    ({"fim_tiers": [7] * L}, "fim_tiers outside 0..2"),
    ({"fim_weights": [-1.0] * L}, "not finite non-negative weights"),
    ({"fim_weights": [0.0] * L}, "with a positive sum"),
])
def test_a_tampered_fisher_state_is_refused(change, needle):
    # the strategy state comes from checkpoint.pt, a file a user may hand over
    s = make("fedhello", fim_every=4, warmup_rounds=2)
    run_rounds(s, range(4), Provider())
    state = {**json.loads(json.dumps(s.state_dict())), **change}
    fresh = make("fedhello", fim_every=4, warmup_rounds=2)
    with pytest.raises(ValueError, match=re.escape(needle)):
        fresh.load_state_dict(state)
    assert fresh.fim_weights is None  # nothing half-loaded
