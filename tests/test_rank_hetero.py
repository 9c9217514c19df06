"""Rank heterogeneity (hetlora, flexlora) and FFA-LoRA: hand-computed aggregation, rank
truncation, the padded-training equivalence, and short end-to-end runs."""

import json

import pytest
import torch

from fedhello.allocation import ClientSlot, build_strategy
from fedhello.allocation.rank import group_ranks
from fedhello.config import StrategyConfig, build_config
from fedhello.errors import ConfigError, UpdateError
from fedhello.federation.aggregation import validate_update
from fedhello.federation.client import ClientUpdate, FitTask
from fedhello.federation.rank_aggregation import flexlora_aggregate, hetlora_aggregate, svd_factors
from fedhello.run.experiment import prepare, run_experiment
from fedhello.federation.simulation import SimulationRunner
from fedhello.model.rank import max_rank, pad_rank, set_state_padded, truncate_rank
from fedhello.run.rundir import RunDir
from helpers import small_raw

A = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
B = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight"
H = "base_model.model.classifier.modules_to_save.default.bias"


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def upd(cid, n, tensors):
    return ClientUpdate(client_id=cid, num_samples=n, tensors=tensors, layers=[0])


# --------------------------------------------------------------------------- ranks


def test_group_ranks_proportional_to_budget_or_configured():
    assert group_ranks(16, [6, 9, 12], 12) == [8, 12, 16]  # round(r * b / L) for budgets 6/9/12 of 12 layers
    assert group_ranks(16, [2, 4, 6], 6) == [5, 11, 16]  # 5.33, 10.67, 16 rounded
    assert group_ranks(4, [1], 12) == [1]  # 0.33 -> at least 1
    assert group_ranks(16, [2, 4, 6], 6, [4, 8, 16]) == [4, 8, 16]
    with pytest.raises(ConfigError, match="strategy.ranks"):
        group_ranks(16, [2, 4, 6], 6, [4, 8])
    with pytest.raises(ConfigError, match="between 1 and lora.r"):
        group_ranks(16, [2, 4], 6, [4, 32])
    s = build_strategy(StrategyConfig(name="hetlora"), 6, [2, 4, 6])
    assert [s.client_rank(ClientSlot(0, g, b), 16) for g, b in enumerate([2, 4, 6])] == [5, 11, 16]
    plan = s.allocate(0, [ClientSlot(0, 0, 2), ClientSlot(1, 2, 6)], None)
    assert plan.allocations == {0: list(range(6)), 1: list(range(6))}  # every layer, whatever the budget
    assert build_strategy(StrategyConfig(name="fedra"), 6, [2]).client_rank(ClientSlot(0, 0, 2), 16) is None


def test_config_checks_ranks():
    base = {"clients": {"fractions": [0.5, 0.5], "budgets": [2, 4]}, "lora": {"r": 8}}
    assert build_config({**base, "strategy": {"name": "flexlora", "ranks": [2, 8]}}).strategy.ranks == [2, 8]
    for ranks, msg in (([2], "has 1 entries"), ([2, 9], "rank 9 is not between 1 and lora.r"), ([0, 8], "rank 0")):
        with pytest.raises(ConfigError, match=msg):
            build_config({**base, "strategy": {"name": "hetlora", "ranks": ranks}})
    # ignored (but checked) by strategies that keep the full rank, like other strategy-specific keys
    assert build_config({**base, "strategy": {"name": "fedit", "ranks": [2, 8]}}).strategy.ranks == [2, 8]


