"""Declared resource limits (clients.limits): exact feasibility, restricted distributions, refusals."""

import itertools
import json

import numpy as np
import pytest

from fedhello.allocation import available_strategies, build_strategy
from fedhello.allocation.base import ClientSlot
from fedhello.allocation.patterns import PATTERNS
from fedhello.allocation.preview import preview
from fedhello.allocation.resources import (
    BatchShape, Capacity, LayerCosts, Limits, LinearCost, ResourceModel, fits, max_count, predict_for_batches,
    predict_for_shape, time_clock, window_floors,
)
from fedhello.allocation.samplers import inclusion_probabilities
from fedhello.config import StrategyConfig, build_config
from fedhello.errors import ConfigError, FedHelloError
from helpers import DROP, merged, small_raw

L = 6
# own costs differ per layer (the window must take the worst k-subset, not the top block)
COSTS = LayerCosts(
    memory=LinearCost(20e6, (12e6,) * L, (1e6, 1.5e6, 1e6, 4e6, 1e6, 1.2e6)),
    step_time=LinearCost(0.01, (0.02,) * L, (0.001, 0.002, 0.001, 0.003, 0.001, 0.001)),
    upload=(0.1e6, 0.1e6, 0.1e6, 0.2e6, 0.1e6, 0.1e6),
)


def brute_floor(costs, cap, k):
    """Smallest m such that every k-subset of [m, L) fits (L when the top block does not)."""
    n = costs.num_layers
    for m in range(0, n - k + 1):
        if all(fits(costs, cap, s) for s in itertools.combinations(range(m, n), k)):
            return m
    return n


@pytest.mark.parametrize("seed", range(4))
def test_window_floors_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    costs = LayerCosts(
        LinearCost(float(rng.uniform(0, 5)), tuple(rng.uniform(0, 3, L)), tuple(rng.uniform(0, 3, L))),
        LinearCost(0.1, tuple(rng.uniform(0, 1, L)), tuple(rng.uniform(0, 1, L))),
        tuple(rng.uniform(1, 2, L)),
    )
    for mem in (8.0, 12.0, 18.0):
        for time_s in (None, 9.0):
            cap = Capacity(Limits(memory_bytes=mem, time_s=time_s, upload_bytes=7.0), steps=3)
            floors = window_floors(costs, cap)
            assert list(floors) == [brute_floor(costs, cap, k) for k in range(1, L + 1)]


def slots_for(model, budgets, groups):
    return [model.slot(ClientSlot(i, g, budgets[g])) for i, g in enumerate(groups)]


LIMITS = [Limits.from_mb(memory_mb=63), Limits.from_mb(memory_mb=80, time_s=0.5), Limits()]


def strategy_cfgs():
    for name in available_strategies():
        if name in ("gd-hla", "rgd-hla", "fedhello"):
            for pat in PATTERNS:
                yield name, {"pattern": pat, "warmup_rounds": 2, "fim_every": 1}
        else:
            yield name, {"warmup_rounds": 2, "fim_every": 1}


@pytest.mark.parametrize("name,opts", list(strategy_cfgs()))
def test_no_drawn_set_is_infeasible_under_adversarial_scores(name, opts):
    budgets = [6, 6, 6]
    groups = [0, 1, 2] * 4
    model = ResourceModel(COSTS, {i: Capacity(LIMITS[g], steps=4) for i, g in enumerate(groups)})
    strat = build_strategy(StrategyConfig(name=name, **opts), L, budgets)
    if name in ("hetlora", "flexlora"):
        with pytest.raises(ConfigError, match="trains every layer"):
            model.check_clients(strat, [ClientSlot(i, g, 6) for i, g in enumerate(groups)])
        return
    slots = [s for s in slots_for(model, budgets, groups) if strat.eligible(s)]
    if name == "exclusive":  # only the group whose limits afford every layer takes part
        assert {s.group for s in slots} == {2}
    # the Fisher scores an attacker would pick: all mass on the layers a weak client cannot reach
    adversarial = [np.array([1e9, 1e9, 0, 0, 0, 0.0]), np.array([1e6, 0, 0, 0, 0, 1e-9])]
    for t in range(12):
        plan = strat.allocate(t, slots, np.random.default_rng([t, 5]), lambda t=t: adversarial[t % 2])
        for s in slots:
            layers = plan.allocations[s.id]
            assert layers == sorted(set(layers)) and all(0 <= l < L for l in layers)
            if name != "fedit":
                assert fits(COSTS, model.capacities[s.id], layers), (name, s, layers)
        if name != "fedit":
            model.check_plan(strat, plan.allocations)
        else:  # the unconstrained reference trains everything, limits or not
            assert all(v == list(range(L)) for v in plan.allocations.values())


