"""What the federation floor needs from the floors above it, declared as Protocols.

The round loop (:class:`~fedhello.federation.server.Server`) and the in-process
runner (:class:`~fedhello.federation.simulation.SimulationRunner`) call into the
prepared experiment through these, never through a concrete class of a higher
floor: :class:`fedhello.run.preparation.Experiment` implements
:class:`ServerExperiment` and :class:`LocalClients`, the runtimes implement
:class:`ClientRunner`.

- :class:`ClientRunner`: how a runtime reaches clients (train, score, class statistics).
- :class:`UpdateComputer`: what computes one client's update from the global state.
- :class:`LocalClients`: the clients of this process, for the in-process runner.
- :class:`Evaluator`: scores a global state on the validation and test splits.
- :class:`FisherScorer`: per-layer Fisher scores of a global state on the server's calibration set.
- :class:`HeadInitialiser`: the class-means head from the clients' summed class statistics.
- :class:`ServerExperiment`: what :meth:`Server.for_experiment` reads of a prepared experiment.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask
from fedhello.model.layermap import LayerMap
from fedhello.model.state import State

ClassStats = tuple[np.ndarray, np.ndarray, float]
"""A client's per-class feature sums (C, D), counts (C,) and the sum of its feature norms."""


class ClientRunner(Protocol):
    """How a runtime reaches clients: the one thing :class:`~fedhello.federation.server.Server` does not know.

    Implementations: :class:`fedhello.federation.simulation.SimulationRunner`
    (every client in this process) and :class:`fedhello.flower.strategy.FlowerRunner`
    (one Flower node per client). A runner moves data and reports failures; it
    never validates or aggregates (the Server does, identically for every runtime).
    A client that fails, times out or cannot be reached is reported as a
    :class:`~fedhello.federation.client.ClientFailure` (with a reason) in its
    place, so that the round goes on with the others.
    """

    def fit(self, tasks: Sequence[FitTask], global_state: State) -> list[ClientUpdate | ClientFailure]:
        """Train each task's client from ``global_state``; one result per task.

        A task's client starts from ``global_state`` truncated to ``task.rank``
        (when set), trains ``task.layers`` with ``task.lr`` and ``task.seed``, and
        replies with only the tensors it trained. Results are matched to tasks by
        ``client_id``; the Server rejects extra, duplicate or malformed replies.
        """

    def scores(self, client_ids: Sequence[int], global_state: State) -> list[tuple[np.ndarray, int] | ClientFailure]:
        """Per-layer Fisher scores and sample counts computed by clients on their own data.

        One entry per id: ``(scores of length L, number of samples)`` or a failure.
        Used when ``strategy.fim_source`` is ``clients``; the Server averages the
        scores weighted by the sample counts.
        """

    def class_stats(self, client_ids: Sequence[int], global_state: State) -> list[ClassStats | ClientFailure]:
        """Per-class feature sums (C, D), counts (C,) and the sum of feature norms, computed
        forward-only by each client on its own data (the class-means head, fedhello.model.head).

        One entry per id, in the order of ``client_ids``.
        """

    def available(self) -> set[int] | None:
        """Ids of clients that can be reached now (None: all of them); sampling draws only from these."""


class UpdateComputer(Protocol):
    """What computes a client's update (:class:`fedhello.federation.client.LocalTrainer`)."""

    def fit(self, task: FitTask, global_state: State, indices: np.ndarray) -> ClientUpdate:
        """Train ``task`` from ``global_state`` on the samples ``indices``; the tensors it trained."""


class Evaluator(Protocol):
    """Scores a global state: ``{"val": {"accuracy", "loss", ...}, "test": {...}}`` for the asked splits."""

    def __call__(self, state: State, splits: Sequence[str] = ("val", "test")) -> dict[str, dict[str, float]]:
        """Load ``state`` and evaluate it on each split of ``splits``."""


class FisherScorer(Protocol):
    """Per-layer Fisher scores (length L) of a global state on the server's calibration set."""

    def __call__(self, state: State) -> np.ndarray:
        """The scores of ``state``."""


class HeadInitialiser(Protocol):
    """The class-means head's tensors (by global-state name) from the clients' summed class statistics."""

    def __call__(self, sums: np.ndarray, counts: np.ndarray, norm_sum: float) -> State:
        """The head from per-class feature sums, class counts and the sum of feature norms."""


class LocalClients(Protocol):
    """The clients of this process, as the in-process runner reaches them."""

    @property
    def partitions(self) -> Sequence[np.ndarray]:
        """Each client's training-sample indices, by client id."""

    def trainer(self) -> UpdateComputer:
        """The local trainer every client of the process uses."""

    def client_fisher(self, client_id: int, state: State) -> tuple[np.ndarray, int]:
        """A client's per-layer Fisher scores under ``state`` and how many samples gave them."""

    def class_stats_many(self, state: State, client_ids: Sequence[int],
                         on_progress: Callable[[int], None] | None = None) -> list[ClassStats]:
        """Each client's class statistics under ``state``, in the order of ``client_ids``."""


class ServerExperiment(Protocol):
    """What :meth:`~fedhello.federation.server.Server.for_experiment` reads of a prepared experiment."""

    @property
    def cfg(self) -> Any:
        """The experiment config (its settings are read once, into the Server's own)."""

    @property
    def layermap(self) -> LayerMap:
        """LoRA parameter names per layer: which tensors a reply must hold."""

    @property
    def groups(self) -> Sequence[int]:
        """The resource group of every client, by client id."""

    @property
    def partitions(self) -> Sequence[np.ndarray]:
        """Each client's training-sample indices (their sizes bound the sample counts replies claim)."""

    @property
    def resources(self) -> Any:
        """The cost model and the clients' declared limits (None without limits)."""

    def global_state(self) -> State:
        """The initial global adapter (LoRA tensors, and the head)."""

    def evaluator(self) -> Evaluator:
        """Scores a global state on the validation and test splits."""

    def server_scorer(self) -> FisherScorer | None:
        """Fisher scores on the server's calibration set (None without one)."""

    def head_from_stats(self, sums: np.ndarray, counts: np.ndarray, norm_sum: float) -> State:
        """The class-means head (:class:`HeadInitialiser`)."""

    def num_classes(self) -> int:
        """The number of labels of the data."""