def test_truncate_pad_and_padded_load():
    st = {A: t([[1, 2], [3, 4], [5, 6]]), B: t([[1, 2, 3], [4, 5, 6]]), H: t([7, 8])}
    assert max_rank(st) == 3
    tr = truncate_rank(st, 2)
    assert torch.equal(tr[A], t([[1, 2], [3, 4]])) and torch.equal(tr[B], t([[1, 2], [4, 5]]))
    assert torch.equal(tr[H], st[H]) and truncate_rank(st, None) is st
    pd = pad_rank(tr, 3)
    assert torch.equal(pd[A], t([[1, 2], [3, 4], [0, 0]])) and torch.equal(pd[B], t([[1, 2, 0], [4, 5, 0]]))

    model = torch.nn.Module()
    model.q = torch.nn.Module()
    model.q.lora_A = torch.nn.Module()
    model.q.lora_A.w = torch.nn.Parameter(torch.ones(3, 2))
    model.q.lora_B = torch.nn.Module()
    model.q.lora_B.w = torch.nn.Parameter(torch.ones(2, 3))
    set_state_padded(model, {"q.lora_A.w": t([[9, 8]]), "q.lora_B.w": t([[1, 2, 3], [4, 5, 6]])})
    assert torch.equal(model.q.lora_A.w.detach(), t([[9, 8], [0, 0], [0, 0]]))  # zeros beyond rank 1
    assert torch.equal(model.q.lora_B.w.detach(), t([[1, 2, 3], [4, 5, 6]]))  # full rank: plain copy
    with pytest.raises(ValueError, match="cannot load"):
        set_state_padded(model, {"q.lora_A.w": torch.ones(4, 2)})


# --------------------------------------------------------------------------- hetlora


def hetlora_fixture():
    """Three clients of ranks 2, 1, 1 with ||B_k A_k||_F = 5, 5, 10 (weights 1/4, 1/4, 1/2)."""
    g = {A: torch.zeros(2, 2), B: torch.zeros(2, 2), H: t([0.0])}
    u1 = upd(1, 1, {A: t([[1, 0], [0, 1]]), B: t([[3, 0], [0, 4]]), H: t([1.0])})  # B A = diag(3, 4)
    u2 = upd(2, 1, {A: t([[0.6, 0.8]]), B: t([[5], [0]]), H: t([3.0])})  # B A = [[3, 4], [0, 0]]
    u3 = upd(3, 2, {A: t([[1, 0]]), B: t([[0], [10]]), H: t([5.0])})  # B A = [[0, 0], [10, 0]]
    return g, [u1, u2, u3]


def test_hetlora_zero_padded_norm_weighted_aggregation():
    g, ups = hetlora_fixture()
    new, info = hetlora_aggregate(g, ups, "samples")
    # A row 0: 1/4 [1, 0] + 1/4 [.6, .8] + 1/2 [1, 0]; row 1: only client 1 (others padded with 0)
    assert torch.allclose(new[A], t([[0.9, 0.2], [0.0, 0.25]]), atol=1e-6)
    # B col 0: 1/4 [3, 0] + 1/4 [5, 0] + 1/2 [0, 10]; col 1: 1/4 [0, 4]
    assert torch.allclose(new[B], t([[2.0, 0.0], [5.0, 1.0]]), atol=1e-6)
    assert torch.allclose(new[H], t([(1 + 3 + 2 * 5) / 4]))  # the head: sample-weighted as always
    assert info["hetlora_weights"] == pytest.approx({"1": 0.25, "2": 0.25, "3": 0.5})
    # truncation down: a rank-1 client gets the first component of the new global adapter
    down = truncate_rank(new, 1)
    assert torch.allclose(down[A], t([[0.9, 0.2]])) and torch.allclose(down[B], t([[2.0], [5.0]]))
    # uniform weighting changes only the head (and the all-zero fallback), not the norm weights
    new_u, _ = hetlora_aggregate(g, ups, "uniform")
    assert torch.allclose(new_u[B], new[B]) and torch.allclose(new_u[H], t([3.0]))


def test_hetlora_falls_back_to_sample_weights_when_nothing_moved():
    g = {A: torch.zeros(2, 2), B: torch.zeros(2, 2)}
    ups = [upd(1, 1, {A: t([[1, 1], [2, 2]]), B: torch.zeros(2, 2)}), upd(2, 3, {A: t([[5, 5]]), B: torch.zeros(2, 1)})]
    new, _ = hetlora_aggregate(g, ups, "samples")
    assert torch.allclose(new[A], t([[0.25 + 3.75, 0.25 + 3.75], [0.5, 0.5]]))


def test_hetlora_with_ffa_keeps_a_and_weights_by_global_a():
    g = {A: t([[1, 0], [0, 1]]), B: torch.zeros(2, 2)}
    # B uploads only; A_k is the first r_k rows of the global A: norms ||B_k A_k|| = 5 and 15
    ups = [upd(1, 1, {B: t([[3, 0], [0, 4]])}), upd(2, 1, {B: t([[9], [12]])})]
    new, info = hetlora_aggregate(g, ups, "samples")
    assert torch.equal(new[A], g[A])
    assert torch.allclose(new[B], 0.25 * t([[3, 0], [0, 4]]) + 0.75 * t([[9, 0], [12, 0]]))
    assert info["hetlora_weights"] == pytest.approx({"1": 0.25, "2": 0.75})


