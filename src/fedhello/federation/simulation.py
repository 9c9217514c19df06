"""The in-process client runner: every sampled client trains in this process, one after another.

It is one of the :class:`~fedhello.federation.server.ClientRunner` implementations
the round loop talks to (the other reaches clients over Flower); what a client
computes is the prepared experiment's (:class:`fedhello.run.experiment.Experiment`):
its local trainer, Fisher scores and class statistics.
"""

from __future__ import annotations

from typing import Sequence

from fedhello.federation.client import ClientFailure, ClientUpdate, FitTask
from fedhello.model.state import State


class SimulationRunner:
    """Trains clients in this process, one after another, on the one shared model of ``exp``."""

    def __init__(self, exp):
        self.exp = exp
        self.trainer = exp.trainer()

    def fit(self, tasks: Sequence[FitTask], global_state: State) -> list[ClientUpdate | ClientFailure]:
        """See :meth:`ClientRunner.fit`; the clients train one after another, in this process."""
        return [self.trainer.fit(t, global_state, self.exp.partitions[t.client_id]) for t in tasks]

    def scores(self, client_ids: Sequence[int], global_state: State):
        """See :meth:`ClientRunner.scores`; :meth:`Experiment.client_fisher` per client."""
        return [self.exp.client_fisher(cid, global_state) for cid in client_ids]

    def class_stats(self, client_ids: Sequence[int], global_state: State):
        """See :meth:`ClientRunner.class_stats`; each client's statistics on its partition."""
        return [self.exp.class_stats(global_state, self.exp.partitions[cid]) for cid in client_ids]

    def available(self) -> set[int] | None:
        """See :meth:`ClientRunner.available`; None: every client is always reachable."""
        return None