def test_counts_and_floors_of_a_hand_case():
    model = ResourceModel(COSTS, {0: Capacity(LIMITS[0], 4), 1: Capacity(LIMITS[1], 4), 2: Capacity(LIMITS[2], 4)})
    # memory of the top-k block: 20 + 12k + own: 62.2 MB for k=3 fits 63, 75.2 MB for k=4 does not
    s0, s1, s2 = (model.slot(ClientSlot(i, i, 6)) for i in range(3))
    assert (s0.budget, s1.budget, s2.budget) == (3, 4, 6)
    assert s2.floors is None  # {}: no limit
    # k=2 for group 0: a 2-set with lowest layer 2 costs up to 20+48+1+4=73 > 63; lowest 3 at most 20+36+4+1.2=61.2
    assert s0.floors[1] == 3 and s0.floors[2] == 3
    assert max_count(s0.floors) == 3


def test_restricted_distribution_equals_hand_renormalisation():
    # rgd-hla bottleneck, L=6, budgets 2,4,6: p = counts/sum; a client of count 2 limited to layers 3..5
    cfg = StrategyConfig(name="rgd-hla", pattern="bottleneck")
    strat = build_strategy(cfg, L, [2, 4, 6])
    p = np.array([3, 2, 1, 1, 2, 3], dtype=float) / 12  # bottleneck counts for 2/4/6 of 6
    np.testing.assert_allclose(strat._prior(), p)
    floors = (3, 3, 3, L, L, L)
    slot = ClientSlot(0, 0, 2, floors)
    # hand: weights (1, 2, 3)/6 on layers 3, 4, 5; inclusion 2 x w capped at 1 with the excess
    # shared: layer 5 gets 1, layers 3 and 4 share 1 in ratio 1:2
    expected = np.array([0, 0, 0, 1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(np.r_[np.zeros(3), inclusion_probabilities(p[3:], 2)], expected)
    n = 6000
    rng = np.random.default_rng(0)
    freq = np.zeros(L)
    for _ in range(n):
        layers = strat.allocate(0, [slot], rng).allocations[0]
        assert len(layers) == 2 and min(layers) >= 3
        freq[layers] += 1
    freq /= n
    # 5 standard errors of a Bernoulli frequency
    assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1e-12), freq


def test_limit_that_fits_nothing_is_refused_with_the_cheapest_cost():
    model = ResourceModel(COSTS, {0: Capacity(Limits.from_mb(memory_mb=30), 4)}, {0: "clients.limits[0]"})
    with pytest.raises(ConfigError) as err:
        model.slot(ClientSlot(0, 0, 6))
    # cheapest single set: the top layer, 20 + 12 + 1.2 = 33.2 MB
    assert str(err.value) == ("clients.limits[0]: memory_mb 30 MB fits no layer set: the cheapest set, [5], "
                              "needs 33.2 MB")
    model = ResourceModel(COSTS, {0: Capacity(Limits.from_mb(time_s=0.1), 4)}, {0: "clients.limits[0]"})
    with pytest.raises(ConfigError, match=r"time_s 0.1 s fits no layer set: .*\[5\], needs 0.124 s over 4 local"):
        model.slot(ClientSlot(0, 0, 6))


@pytest.mark.parametrize("value,needle", [
    ("[{memory_mb: -1}, {}, {}]", "clients.limits.0.memory_mb"),
    ("[{memory_mb: 0}, {}, {}]", "clients.limits.0.memory_mb"),
    ("[{}, {time_s: .nan}, {}]", "clients.limits.1.time_s"),
    ("[{}, {}, {upload_mb: .inf}]", "clients.limits.2.upload_mb"),
    ("[{memory_gb: 3}, {}, {}]", "clients.limits.0.memory_gb"),
    ("[{memory_mb: 60MB}, {}, {}]", "clients.limits.0.memory_mb"),
    ("[{}, {}]", "clients.limits has 2 mappings but clients.budgets has 3 groups"),
    ("[{}, {}, {}, {}]", "clients.limits has 4 mappings"),
])
def test_bad_limits_are_refused_naming_the_key(value, needle):
    with pytest.raises(ConfigError) as err:
        build_config(None, [f"clients.limits={value}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_depth_trains_the_deepest_affordable_block():
    model = ResourceModel(COSTS, {i: Capacity(LIMITS[i], 4) for i in range(3)})
    strat = build_strategy(StrategyConfig(name="depth"), L, [6, 6, 6])
    slots = [model.slot(ClientSlot(i, i, 6)) for i in range(3)]
    plan = strat.allocate(0, slots, np.random.default_rng(0))
    assert plan.allocations == {0: [3, 4, 5], 1: [2, 3, 4, 5], 2: [0, 1, 2, 3, 4, 5]}
    # with count budgets alone: the top-b block
    plan = strat.allocate(0, [ClientSlot(0, 0, 2), ClientSlot(1, 1, 4)], np.random.default_rng(0))
    assert plan.allocations == {0: [4, 5], 1: [2, 3, 4, 5]}


def test_unlimited_clients_draw_exactly_as_before():
    # floors None must leave every strategy's draws unchanged (same rng consumption)
    from fedhello.allocation.samplers import sample_layers

    strat = build_strategy(StrategyConfig(name="rgd-hla", pattern="bottleneck"), L, [2, 4, 6])
    a = strat.allocate(3, [ClientSlot(0, 0, 2), ClientSlot(1, 1, 4)], np.random.default_rng(9)).allocations
    rng = np.random.default_rng(9)
    p = strat._prior()
    assert a == {0: sample_layers(p, 2, rng), 1: sample_layers(p, 4, rng)}


def write_profile(path):
    path.write_text(json.dumps({"costs": COSTS.to_json()}))
    return path


def test_preview_restricts_and_prices(tmp_path):
    out = preview("fedra", None, L, [6, 6, 6], None, 12, 6, 4, seed=3, costs=COSTS,
                  limits=LIMITS, steps=4)
    for r in out["rounds"]:
        for c in r["clients"]:
            cap = Capacity(LIMITS[c["group"]], 4)
            assert fits(COSTS, cap, c["layers"])
            assert c["predicted"]["memory_bytes"] == pytest.approx(COSTS.memory_bytes(c["layers"]))
            assert len(c["layers"]) == [3, 4, 6][c["group"]]


def cfg_for(tiny_bert, **over):
    """A 2-round run of the tiny 3-layer BERT on demo data (as tests/test_engine_strategies.py)."""
    raw = small_raw(
        tiny_bert, seed=1, data={"val_fraction": 0.1}, partition={"name": "dirichlet", "alpha": 1.0},
        clients={"num_clients": 6, "per_round": 3, "fractions": DROP, "budgets": [1, 2, 3]},
        train={"lr": 0.003, "max_steps": 1},
    )
    return build_config(merged(raw, over))


COSTS3 = LayerCosts(
    memory=LinearCost(10e6, (10e6,) * 3, (1e6,) * 3),
    step_time=LinearCost(0.01, (0.01,) * 3, (0.001,) * 3),
    upload=(0.05e6,) * 3,
)


def test_preview_and_run_draw_the_same_sets(tiny_bert, tmp_path, one_torch_thread):
    from fedhello.run.experiment import run_experiment
    from fedhello.run.rundir import RunDir

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"costs": COSTS3.to_json()}))
    # group 0 affords one layer ([2]: 21 MB, [1]: 31 MB; [1, 2]: 32 MB), group 1 two (any pair: 42 MB), group 2 all
    limits = [{"memory_mb": 31}, {"memory_mb": 42}, {}]
    cfg = cfg_for(tiny_bert, rounds=2, strategy={"name": "rgd-hla", "pattern": "bottleneck"},
                  clients={"budgets": [3, 3, 3], "limits": limits, "cost_profile": str(profile)})
    run_experiment(cfg, tmp_path / "run")
    recs = RunDir(tmp_path / "run").read_metrics()
    pv = preview("rgd-hla", "bottleneck", 3, [3, 3, 3], cfg.clients.fractions, 6, 3, 2, seed=cfg.seed,
                 costs=COSTS3, limits=[Limits.from_mb(**g) for g in limits])
    for rec, prev in zip(recs, pv["rounds"]):
        assert {c["id"]: c["layers"] for c in rec["clients"]} == {c["id"]: c["layers"] for c in prev["clients"]}
        for c in rec["clients"]:
            assert c["predicted_memory_bytes"] == pytest.approx(COSTS3.memory_bytes(c["layers"]))
            lim = limits[c["group"]].get("memory_mb")
            assert c.get("memory_limit_bytes") == (lim * 1e6 if lim else None)
            assert c["predicted_memory_bytes"] <= (lim or 1e9) * 1e6
            assert len(c["layers"]) == [1, 2, 3][c["group"]]
    assert LayerCosts.load(tmp_path / "run" / "profile.json").to_json() == COSTS3.to_json()
    # clients.json: the configured budgets, and the counts the limits leave (what the params count)
    setup = json.loads((tmp_path / "run" / "clients.json").read_text())
    assert setup["budgets"] == [3, 3, 3] and setup["counts_under_limits"] == [1, 2, 3]
    p = setup["trainable_params_per_group"]
    assert p[0] < p[1] < p[2] and p[1] - p[0] == p[2] - p[1]  # one LoRA layer more per group


