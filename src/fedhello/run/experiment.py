"""One experiment, assembled and run into its run directory.

:func:`prepare` turns a validated config into an :class:`Experiment` (data,
partitions, resource groups, one frozen backbone with LoRA, strategy), running
every check that needs the model or the data before any training starts.
:func:`run_experiment` drives :class:`~fedhello.federation.server.Server` over a
client runner (in-process by default: :class:`~fedhello.federation.simulation.SimulationRunner`;
the Flower ServerApp passes its own) and writes the run directory
(:mod:`fedhello.run.rundir`). Reports (TensorBoard, plots) are a hook the caller
passes in: this layer imports nothing of :mod:`fedhello.report`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from fedhello.allocation import build_strategy, strategy_class
from fedhello.allocation.clients import assign_groups
from fedhello.config import ExperimentConfig, absolute_data_path, build_config
from fedhello.config import check_budgets
from fedhello.data import carve, load_splits, partition_dataset, partition_stats
from fedhello.data.sources import drops_line, fingerprint
from fedhello.data.batching import Encoded, collate, eval_batches
from fedhello.errors import ConfigError, FedHelloError
from fedhello.federation.client import LocalTrainer, evaluate
from fedhello.federation.server import Server, summarize
from fedhello.model import build_backbone, get_state, load_model_config, num_hidden_layers, set_state
from fedhello.model.backbone import Backbone, check_max_length
from fedhello.model.state import State
from fedhello.model.state import check_state
from fedhello.run.rundir import CHECKPOINT, CONFIG, DATA, SUMMARY, RunDir
from fedhello.data.encoders import make_encoder
from fedhello.federation.simulation import SimulationRunner
from fedhello.model.adapter import export_adapter
from fedhello.run.limits import PROFILE, attach_resources, profile_record, resume_costs
from fedhello.federation.progress import NO_PROGRESS, ProgressHook


log = logging.getLogger("fedhello")


class Reporter(Protocol):
    """What a caller may attach to a run (``run_experiment(reporter=...)``), built for its directory.

    :class:`fedhello.report.hooks.RunReporter` writes TensorBoard scalars after
    every round and the plots at the end; a failure there must not stop the run.
    """

    def round(self, records: list[dict]) -> None:
        """After every round, with all round records so far (the run's whole history)."""

    def finish(self, records: list[dict]) -> None:
        """Once, after the last round and the summary, with all round records."""

    def close(self) -> None:
        """Always, last (also when the run raised): release what the reporter holds open."""


def pick_device(name: str, what: str = "config key 'device'") -> torch.device:
    """The torch device for ``name`` (auto, cpu, cuda, cuda:N, mps), which must exist on this machine."""
    from fedhello.config import DEVICE_RE

    if not DEVICE_RE.match(name):
        raise ConfigError(f"{what}: {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}: {name} is not available (PyTorch sees no CUDA device here): use cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{what}: {name} does not exist ({torch.cuda.device_count()} CUDA devices)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}: mps is not available on this machine: use cpu or auto")
    return torch.device(name)


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
    resource group. Its methods compute what the runners ask of clients and server.
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

    def evaluator(self) -> Callable[..., dict]:
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

        return fisher_layer_scores(self.model, self.layermap, self.forward_batches(state, data, indices))

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

    def server_scorer(self) -> Callable[[State], np.ndarray] | None:
        """Fisher scores of a global state on the calibration set (None without one)."""
        if self.calib is None:
            return None
        return lambda state: self.fisher(state, self.calib, np.arange(len(self.calib)))

    def counts_under_limits(self) -> list[int]:
        """Per group, the count of LoRA layers its clients may train: ``clients.budgets`` and, under
        declared limits, the largest count a client of the group affords within them
        (:meth:`~fedhello.allocation.resources.ResourceModel.slot`)."""
        from fedhello.allocation import ClientSlot

        budgets = list(self.cfg.clients.budgets)
        if self.resources is None:
            return budgets
        return [max((self.resources.slot(ClientSlot(cid, g, b)).budget
                     for cid, grp in enumerate(self.groups) if grp == g), default=b)
                for g, b in enumerate(budgets)]

    def trainable_params_per_group(self) -> list[int]:
        """Trainable LoRA (+ head, unless frozen) parameters of a client of each group.

        As many LoRA layers as the strategy trains for the group's count (its budget, under
        limits :meth:`counts_under_limits`), at the
        group's LoRA rank (rank strategies), without the A matrices under FFA; 0 for
        a group the strategy never samples (Exclusive's weak groups).
        """
        from fedhello.allocation import ClientSlot
        from fedhello.model.rank import is_lora_a

        cfg = self.cfg
        strat = build_strategy(cfg.strategy, self.layermap.num_layers, cfg.clients.budgets)
        params = dict(self.model.named_parameters())
        # the head counts where clients train it (head.train local or federated), not when frozen
        head = sum(params[n].numel() for n in self.layermap.head) if cfg.head.train != "frozen" else 0
        out = []
        for g, b in enumerate(self.counts_under_limits()):
            if not strat.eligible(ClientSlot(-1, g, b)):
                out.append(0)
                continue
            rank = strat.client_rank(ClientSlot(-1, g, b), cfg.lora.r) or cfg.lora.r
            per_layer = [
                sum(params[n].numel() * rank // cfg.lora.r for n in names if not (cfg.lora.ffa and is_lora_a(n)))
                for names in self.layermap.layers
            ]
            # every LoRA layer has the same size in the supported families
            out.append(head + sum(sorted(per_layer)[: strat.trained_layers(b)]))
        return out


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


def write_setup(rundir: RunDir, exp: Experiment) -> None:
    """The run's fixed facts: labels, resource groups, partitions (indices + statistics)."""
    cfg = exp.cfg
    rundir.write_json(DATA, exp.data_info)
    rundir.write_json("labels.json", exp.label_names)
    rundir.write_json(
        "clients.json",
        {
            "groups": exp.groups,
            "budgets": cfg.clients.budgets,
            "fractions": cfg.clients.fractions,
            "trainable_params_per_group": exp.trainable_params_per_group(),
            **({"counts_under_limits": exp.counts_under_limits()} if exp.resources is not None else {}),
            "num_layers": exp.layermap.num_layers,
        },
    )
    rundir.write_json(
        "partition.json",
        {
            "name": cfg.partition.name,
            "seed": cfg.seed,
            "num_train": len(exp.train),
            "num_val": len(exp.val),
            "num_test": len(exp.test),
            "num_calibration": len(exp.calib) if exp.calib is not None else 0,
            "dropped_test": exp.dropped_test,
            "clients": [dict(s, indices=exp.partitions[i].tolist()) for i, s in enumerate(exp.stats)],
        },
    )


def holds_config(rundir: RunDir, cfg: ExperimentConfig) -> bool:
    """Whether the run in ``rundir`` was started with ``cfg``.

    The saved config is validated again before comparing, so a key added to the
    schema since the run started compares as its default, not as a difference
    (an older run stays resumable); a saved config that no longer validates is
    a different run.
    """
    try:
        # a relative data.path (runs from before paths were stored absolute) meant the current directory
        saved = absolute_data_path(build_config(rundir.read_config_dict()))
    except FedHelloError:
        return False
    return saved.to_dict() == absolute_data_path(cfg.model_copy(deep=True)).to_dict()


def open_rundir(cfg: ExperimentConfig, out: str | Path, overwrite: bool) -> tuple[RunDir, bool]:
    """The run directory and whether it holds this very run to resume. Writes nothing.

    A directory holding a different run is an error unless ``overwrite``; a
    directory holding files but no run (no config.yaml) is always an error.
    """
    rundir = RunDir(out)
    if rundir.path.exists() and not rundir.path.is_dir():
        raise FedHelloError(f"--out {rundir.path} exists and is not a directory")
    if not rundir.has_run():
        foreign = rundir.foreign_entries()
        if foreign:
            raise FedHelloError(
                f"--out {rundir.path} holds files but no run (e.g. {foreign[0].name}; config.yaml missing): "
                "use a new or empty directory"
            )
        return rundir, False
    if overwrite:
        return rundir, False
    if not holds_config(rundir, cfg):
        raise FedHelloError(
            f"--out {rundir.path} already holds a different run (use --resume {rundir.path}, "
            "--overwrite or another --out)"
        )
    return rundir, True


def _dotted(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_config_unchanged(rundir: RunDir, ckpt: dict, cfg: ExperimentConfig) -> None:
    """A resumed run's config must be the one its checkpoint was written under (the checkpoint
    holds it, key ``config``), but for ``rounds``, which may be extended. Raises naming the key."""
    saved = ckpt.get("config")
    if saved is None:
        log.warning("%s: the checkpoint holds no config (an older fedhello): config.yaml is not checked", rundir.path)
        return
    if not isinstance(saved, dict):
        raise FedHelloError(f"{rundir.file(CHECKPOINT)}: checkpoint key 'config' is not a mapping")
    old, new = _dotted(saved), _dotted(cfg.to_dict())
    for key in old:
        if key != "rounds" and key in new and old[key] != new[key]:
            raise FedHelloError(
                f"{rundir.file(CONFIG)}: config key '{key}' changed since this run started ({old[key]!r} -> "
                f"{new[key]!r}); only rounds may change on --resume: restore it, or start again with --overwrite"
            )


def check_data(rundir: RunDir, exp: Experiment) -> None:
    """The data of a resumed run must be the data it started with (data.json's fingerprint)."""
    if not rundir.file(DATA).is_file():
        log.warning("%s: no %s (a run started by an older fedhello): the data is not checked", rundir.path, DATA)
        return
    saved = rundir.read_json(DATA)
    saved = saved.get("fingerprint") if isinstance(saved, dict) else None
    now = exp.data_info["fingerprint"]
    names = {"labels": "the label set", "train": "the training rows", "test": "the test rows"}
    changed = [what for key, what in names.items() if not isinstance(saved, dict) or saved.get(key) != now[key]]
    if changed:
        raise FedHelloError(
            f"{rundir.path}: the data changed since this run started ({', '.join(changed)} differ from "
            f"{DATA}): resume with the data it started with, or start again with --overwrite"
        )


def resume_config(out: str | Path) -> ExperimentConfig:
    """The config of the run in ``out`` (its config.yaml, validated again), for ``--resume``.

    Raises :class:`~fedhello.errors.FedHelloError` when ``out`` is no directory or
    holds no readable run config.
    """
    rundir = RunDir(out)
    if not rundir.path.is_dir():
        raise FedHelloError(f"--resume {rundir.path}: no such run directory")
    return build_config(rundir.read_config_dict())


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[Experiment], None] | None = None,
    stop_after: int | None = None,
    runner_factory: Callable[[Experiment], object] | None = None,
    reporter: Callable[[Path], Reporter] | None = None,
    progress: ProgressHook = NO_PROGRESS,
) -> dict:
    """Run (or continue) the experiment into ``out``; returns the summary.

    ``progress`` is told where the long steps stand (:mod:`fedhello.federation.progress`).

    ``stop_after`` ends the process's work after that many rounds in total
    (used to test resumption). ``runner_factory`` builds the ClientRunner from
    the prepared experiment (default: :class:`SimulationRunner`; the Flower
    ServerApp passes one over its Grid, which may update ``exp.groups``).
    ``reporter(run_dir)`` builds the run's :class:`Reporter` (none by default).
    A finished run exports its final adapter (:mod:`fedhello.model.adapter`).

    The run holds the directory's lock from its first write to its return (a
    second run on the same directory is an error). Resuming needs the data the
    run started with (data.json's fingerprint); any start without a checkpoint
    to continue from (new, ``overwrite``) first removes everything in the directory.
    """
    open_rundir(cfg, out, overwrite)  # a different run there: error before loading anything
    exp = prepare(cfg)
    rundir = RunDir(out)
    with rundir.locked():  # one process per run directory, until this run returns
        # decided again under the lock: another process may have written here meanwhile
        rundir, resuming = open_rundir(cfg, out, overwrite)
        rundir.remove_leftovers()
        ckpt = rundir.load_checkpoint() if resuming else None
        if ckpt is not None:
            check_config_unchanged(rundir, ckpt, cfg)
            check_data(rundir, exp)
            check_state(ckpt["global_state"], exp.global_state(), rundir.file(CHECKPOINT))
            if ckpt["round"] > cfg.rounds:
                raise FedHelloError(
                    f"{rundir.file(CHECKPOINT)}: {ckpt['round']} rounds done, the config has rounds: {cfg.rounds}"
                )
        else:  # a fresh start: nothing of an earlier run stays beside the new one
            rundir.clear()
        if on_start is not None:  # every refusal is said before this
            on_start(exp)
        if exp.drops_note:
            log.info(exp.drops_note)
        return _run(cfg, exp, rundir, ckpt, on_round, stop_after, runner_factory, reporter, progress)


def keep_checkpoint_time(rundir: RunDir, records: list[dict]) -> None:
    """The checkpoint time of the last checkpointed round, which only metrics.jsonl holds (it is
    measured after that checkpoint was written), back into its record when resuming."""
    if not records or "phase_time_s" not in records[-1]:
        return
    try:
        saved = rundir.read_metrics()
    except FedHelloError:
        return
    last = records[-1]
    match = [r for r in saved if isinstance(r, dict) and r.get("round") == last.get("round")]
    spent = (match[-1].get("phase_time_s") or {}).get("checkpoint") if match else None
    if isinstance(spent, (int, float)) and not isinstance(spent, bool) and spent >= 0:
        last["phase_time_s"]["checkpoint"] = float(spent)


def _run(cfg, exp, rundir: RunDir, ckpt: dict | None, on_round, stop_after, runner_factory, reporter,
         progress: ProgressHook = NO_PROGRESS) -> dict:
    if ckpt is not None:  # costs measured at the start stay those of the start (same allocations)
        resume_costs(exp, rundir.file(PROFILE))
    runner = runner_factory(exp) if runner_factory is not None else SimulationRunner(exp, progress)
    if cfg.attack.kind != "none":  # experiments only: one simulated attacker (fedhello.federation.attacks)
        if runner_factory is not None:
            raise ConfigError("config key 'attack.kind': a simulated attack is for in-process runs only")
        from fedhello.federation.attacks import AttackRunner

        runner = AttackRunner(runner, cfg.attack)
    server = Server.for_experiment(exp, runner)
    if exp.costs is not None:
        rundir.write_json(PROFILE, profile_record(exp.costs))
    server.progress = progress
    if ckpt is not None:
        server.restore(ckpt, where=str(rundir.file(CHECKPOINT)))
        keep_checkpoint_time(rundir, server.state.records)
        rundir.write_metrics(server.state.records)
        if not rundir.file(DATA).is_file():
            rundir.write_json(DATA, exp.data_info)
    else:
        rundir.write_config(cfg.to_dict())
        write_setup(rundir, exp)
    rep = reporter(rundir.path) if reporter is not None else None

    cfg_dict = cfg.to_dict()

    def round_done(rec: dict) -> None:
        # the config rides along: --resume refuses an edited config.yaml (check_config_unchanged)
        t0 = time.perf_counter()
        rundir.save_checkpoint({**server.checkpoint(), "config": cfg_dict})
        if "phase_time_s" in rec:  # in metrics.jsonl now; in the checkpoint from the next round on
            rec["phase_time_s"]["checkpoint"] = time.perf_counter() - t0
        rundir.write_metrics(server.state.records)
        if rep is not None:
            rep.round(server.state.records)
        if on_round is not None:
            on_round(rec)

    try:
        server.run(round_done, until=stop_after)
        summary = None
        if server.state.round >= cfg.rounds:
            summary = summarize(cfg, server.state.records)
            summary["trainable_params_per_group"] = exp.trainable_params_per_group()
            rundir.write_json(SUMMARY, summary)
            try:  # the run's product; a failure here loses nothing (the checkpoint holds the state)
                export_adapter(exp.model, server.state.global_state, rundir.path, exp.label_names, cfg,
                               exp.backbone.pooling, tokenizer=exp.backbone.tokenizer or exp.backbone.image_processor,
                               summary=summary)
            except Exception as err:
                log.warning("adapter export failed: %s: %s", type(err).__name__, err)
            if rep is not None:
                rep.finish(server.state.records)
    finally:
        if rep is not None:
            rep.close()
    return summary or {"rounds": server.state.round, "incomplete": True}
