"""The per-layer cost model (allocation/resources.py): prediction, fit and its file format."""

import json

import numpy as np
import pytest

from fedhello.allocation.resources import LayerCosts, LinearCost, fit_linear_cost
from fedhello.errors import ConfigError


def test_cost_follows_the_lowest_trained_layer():
    c = LinearCost(base=10.0, reach=(1.0, 2.0, 3.0, 4.0), own=(0.5, 0.5, 0.5, 0.5))
    assert c([3]) == 10 + 4 + 0.5
    assert c([2, 3]) == 10 + 3 + 4 + 1.0
    # {0, 3} pays the whole depth, like training everything, minus two layers' own cost
    assert c([0, 3]) == 10 + 10 + 1.0
    assert c([0, 1, 2, 3]) == 10 + 10 + 2.0
    assert c([]) == 10.0


def test_fit_recovers_every_prediction_of_a_linear_cost():
    rng = np.random.default_rng(0)
    L = 6
    true = LinearCost(base=5.0, reach=tuple(rng.uniform(1, 3, L)), own=tuple(rng.uniform(0.1, 0.5, L)))
    singles = [[l] for l in range(L)]
    tops = [list(range(L - k, L)) for k in range(1, L + 1)]
    sets = singles + tops
    fit = fit_linear_cost(sets, [true(s) for s in sets], L)
    for _ in range(50):  # held-out sets
        s = sorted(rng.choice(L, size=int(rng.integers(1, L + 1)), replace=False).tolist())
        assert fit(s) == pytest.approx(true(s), rel=1e-9)


def test_tied_fit_recovers_a_tied_cost_and_averages_noise():
    L = 6
    true = LinearCost(base=2.0, reach=(0.5,) * L, own=(0.1,) * L)
    sets = [[l] for l in range(L)] + [list(range(L - k, L)) for k in range(2, L + 1)]
    fit = fit_linear_cost(sets, [true(s) for s in sets], L, tied=True)
    assert fit.base == pytest.approx(2.0) and fit.reach == pytest.approx((0.5,) * L)
    assert fit.own == pytest.approx((0.1,) * L)
    # seeded noise of +-10% per measured set: the tied fit's predictions stay closer to the
    # truth than the per-layer fit's, which follows every set's noise
    rng = np.random.default_rng(1)
    noisy = [true(s) * rng.uniform(0.9, 1.1) for s in sets]
    tied, free = fit_linear_cost(sets, noisy, L, tied=True), fit_linear_cost(sets, noisy, L)
    probe = [[0, 1, 5], [0, 3, 5], [0, 1, 2], [1, 4], [2, 3, 4, 5]]
    err = lambda f: max(abs(f(s) - true(s)) / true(s) for s in probe)
    assert err(tied) < err(free)


def test_json_round_trip_and_refusals(tmp_path):
    c = LayerCosts(
        memory=LinearCost(1.0, (1.0, 2.0), (3.0, 4.0)),
        step_time=LinearCost(0.1, (0.2, 0.3), (0.01, 0.02)),
        upload=(100.0, 100.0),
        meta={"model": "tiny"},
    )
    p = tmp_path / "profile.json"
    p.write_text(json.dumps({"costs": c.to_json()}))
    back = LayerCosts.load(p)
    assert back == c
    assert back.memory_bytes([1]) == 1 + 2 + 4
    assert back.upload_bytes([0, 1]) == 200.0
    bad = c.to_json()
    bad["memory"]["reach"] = [1.0, float("inf")]
    p.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="memory.reach"):
        LayerCosts.load(p)
    bad = c.to_json()
    bad["step_time"]["own"] = [1.0]
    p.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="step_time.own"):
        LayerCosts.load(p)
    p.write_text("not json")
    with pytest.raises(ConfigError, match="cannot read a cost profile"):
        LayerCosts.load(p)