def test_run_refuses_an_impossible_limit_before_touching_the_run_dir(tiny_bert, tmp_path):
    from fedhello.run.experiment import run_experiment

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"costs": COSTS3.to_json()}))
    cfg = cfg_for(tiny_bert, clients={"limits": [{"memory_mb": 20}, {}, {}], "cost_profile": str(profile)})
    with pytest.raises(FedHelloError) as err:
        run_experiment(cfg, tmp_path / "run")
    assert str(err.value) == ("clients.limits[0]: memory_mb 20 MB fits no layer set: the cheapest set, [2], "
                              "needs 21 MB")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_limit_costs_per_group_and_plot(tmp_path):
    from fedhello.report.plots import limit_costs, limit_plot

    recs = [
        {"clients": [
            {"group": 0, "predicted_memory_bytes": 30e6, "train_memory_bytes": 29e6, "memory_limit_bytes": 31e6,
             "predicted_time_s": 0.1, "train_time_s": 0.2},
            {"group": 1, "predicted_memory_bytes": 40e6, "train_time_s": 0.3, "predicted_time_s": 0.2},
        ]},
        {"clients": [{"group": 0, "predicted_memory_bytes": 31e6, "train_memory_bytes": 30.5e6,
                      "memory_limit_bytes": 31e6, "predicted_time_s": 0.1, "train_time_s": 0.1}]},
    ]
    rows = limit_costs(recs, 2)
    assert rows[0]["memory_limit_bytes"] == 31e6 and rows[0]["predicted_memory_bytes"] == 31e6
    assert rows[0]["train_memory_bytes"] == 30.5e6 and rows[0]["measured_time_s"] == 0.2
    assert rows[1]["memory_limit_bytes"] is None and rows[1]["train_memory_bytes"] is None
    assert limit_plot(recs, 2, "t", tmp_path / "limits.png").stat().st_size > 0
    assert limit_plot([{"clients": [{"group": 0}]}], 1, "t", tmp_path / "none.png") is None


