"""The in-process client runner: every sampled client trains in this process, one after another.

It is one of the :class:`~fedhello.federation.seams.ClientRunner` implementations
the round loop talks to (the other reaches clients over Flower); what a client
computes comes from the clients of the process, a
:class:`~fedhello.federation.seams.LocalClients` (the prepared experiment,
:class:`fedhello.run.preparation.Experiment`): its local trainer, Fisher scores
and class statistics.
"""

from __future__ import annotations

from typing import Sequence

from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask
from fedhello.federation.progress import CLIENTS, NO_PROGRESS, STATISTICS, ProgressHook
from fedhello.federation.seams import ClassStats, LocalClients
from fedhello.model.state import State


class SimulationRunner:
    """Trains the clients of ``clients`` in this process, one after another, with its one trainer."""

    def __init__(self, clients: LocalClients, progress: ProgressHook = NO_PROGRESS):
        self.clients = clients
        self.trainer = clients.trainer()
        self.progress = progress  # advanced once per client (fedhello.federation.progress)

    def fit(self, tasks: Sequence[FitTask], global_state: State) -> list[ClientUpdate | ClientFailure]:
        """See :meth:`ClientRunner.fit`; the clients train one after another, in this process."""
        out: list[ClientUpdate | ClientFailure] = []
        for t in tasks:
            out.append(self.trainer.fit(t, global_state, self.clients.partitions[t.client_id]))
            self.progress.advance(CLIENTS)
        return out

    def scores(self, client_ids: Sequence[int], global_state: State):
        """See :meth:`ClientRunner.scores`; :meth:`LocalClients.client_fisher` per client."""
        return [self.clients.client_fisher(cid, global_state) for cid in client_ids]

    def class_stats(self, client_ids: Sequence[int], global_state: State) -> list[ClassStats]:
        """See :meth:`ClientRunner.class_stats`; each client's statistics on its partition, all
        computed in one pass of length-sorted batches over their pooled data (exact per client;
        progress advances by one client's share of the samples at a time)."""
        return self.clients.class_stats_many(global_state, client_ids,
                                             on_progress=lambda n: self.progress.advance(STATISTICS, n))

    def available(self) -> set[int] | None:
        """See :meth:`ClientRunner.available`; None: every client is always reachable."""
        return None
