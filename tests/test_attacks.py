"""Aggregation a client cannot steer: every malicious reply is rejected and recorded.

Each case lets one client (the attacker) misbehave in one way while the others
answer honestly, through both ways replies arrive: the in-process Server loop
(``Server.run_round`` over a crafted ClientRunner) and Flower Messages
(``FedHelloStrategy.collect`` over crafted replies, then the Server's merge step,
``screen_and_merge``). The attacker must
appear in ``failed_clients`` with the reason, and the new global state must be
exactly the aggregate of the honest replies alone.
"""

from __future__ import annotations

import pytest
import torch

from fedhello.config import build_config
from fedhello.federation.aggregation import aggregate, expected_names
from fedhello.federation.client import ClientUpdate, FitTask
from fedhello.federation.server import Server
from fedhello.run.experiment import prepare
from conftest import screen_and_aggregate

N = 6  # clients, all sampled every round
ATTACKER = 2


@pytest.fixture(scope="module")
def exp(tiny_bert):
    return prepare(build_config({
        "seed": 4, "rounds": 2, "device": "cpu",
        "model": {"name": str(tiny_bert), "max_length": 24},
        "data": {"format": "demo", "demo_samples": 120, "val_fraction": 0.2},
        "clients": {"num_clients": N, "per_round": N, "fractions": [0.5, 0.5], "budgets": [1, 2]},
        "strategy": {"name": "fedra"},
        "train": {"batch_size": 8, "max_steps": 1},
        # replies carry the head too: the federated head protocol (a frozen head in a reply
        # is an extra tensor, test_frozen_head_in_a_reply_is_rejected)
        "head": {"train": "federated", "init": "random"},
        # screening is under test here, the magnitude bounds in test_robust.py: the honest
        # steps differ 6-fold on purpose, which the default bound would clip
        "aggregation": {"norm_bound": 0},
    }))


def honest(exp, task: FitTask, state) -> ClientUpdate:
    """What an honest client sends: its allocated tensors moved by a client-specific amount."""
    names = expected_names(exp.layermap, task.layers)
    step = 0.01 * (task.client_id + 1)
    return ClientUpdate(client_id=task.client_id, num_samples=len(exp.partitions[task.client_id]),
                        tensors={n: state[n] + step for n in names}, layers=list(task.layers), train_loss=1.0)


def other_layer(exp, task: FitTask) -> str:
    layer = next(i for i in range(exp.layermap.num_layers) if i not in task.layers)
    return exp.layermap.layers[layer][0]


def _set(u: ClientUpdate, **kw) -> list[ClientUpdate]:
    for k, v in kw.items():
        setattr(u, k, v)
    return [u]


def _tensor(u: ClientUpdate, fn) -> list[ClientUpdate]:
    name = sorted(u.tensors)[0]
    u.tensors[name] = fn(u.tensors[name])
    return [u]


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _inf(t):
    t = t.clone()
    t.view(-1)[-1] = float("-inf")
    return t


# name -> (how the attacker's honest update becomes its replies (exp, task, update) -> list, reason needle)
ATTACKS = {
    "huge count": (lambda e, t, u: _set(u, num_samples=10**15), "more than its"),
    "count above its partition": (lambda e, t, u: _set(u, num_samples=u.num_samples + 1), "more than its"),
    "negative count": (lambda e, t, u: _set(u, num_samples=-5), "positive integer"),
    "zero count": (lambda e, t, u: _set(u, num_samples=0), "positive integer"),
    "fractional count": (lambda e, t, u: _set(u, num_samples=2.5), "positive integer"),
    "boolean count": (lambda e, t, u: _set(u, num_samples=True), "positive integer"),
    "missing one tensor": (lambda e, t, u: _set(u, tensors=dict(sorted(u.tensors.items())[1:])), "lacks 1 of"),
    "missing every tensor": (lambda e, t, u: _set(u, tensors={}), "lacks"),
    "extra tensor of another layer": (
        lambda e, t, u: _set(u, tensors=dict(u.tensors, **{other_layer(e, t): e.global_state()[other_layer(e, t)]})),
        "outside its allocation"),
    "unknown tensor": (lambda e, t, u: _set(u, tensors=dict(u.tensors, evil=torch.zeros(1))), "outside its allocation"),
    "NaN": (lambda e, t, u: _tensor(u, _nan), "non-finite"),
    "inf": (lambda e, t, u: _tensor(u, _inf), "non-finite"),
    "wrong dtype": (lambda e, t, u: _tensor(u, lambda x: x.double()), "dtype"),
    "wrong shape": (lambda e, t, u: _tensor(u, lambda x: torch.zeros(x.shape[0] + 1, *x.shape[1:])), "shape"),
    "duplicate reply": (lambda e, t, u: [u, honest(e, t, e.global_state())], "2 replies"),
}