def test_max_memory_over_limit():
    from fedhello.federation.server import max_memory_over_limit

    recs = [{"clients": [{"train_memory_bytes": 33e6, "memory_limit_bytes": 30e6},
                         {"train_memory_bytes": 10e6},
                         {"train_memory_bytes": 20e6, "memory_limit_bytes": 25e6}]}]
    assert max_memory_over_limit(recs) == pytest.approx(1.1)
    assert max_memory_over_limit([{"clients": [{"train_memory_bytes": 10e6}]}]) is None


def test_run_with_limits_and_no_profile_measures_costs_at_start(tiny_bert, tmp_path, one_torch_thread):
    from fedhello.run.experiment import run_experiment
    from fedhello.run.rundir import RunDir

    # group 0: a memory limit every set fits (so the measured costs cannot refuse it); the run must
    # still measure, save profile.json, predict every client's costs and report the worst overshoot
    cfg = cfg_for(tiny_bert, clients={"budgets": [3, 3, 3], "limits": [{"memory_mb": 1e5}, {}, {}]})
    summary = run_experiment(cfg, tmp_path / "run")
    costs = LayerCosts.load(tmp_path / "run" / "profile.json")
    assert costs.num_layers == 3
    recs = RunDir(tmp_path / "run").read_metrics()
    limited = [c for r in recs for c in r["clients"] if c["group"] == 0]
    assert costs.meta["tokens_per_batch"] == 8 * costs.meta["seq_len"] and time_clock(costs) == "cpu"
    for r in recs:
        for c in r["clients"]:
            # the bound the limits are checked with: the worst-case step (max_steps 1: one step)
            assert c["bound_memory_bytes"] == pytest.approx(costs.memory_bytes(c["layers"]))
            assert c["bound_time_s"] == pytest.approx(costs.step_seconds(c["layers"]))
            # the estimate: what the client reports it trained, priced by the profile
            assert c["train_batches"] == 1 and 0 < c["train_max_batch_tokens"] == c["train_tokens"]
            mem, sec = predict_for_batches(costs, c["layers"], [c["train_tokens"]])
            assert (c["predicted_memory_bytes"], c["predicted_time_s"]) == (mem, sec)
            assert c["predicted_memory_bytes"] <= c["bound_memory_bytes"] and c["predicted_time_clock"] == "cpu"
            assert c["train_memory_bytes"] > 0
    assert limited and all(c["memory_limit_bytes"] == 1e11 for c in limited)
    assert summary["max_memory_over_limit"] == pytest.approx(max(c["train_memory_bytes"] for c in limited) / 1e11)
    # per group: measured over predicted, time on the CPU clock the profile measured
    for g, row in enumerate(summary["cost_prediction"]):
        cs = [c for r in recs for c in r["clients"] if c["group"] == g]
        if not cs:
            assert row is None
            continue
        mem = [c["train_memory_bytes"] / c["predicted_memory_bytes"] for c in cs]
        tim = [c["train_cpu_time_s"] / c["predicted_time_s"] for c in cs]
        assert row["client_rounds"] == len(cs) and row["time_clock"] == "cpu"
        assert row["memory_measured_over_predicted_max"] == pytest.approx(max(mem))
        assert row["memory_measured_over_predicted_median"] == pytest.approx(float(np.median(mem)))
        assert row["time_measured_over_predicted_max"] == pytest.approx(max(tim))