def test_update_above_its_rank_is_rejected():
    g = {A: torch.zeros(4, 3), B: torch.zeros(2, 4)}
    ok = upd(1, 1, {A: torch.zeros(2, 3), B: torch.zeros(2, 2)})
    validate_update(ok, [A, B], truncate_rank(g, 2))
    with pytest.raises(UpdateError, match=r"shape \(4, 3\), expected \(2, 3\)"):
        validate_update(upd(1, 1, {A: torch.zeros(4, 3)}), [A, B], truncate_rank(g, 2))


# --------------------------------------------------------------------------- flexlora


def test_svd_truncation_recovers_a_low_rank_product_exactly():
    gen = torch.Generator().manual_seed(0)
    P, Q = torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    for r in (3, 4):  # rank 3 product: exact at r >= 3 (rank 4: one zero component, zero-padded)
        Bf, Af, S = svd_factors(P, Q, r)
        assert Bf.shape == (7, r) and Af.shape == (r, 5)
        assert torch.allclose(Bf @ Af, P @ Q, atol=1e-5)
        assert torch.allclose(Af[:3] @ Af[:3].T, torch.eye(3, dtype=torch.float64), atol=1e-10)  # A rows orthonormal
    assert torch.allclose(S, torch.linalg.svdvals(P @ Q)[:3], atol=1e-10)
    # below the product's rank: the best rank-2 approximation (Eckart-Young), as an explicit SVD gives
    U, s, Vh = torch.linalg.svd(P @ Q)
    Bf, Af, _ = svd_factors(P, Q, 2)
    assert torch.allclose(Bf @ Af, U[:, :2] @ torch.diag(s[:2]) @ Vh[:2], atol=1e-8)


def test_flexlora_aggregates_sample_weighted_products_and_truncates_per_client():
    g = {A: torch.zeros(2, 2), B: torch.zeros(2, 2), H: t([0.0])}
    u1 = upd(1, 1, {A: t([[1, 0]]), B: t([[2], [0]]), H: t([4.0])})  # rank 1, B A = [[2, 0], [0, 0]]
    u2 = upd(2, 3, {A: t([[1, 0], [0, 1]]), B: t([[0, 0], [0, 4]]), H: t([0.0])})  # rank 2, B A = diag(0, 4)
    new, info = flexlora_aggregate(g, [u1, u2], "samples")
    dW = t([[0.5, 0.0], [0.0, 3.0]])  # 1/4 diag(2, 0) + 3/4 diag(0, 4)
    assert torch.allclose(new[B] @ new[A], dW, atol=1e-6)
    assert torch.allclose(new[B].norm(dim=0), t([3.0, 0.5]), atol=1e-6)  # S in B, decreasing
    assert torch.allclose(new[A] @ new[A].T, torch.eye(2), atol=1e-6)
    assert info["flexlora_residual"] == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(new[H], t([1.0]))
    down = truncate_rank(new, 1)  # a rank-1 client: the rank-1 SVD truncation of dW
    assert torch.allclose(down[B] @ down[A], t([[0.0, 0.0], [0.0, 3.0]]), atol=1e-6)
    # a global adapter of rank 1 cannot hold dW: the best rank-1 part, and the residual is reported
    g1 = {A: torch.zeros(1, 2), B: torch.zeros(2, 1)}
    ups = [upd(1, 1, {A: t([[1, 0]]), B: t([[2], [0]])}), upd(2, 3, {A: t([[0, 1]]), B: t([[0], [4]])})]
    new1, info1 = flexlora_aggregate(g1, ups, "samples")
    assert torch.allclose(new1[B] @ new1[A], t([[0.0, 0.0], [0.0, 3.0]]), atol=1e-6)
    assert info1["flexlora_residual"] == pytest.approx((0.25 / 9.25) ** 0.5, rel=1e-6)