class CraftedRunner:
    """A ClientRunner whose clients answer honestly except for ``attack``."""

    def __init__(self, exp, attack):
        self.exp, self.attack = exp, attack

    def fit(self, tasks, global_state):
        out = []
        for t in tasks:
            u = honest(self.exp, t, global_state)
            out += self.attack(self.exp, t, u) if t.client_id == ATTACKER else [u]
        return out

    def scores(self, client_ids, global_state):  # pragma: no cover - fedra needs none
        raise AssertionError

    def available(self):
        return None


def fixed_eval(state):
    return {"val": {"accuracy": 0.5, "loss": 1.0}, "test": {"accuracy": 0.5, "loss": 1.0}}


def server_round(exp, attack):
    server = Server.for_experiment(exp, CraftedRunner(exp, attack), evaluator=fixed_eval)
    g = server.state.global_state
    rec = server.run_round(0).to_dict()
    return g, rec, server.state.global_state


def honest_aggregate(exp, g, rec, without: set[int]):
    tasks = [FitTask(client_id=c["id"], round=0, layers=c["layers"], lr=0.0, seed=0) for c in rec["clients"]]
    assert not {t.client_id for t in tasks} & without
    return aggregate(g, [honest(exp, t, g) for t in tasks], exp.cfg.aggregation.weighting)


