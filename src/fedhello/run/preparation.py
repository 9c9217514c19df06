"""Preparation: a validated config turned into an :class:`Experiment`, every check done before training.

:func:`prepare_data` loads the data, carves the validation and calibration sets and
partitions the rest over the clients (``fedhello validate`` runs it too);
:func:`prepare` adds the device, the frozen backbone with LoRA (its layer map), the
encoded splits and the clients' declared limits. The :class:`Experiment` it returns
implements what the federation floor asks of a prepared experiment
(:class:`~fedhello.federation.seams.ServerExperiment`,
:class:`~fedhello.federation.seams.LocalClients`): the evaluator, the local trainer,
Fisher scores, class statistics and the class-means head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from fedhello.allocation import strategy_class
from fedhello.allocation.clients import assign_groups
from fedhello.config import ExperimentConfig, check_budgets
from fedhello.data import carve, load_splits, partition_dataset, partition_stats
from fedhello.data.batching import Encoded, collate, eval_batches
from fedhello.data.encoders import make_encoder
from fedhello.data.sources import drops_line, fingerprint
from fedhello.errors import ConfigError
from fedhello.federation.client import LocalTrainer, evaluate
from fedhello.federation.seams import Evaluator, FisherScorer
from fedhello.model import build_backbone, get_state, load_model_config, num_hidden_layers, set_state
from fedhello.model.backbone import Backbone, check_max_length
from fedhello.model.state import State
from fedhello.run.device import pick_device
from fedhello.run.limits import attach_resources
from fedhello.tasks import task_of


def check_model_fit(cfg: ExperimentConfig) -> int:
    """The model's layer count, read from its config file; budgets must fit in it (and
    ``model.max_length`` in its positions)."""
    mconf = load_model_config(cfg.model.name)
    check_max_length(cfg, mconf)
    n_layers = num_hidden_layers(mconf)
    check_budgets(cfg.clients.budgets, n_layers, key="config key 'clients.budgets'")
    return n_layers


@dataclass
class Experiment:
    """A prepared experiment (:func:`prepare`): everything a run needs, checked, before training.

    One backbone with LoRA shared by every client of the process, the encoded
    splits (clients' training data, validation, test, the server's calibration
    set), each client's partition indices and statistics, and each client's
    resource group. Its methods compute what the runners ask of clients and server:
    it is the :class:`~fedhello.federation.seams.ServerExperiment` that
    :meth:`Server.for_experiment <fedhello.federation.server.Server.for_experiment>` reads
    and the :class:`~fedhello.federation.seams.LocalClients` the in-process runner trains.
    """
    cfg: ExperimentConfig
    device: torch.device
    backbone: Backbone
    label_names: list[str]
    train: Encoded  # client training data (all clients), indexed by partitions
    val: Encoded
    test: Encoded
    calib: Encoded | None  # server-held Fisher calibration set
    partitions: list[np.ndarray]
    stats: list[dict]
    groups: list[int]
    dropped_test: int = 0
    # binary tasks: the label index whose F1 is recorded as f1_positive
    positive_class: int = 1
    # data.json: source, rows kept and dropped (by reason), fingerprint (checked on resume)
    data_info: dict = field(default_factory=dict)
    # the console line on dropped rows (None: none dropped)
    drops_note: str | None = None
    # the cost profile and the clients' declared limits (fedhello.run.limits); None without them
    costs: object | None = None
    resources: object | None = None

    @property
    def layermap(self):
        """The backbone's :class:`~fedhello.model.layermap.LayerMap`."""
        return self.backbone.layermap

    @property
    def model(self):
        """The shared PEFT model."""
        return self.backbone.model

    def global_state(self) -> State:
        """The model's current federated tensors (LoRA and head), as CPU copies."""
        return get_state(self.model, self.layermap.all_names)

    def evaluator(self) -> Evaluator:
        """The Server's evaluator: load a global state, score it on validation and test
        (``splits``: which of the two; both by default)."""
        bs = self.cfg.eval.batch_size

        def run(state: State, splits: Sequence[str] = ("val", "test")) -> dict:
            set_state(self.model, state)
            pc = self.positive_class
            out = {}
            for name in splits:
                data = self.val if name == "val" else self.test
                out[name] = evaluate(self.model, data, np.arange(len(data)), bs, self.device, positive_class=pc)
            return out

        return run

    def fisher(self, state: State, data: Encoded, indices: np.ndarray) -> np.ndarray:
        """Per-layer empirical Fisher scores (length L) of ``state`` on ``indices`` of ``data``."""
        from fedhello.model.fisher import fisher_layer_scores

        return fisher_layer_scores(self.model, self.layermap, self.forward_batches(state, data, indices),
                                   log_likelihood=task_of(data).log_likelihood)

    def client_fisher(self, client_id: int, state: State) -> tuple[np.ndarray, int]:
        """A client's per-layer Fisher scores under ``state`` and how many samples gave them:
        at most ``strategy.fim_samples`` of its own, drawn from (seed, client) alone so that
        every runtime scores the same subsample."""
        idx = self.partitions[client_id]
        n = self.cfg.strategy.fim_samples
        if len(idx) > n:
            rng = np.random.default_rng([self.cfg.seed, client_id, 5])
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        return self.fisher(state, self.train, idx), len(idx)

    def forward_batches(self, state: State, data: Encoded, indices: np.ndarray):
        """Load ``state`` and yield evaluation batches of ``indices`` of ``data`` (images as
        they are, not augmented): what the forward-only client computations read."""
        set_state(self.model, state)
        if getattr(data, "augment", False):
            data = data.without_augmentation()
        return (collate(data, idx, self.device) for idx in eval_batches(data.lengths, indices, self.cfg.eval.batch_size))

    def trainer(self) -> LocalTrainer:
        """The local trainer of a client of this experiment (every runtime builds it here)."""
        cfg = self.cfg
        return LocalTrainer(self.model, self.layermap, self.train, cfg.train, self.device,
                            ffa=cfg.lora.ffa, head_train=cfg.head.train)

    def num_classes(self) -> int:
        """The number of labels of the data."""
        return len(self.label_names)

    def class_stats(self, state: State, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """A client's per-class feature sums and counts under ``state`` (forward only; fedhello.model.head)."""
        from fedhello.model.head import class_statistics, head_linear

        weight, _ = head_linear(self.model, self.layermap.head, self.num_classes())
        batches = self.forward_batches(state, self.train, indices)
        return class_statistics(self.model, weight, batches, self.num_classes())

    def class_stats_many(self, state: State, client_ids: Sequence[int],
                         on_progress: Callable[[int], None] | None = None) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """:meth:`class_stats` of every client in ``client_ids``, in that order, from one forward
        pass over their pooled data in length-sorted batches (as evaluation batches): each
        client's float64 sums still hold exactly its own samples (model.head.class_statistics_grouped).
        Clients go in chunks so that the per-client sums stay under about 256 MB. ``on_progress(n)``:
        n more clients' worth of samples done (the clients finish together, at the end of their chunk)."""
        from fedhello.model.head import class_statistics_grouped, head_linear

        weight, _ = head_linear(self.model, self.layermap.head, self.num_classes())
        C = self.num_classes()
        dim = int(dict(self.model.named_parameters())[weight].shape[1])
        chunk = max(1, (256 << 20) // (8 * C * dim))
        set_state(self.model, state)
        data = self.train.without_augmentation() if getattr(self.train, "augment", False) else self.train
        lengths = data.lengths
        out: list[tuple[np.ndarray, np.ndarray, float]] = []
        ids = list(client_ids)
        total = sum(len(self.partitions[c]) for c in ids) or 1
        count = {"samples": 0, "reported": 0}

        def tick(n: int) -> None:
            count["samples"] += n
            now = len(ids) * count["samples"] // total
            if on_progress is not None and now > count["reported"]:
                on_progress(now - count["reported"])
                count["reported"] = now

        def batches(sample, owner):
            for pos in eval_batches(lengths[sample], np.arange(len(sample)), self.cfg.eval.batch_size):
                yield collate(data, sample[pos], self.device), owner[pos]
                tick(len(pos))  # the batch has been forwarded

        for s in range(0, len(ids), chunk):
            parts = [np.asarray(self.partitions[c], dtype=np.int64) for c in ids[s : s + chunk]]
            sample = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
            out.extend(class_statistics_grouped(self.model, weight, batches(sample, owner), len(parts), C))
        return out

    def head_from_stats(self, sums: np.ndarray, counts: np.ndarray, norm_sum: float) -> State:
        """The class-means head's tensors (by global-state name) from the clients' summed statistics."""
        from fedhello.model.head import class_means_head, head_linear

        weight, bias = head_linear(self.model, self.layermap.head, self.num_classes())
        w, b = class_means_head(sums, counts, norm_sum, self.cfg.head.scale)
        params = dict(self.model.named_parameters())
        out = {weight: w.to(params[weight].dtype).reshape(params[weight].shape)}
        if bias is not None:
            out[bias] = b.to(params[bias].dtype)
        return out

    def server_scorer(self) -> FisherScorer | None:
        """Fisher scores of a global state on the calibration set (None without one)."""
        if self.calib is None:
            return None
        return lambda state: self.fisher(state, self.calib, np.arange(len(self.calib)))


@dataclass
class PreparedData:
    """The data side of :func:`prepare`: splits carved and partitioned, every data check done."""

    splits: object
    train: object
    val: object | None
    calib: object | None
    partitions: list[np.ndarray]
    stats: list[dict]
    groups: list[int]
    positive_class: int
    data_info: dict


def prepare(cfg: ExperimentConfig) -> Experiment:
    """Load and check everything a run needs; raises FedHelloError before any training."""
    check_model_fit(cfg)
    device = pick_device(cfg.device)
    d = prepare_data(cfg)
    splits, train_ds, val_ds, calib_ds = d.splits, d.train, d.val, d.calib
    backbone = build_backbone(cfg, len(splits.label_names), device)
    enc = make_encoder(cfg, backbone)

    val = enc(val_ds) if val_ds is not None else enc(splits.test.select([]))
    exp = Experiment(
        cfg=cfg,
        device=device,
        backbone=backbone,
        label_names=list(splits.label_names),
        train=enc(train_ds, train=True),
        val=val,
        test=enc(splits.test),
        calib=enc(calib_ds) if calib_ds is not None else None,
        partitions=d.partitions,
        stats=d.stats,
        groups=d.groups,
        dropped_test=int(splits.dropped_test),
        positive_class=d.positive_class,
        data_info=d.data_info,
        drops_note=drops_line(splits),
    )
    attach_resources(exp)  # clients.limits: refused here, before the run directory is touched
    return exp


def prepare_data(cfg: ExperimentConfig) -> PreparedData:
    """Load the data, carve validation and calibration sets, partition; every data check
    of a run (``fedhello validate`` runs this too, without the model's weights)."""
    splits = load_splits(cfg.data, cfg.seed, task=cfg.task)
    data_info = {
        "source": splits.source,
        "num_labels": len(splits.label_names),
        "rows": {"train": len(splits.train), "test": len(splits.test)},
        "dropped": {split: dict(splits.drops.get(split, {})) for split in ("train", "test")},
        "fingerprint": fingerprint(splits),
    }
    train_ds = splits.train
    n_classes = len(splits.label_names)
    positive_class = positive_label_index(cfg, splits.label_names)
    if cfg.partition.name == "pathological" and cfg.partition.classes_per_client > n_classes:
        raise ConfigError(
            f"config key 'partition.classes_per_client': {cfg.partition.classes_per_client} is more than "
            f"the {n_classes} classes of the data"
        )
    n_val = int(round(cfg.data.val_fraction * len(train_ds)))
    val_ds = None
    if n_val > 0:
        train_ds, val_ds = carve(train_ds, n_val, cfg.seed)
    calib_ds = None
    # The server calibration set is carved for every strategy, used only by the FIM ones: all
    # strategies of a seed then get the same client data (baselines and HLA strategies are
    # compared on the same data) and compare seed by seed. A non-FIM strategy skips it only
    # where no FIM strategy could run at all (the set would leave fewer training samples
    # than clients).
    if cfg.strategy.fim_source == "server":
        uses_fisher = strategy_class(cfg.strategy.name).uses_fisher
        if uses_fisher and cfg.strategy.fim_samples >= len(train_ds):
            raise ConfigError(
                f"config key 'strategy.fim_samples': {cfg.strategy.fim_samples} is not less than the "
                f"{len(train_ds)} training samples"
            )
        if uses_fisher or len(train_ds) - cfg.strategy.fim_samples >= cfg.clients.num_clients:
            train_ds, calib_ds = carve(train_ds, cfg.strategy.fim_samples, cfg.seed + 1)
    if len(train_ds) < cfg.clients.num_clients:
        raise ConfigError(
            f"config key 'clients.num_clients': {cfg.clients.num_clients} clients but only "
            f"{len(train_ds)} training samples"
        )
    partitions = partition_dataset(train_ds, cfg.partition, cfg.clients.num_clients, cfg.seed)
    stats = partition_stats(train_ds, partitions, splits.label_names)
    groups = assign_groups(cfg.clients.num_clients, cfg.clients.fractions, cfg.seed)
    return PreparedData(splits, train_ds, val_ds, calib_ds, partitions, stats, list(groups), positive_class,
                        data_info)


def positive_label_index(cfg: ExperimentConfig, label_names: Sequence[str]) -> int:
    """The index of ``eval.positive_label`` (default 1); f1_positive selection needs two classes."""
    n = len(label_names)
    if cfg.eval.select_metric == "f1_positive" and n != 2:
        raise ConfigError(f"config key 'eval.select_metric': f1_positive needs two classes, the data has {n}")
    if cfg.eval.positive_label is None:
        return 1
    names = [str(x) for x in label_names]
    if str(cfg.eval.positive_label) not in names:
        raise ConfigError(
            f"config key 'eval.positive_label': {cfg.eval.positive_label!r} is not a label of the data "
            f"(labels: {', '.join(names[:10])})"
        )
    return names.index(str(cfg.eval.positive_label))
