"""Fisher layer scores (vectorised vs. per-sample loop) and k-means tiers (Fed-HeLLo, arXiv:2506.12213)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from fedhello.allocation.fisher import kmeans_tiers, score_weights, tier_weights
from fedhello.model.fisher import fisher_layer_scores, fisher_layer_scores_loop, length_buckets
from fedhello.model.layermap import LayerMap

NUM_LABELS = 3
VOCAB = 60


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_peft_bert():
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=NUM_LABELS,
    )
    model = BertForSequenceClassification(cfg)
    # init_lora_weights=False: B is random too, so both A and B have non-zero gradients
    lcfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1,
        target_modules=["query", "value"], init_lora_weights=False,
    )
    peft_model = get_peft_model(model, lcfg)
    return peft_model, LayerMap.from_model(peft_model, 3)


def _batch(gen, n, length):
    ids = torch.randint(1, VOCAB, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        keep = int(torch.randint(2, length + 1, (1,), generator=gen))
        ids[i, keep:] = 0
        mask[i, keep:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, NUM_LABELS, (n,), generator=gen),
    }


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [_batch(gen, 5, 7), _batch(gen, 3, 13), _batch(gen, 4, 4)]


def test_vectorised_equals_loop_on_padded_batches(tiny_peft_bert):
    model, lm = tiny_peft_bert
    fast = fisher_layer_scores(model, lm, _batches())
    slow = fisher_layer_scores_loop(model, lm, _batches())
    assert fast.shape == (3,)
    assert (fast > 0).all()
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=0)


def test_scores_average_over_samples_not_batches(tiny_peft_bert):
    model, lm = tiny_peft_bert
    gen = torch.Generator().manual_seed(2)
    one, three = _batch(gen, 1, 6), _batch(gen, 3, 9)
    f1 = fisher_layer_scores(model, lm, [one])
    f3 = fisher_layer_scores(model, lm, [three])
    both = fisher_layer_scores(model, lm, [one, three])
    np.testing.assert_allclose(both, (1 * f1 + 3 * f3) / 4, rtol=1e-6)


def test_score_is_squared_gradient_of_log_likelihood(tiny_peft_bert):
    model, lm = tiny_peft_bert
    gen = torch.Generator().manual_seed(3)
    b = _batch(gen, 1, 8)
    model.eval()
    params = dict(model.named_parameters())
    names = list(lm.layers[1])
    flags = {n: params[n].requires_grad for n in names}
    for n in names:
        params[n].requires_grad_(True)
    logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
    ll = torch.log_softmax(logits, -1)[0, b["labels"][0]]
    grads = torch.autograd.grad(ll, [params[n] for n in names])
    for n in names:
        params[n].requires_grad_(flags[n])
    expected = sum(float(g.double().pow(2).sum()) for g in grads)
    assert fisher_layer_scores(model, lm, [b])[1] == pytest.approx(expected, rel=1e-5)


def test_padding_does_not_change_a_sample_score(tiny_peft_bert):
    model, lm = tiny_peft_bert
    gen = torch.Generator().manual_seed(4)
    b = _batch(gen, 1, 10)
    n = int(b["attention_mask"].sum())
    trimmed = {k: (v[:, :n] if v.dim() == 2 else v) for k, v in b.items()}
    np.testing.assert_allclose(
        fisher_layer_scores(model, lm, [b]), fisher_layer_scores(model, lm, [trimmed]), rtol=1e-4
    )


def test_model_state_restored(tiny_peft_bert):
    model, lm = tiny_peft_bert
    params = dict(model.named_parameters())
    frozen = list(lm.layers[0])  # a client that does not train layer 0
    for n in frozen:
        params[n].requires_grad_(False)
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    try:
        scores = fisher_layer_scores(model, lm, _batches()[:1])
        assert scores[0] > 0  # frozen layers are scored too
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert all(p.grad is None for p in model.parameters())
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    finally:
        for n in frozen:
            params[n].requires_grad_(True)


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class _MLP(nn.Module):
    """2-D activations (no token dimension); blocks.N.fc carry LoRA."""

    def __init__(self, d=8, depth=3):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(d) for _ in range(depth))
        self.head = nn.Linear(d, NUM_LABELS)

    def forward(self, features):
        x = features
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


def test_two_dimensional_inputs():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        _MLP(), LoraConfig(r=2, lora_alpha=4, target_modules=["fc"], init_lora_weights=False, modules_to_save=["head"])
    )
    lm = LayerMap.from_model(model, 3)
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"features": torch.randn(n, 8, generator=gen), "labels": torch.randint(0, NUM_LABELS, (n,), generator=gen)}
        for n in (4, 7)
    ]
    fast = fisher_layer_scores(model, lm, batches)
    slow = fisher_layer_scores_loop(model, lm, batches)
    assert (fast > 0).all()
    np.testing.assert_allclose(fast, slow, rtol=1e-5)


# --------------------------------------------------------------------------- tiers


def test_kmeans_tiers_ordered_by_centroid():
    # the high cluster is listed first: tier numbers must follow the centroids, not the order
    scores = [10.0, 9.8, 10.1, 1.0, 1.1, 0.9, 5.0, 5.2, 4.9, 1.05, 9.9, 5.1]
    tiers = kmeans_tiers(scores, k=3)
    assert tiers.tolist() == [2, 2, 2, 0, 0, 0, 1, 1, 1, 0, 2, 1]
    # deterministic and permutation-equivariant
    perm = np.random.default_rng(0).permutation(len(scores))
    assert kmeans_tiers(np.asarray(scores)[perm], 3).tolist() == tiers[perm].tolist()


def test_kmeans_fewer_distinct_values_than_k():
    assert kmeans_tiers([2.0, 2.0, 7.0, 7.0], k=3).tolist() == [0, 0, 1, 1]
    assert kmeans_tiers([3.0, 3.0, 3.0], k=3).tolist() == [0, 0, 0]
    assert kmeans_tiers([5.0, 1.0], k=1).tolist() == [0, 0]


def _sse(values, labels):
    return sum(((values[labels == t] - values[labels == t].mean()) ** 2).sum() for t in set(labels.tolist()))


def test_kmeans_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        s = rng.gamma(1.0, size=9)
        tiers = kmeans_tiers(s, 3)
        order = np.argsort(s)
        best = np.inf
        for i, j in itertools.combinations(range(1, 9), 2):
            lab = np.zeros(9, dtype=int)
            lab[order[i:j]] = 1
            lab[order[j:]] = 2
            best = min(best, _sse(s, lab))
        assert _sse(s, tiers) == pytest.approx(best, rel=1e-9)
        cents = [s[tiers == t].mean() for t in range(3)]
        assert cents == sorted(cents)


def test_weights():
    w = tier_weights(np.array([0, 1, 2, 2, 1, 0]), 3)
    assert np.allclose(w, np.array([1, 2, 3, 3, 2, 1]) / 12)
    assert np.allclose(tier_weights([0, 1, 2], 3), [1 / 6, 2 / 6, 3 / 6])
    assert np.allclose(score_weights([1.0, 3.0]), [0.25, 0.75])
    assert np.allclose(score_weights([0.0, 0.0]), [0.5, 0.5])
    with pytest.raises(ValueError):
        tier_weights([0, 3], 3)


def test_length_buckets_give_the_same_scores(tiny_peft_bert):
    model, lm = tiny_peft_bert
    gen = torch.Generator().manual_seed(5)
    big = _batch(gen, 9, 12)  # one right-padded batch of 9 samples of different lengths
    slow = fisher_layer_scores_loop(model, lm, [big])
    for bucket in (1, 2, 4, 16):
        np.testing.assert_allclose(fisher_layer_scores(model, lm, [big], bucket_size=bucket), slow, rtol=1e-5)


def test_length_buckets_cut_and_trim():

    gen = torch.Generator().manual_seed(6)
    b = _batch(gen, 5, 10)
    labels = b.pop("labels")
    lengths = b["attention_mask"].sum(1)
    pieces = length_buckets(b, labels, 2)
    assert [len(lab) for _, lab in pieces] == [2, 2, 1]
    got = torch.cat([p["attention_mask"].sum(1) for p, _ in pieces])
    assert got.tolist() == sorted(lengths.tolist())
    for p, _ in pieces:  # each piece trimmed to its longest sample
        assert p["input_ids"].shape[1] == int(p["attention_mask"].sum(1).max())
    # left padding is left alone
    left = {k: v.flip(1) for k, v in b.items()}
    assert len(length_buckets(left, labels, 2)) == 1


def test_the_log_likelihood_is_a_hook(tiny_peft_bert):
    """A task passes its own log-likelihood: twice the class log-likelihood gives four times
    the Fisher (squared gradients), in the vectorised scorer and the loop alike."""
    from fedhello.model.fisher import class_log_likelihoods

    model, lm = tiny_peft_bert

    def doubled(m, inputs, labels):
        return 2.0 * class_log_likelihoods(m, inputs, labels)

    base = fisher_layer_scores(model, lm, _batches()[:1])
    np.testing.assert_allclose(fisher_layer_scores(model, lm, _batches()[:1], log_likelihood=doubled), 4 * base, rtol=1e-5)
    np.testing.assert_allclose(fisher_layer_scores_loop(model, lm, _batches()[:1], log_likelihood=doubled), 4 * base,
                               rtol=1e-4)