def assert_same_state(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_rejected_in_process(exp, name):
    attack, needle = ATTACKS[name]
    g, rec, new = server_round(exp, attack)
    failed = {f["id"]: f["reason"] for f in rec["failed_clients"]}
    assert list(failed) == [ATTACKER], failed
    assert needle in failed[ATTACKER] and f"client {ATTACKER}" in failed[ATTACKER]
    assert sorted(c["id"] for c in rec["clients"]) == [c for c in range(N) if c != ATTACKER]
    assert_same_state(new, honest_aggregate(exp, g, rec, {ATTACKER}))


def test_spoofed_ids_rejected_in_process(exp):
    """Client 2 answers as client 99 (not asked) and client 3 answers as client 4 (asked):
    the unknown id is recorded, client 4 (two replies now) is not aggregated, and the
    clients whose replies never came as themselves count as not replying."""
    def attack(e, t, u):
        return [u]

    class Spoofing(CraftedRunner):
        def fit(self, tasks, global_state):
            out = super().fit(tasks, global_state)
            for u in out:
                if u.client_id == 2:
                    u.client_id = 99
                elif u.client_id == 3:
                    u.client_id = 4
            return out

    server = Server.for_experiment(exp, Spoofing(exp, attack), evaluator=fixed_eval)
    g = server.state.global_state
    rec = server.run_round(0).to_dict()
    failed = {f["id"]: f["reason"] for f in rec["failed_clients"]}
    assert set(failed) == {99, 4, 2, 3}
    assert "not asked" in failed[99] and "2 replies" in failed[4]
    assert "no reply" in failed[2] and "no reply" in failed[3]
    assert sorted(c["id"] for c in rec["clients"]) == [0, 1, 5]
    assert_same_state(server.state.global_state, honest_aggregate(exp, g, rec, {2, 3, 4}))


def test_layers_claim_must_match_the_task(exp):
    def attack(e, t, u):
        return _set(u, layers=[x for x in range(e.layermap.num_layers) if x not in t.layers][:1])

    _, rec, _ = server_round(exp, attack)
    failed = {f["id"]: f["reason"] for f in rec["failed_clients"]}
    assert list(failed) == [ATTACKER] and "it was given" in failed[ATTACKER]


# -- the same attacks through the Flower strategy --------------------------------------

flwr = pytest.importorskip("flwr")


def flower_round(exp, answer, asked=range(N)):
    """One Flower round over replies made by ``answer(client id, message, honest update)``:
    collected by the strategy, screened and aggregated as the Server loop does."""
    from fedhello.flower.strategy import FedHelloStrategy

    g = exp.global_state()
    strat = FedHelloStrategy(exp.layermap, "{}", {c: 100 + c for c in range(N)})
    tasks = [FitTask(client_id=c, round=0, layers=[c % exp.layermap.num_layers], lr=0.1, seed=c) for c in asked]
    strat.plan(tasks)
    msgs = list(strat.configure_train(1, g))
    replies = []
    for m, t in zip(msgs, tasks):
        replies += answer(t.client_id, m, honest(exp, t, g), t)
    new, failed, accepted = screen_and_aggregate(tasks, strat.collect(replies), g, exp.layermap,
                                                 sample_counts=[len(p) for p in exp.partitions])
    return g, tasks, {f["id"]: f["reason"] for f in failed}, new, accepted


def message(msg, u: ClientUpdate, **metrics):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    m = {"num-examples": u.num_samples, "train-loss": 1.0}
    m.update(metrics)
    return Message(content=RecordDict({"arrays": ArrayRecord(u.tensors), "metrics": MetricRecord(m)}),
                   reply_to=msg)


FLOWER_ATTACKS = [n for n in ATTACKS if n != "boolean count"]  # a MetricRecord holds no booleans


@pytest.mark.parametrize("name", FLOWER_ATTACKS)
def test_attack_rejected_on_the_flower_path(exp, task_identity, name):
    attack, needle = ATTACKS[name]

    def answer(cid, msg, u, task):
        if cid != ATTACKER:
            return [message(msg, u)]
        return [message(msg, x) for x in attack(exp, task, u)]

    g, tasks, failed, new, accepted = flower_round(exp, answer)
    assert list(failed) == [ATTACKER], failed
    assert needle in failed[ATTACKER]
    assert accepted == N - 1
    good = [honest(exp, t, g) for t in tasks if t.client_id != ATTACKER]
    assert_same_state(new, aggregate(g, good, "samples"))


def test_spoofed_replies_rejected_by_the_flower_strategy(exp, task_identity):
    """A node not asked this round replies; a node's reply claims another client's id."""
    from flwr.app import ConfigRecord, Message, RecordDict

    asked = [0, 1, 2, 3, 4]  # client 5 (node 105) is not asked

    def answer(cid, msg, u, task):
        out = [message(msg, u, **({"client-id": 0} if cid == 3 else {}))]
        if cid == 4:  # node 105 answers an instruction it was never sent
            fake = Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=105, message_type="train")
            out.append(message(fake, u))
        return out

    g, tasks, failed, new, _ = flower_round(exp, answer, asked)
    assert set(failed) == {3, 5}
    assert "claims client 0" in failed[3] and "not asked" in failed[5]
    good = [honest(exp, t, g) for t in tasks if t.client_id not in (3,)]
    assert_same_state(new, aggregate(g, good, "samples"))


def test_frozen_head_in_a_reply_is_rejected(tiny_bert):
    """Under head.train frozen (or local) the head never leaves a client: a reply carrying it is
    rejected as an extra tensor, and the global head stays bit-identical."""
    cfg = build_config({
        "seed": 4, "rounds": 1, "device": "cpu",
        "model": {"name": str(tiny_bert), "max_length": 24},
        "data": {"format": "demo", "demo_samples": 120, "val_fraction": 0.2},
        "clients": {"num_clients": N, "per_round": N, "fractions": [0.5, 0.5], "budgets": [1, 2]},
        "strategy": {"name": "fedra"},
        "head": {"train": "frozen", "init": "random"},
    })
    frozen = prepare(cfg)
    server = Server.for_experiment(frozen, CraftedRunner(frozen, lambda e, t, u: [u]), evaluator=fixed_eval)
    g = server.state.global_state
    rec = server.run_round(0).to_dict()
    # every honest-under-federated reply carries the head: all rejected, naming a head tensor
    assert sorted(f["id"] for f in rec["failed_clients"]) == list(range(N)) and rec["clients"] == []
    assert all("classifier" in f["reason"] for f in rec["failed_clients"])
    assert_same_state(server.state.global_state, g)
