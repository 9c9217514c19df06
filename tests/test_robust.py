"""No single client can ruin a run: every magnitude a client sends is bounded (fedhello.federation.robust).

Each attack runs at unit scale through the Server (``run_round``, ``initialise_head``, the Fisher
score provider) over a crafted runner, or through the Flower path's screening and the Server's
``merge_updates``; the pure bounding functions are checked on exact small tensors.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedhello.config import build_config
from fedhello.errors import FedHelloError
from fedhello.federation.aggregation import aggregate, expected_names
from fedhello.federation.attacks import AttackRunner, attack_stats, attack_update
from fedhello.federation.client import ClientUpdate, FitTask
from fedhello.federation.robust import (bound_update_norms, clip_to_median, combine_class_stats, combine_scores,
                                        robust_mean, stats_problem)
from fedhello.federation.server import AGGREGATION_RULES, Server, merge_updates
from fedhello.run.experiment import prepare

N = 6
ATTACKER = 2


def upd(cid, tensors, n=10):
    return ClientUpdate(client_id=cid, num_samples=n, tensors=tensors, layers=[0])


# --------------------------------------------------------------------------- pure functions


def test_norm_bound_clips_only_the_outlier_per_tensor_over_its_own_holders():
    g = {"a": torch.zeros(4), "b": torch.ones(2)}
    ups = [
        upd(0, {"a": torch.tensor([1.0, 0, 0, 0]), "b": torch.tensor([1.0, 2.0])}),
        upd(1, {"a": torch.tensor([0, 2.0, 0, 0])}),  # "b" held by clients 0 and 2 only
        upd(2, {"a": torch.tensor([0, 0, 0, 1e30]), "b": torch.tensor([1.0, 1.0 + 30.0])}),
    ]
    out, info = bound_update_norms(g, ups, 3.0)
    # "a": deltas 1, 2, 1e30 -> lower median 2 -> limit 6
    assert torch.equal(out[0].tensors["a"], ups[0].tensors["a"]) and torch.equal(out[1].tensors["a"], ups[1].tensors["a"])
    assert torch.allclose(out[2].tensors["a"], torch.tensor([0, 0, 0, 6.0]))
    # "b": deltas 1 (client 0) and 30 (client 2) -> lower median 1 -> limit 3
    assert torch.allclose(out[2].tensors["b"], torch.tensor([1.0, 4.0]))
    assert torch.equal(out[0].tensors["b"], ups[0].tensors["b"])
    assert info == {"clipped": {"2": 2}}
    assert ups[2].tensors["a"][3] == 1e30  # the input updates are not modified


def test_norm_bound_ignores_unmoved_tensors_and_lone_holders_and_works_on_rank_truncated_replies():
    g = {"A": torch.ones(4, 3), "x": torch.zeros(2)}
    ups = [
        upd(0, {"A": torch.ones(2, 3), "x": torch.zeros(2)}),  # rank 2 of 4, unmoved
        upd(1, {"A": torch.ones(2, 3) + 0.1}),
        upd(2, {"A": torch.ones(2, 3) + 100.0}),
    ]
    out, info = bound_update_norms(g, ups, 2.0)
    # "A" moved by clients 1, 2 only: the reference is client 1's, 0.1 * sqrt(6); client 2 is clipped to 2x
    d = out[2].tensors["A"] - 1
    assert torch.allclose(torch.linalg.vector_norm(d), torch.tensor(2 * 0.1 * math.sqrt(6)), rtol=1e-5)
    assert torch.equal(out[0].tensors["x"], torch.zeros(2)) and info == {"clipped": {"2": 1}}
    lone, info = bound_update_norms(g, [upd(0, {"x": torch.tensor([1e30, 0])}), upd(1, {})], 2.0)
    assert lone[0].tensors["x"][0] == 1e30 and info == {}  # no reference: left to the run-notices rule
    same, info = bound_update_norms(g, ups, 0.0)
    assert same[2].tensors["A"] is ups[2].tensors["A"] and info == {}


def test_coordinate_wise_median_and_trimmed_mean_over_each_tensors_holders():
    g = {"a": torch.zeros(2), "b": torch.full((1,), 7.0)}
    ups = [upd(i, {"a": torch.tensor([float(v), -float(v)])}) for i, v in enumerate([1, 2, 3, 100])]
    med = robust_mean(g, ups, "median")
    assert torch.equal(med["a"], torch.tensor([2.5, -2.5])) and torch.equal(med["b"], g["b"])
    tm = robust_mean(g, ups + [upd(9, {"a": torch.tensor([4.0, -4.0])})], "trimmed-mean", trim=0.2)
    assert torch.allclose(tm["a"], torch.tensor([3.0, -3.0]))  # 1 dropped at each end of 1,2,3,4,100


def test_clip_to_median_pulls_only_the_far_point():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    out, k = clip_to_median(pts, 2.0)
    med = np.median(pts, axis=0)
    limit = 2.0 * sorted(np.linalg.norm(pts - med, axis=1))[1]
    assert k == 1 and np.allclose(out[:3], pts[:3])
    assert np.isclose(np.linalg.norm(out[3] - med), limit)
    assert clip_to_median(pts[:2], 2.0)[1] == 0  # two points are each other's only reference


def honest_stats(seed, C=3, D=4, n=5):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(C, n, D)) + np.arange(C)[:, None, None] * 3.0
    return feats.sum(axis=1), np.full(C, float(n)), float(np.linalg.norm(feats, axis=2).sum())


def test_class_statistics_bounds():
    stats = [(i, *honest_stats(i)) for i in range(4)]
    assert stats_problem(*stats[0][1:], max_samples=15) is None
    s, c, ns = attack_stats(stats[0][1:], "stats-count", 1e9)
    assert "more than its 15 training samples" in stats_problem(s, c, ns, max_samples=15)
    assert "exceed the norm sum" in stats_problem(stats[0][1], stats[0][2], 1.0, None)
    sums, counts, norm_sum, info = combine_class_stats(stats, 3.0)
    assert info == {} and np.allclose(sums, sum(x[1] for x in stats)) and norm_sum == pytest.approx(sum(x[3] for x in stats))
    # a huge norm sum: the attacker's mean norm is clipped to 3x the median
    bad = stats[:3] + [(3, *attack_stats(stats[3][1:], "stats-norm", 1e30))]
    _, _, ns, info = combine_class_stats(bad, 3.0)
    rbars = sorted(x[3] / 15 for x in stats[:3])
    assert info == {"clipped_norms": 1} and ns <= sum(x[3] for x in stats[:3]) + 3 * rbars[1] * 15 + 1e-9
    # shifted means: pulled back towards the honest ones
    bad = stats[:3] + [(3, *attack_stats(stats[3][1:], "stats-mean", 1e6))]
    sums, counts, _, info = combine_class_stats(bad, 3.0)
    honest = sum(x[1] for x in stats[:3]) / 15
    assert info["clipped_means"] == 3 and np.abs(sums / counts[:, None] - honest).max() < 3.0


def test_fisher_scores_combined_robustly():
    honest = [(np.array([1.0, 2.0, 3.0, 4.0]) * (1 + 0.1 * i), 10 + i) for i in range(4)]
    want, clipped = combine_scores(honest, 3.0)
    # honest vectors lie within the bound: exactly SPEC 2.3's sample-weighted average
    assert clipped == 0
    assert np.allclose(want, sum(s * n for s, n in honest) / sum(n for _, n in honest), rtol=1e-12)
    evil = (np.array([1.0, 2.0, 3.0, 1e15]), 10)
    got, clipped = combine_scores(honest[:3] + [evil], 3.0)
    # the attacker's vector enters with its norm clipped to 3x the lower median norm
    norms = sorted(np.linalg.norm(s) for s, _ in honest[:3] + [evil])
    limit = 3.0 * norms[1]
    capped = evil[0] * (limit / np.linalg.norm(evil[0]))
    expect = (sum(s * n for s, n in honest[:3]) + capped * 10) / (10 + 11 + 12 + 10)
    assert clipped == 1 and np.allclose(got, expect, rtol=1e-12)
    assert got[3] < 8.0  # bounded: the honest mean of layer 3 is about 4.4
    off, _ = combine_scores(honest[:3] + [evil], 0.0)
    assert off[3] > 1e14  # without the bound the attacker's score is the combined score


# --------------------------------------------------------------------------- through the Server


@pytest.fixture(scope="module")
def exp(tiny_bert):
    return prepare(build_config({
        "seed": 4, "rounds": 4, "device": "cpu",
        "model": {"name": str(tiny_bert), "max_length": 24},
        "data": {"format": "demo", "demo_samples": 120, "val_fraction": 0.2},
        "clients": {"num_clients": N, "per_round": N, "fractions": [0.5, 0.5], "budgets": [2, 2]},
        "strategy": {"name": "fedit", "fim_samples": 8},
        "train": {"batch_size": 8, "max_steps": 1},
        "head": {"train": "federated", "init": "random"},
    }))


def honest(exp, task, state):
    names = expected_names(exp.layermap, task.layers)
    step = 0.01 * (1 + task.client_id % 3)
    return ClientUpdate(client_id=task.client_id, num_samples=len(exp.partitions[task.client_id]),
                        tensors={n: state[n] + step for n in names}, layers=list(task.layers), train_loss=1.0)


class Crafted:
    """Honest clients; ``AttackRunner`` over it plays the attacker."""

    def __init__(self, exp):
        self.exp = exp

    def fit(self, tasks, state):
        return [honest(self.exp, t, state) for t in tasks]

    def scores(self, ids, state):
        return [(np.array([1.0, 2.0, 3.0]) * (1 + 0.1 * c), 10) for c in ids]

    def class_stats(self, ids, state):
        C = self.exp.num_classes()
        return [honest_stats(c, C=C, D=4, n=max(1, len(self.exp.partitions[c]) // C)) for c in ids]

    def available(self):
        return None


def ok_eval(state):
    return {"val": {"accuracy": 0.5, "loss": 1.0}, "test": {"accuracy": 0.5, "loss": 1.0}}


def server(exp, attack: dict | None = None, evaluator=ok_eval, fim_source: str | None = None, **agg):
    cfg = exp.cfg.model_copy(deep=True)
    for k, v in agg.items():
        setattr(cfg.aggregation, k, v)
    if fim_source is not None:
        cfg.strategy.fim_source = fim_source
    if attack:
        cfg.attack = type(cfg.attack)(client=ATTACKER, **attack)
    runner = Crafted(exp)
    runner = AttackRunner(runner, cfg.attack) if attack else runner
    return Server.for_experiment(dataclasses.replace(exp, cfg=cfg), runner, evaluator=evaluator)


def max_change(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("attack", [{"kind": "scale", "factor": 1e30}, {"kind": "scale", "factor": -10.0},
                                    {"kind": "noise", "factor": 1e3}])
def test_update_attacks_are_bounded_in_process(exp, attack):
    s = server(exp, attack)
    g = s.state.global_state
    rec = s.run_round(0).to_dict()
    honest_only = aggregate(g, [honest(exp, FitTask(c["id"], 0, c["layers"], 0.0, 0), g)
                                for c in rec["clients"] if c["id"] != ATTACKER])
    assert list(rec["norm_bounded"]) == [str(ATTACKER)]
    # honest steps are 0.01..0.03; the attacker moves the mean by at most 10x the median step times its share
    on = max_change(s.state.global_state, honest_only)
    assert on < 10 * 0.02
    off = server(exp, attack, norm_bound=0.0)
    off.run_round(0)
    assert max_change(off.state.global_state, honest_only) > max(on, 0.05)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
def test_robust_rules_ignore_a_sign_flipped_attacker(exp, rule):
    s = server(exp, {"kind": "scale", "factor": -10.0}, robust=rule, norm_bound=0.0, trim=0.2)
    g = s.state.global_state
    s.run_round(0)
    new = s.state.global_state
    # every honest step is +0.01..+0.03: the robust merge of each coordinate stays in that range
    for k in new:
        d = new[k].double() - g[k].double()
        assert float(d.min()) >= 0.01 - 1e-6 and float(d.max()) <= 0.03 + 1e-6, k


def test_update_attack_is_bounded_on_the_flower_path(exp):
    pytest.importorskip("flwr")
    from conftest import screen_and_aggregate

    g = exp.global_state()
    tasks = [FitTask(client_id=c, round=0, layers=[0, 1], lr=0.1, seed=c) for c in range(N)]
    replies = [honest(exp, t, g) for t in tasks]
    replies[ATTACKER] = attack_update(replies[ATTACKER], g, "scale", 1e30)
    new, failed, accepted = screen_and_aggregate(tasks, replies, g, exp.layermap,
                                                 sample_counts=[len(p) for p in exp.partitions],
                                                 aggregation=exp.cfg.aggregation)
    assert failed == [] and accepted == N
    assert max_change(new, g) < 0.2


def test_class_statistics_attacks_through_the_server(exp):
    heads = {}
    for kind, factor, bound in [(None, 0, 10.0), ("stats-count", 1e9, 10.0), ("stats-mean", 1e6, 10.0),
                                ("stats-norm", 1e30, 10.0), ("stats-mean", 1e6, 0.0)]:
        s = server(exp, {"kind": kind, "factor": factor} if kind else None, norm_bound=bound)
        s.head_init = lambda sums, counts, ns: {"h": torch.as_tensor(sums / counts[:, None]), "r": torch.tensor(ns / counts.sum())}
        s.num_classes = exp.num_classes()
        info = s.initialise_head()
        heads[kind if bound else f"{kind} off"] = (s.state.global_state, info)
    clean = heads[None][0]
    count_info = heads["stats-count"][1]
    assert [f["id"] for f in count_info["failed_clients"]] == [ATTACKER]
    assert "training samples" in count_info["failed_clients"][0]["reason"]
    assert heads["stats-mean"][1]["clipped_means"] >= 1
    assert float((heads["stats-mean"][0]["h"] - clean["h"]).abs().max()) < 5.0
    assert float((heads["stats-mean off"][0]["h"] - clean["h"]).abs().max()) > 1e4
    assert heads["stats-norm"][1]["clipped_norms"] == 1
    assert float(heads["stats-norm"][0]["r"]) < 3 * float(clean["r"])


def test_fisher_attack_through_the_server(exp):
    s = server(exp, {"kind": "fisher", "factor": 1e15}, fim_source="clients")
    got = s._score_provider(s.slots())()
    clean = server(exp, fim_source="clients")
    want = clean._score_provider(clean.slots())()
    # the attacker's vector counts as at most norm_bound (10) median clients of its sample share:
    # bounded, and the layers keep their order of importance
    assert np.all(np.isfinite(got)) and float(got.max()) < 10 * float(np.linalg.norm(want)) + float(want.max())
    assert list(np.argsort(got)) == list(np.argsort(want))
    off = server(exp, {"kind": "fisher", "factor": 1e15}, fim_source="clients", norm_bound=0.0)
    assert float(off._score_provider(off.slots())().max()) > 1e12  # unbounded, one client's scores decide


# --------------------------------------------------------------------------- the run notices


def test_a_round_with_nan_validation_loss_is_not_applied_and_the_run_stops(exp):
    def nan_eval(state):
        return {"val": {"accuracy": 0.0, "loss": math.nan}, "test": {"accuracy": 0.0, "loss": math.nan}}

    s = server(exp, evaluator=nan_eval, max_empty_rounds=2)
    g = {k: v.clone() for k, v in s.state.global_state.items()}
    rec = s.run_round(0).to_dict()
    assert rec["skipped"] == "validation loss is not finite"
    assert all(torch.equal(s.state.global_state[k], g[k]) for k in g)
    seen = []
    with pytest.raises(FedHelloError, match="nothing aggregated for 2 rounds in a row.*max_empty_rounds"):
        s.run(on_round=seen.append)
    assert len(seen) == 2 and all(r["skipped"] for r in seen)  # each recorded (and checkpointed) first


def test_a_non_finite_aggregate_is_not_applied(exp, monkeypatch):
    def inf_rule(state, updates, weighting):
        return {k: torch.full_like(v, math.inf) for k, v in state.items()}, {}

    monkeypatch.setitem(AGGREGATION_RULES, "layerwise", inf_rule)
    s = server(exp)
    g = s.state.global_state
    rec = s.run_round(0).to_dict()
    assert rec["skipped"] == "non-finite aggregate" and s.state.global_state is g


def test_honest_rounds_record_nothing_new(exp):
    s = server(exp)
    rec = s.run_round(0).to_dict()
    assert "skipped" not in rec and "norm_bounded" not in rec
    # the metrics.jsonl line keeps its keys in the order it has always had
    assert list(rec) == ["round", "train_loss", "val_accuracy", "val_loss", "test_accuracy", "test_loss",
                         "round_time_s", "phase_time_s", "lr", "clients", "failed_clients"]
    assert list(rec["phase_time_s"]) == ["head_init", "train", "aggregate", "evaluate", "checkpoint"]
    new, info = merge_updates(exp.global_state(), [], "layerwise", exp.cfg.aggregation)
    assert info == {}


def test_norm_bound_applies_to_rank_heterogeneous_replies_under_hetlora_and_flexlora():
    from types import SimpleNamespace

    a, b = "m.lora_A.default.weight", "m.lora_B.default.weight"
    gen = torch.Generator().manual_seed(0)
    g = {a: torch.randn(4, 3, generator=gen), b: torch.zeros(5, 4)}
    ups = []
    for cid, r in enumerate([2, 4, 4, 2]):
        step = 1e30 if cid == 3 else 0.01 * (cid + 1)
        ups.append(upd(cid, {a: g[a][:r] + 0.01, b: torch.full((5, r), step)}))
    for rule in ("hetlora", "flexlora"):
        on = SimpleNamespace(norm_bound=10.0, robust="mean", weighting="samples", trim=0.2)
        new, info = merge_updates(g, ups, rule, on)
        assert info["norm_bounded"] == {"3": 1}
        assert all(bool(torch.isfinite(t).all()) for t in new.values())
        assert float((new[b] @ new[a]).abs().max()) < 10.0
        off, _ = merge_updates(g, ups, rule, SimpleNamespace(**{**vars(on), "norm_bound": 0.0}))
        assert float((off[b] @ off[a]).abs().max()) > 1e20


def test_a_poisoned_run_stops_with_one_error_line_and_keeps_the_good_state(tmp_path, capsys, tiny_bert):
    import yaml

    from fedhello.cli import main
    from fedhello.run.rundir import RunDir

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "seed": 1, "rounds": 3, "device": "cpu",
        "model": {"name": str(tiny_bert), "max_length": 24},
        "data": {"format": "demo", "demo_samples": 120, "val_fraction": 0.2},
        "clients": {"num_clients": 4, "per_round": 2, "fractions": [0.5, 0.5], "budgets": [3, 3]},
        "strategy": {"name": "fedit"},
        "train": {"batch_size": 8, "max_steps": 1},
        "aggregation": {"norm_bound": 0, "max_empty_rounds": 2},
        "attack": {"kind": "scale", "factor": 1e30},
    }))
    code = main(["run", "--config", str(cfg), "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and err == ["error: round 1: nothing aggregated for 2 rounds in a row (last: validation loss "
                                 "is not finite; config key 'aggregation.max_empty_rounds'); the checkpoint holds "
                                 "the last good state"]
    recs = RunDir(tmp_path / "run").read_metrics()
    assert [r.get("skipped") for r in recs] == ["validation loss is not finite"] * 2
    assert all(math.isfinite(r["val_loss"]) for r in recs)  # the kept state is scored
    assert not (tmp_path / "run" / "summary.json").exists()
