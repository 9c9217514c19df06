import pytest
import torch

from fedhello.errors import UpdateError
from fedhello.federation.aggregation import aggregate, validate_update
from fedhello.federation.client import ClientUpdate

# A hand-made 3-layer "model": one LoRA tensor per layer plus a head.
L0, L1, L2, HEAD = "layer.0.lora_A", "layer.1.lora_A", "layer.2.lora_A", "head"


def glob():
    return {
        L0: torch.zeros(2, 2),
        L1: torch.full((2, 2), 5.0),
        L2: torch.full((2, 2), -1.0),
        HEAD: torch.zeros(3),
    }


def upd(cid, n, tensors):
    return ClientUpdate(client_id=cid, num_samples=n, tensors=tensors, layers=[])


def test_layer_trained_by_two_of_three_gets_their_weighted_mean():
    g = glob()
    ups = [
        upd(0, 10, {L0: torch.full((2, 2), 1.0), HEAD: torch.tensor([1.0, 0.0, 0.0])}),
        upd(1, 30, {L0: torch.full((2, 2), 3.0), L1: torch.full((2, 2), 7.0), HEAD: torch.tensor([0.0, 1.0, 0.0])}),
        upd(2, 60, {L1: torch.full((2, 2), 1.0), HEAD: torch.tensor([0.0, 0.0, 1.0])}),
    ]
    out = aggregate(g, ups, "samples")
    # layer 0: clients 0 and 1 -> (10*1 + 30*3) / 40 = 2.5
    assert torch.equal(out[L0], torch.full((2, 2), 2.5))
    # layer 1: clients 1 and 2 -> (30*7 + 60*1) / 90 = 3.0
    assert torch.equal(out[L1], torch.full((2, 2), 3.0))
    # layer 2: nobody trained it -> unchanged
    assert torch.equal(out[L2], torch.full((2, 2), -1.0))
    # head: averaged over all three
    assert torch.allclose(out[HEAD], torch.tensor([0.1, 0.3, 0.6]), atol=0, rtol=1e-6)
    # the input state is untouched
    assert torch.equal(g[L0], torch.zeros(2, 2))


def test_uniform_weighting_is_the_plain_mean():
    g = glob()
    ups = [upd(0, 10, {L0: torch.full((2, 2), 1.0)}), upd(1, 30, {L0: torch.full((2, 2), 3.0)})]
    out = aggregate(g, ups, "uniform")
    assert torch.equal(out[L0], torch.full((2, 2), 2.0))
    assert torch.equal(out[L1], g[L1])


def test_no_updates_keeps_everything():
    g = glob()
    out = aggregate(g, [], "samples")
    assert all(torch.equal(out[k], g[k]) for k in g)


@pytest.mark.parametrize(
    "tensors, needle",
    [
        ({L2: torch.zeros(2, 2)}, "outside its allocation"),
        ({L0: torch.zeros(3, 2)}, "shape"),
        ({L0: torch.zeros(2, 2, dtype=torch.float64)}, "dtype"),
        ({L0: torch.tensor([[float("nan"), 0.0], [0.0, 0.0]])}, "non-finite"),
        ({HEAD: torch.tensor([float("inf"), 0.0, 0.0])}, "non-finite"),
    ],
)
def test_bad_updates_are_rejected(tensors, needle):
    with pytest.raises(UpdateError, match=needle):
        validate_update(upd(4, 5, tensors), expected=[L0, L1, HEAD], reference=glob())


def test_good_update_passes_and_zero_samples_rejected():
    validate_update(upd(1, 5, {L0: torch.ones(2, 2), HEAD: torch.ones(3)}), [L0, HEAD], glob())
    with pytest.raises(UpdateError, match="num_samples"):
        validate_update(upd(1, 0, {L0: torch.ones(2, 2)}), [L0, HEAD], glob())


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"train_tokens": -5}, "client 1: train_tokens must be an integer >= 0, got -5"),
        ({"train_batches": 2, "train_tokens": float("inf"), "train_max_batch_tokens": 8},
         "client 1: train_tokens must be an integer >= 0, got inf"),
        ({"train_batches": 1.5}, "client 1: train_batches must be an integer >= 0, got 1.5"),
        ({"train_batches": 2 ** 60}, f"client 1: train_batches must be an integer >= 0, got {2 ** 60}"),
        ({"train_batches": 2, "train_tokens": 100, "train_max_batch_tokens": 40},
         "client 1: 2 batches of 100 tokens cannot have a largest batch of 40"),
        ({"train_batches": 2, "train_tokens": 10, "train_max_batch_tokens": 40},
         "client 1: 2 batches of 10 tokens cannot have a largest batch of 40"),
        ({"train_cpu_time_s": float("nan")}, "client 1: train_cpu_time_s must be a finite number >= 0, got nan"),
        ({"train_time_s": -1.0}, "client 1: train_time_s must be a finite number >= 0, got -1.0"),
    ],
)
def test_tampered_cost_reports_are_refused(fields, message):
    good = {L0: torch.ones(2, 2), HEAD: torch.ones(3)}
    honest = ClientUpdate(1, 5, good, [], train_batches=2, train_tokens=100, train_max_batch_tokens=64)
    validate_update(honest, [L0, HEAD], glob())
    for k, v in fields.items():
        setattr(honest, k, v)
    with pytest.raises(UpdateError) as err:
        validate_update(honest, [L0, HEAD], glob())
    assert str(err.value) == message
