import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import warnings
from collections import Counter

import numpy as np
import pytest

from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from fedhello.config import PartitionConfig
from fedhello.data import (
    PathologicalDirichletPartitioner,
    ShuffledIidPartitioner,
    partition_dataset,
    partition_stats,
)
from fedhello.errors import ConfigError, DataError


def make_ds(counts: list[int], sort: bool = True, seed: int = 0) -> Dataset:
    """``counts[c]`` rows of class c; label-sorted unless sort=False."""
    labels = np.repeat(np.arange(len(counts)), counts)
    if not sort:
        labels = np.random.default_rng(seed).permutation(labels)
    return Dataset.from_dict({"text": [f"r{i}" for i in range(len(labels))], "label": labels})


def assert_disjoint_complete(parts, n, complete=True):
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist())), "partitions overlap"
    if complete:
        assert sorted(allidx.tolist()) == list(range(n))
    assert all(p.dtype == np.int64 for p in parts)


def client_classes(ds, parts):
    labels = np.asarray(ds["label"])
    return [Counter(labels[p].tolist()) for p in parts]


# ----------------------------------------------------------------------------- IID


def test_flwr_iid_partitioner_is_contiguous_not_shuffled():
    # the finding that motivates ShuffledIidPartitioner
    ds = make_ds([10, 10, 10])
    p = IidPartitioner(num_partitions=3)
    p.dataset = ds
    assert p.load_partition(0)["label"] == [0] * 10
    assert p.load_partition(2)["text"] == [f"r{i}" for i in range(20, 30)]


def test_iid_shuffled_equal_sizes():
    ds = make_ds([25, 25, 25, 28])  # 103 rows, label-sorted
    parts = partition_dataset(ds, PartitionConfig(name="iid"), 10, seed=5)
    assert [len(p) for p in parts] == [11, 11, 11] + [10] * 7
    assert_disjoint_complete(parts, 103)
    # exactly: contiguous shards of default_rng(seed).permutation(n)
    perm = np.random.default_rng(5).permutation(103)
    bounds = np.cumsum([0] + [len(p) for p in parts])
    for i, p in enumerate(parts):
        assert p.tolist() == perm[bounds[i] : bounds[i + 1]].tolist()
    # shuffled: a label-sorted dataset gives mixed clients
    assert all(len(c) >= 2 for c in client_classes(ds, parts))
    again = partition_dataset(ds, PartitionConfig(name="iid"), 10, seed=5)
    other = partition_dataset(ds, PartitionConfig(name="iid"), 10, seed=6)
    assert all((a == b).all() for a, b in zip(parts, again))
    assert any(a.tolist() != b.tolist() for a, b in zip(parts, other))


def test_shuffled_iid_partitioner_interface():
    ds = make_ds([5, 5])
    p = ShuffledIidPartitioner(num_partitions=2, seed=0)
    assert isinstance(p, Partitioner)
    p.dataset = ds
    perm = np.random.default_rng(0).permutation(10)
    assert p.load_partition(1)["text"] == [f"r{i}" for i in perm[5:]]
    assert p.num_partitions == 2


# ----------------------------------------------------------------------------- Dirichlet (flwr)


