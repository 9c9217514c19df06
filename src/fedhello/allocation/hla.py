"""The HLA family of Fed-HeLLo (arXiv:2506.12213) and the budget baselines Exclusive and Straggler.

Strategies (``strategy.name``):

- ``gd-hla``: deterministic layers of ``strategy.pattern`` for the client's budget,
  the same every round.
- ``rgd-hla``: every round every client draws its ``b`` layers with
  p = :func:`pattern_probabilities` (pattern, L, the run's budgets) via
  ``strategy.sampler``; a budget of L trains all layers.
- ``fim-hla``: Fisher scores of the current global model recomputed at rounds
  0, E, 2E, ... (E = ``strategy.fim_every``); tiers by exact 1-D k-means
  (``strategy.fim_tiers``), weights by tier (1:2:3) or proportional to the scores
  (``strategy.fim_weights``); the cached weights are used until the next
  recomputation (the authors' reference implementation overwrote them the
  round after they were computed).
- ``fedhello``: rounds [0, W) (W = ``strategy.warmup_rounds``) are RGD-HLA with
  ``strategy.pattern``; FIM is recomputed at rounds W, W+E, W+2E, ...; the
  weights combine prior and FIM by ``strategy.combine``:
  ``product`` (prior x FIM weights, normalised, kept until the next
  recomputation), ``fim`` (FIM weights alone, kept), ``reference`` (FIM weights
  in the recomputation round only, the prior in the others).
- Starvation guard (both FIM strategies): tiers on the logarithms of the scores
  (``strategy.fim_scale: log``; ``raw`` is the paper) and a floor on every layer's
  share of the Fisher-derived weights (``strategy.prob_floor``; 0 is the paper):
  Fisher scores grow by orders of magnitude with depth, raw k-means then puts all
  but the top layer in the lowest tier, and layers that are rarely trained keep
  low scores, so without a floor they can stay starved for good.
- ``exclusive``: only clients whose budget is L are eligible; they train all layers.
- ``straggler``: every client trains min(budgets) layers spread evenly over depth.

Options (``strategy.*``): those of every strategy (pattern, sampler), the Fisher
strategies' and fedhello's, declared in :mod:`fedhello.strategy_options`
(``StrategyOptions``, ``FisherOptions``, ``FedHelloOptions``); a strategy reads its
own as ``self.cfg``.

If a FIM strategy finds no cache at a round where it needs FIM weights (a state
without cache, a run starting mid-schedule) it recomputes then.

Round info (``RoundPlan.info``): every sampling strategy puts ``layer_probs``,
the per-layer weights the round's draws used; FIM strategies add
``fim_scores`` (floats) and ``fim_tiers`` (ints) ONLY in rounds where the
scores were recomputed (so the metrics show when and what was computed).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fedhello.allocation.base import ClientSlot, RoundPlan, ScoreProvider, Strategy, register, spread_evenly
from fedhello.allocation.fisher import kmeans_tiers, log_scores, score_weights, tier_weights
from fedhello.allocation.patterns import deterministic_layers, pattern_probabilities
from fedhello.errors import ConfigError


class _Sampling(Strategy):
    """Shared: per-client draws from per-layer weights with the configured sampler."""

    def _draw(self, clients: Sequence[ClientSlot], probs: np.ndarray, rng: np.random.Generator) -> dict[int, list[int]]:
        # under declared limits the weights are restricted to each client's window (Strategy.floor)
        return {c.id: self.restricted_sample(probs, c, c.budget, rng) for c in clients}

    def _prior(self) -> np.ndarray:
        return pattern_probabilities(self.cfg.pattern, self.num_layers, self.budgets)


@register
class GDHLA(Strategy):
    """GD-HLA (arXiv:2506.12213): each client trains the pattern's top-b layers, the same every round."""

    name = "gd-hla"

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`: the pattern's deterministic layers for each budget."""
        return RoundPlan(
            {c.id: deterministic_layers(self.cfg.pattern, self.num_layers, c.budget, self.floor(c)) for c in clients}
        )


@register
class RGDHLA(_Sampling):
    """RGD-HLA (arXiv:2506.12213): each round each client draws b layers with the pattern's probabilities."""

    name = "rgd-hla"

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`: draws from the pattern's prior; info ``layer_probs``."""
        probs = self._prior()
        return RoundPlan(self._draw(clients, probs, rng), {"layer_probs": [float(x) for x in probs]})