def test_flexlora_with_ffa_averages_b_in_the_frozen_basis():
    g = {A: t([[1, 2], [3, 4]]), B: torch.zeros(2, 2)}
    ups = [upd(1, 1, {B: t([[1], [2]])}), upd(2, 3, {B: t([[4, 8], [0, 4]])})]
    new, info = flexlora_aggregate(g, ups, "samples")
    assert torch.equal(new[A], g[A]) and info == {}
    expect_B = 0.25 * t([[1, 0], [2, 0]]) + 0.75 * t([[4, 8], [0, 4]])
    assert torch.allclose(new[B], expect_B)
    # which is exactly the sample-weighted average of the clients' products B_k A_k
    prods = 0.25 * t([[1], [2]]) @ g[A][:1] + 0.75 * t([[4, 8], [0, 4]]) @ g[A]
    assert torch.allclose(new[B] @ new[A], prods)


# --------------------------------------------------------------------------- padded training


def _peft_linear(r, alpha, seed=0):
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 5)

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(seed)
    return get_peft_model(Net(), LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.1, target_modules=["lin"]))


def _train(model, steps=6):
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # dropout masks: same shapes (the input's), so the same masks
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 5, generator=gen)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _lora(model):
    ps = dict(model.named_parameters())
    a = next(p for n, p in ps.items() if "lora_A" in n)
    b = next(p for n, p in ps.items() if "lora_B" in n)
    return a, b