def _manual_dirichlet(labels, n_clients, alpha, seed):
    """Dirichlet label skew: per class, proportions ~ Dir(alpha) over clients."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(n_clients)]
    for c in sorted(set(labels.tolist())):
        rows = np.nonzero(labels == c)[0]
        props = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(props) * len(rows)).astype(int)[:-1]
        for i, chunk in enumerate(np.split(rows, cuts)):
            parts[i].extend(chunk.tolist())
    return [sorted(p) for p in parts]


def test_flwr_dirichlet_matches_per_class_dirichlet():
    ds = make_ds([200] * 8, sort=False, seed=3)
    labels = np.asarray(ds["label"])
    cfg = PartitionConfig(name="dirichlet", alpha=0.5, min_partition_size=1)
    parts = partition_dataset(ds, cfg, 6, seed=11)
    assert_disjoint_complete(parts, 1600)
    assert [sorted(p.tolist()) for p in parts] == _manual_dirichlet(labels, 6, 0.5, 11)
    again = partition_dataset(ds, cfg, 6, seed=11)
    assert all((a == b).all() for a, b in zip(parts, again))
    other = partition_dataset(ds, cfg, 6, seed=12)
    assert any(sorted(a.tolist()) != sorted(b.tolist()) for a, b in zip(parts, other))


def test_dirichlet_large_alpha_near_global_small_alpha_skewed():
    ds = make_ds([500] * 10, sort=False, seed=1)
    labels = np.asarray(ds["label"])
    near = partition_dataset(ds, PartitionConfig(name="dirichlet", alpha=1000.0), 5, seed=0)
    assert_disjoint_complete(near, 5000)
    for p in near:
        share = np.bincount(labels[p], minlength=10) / len(p)
        assert np.abs(share - 0.1).max() < 0.03
        assert abs(len(p) - 1000) < 60
    skew = partition_dataset(ds, PartitionConfig(name="dirichlet", alpha=0.05), 5, seed=0)
    assert_disjoint_complete(skew, 5000)
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in skew]
    assert np.mean(top_share) > 0.4
    # each class concentrated on few clients
    per_class_top = [
        max(np.sum(labels[p] == c) for p in skew) / 500 for c in range(10)
    ]
    assert np.mean(per_class_top) > 0.8


def test_dirichlet_no_empty_client_even_with_min_size_zero():
    ds = make_ds([30] * 4, sort=False)
    parts = partition_dataset(ds, PartitionConfig(name="dirichlet", alpha=0.3, min_partition_size=0), 8, seed=2)
    assert all(len(p) >= 1 for p in parts)
    assert_disjoint_complete(parts, 120)


def test_dirichlet_impossible_min_size_error():
    ds = make_ds([10] * 3)
    cfg = PartitionConfig(name="dirichlet", alpha=0.1, min_partition_size=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # flwr's retry warnings must not leak
        with pytest.raises(DataError) as e:
            partition_dataset(ds, cfg, 3, seed=0)
    assert str(e.value) == (
        "partition.name=dirichlet, partition.alpha=0.1, partition.min_partition_size=10: no Dirichlet draw "
        "in 11 tries gave each of the 3 clients at least 10 of the 30 samples; raise partition.alpha or "
        "lower partition.min_partition_size"
    )


def test_flwr_dirichlet_shares_interface():
    ds = make_ds([20, 20])
    p = DirichletPartitioner(num_partitions=2, partition_by="label", alpha=1.0, min_partition_size=1, seed=0)
    p.dataset = ds
    assert len(p.load_partition(0)) + len(p.load_partition(1)) == 40


# ----------------------------------------------------------------------------- pathological


def test_pathological_exact_k_and_even_deal():
    ds = make_ds([60 + 7 * c for c in range(10)], sort=False)  # C=10
    n = len(ds)
    cfg = PartitionConfig(name="pathological", classes_per_client=3, min_share=5)
    parts = partition_dataset(ds, cfg, 20, seed=4)  # N*k/C = 6
    assert_disjoint_complete(parts, n)
    per_client = client_classes(ds, parts)
    assert all(len(c) == 3 for c in per_client)
    holders = Counter(cls for c in per_client for cls in c)
    assert holders == {c: 6 for c in range(10)}
    assert min(v for c in per_client for v in c.values()) >= 5
    again = partition_dataset(ds, cfg, 20, seed=4)
    other = partition_dataset(ds, cfg, 20, seed=5)
    assert all((a == b).all() for a, b in zip(parts, again))
    assert any(sorted(a.tolist()) != sorted(b.tolist()) for a, b in zip(parts, other))


def test_pathological_deal_formula_and_share_sizes():
    ds = make_ds([40] * 5)
    p = PathologicalDirichletPartitioner(num_partitions=4, classes_per_partition=2, min_share=3, seed=9)
    p.dataset = ds
    perm = np.random.default_rng(9).permutation(5)
    assert p.partition_classes == [[int(perm[(i * 2 + j) % 5]) for j in range(2)] for i in range(4)]
    labels = np.asarray(ds["label"])
    for c in range(5):
        shares = [int(np.sum(labels[p.partition_indices(i)] == c)) for i in range(4) if c in p.partition_classes[i]]
        if shares:
            assert sum(shares) == 40 and min(shares) >= 3
    # load_partition returns the rows of the assigned dataset
    part = p.load_partition(1)
    assert part["text"] == [f"r{i}" for i in p.partition_indices(1)]
    # 4*2 = 8 slots over 5 classes: 3 classes twice, 2 once
    assert sorted(Counter(c for cl in p.partition_classes for c in cl).values()) == [1, 1, 2, 2, 2]
    assert p.num_unassigned == 0


def test_pathological_k_equals_c_and_k_one():
    ds = make_ds([30] * 4, sort=False)
    parts = partition_dataset(ds, PartitionConfig(name="pathological", classes_per_client=4), 5, seed=0)
    assert all(len(c) == 4 for c in client_classes(ds, parts))
    assert_disjoint_complete(parts, 120)
    parts = partition_dataset(ds, PartitionConfig(name="pathological", classes_per_client=1), 8, seed=0)
    assert all(len(c) == 1 for c in client_classes(ds, parts))
    assert_disjoint_complete(parts, 120)


def test_pathological_fewer_slots_than_classes_warns(caplog):
    ds = make_ds([10] * 6)
    with caplog.at_level("WARNING", logger="fedhello"):  # diagnostics go through the fedhello logger
        parts = partition_dataset(ds, PartitionConfig(name="pathological", classes_per_client=1), 2, seed=0)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "2 class slots for 6 classes: 40 training samples of undealt classes are left out" in caplog.text
    assert sum(len(p) for p in parts) == 20
    assert_disjoint_complete(parts, 60, complete=False)


def test_pathological_k_too_large():
    ds = make_ds([10] * 3)
    with pytest.raises(ConfigError) as e:
        partition_dataset(ds, PartitionConfig(name="pathological", classes_per_client=4), 2, seed=0)
    assert str(e.value) == "partition.classes_per_client (4) is larger than the number of classes (3)"


def test_pathological_class_too_small_names_class():
    ds = make_ds([50, 50, 3])
    cfg = PartitionConfig(name="pathological", classes_per_client=3, min_share=2)
    with pytest.raises(DataError) as e:
        partition_dataset(ds, cfg, 2, seed=0, label_names=["apple", "banana", "cherry"])
    assert str(e.value) == (
        "partition.classes_per_client=3: class 'cherry' has 3 samples, too few for 2 client shares "
        "of at least partition.min_share=2"
    )


# ----------------------------------------------------------------------------- misc


def test_more_clients_than_samples():
    ds = make_ds([2, 2])
    with pytest.raises(DataError) as e:
        partition_dataset(ds, PartitionConfig(name="iid"), 5, seed=0)
    assert str(e.value) == "clients.num_clients (5) is larger than the number of training samples (4)"


def test_partition_stats_exact():
    ds = Dataset.from_dict({"text": list("abcdef"), "label": [0, 1, 1, 2, 0, 0]})
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    stats = partition_stats(ds, parts, ["x", "y", "z"])
    assert stats == [
        {"id": 0, "num_samples": 3, "num_classes": 2, "classes": {"x": 1, "y": 2}},
        {"id": 1, "num_samples": 3, "num_classes": 2, "classes": {"x": 2, "z": 1}},
    ]


def test_banking_scale_pathological_is_fast():
    # 77 classes x 130 rows, 100 clients, k=20: every class dealt to ~26 clients
    ds = make_ds([130] * 77, sort=False)
    parts = partition_dataset(ds, PartitionConfig(name="pathological", classes_per_client=20), 100, seed=0)
    assert_disjoint_complete(parts, 77 * 130)
    stats = partition_stats(ds, parts, [f"c{i}" for i in range(77)])
    assert {s["num_classes"] for s in stats} == {20}
    holders = Counter(c for s in stats for c in s["classes"])
    assert set(holders.values()) <= {25, 26}