class _FisherCache(_Sampling):
    """FIM scores, tiers and weights cached between recomputations (persisted in state_dict)."""

    uses_fisher = True

    def __init__(self, cfg, num_layers, budgets):
        super().__init__(cfg, num_layers, budgets)
        self.fim_round: int | None = None
        self.fim_scores: np.ndarray | None = None
        self.fim_tiers: np.ndarray | None = None
        self.fim_weights: np.ndarray | None = None  # FIM weights alone (tiers or scores)

    def _recompute(self, round: int, scores: ScoreProvider | None) -> dict[str, Any]:
        if scores is None:
            raise ValueError(
                f"strategy {self.name!r} needs Fisher scores at round {round} but no ScoreProvider was given"
            )
        s = np.asarray(scores(), dtype=float).reshape(-1)
        if s.size != self.num_layers:
            raise ValueError(f"Fisher scores have {s.size} entries, expected one per layer ({self.num_layers})")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"Fisher scores must be finite, got {s.tolist()}")
        k = self.cfg.fim_tiers
        tiers = kmeans_tiers(log_scores(s) if self.cfg.fim_scale == "log" else s, k=k)
        weights = tier_weights(tiers, k) if self.cfg.fim_weights == "tiers" else score_weights(s)
        self.fim_round = int(round)
        self.fim_scores, self.fim_tiers, self.fim_weights = s, tiers, weights
        return {"fim_scores": [float(x) for x in s], "fim_tiers": [int(x) for x in tiers]}

    def floored(self, probs: np.ndarray) -> np.ndarray:
        """``(1 - f) p + f / L`` with f = ``strategy.prob_floor``: every layer keeps an inclusion
        probability of at least ``f * b / L`` whatever the Fisher scores (0: the paper's weights)."""
        p = np.asarray(probs, dtype=float)
        p = p / p.sum()
        f = self.cfg.prob_floor
        return p if f <= 0 else (1.0 - f) * p + f / self.num_layers

    def state_dict(self) -> dict[str, Any]:
        if self.fim_scores is None:
            return {"fim_round": None}
        return {
            "fim_round": self.fim_round,
            "fim_scores": [float(x) for x in self.fim_scores],
            "fim_tiers": [int(x) for x in self.fim_tiers],
            "fim_weights": [float(x) for x in self.fim_weights],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or state.get("fim_round") is None:
            self.fim_round = self.fim_scores = self.fim_tiers = self.fim_weights = None
            return
        # a checkpoint is a file a user hands over: check what the draws will read
        fim_round = int(state["fim_round"])
        scores = np.asarray(state["fim_scores"], dtype=float)
        tiers = np.asarray(state["fim_tiers"], dtype=int)
        weights = np.asarray(state["fim_weights"], dtype=float)
        for name, a in (("fim_scores", scores), ("fim_tiers", tiers), ("fim_weights", weights)):
            if a.shape != (self.num_layers,):
                raise ValueError(f"strategy state {name} has shape {a.shape}, the model has {self.num_layers} layers")
        if fim_round < 0 or not np.isfinite(scores).all():
            raise ValueError("strategy state holds a negative Fisher round or non-finite Fisher scores")
        if ((tiers < 0) | (tiers >= self.cfg.fim_tiers)).any():
            raise ValueError(f"strategy state fim_tiers outside 0..{self.cfg.fim_tiers - 1}")
        if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ValueError("strategy state fim_weights are not finite non-negative weights with a positive sum")
        self.fim_round, self.fim_scores, self.fim_tiers, self.fim_weights = fim_round, scores, tiers, weights


@register
class FIMHLA(_FisherCache):
    """FIM-HLA (arXiv:2506.12213): draws weighted by the global model's Fisher tiers, recomputed every E rounds."""

    name = "fim-hla"

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`.

        Recomputes the Fisher tiers at rounds 0, E, 2E, ... (or when nothing is cached),
        then draws from the floored FIM weights. Raises ValueError when scores are due
        and ``scores`` is None or returns unusable values.
        """
        info: dict[str, Any] = {}
        if round % self.cfg.fim_every == 0 or self.fim_weights is None:
            info.update(self._recompute(round, scores))
        probs = self.floored(self.fim_weights)
        info["layer_probs"] = [float(x) for x in probs]
        return RoundPlan(self._draw(clients, probs, rng), info)


@register
class FedHeLLo(_FisherCache):
    """Fed-HeLLo (arXiv:2506.12213): RGD-HLA warm-up, then the geometric prior combined with Fisher tiers."""

    name = "fedhello"

    def probabilities(self, round: int, recomputed: bool) -> np.ndarray:
        """The per-layer weights used in ``round`` (after any recomputation of that round)."""
        prior = self._prior()
        if round < self.cfg.warmup_rounds:
            return prior
        combine = self.cfg.combine
        if combine == "fim":
            return self.floored(self.fim_weights)
        if combine == "reference":
            return self.floored(self.fim_weights) if recomputed else prior
        w = prior * self.fim_weights  # product
        total = w.sum()
        if total <= 0:  # the prior and the FIM weights share no layer: fall back to the prior
            return prior
        return self.floored(w / total)

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`.

        Recomputes the Fisher tiers at rounds W, W+E, ... (or after the warm-up when
        nothing is cached) and draws from :meth:`probabilities`. Raises ValueError when
        scores are due and ``scores`` is None or returns unusable values.
        """
        info: dict[str, Any] = {}
        recomputed = False
        W, E = self.cfg.warmup_rounds, self.cfg.fim_every
        if round >= W and ((round - W) % E == 0 or self.fim_weights is None):
            info.update(self._recompute(round, scores))
            recomputed = True
        probs = self.probabilities(round, recomputed)
        info["layer_probs"] = [float(x) for x in probs]
        return RoundPlan(self._draw(clients, probs, rng), info)


@register
class Exclusive(Strategy):
    """Exclusive (a baseline in arXiv:2506.12213): only clients able to train every layer take part, on all layers."""

    name = "exclusive"
    limits_policy = "exclusive"

    def __init__(self, cfg, num_layers, budgets):
        super().__init__(cfg, num_layers, budgets)
        if self.num_layers not in self.budgets:
            raise ConfigError(
                f"strategy exclusive: no resource group has budget {self.num_layers} "
                f"(clients.budgets {self.budgets}), so no client could take part"
            )

    def eligible(self, client: ClientSlot) -> bool:
        """Only clients whose budget covers every layer."""
        return client.budget >= self.num_layers

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`: every layer; ValueError for an ineligible client."""
        bad = [c.id for c in clients if not self.eligible(c)]
        if bad:
            raise ValueError(f"strategy exclusive got ineligible clients {bad} (budget < {self.num_layers})")
        every = list(range(self.num_layers))
        return RoundPlan({c.id: list(every) for c in clients})


@register
class Straggler(Strategy):
    """Straggler, a budget baseline: every client trains the weakest group's budget, layers spread evenly."""

    name = "straggler"

    def allocate(self, round, clients, rng, scores=None):
        """See :meth:`Strategy.allocate`: the smallest budget's layers, spread evenly over depth."""
        out = {}
        for c in clients:
            # under limits: the weakest group's count (or fewer, what the client affords), spread
            # evenly over the window it can reach; without limits the window is every layer
            k = min(min(self.budgets), c.budget)
            m = self.floor(c, k)
            out[c.id] = [m + l for l in spread_evenly(self.num_layers - m, k)]
        return RoundPlan(out)

    def trained_layers(self, budget: int) -> int:
        """The smallest budget, whatever the client's own."""
        return min(self.budgets)