def test_allocate_command_previews_costs_under_limits(tmp_path, capsys):
    from fedhello.cli import main

    profile = write_profile(tmp_path / "profile.json")
    args = ["allocate", "--strategy", "rgd-hla", "--pattern", "bottleneck", "--layers", "6", "--budgets", "2,4,6",
            "--clients", "12", "--per-round", "6", "--rounds", "3", "--profile", str(profile)]
    assert main(args + ["--limits", "[{memory_mb: 63}, {memory_mb: 80, time_s: 0.5}, {}]", "--steps", "4",
                        "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for r in out["rounds"]:
        for c in r["clients"]:
            assert fits(COSTS, Capacity(LIMITS[c["group"]], 4), c["layers"])
            assert c["predicted"]["time_s"] == pytest.approx(4 * COSTS.step_seconds(c["layers"]))
    assert main(args + ["--limits", "[{memory_mb: 63}, {}, {}]"]) == 0
    assert "group 0: memory" in capsys.readouterr().out
    assert main(args + ["--limits", "[{memory_mb: -3}, {}, {}]"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: config key '--limits[0].memory_mb': Input should be greater than 0"
    assert main(args + ["--limits", "[{memory_mb: 20}, {}, {}]"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --limits[0]: memory_mb 20 MB fits no layer set: the cheapest set, [5], needs 33.2 MB"


def test_validate_refuses_an_impossible_limit_with_a_profile(tiny_bert, tmp_path):
    from fedhello.run.validate import validate_config

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"costs": COSTS3.to_json()}))
    ok = cfg_for(tiny_bert, clients={"limits": [{"memory_mb": 31}, {}, {}], "cost_profile": str(profile)})
    assert validate_config(ok).num_layers == 3
    bad = cfg_for(tiny_bert, clients={"limits": [{"memory_mb": 20}, {}, {}], "cost_profile": str(profile)})
    with pytest.raises(ConfigError, match=r"^clients.limits\[0\]: memory_mb 20 MB fits no layer set"):
        validate_config(bad)


def test_a_limit_fitting_nothing_is_refused_even_for_fedit():
    model = ResourceModel(COSTS, {0: Capacity(Limits.from_mb(memory_mb=30), 4)}, {0: "clients.limits[0]"})
    with pytest.raises(ConfigError, match="fits no layer set"):
        model.check_clients(build_strategy(StrategyConfig(name="fedit"), L, [6]), [ClientSlot(0, 0, 6)])


def test_affordable_counts_stay_downward_closed():
    # a fitted model with a negative coefficient: the top-2 block costs less than the top layer alone
    costs = LayerCosts(LinearCost(10.0, (0, 0, 0, 5.0), (0, 0, -4.0, 3.0)), LinearCost(0, (0,) * 4, (0,) * 4),
                       (1.0,) * 4)
    cap = Capacity(Limits(memory_bytes=16.0))
    assert fits(costs, cap, [2, 3]) and not fits(costs, cap, [3])
    floors = window_floors(costs, cap)
    assert floors == (4, 4, 4, 4) and max_count(floors) == 0
    model = ResourceModel(costs, {0: cap}, {0: "node 7"})
    with pytest.raises(ConfigError) as err:
        model.slot(ClientSlot(0, 0, 4))
    assert str(err.value) == ("node 7: its limits fit no block of top layers together: the top layer, [3], "
                              "needs memory_mb 1.8e-05 MB (limit 1.6e-05 MB)")


def test_limits_that_leave_one_set_per_count_make_every_restricting_strategy_the_depth_baseline():
    # the resource experiment's case (results/resources-banking77): limits at the top-3 and
    # top-4 blocks' memory with budgets 3/4/6 leave each limited client one affordable set of
    # its count, so every restricting strategy draws exactly depth's sets, round by round
    top = [COSTS.memory_bytes(range(L - k, L)) / 1e6 for k in (3, 4)]
    limits = [Limits.from_mb(memory_mb=top[0] * 1.001), Limits.from_mb(memory_mb=top[1] * 1.001), Limits()]

    def sets(name, **opts):
        out = preview(name, None, L, [3, 4, 6], None, 12, 6, 12, seed=2, costs=COSTS, limits=limits,
                      scores=[1, 2, 3, 4, 5, 9], **opts)
        return [[(c["id"], c["layers"]) for c in r["clients"]] for r in out["rounds"]]

    depth = sets("depth")
    assert {tuple(layers) for r in depth for _, layers in r} == {(3, 4, 5), (2, 3, 4, 5), (0, 1, 2, 3, 4, 5)}
    for name, opts in [("fedra", {}), ("rgd-hla", {}), ("fim-hla", {}), ("fedhello", {"warmup_rounds": 4})]:
        assert sets(name, **opts) == depth, name