def test_predict_for_batches_scales_time_by_tokens_and_bounds_memory():
    from fedhello.allocation.resources import predict_for_batches

    c = LayerCosts(
        memory=LinearCost(100.0, (10.0, 20.0), (5.0, 5.0)),
        step_time=LinearCost(1.0, (0.5, 0.5), (0.25, 0.25)),
        upload=(8.0, 8.0),
        meta={"tokens_per_batch": 64, "memory_state": [4.0, 4.0], "memory_state_base": 2.0},
    )
    # {1}: memory 100 + 20 + 5 = 125, of which 2 + 4 is state; time 1.75 s per 64 tokens
    mem, sec = predict_for_batches(c, [1], [32, 16])
    assert sec == pytest.approx(1.75 * 48 / 64)
    assert mem == pytest.approx(6.0 + (125.0 - 6.0) * 32 / 64)
    # a full batch costs the profiled step; never more memory than the worst case
    assert predict_for_batches(c, [0, 1], [64]) == pytest.approx((c.memory_bytes([0, 1]), c.step_seconds([0, 1])))
    assert predict_for_batches(c, [0], []) == (0.0, 0.0)
    # a profile without the token meta (CUDA, older files): worst-case memory, steps x step time
    bare = LayerCosts(c.memory, c.step_time, c.upload)
    assert predict_for_batches(bare, [0], [10, 20, 30]) == pytest.approx((c.memory_bytes([0]), 3 * c.step_seconds([0])))


def test_record_fields_keep_the_bound_and_price_the_reported_batches():
    from fedhello.allocation.resources import BatchShape, Capacity, Limits, ResourceModel, predict_for_shape

    c = LayerCosts(
        memory=LinearCost(100.0, (10.0, 20.0), (5.0, 5.0)),
        step_time=LinearCost(1.0, (0.5, 0.5), (0.25, 0.25)),
        upload=(8.0, 8.0),
        meta={"tokens_per_batch": 64, "memory_state": [4.0, 4.0], "memory_state_base": 2.0,
              "time_source": "process CPU time"},
    )
    assert BatchShape.of([32, 16, 64]) == BatchShape(3, 112, 64) and BatchShape.of([]) == BatchShape(0, 0, 0)
    rm = ResourceModel(c, {0: Capacity(Limits(memory_bytes=130.0), steps=3)})
    rec = rm.predicted(0, [1], BatchShape(3, 96, 48))
    # the bound: 3 steps of the worst case, {1}: memory 125, 1.75 s a step
    assert rec["bound_memory_bytes"] == 125.0 and rec["bound_time_s"] == pytest.approx(3 * 1.75)
    assert (rec["predicted_memory_bytes"], rec["predicted_time_s"]) == predict_for_shape(c, [1], BatchShape(3, 96, 48))
    assert rec["predicted_time_s"] == pytest.approx(1.75 * 96 / 64)
    assert rec["predicted_time_clock"] == "cpu" and rec["memory_limit_bytes"] == 130.0
    # no shape reported (an older client): the prediction is the bound; a CUDA profile is on the wall clock
    old = rm.predicted(0, [1])
    assert (old["predicted_memory_bytes"], old["predicted_time_s"]) == (125.0, pytest.approx(3 * 1.75))
    cuda = LayerCosts(c.memory, c.step_time, c.upload, meta={"device": "cuda", "time_source": "wall time"})
    assert ResourceModel(cuda).predicted(1, [0])["predicted_time_clock"] == "wall"


@pytest.mark.parametrize("meta,key", [({"memory_state": ["x", 1.0]}, "meta.memory_state"),
                                      ({"memory_state": [1.0]}, "meta.memory_state"),
                                      ({"tokens_per_batch": "64"}, "meta.tokens_per_batch"),
                                      ({"memory_state_base": float("nan")}, "meta.memory_state_base")])
def test_profile_meta_used_in_predictions_is_checked(tmp_path, meta, key):
    c = LayerCosts(memory=LinearCost(1.0, (1.0, 2.0), (3.0, 4.0)),
                   step_time=LinearCost(0.1, (0.2, 0.3), (0.01, 0.02)), upload=(100.0, 100.0))
    obj = c.to_json()
    obj["meta"] = meta
    p = tmp_path / "profile.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(ConfigError, match=key):
        LayerCosts.load(p)