def test_padded_rank_training_equals_a_small_rank_lora_with_scaled_alpha():
    r_max, r_g, alpha = 4, 2, 8.0
    big = _peft_linear(r_max, alpha)
    small = _peft_linear(r_g, alpha * r_g / r_max)  # same scaling alpha / r_max
    a0 = torch.randn(r_g, 6, generator=torch.Generator().manual_seed(3))
    b0 = torch.randn(5, r_g, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        small.base_model.model.lin.base_layer.weight.copy_(big.base_model.model.lin.base_layer.weight)
        small.base_model.model.lin.base_layer.bias.copy_(big.base_model.model.lin.base_layer.bias)
        _lora(small)[0].copy_(a0), _lora(small)[1].copy_(b0)
        _lora(big)[0].zero_(), _lora(big)[1].zero_()
        _lora(big)[0][:r_g].copy_(a0), _lora(big)[1][:, :r_g].copy_(b0)
    _train(big), _train(small)
    (ab, bb), (as_, bs) = _lora(big), _lora(small)
    assert torch.allclose(ab[:r_g], as_, atol=1e-6) and torch.allclose(bb[:, :r_g], bs, atol=1e-6)
    assert not torch.allclose(as_, a0)  # it did train
    assert torch.count_nonzero(ab[r_g:]) == 0 and torch.count_nonzero(bb[:, r_g:]) == 0  # exactly zero
    # PEFT's own default for a rank-r_g LoRA (scaling alpha / r_g) is a different client
    other = _peft_linear(r_g, alpha)
    with torch.no_grad():
        other.base_model.model.lin.base_layer.weight.copy_(big.base_model.model.lin.base_layer.weight)
        other.base_model.model.lin.base_layer.bias.copy_(big.base_model.model.lin.base_layer.bias)
        _lora(other)[0].copy_(a0), _lora(other)[1].copy_(b0)
    _train(other)
    assert not torch.allclose(_lora(other)[1], bs, atol=1e-4)


# --------------------------------------------------------------------------- engine


def cfg_for(tiny_bert, name, ffa=False, rounds=2):
    return build_config(small_raw(
        tiny_bert, rounds=rounds, lora={"r": 4, "alpha": 8, "ffa": ffa}, partition={"name": "iid"},
        clients={"num_clients": 6, "per_round": 4}, strategy={"name": name}, train={"lr": 0.01, "max_steps": 3},
        head={"train": "federated", "init": "random"},  # uploads below count the head
    ))


def test_ffa_client_keeps_a_and_uploads_no_a(tiny_bert):
    cfg = cfg_for(tiny_bert, "fedra", ffa=True)
    exp = prepare(cfg)
    state = exp.global_state()
    runner = SimulationRunner(exp)
    for rank, layers in ((None, [1]), (2, [0, 1, 2])):
        (u,) = runner.fit([FitTask(client_id=0, round=0, layers=layers, lr=0.05, seed=1, rank=rank)], state)
        assert u.tensors and not any(".lora_A." in n for n in u.tensors)
        assert {n for n in u.tensors if ".lora_B." in n} == {
            n for n in exp.layermap.names_for(layers, include_head=False) if ".lora_B." in n
        }
        assert any(not torch.equal(u.tensors[n][:, : u.tensors[n].shape[1]], state[n][:, : u.tensors[n].shape[1]])
                   for n in u.tensors if ".lora_B." in n)  # B trained
        params = dict(exp.model.named_parameters())
        for n in exp.layermap.lora_names:
            if ".lora_A." in n:  # the model's A after training: the (rank-masked) global A, untouched
                expect = pad_rank(truncate_rank({n: state[n]}, rank), state[n].shape[0])[n]
                assert torch.equal(params[n].detach().cpu(), expect), n
        if rank is not None:
            assert all(t.shape[1] == rank for n, t in u.tensors.items() if ".lora_B." in n)


@pytest.mark.parametrize("name,ffa", [("hetlora", False), ("flexlora", False), ("hetlora", True), ("flexlora", True)])
def test_rank_strategies_end_to_end(tiny_bert, tmp_path, name, ffa):
    cfg = cfg_for(tiny_bert, name, ffa=ffa)
    start = {}
    summary = run_experiment(cfg, tmp_path / "r", on_start=lambda exp: start.update(exp.global_state()))
    out = tmp_path / "r"
    recs = RunDir(out).read_metrics()
    clients = json.loads((out / "clients.json").read_text())
    n_cls = len(json.loads((out / "labels.json").read_text()))
    assert summary["rounds"] == 2 and summary["strategy"] == name and len(recs) == 2
    ranks = group_ranks(4, [1, 3], 3)
    assert ranks == [1, 4]
    head = 4 * (n_cls * 32 + n_cls)  # float32 classifier weight + bias (tiny BERT: hidden 32)
    per_rank = 3 * 2 * (1 if ffa else 2) * 32 * 4  # 3 layers x (query, value) x (B [, A]) x 32 x r, float32
    seen_groups = set()
    for r in recs:
        assert len(r["clients"]) == 4 and not r["failed_clients"]
        assert 0 <= r["test_accuracy"] <= 1
        for c in r["clients"]:
            g = clients["groups"][c["id"]]
            seen_groups.add(g)
            assert c["rank"] == ranks[g] and c["layers"] == [0, 1, 2]
            assert c["upload_bytes"] == head + per_rank * ranks[g]
            assert c["download_bytes"] == head + 3 * 2 * 2 * 32 * 4 * ranks[g]
        if name == "hetlora":
            assert sum(r["hetlora_weights"].values()) == pytest.approx(1.0)
        elif not ffa:
            assert 0 <= r["flexlora_residual"] < 1
    assert seen_groups == {0, 1}
    assert clients["trainable_params_per_group"] == [
        (head + per_rank * rk) // 4 for rk in ranks
    ]
    final = torch.load(out / "checkpoint.pt", weights_only=True)["global_state"]
    for n in final:
        if ".lora_A." in n:
            assert torch.equal(final[n], start[n]) == ffa, n  # FFA: A never changes
        if ".lora_B." in n:
            assert not torch.equal(final[n], start[n])


def test_allocate_preview_shows_ranks():
    from fedhello.allocation.preview import preview, render_distribution, render_rounds

    res = preview("hetlora", None, 12, [6, 9, 12], None, 12, 3, 2, 0, lora_r=16)
    for r in res["rounds"]:
        for c in r["clients"]:
            assert c["layers"] == list(range(12)) and c["rank"] == {6: 8, 9: 12, 12: 16}[c["budget"]]
    assert "rank  8): 0 1 2" in render_rounds(res) or "rank 12): 0 1 2" in render_rounds(res)
    assert "LoRA rank per resource group" in render_distribution(res)
    res = preview("flexlora", None, 12, [6, 12], None, 4, 2, 1, 0, lora_r=8, ranks=[3, 8])
    assert {c["rank"] for c in res["rounds"][0]["clients"]} <= {3, 8}
    assert "rank" not in preview("fedra", None, 12, [6], None, 4, 2, 1, 0)["rounds"][0]["clients"][0]
