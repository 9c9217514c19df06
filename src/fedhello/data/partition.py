"""Splitting the training data over the simulated clients: IID, pat-k and Dirichlet label skew.

All partitioners follow Flower Datasets' :class:`flwr_datasets.partitioner.Partitioner`
interface (assign ``.dataset``, then ``load_partition(i)``):

- ``iid``: :class:`ShuffledIidPartitioner`. flwr's ``IidPartitioner`` does *not*
  shuffle: it returns ``dataset.shard(num_partitions, i, contiguous=True)``, i.e.
  contiguous blocks in dataset order (label-sorted files would give label-skewed
  "IID" clients). The subclass shuffles the dataset with the seed first, then
  shards contiguously: sizes differ by at most 1 (the first ``n % N`` clients get
  one more).
- ``dirichlet``: flwr's ``DirichletPartitioner`` unchanged (``partition_by="label"``,
  ``self_balancing=False``): for every class independently it draws proportions
  ``p ~ Dir(alpha * 1_N)`` over the N clients and splits the class's rows (in dataset
  order) at ``floor(cumsum(p) * n_class)``; the whole draw is repeated (up to 11
  tries, same generator) until every client has ``min_partition_size`` rows; each
  client's indices are then shuffled. We pass ``max(1, partition.min_partition_size)``
  so that no client is ever empty.
- ``pathological`` (pat-k): :class:`PathologicalDirichletPartitioner` below.

:func:`partition_dataset` runs them on a light (label, row index) copy of the data
and returns index arrays into the training split.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np

from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from fedhello.config import PartitionConfig
from fedhello.errors import ConfigError, DataError

log = logging.getLogger("fedhello")

_INDEX_COLUMN = "__fedhello_row__"


class ShuffledIidPartitioner(IidPartitioner):
    """flwr's ``IidPartitioner`` on a seeded shuffle of the dataset.

    Partition ``i`` is the ``i``-th contiguous shard of ``dataset.shuffle(seed)``.
    """

    def __init__(self, num_partitions: int, seed: int | None = 42) -> None:
        super().__init__(num_partitions)
        self._seed = seed
        self._shuffled: Dataset | None = None

    def load_partition(self, partition_id: int) -> Dataset:
        """Shard ``partition_id`` of the seeded shuffle (the shuffle is done once and kept)."""
        if self._shuffled is None:
            self._shuffled = self.dataset.shuffle(seed=self._seed, keep_in_memory=True)
        return self._shuffled.shard(
            num_shards=self.num_partitions, index=partition_id, contiguous=True, keep_in_memory=True
        )


def _split_exact(total: int, proportions: np.ndarray) -> np.ndarray:
    """Non-negative ints summing to ``total``, proportional (largest remainder)."""
    raw = total * proportions
    out = np.floor(raw).astype(np.int64)
    left = int(total - out.sum())
    if left > 0:
        order = np.argsort(-(raw - out), kind="stable")
        out[order[:left]] += 1
    return out


class PathologicalDirichletPartitioner(Partitioner):
    """Pathological non-IID "pat-k": every partition holds exactly ``k`` classes.

    Classes are dealt round-robin over a seeded permutation ``perm`` of the sorted
    classes: partition ``i`` gets ``perm[(i*k + j) % C]`` for ``j < k``. These are
    ``k`` distinct classes whenever ``k <= C``, and every class goes to
    ``floor`` or ``ceil`` of ``N*k/C`` partitions (exactly ``N*k/C`` when ``C``
    divides ``N*k``; when ``N*k < C`` the classes past position ``N*k`` of ``perm``
    go to nobody and their rows are left out). Within a class held by ``m``
    partitions, the share sizes are ``min_share + round(rest * p)`` with
    ``p ~ Dir(1_m)`` and ``rest = n_class - m * min_share`` (largest-remainder
    rounding: the shares add up exactly), taken from a seeded shuffle of the
    class's rows.
    """

    def __init__(
        self,
        num_partitions: int,
        classes_per_partition: int,
        partition_by: str = "label",
        min_share: int = 1,
        shuffle: bool = True,
        seed: int | None = 42,
        class_names: Sequence[str] | dict[Any, str] | None = None,
    ) -> None:
        super().__init__()
        if num_partitions < 1:
            raise ValueError("The number of partitions must be greater than zero.")
        if classes_per_partition < 1:
            raise ConfigError("partition.classes_per_client must be at least 1")
        if min_share < 1:
            raise ConfigError("partition.min_share must be at least 1")
        self._num_partitions = num_partitions
        self._k = classes_per_partition
        self._partition_by = partition_by
        self._min_share = min_share
        self._shuffle = shuffle
        self._seed = seed
        self._class_names = class_names
        self._indices: list[np.ndarray] | None = None
        self._classes: list[list[Any]] | None = None
        self._unassigned = 0

    # -- Partitioner interface
    @property
    def num_partitions(self) -> int:
        """N, the number of partitions (clients)."""
        return self._num_partitions

    def load_partition(self, partition_id: int) -> Dataset:
        """The rows of partition ``partition_id`` (see :meth:`partition_indices`)."""
        return self.dataset.select(self.partition_indices(partition_id), keep_in_memory=True)

    # -- extras
    def partition_indices(self, partition_id: int) -> np.ndarray:
        """Row indices (into the assigned dataset) of partition ``partition_id``."""
        self._determine()
        assert self._indices is not None
        return self._indices[partition_id]

    @property
    def partition_classes(self) -> list[list[Any]]:
        """The ``k`` class values dealt to each partition."""
        self._determine()
        assert self._classes is not None
        return self._classes

    @property
    def num_unassigned(self) -> int:
        """Rows of classes dealt to no partition (only when ``N*k < C``)."""
        self._determine()
        return self._unassigned

    def _name(self, value: Any) -> str:
        names = self._class_names
        if names is None:
            return str(value)
        if isinstance(names, dict):
            return str(names.get(value, value))
        try:
            return str(names[int(value)])
        except (ValueError, IndexError, TypeError):
            return str(value)

    def _determine(self) -> None:
        if self._indices is not None:
            return
        labels = np.asarray(self.dataset[self._partition_by])
        classes = np.unique(labels)
        n_classes, k, n_parts = len(classes), self._k, self._num_partitions
        if k > n_classes:
            raise ConfigError(
                f"partition.classes_per_client ({k}) is larger than the number of classes ({n_classes})"
            )
        rng = np.random.default_rng(self._seed)
        perm = rng.permutation(n_classes)
        dealt = [[int(perm[(i * k + j) % n_classes]) for j in range(k)] for i in range(n_parts)]
        holders: list[list[int]] = [[] for _ in range(n_classes)]
        for i, cls in enumerate(dealt):
            for c in cls:
                holders[c].append(i)

        parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
        unassigned = 0
        for c in range(n_classes):
            rows = np.flatnonzero(labels == classes[c])
            owners = holders[c]
            if not owners:
                unassigned += len(rows)
                continue
            m = len(owners)
            if len(rows) < m * self._min_share:
                raise DataError(
                    f"partition.classes_per_client={k}: class '{self._name(classes[c])}' has "
                    f"{len(rows)} samples, too few for {m} client shares of at least "
                    f"partition.min_share={self._min_share}"
                )
            props = rng.dirichlet(np.ones(m))
            sizes = self._min_share + _split_exact(len(rows) - m * self._min_share, props)
            rows = rng.permutation(rows)
            for owner, chunk in zip(owners, np.split(rows, np.cumsum(sizes)[:-1])):
                parts[owner].append(chunk)

        indices = []
        for chunks in parts:
            idx = np.concatenate(chunks).astype(np.int64)
            if self._shuffle:
                idx = rng.permutation(idx)
            indices.append(idx)
        self._indices = indices
        self._classes = [[classes[c].item() for c in cls] for cls in dealt]
        self._unassigned = unassigned


def make_partitioner(
    cfg: PartitionConfig,
    num_clients: int,
    seed: int,
    partition_by: str = "label",
    label_names: Sequence[str] | None = None,
) -> Partitioner:
    """The (unassigned) partitioner for ``cfg``."""
    if cfg.name == "iid":
        return ShuffledIidPartitioner(num_clients, seed=seed)
    if cfg.name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_clients,
            partition_by=partition_by,
            alpha=float(cfg.alpha),
            min_partition_size=max(1, cfg.min_partition_size),
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    if cfg.name == "pathological":
        return PathologicalDirichletPartitioner(
            num_clients,
            cfg.classes_per_client,
            partition_by=partition_by,
            min_share=cfg.min_share,
            shuffle=True,
            seed=seed,
            class_names=label_names,
        )
    raise ConfigError(f"partition.name: unknown partitioner {cfg.name!r}")  # pragma: no cover


def _settings(cfg: PartitionConfig) -> str:
    if cfg.name == "dirichlet":
        return f"partition.name=dirichlet, partition.alpha={cfg.alpha}, partition.min_partition_size={cfg.min_partition_size}"
    if cfg.name == "pathological":
        return (
            f"partition.name=pathological, partition.classes_per_client={cfg.classes_per_client}, "
            f"partition.min_share={cfg.min_share}"
        )
    return f"partition.name={cfg.name}"


def partition_dataset(
    train: Dataset,
    cfg: PartitionConfig,
    num_clients: int,
    seed: int,
    label_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Disjoint, non-empty int64 index arrays into ``train``, one per client.

    ``train`` needs an int ``label`` column. ``label_names`` only improves error
    messages. Deterministic given ``seed``. For ``pathological`` with
    ``num_clients * k < num_classes`` some classes go to no client; their rows are
    in no partition (a warning says how many).
    """
    if num_clients < 1:
        raise ConfigError("clients.num_clients must be at least 1")
    n = len(train)
    if num_clients > n:
        raise DataError(
            f"clients.num_clients ({num_clients}) is larger than the number of training samples ({n})"
        )
    labels = np.asarray(train["label"])
    light = Dataset.from_dict({"label": labels, _INDEX_COLUMN: np.arange(n, dtype=np.int64)})
    partitioner = make_partitioner(cfg, num_clients, seed, label_names=label_names)
    partitioner.dataset = light
    try:
        with warnings.catch_warnings():
            # flwr warns on every Dirichlet redraw; the final failure is reported below
            warnings.simplefilter("ignore", UserWarning)
            parts = [
                np.asarray(partitioner.load_partition(i)[_INDEX_COLUMN], dtype=np.int64)
                for i in range(num_clients)
            ]
    except ValueError as err:
        if cfg.name == "dirichlet":
            raise DataError(
                f"{_settings(cfg)}: no Dirichlet draw in 11 tries gave each of the {num_clients} clients "
                f"at least {max(1, cfg.min_partition_size)} of the {n} samples; raise partition.alpha "
                f"or lower partition.min_partition_size"
            ) from err
        raise DataError(f"{_settings(cfg)}: cannot partition {n} samples over {num_clients} clients: {err}") from err
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(
            f"{_settings(cfg)}: {len(empty)} of {num_clients} clients get no samples "
            f"(client {empty[0]} is empty)"
        )
    if isinstance(partitioner, PathologicalDirichletPartitioner) and partitioner.num_unassigned:
        log.warning(
            f"partition.classes_per_client={cfg.classes_per_client} with {num_clients} clients covers "
            f"{num_clients * cfg.classes_per_client} class slots for {len(np.unique(labels))} classes: "
            f"{partitioner.num_unassigned} training samples of undealt classes are left out"
        )
    return parts


def partition_stats(
    train: Dataset, parts: Sequence[np.ndarray], label_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Per client: ``{"id", "num_samples", "num_classes", "classes": {name: count}}``."""
    labels = np.asarray(train["label"], dtype=np.int64)
    out = []
    for i, idx in enumerate(parts):
        counts = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=len(label_names))
        classes = {str(label_names[c]): int(counts[c]) for c in np.flatnonzero(counts)}
        out.append(
            {"id": i, "num_samples": int(len(idx)), "num_classes": len(classes), "classes": classes}
        )
    return out
