"""The strategy interface: who trains which LoRA layers each round.

A strategy maps (round, sampled clients with their budgets) to a sorted list of
layer indices per client (layer 0 nearest the input). It knows nothing of models,
data or how clients are reached: the only window on the model is an optional
``scores`` callable that returns per-layer importance scores (Fisher information)
of the current global model, computed by whatever runtime runs the round.

Strategies are registered by name with :func:`register`, which binds the class to
the options registered for that name (:mod:`fedhello.strategy_options`, below the
config: the config and ``fedhello allocate`` read names and options there, and
registering a strategy writes nothing outside this package), and built from the
config by :func:`build_strategy`; every random choice comes from the ``rng``
the engine passes in (derived from seed and round), so a run is reproducible
and resumable from the strategy's :meth:`Strategy.state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from fedhello.config import unknown_strategy
from fedhello.errors import ConfigError
from fedhello.strategy_options import Section, StrategyOptions, options_class, strategy_names

ScoreProvider = Callable[[], np.ndarray]
"""The score provider: a zero-argument callable returning per-layer importance scores.

Calling it returns an array of length L (one finite score per LoRA layer, layer 0
nearest the input): the empirical Fisher information of the *current* global
model (:mod:`fedhello.model.fisher`). The runtime builds it each round from a
server-held calibration set or from the sampled clients' scores
(``strategy.fim_source``); it is costly, so a strategy should call it only in the
rounds where it needs fresh scores, and at most once per round.
"""


@dataclass(frozen=True)
class ClientSlot:
    """A sampled client as a strategy sees it.

    Attributes
    ----------
    id : int
        The client's id (its partition index), the key of ``RoundPlan.allocations``.
    group : int
        Its resource group: an index into ``clients.budgets`` (and ``strategy.ranks``).
    budget : int
        How many LoRA layers it trains: ``clients.budgets[group]``, or under declared
        limits the smaller of that and the most its limits afford
        (:class:`~fedhello.allocation.resources.ResourceModel`).
    floors : tuple[int, ...] | None
        Under declared limits: ``floors[k-1]`` is the lowest layer a k-layer set of this
        client may reach (every k-subset of ``[floors[k-1], L)`` fits its limits; ``L``
        where none fits). None: no limits, every layer reachable.
    """

    id: int
    group: int
    budget: int
    floors: tuple[int, ...] | None = None


@dataclass
class RoundPlan:
    """The allocation of one round, as returned by :meth:`Strategy.allocate`.

    Attributes
    ----------
    allocations : dict[int, list[int]]
        Client id -> the LoRA layers that client trains this round: sorted,
        distinct indices in ``[0, L)``. Every client passed to ``allocate`` has
        an entry; the client trains and uploads exactly these layers (plus the
        head when it is federated).
    info : dict[str, Any]
        Extra fields merged into the round's record in ``metrics.jsonl`` (e.g.
        ``layer_probs``, ``fim_scores``, ``fim_tiers``); values must be
        JSON-serialisable.
    """

    allocations: dict[int, list[int]]
    info: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Base class of the allocation strategies: who trains which LoRA layers each round.

    A subclass must:

    - set the class attribute ``name``, the value of ``strategy.name`` that selects
      it, and be registered with :func:`register` (as a class decorator) after its
      options class is registered under that name
      (:func:`fedhello.strategy_options.register_options`);
    - implement :meth:`allocate`, drawing every random choice from the ``rng`` it
      is given (never a global or self-held generator), so that a run is
      reproducible from its seed and resumable mid-way;
    - keep the constructor signature ``(cfg, num_layers, budgets)`` and call
      ``super().__init__``, which checks every budget against the layer count.

    It may override :meth:`eligible` (who can be sampled), :meth:`client_rank`
    (a per-client LoRA rank), :meth:`trained_layers` (for cost reports) and
    :meth:`state_dict` / :meth:`load_state_dict` (anything kept across rounds,
    saved in the checkpoint), and set these class attributes:

    - ``aggregation``: the name of the rule that merges the round's client
      updates, looked up in :data:`fedhello.federation.server.AGGREGATION_RULES`.
      ``"layerwise"`` (the default) replaces each tensor by the weighted average
      over exactly the clients that trained it (Fed-HeLLo, arXiv:2506.12213);
      ``"hetlora"`` (arXiv:2401.06432) and ``"flexlora"`` (arXiv:2402.11505) merge
      updates of different LoRA ranks. A strategy needing another rule adds it
      to that table.
    - ``uses_fisher``: True when :meth:`allocate` calls its ``scores`` provider.
    - ``uses_ranks``: True when :meth:`client_rank` varies the rank.

    :func:`register` sets ``options``, the options class registered for ``name``;
    the strategy reads its options, and only those, as ``self.cfg``.

    Parameters
    ----------
    cfg : StrategySection or StrategyOptions
        The ``strategy`` section of the experiment config (or the strategy's options);
        the strategy keeps its own options of it as ``self.cfg`` (:attr:`options`).
    num_layers : int
        L, the number of LoRA layers (transformer blocks) of the model.
    budgets : Sequence[int]
        The layer budget of each resource group (``clients.budgets``); each at
        most L, else :class:`~fedhello.errors.ConfigError`.
    """

    name: ClassVar[str] = ""
    # How the federation layer merges this strategy's client updates: "layerwise"
    # (weighted average of each tensor over the clients that trained it, the
    # rule of Fed-HeLLo, arXiv:2506.12213) or a rank-heterogeneous rule
    # ("hetlora", arXiv:2401.06432; "flexlora", arXiv:2402.11505).
    aggregation: ClassVar[str] = "layerwise"
    # whether allocate() asks for Fisher scores (the runtime then prepares a
    # calibration set or asks clients, per strategy.fim_source)
    uses_fisher: ClassVar[bool] = False
    # whether client_rank() varies the LoRA rank (strategy.ranks is then meaningful)
    uses_ranks: ClassVar[bool] = False
    # how declared limits (clients.limits) apply: "restrict" (draw inside each client's
    # feasible window, see floor()), "all" (trains every layer: refused where that does
    # not fit), "exclusive" (only clients affording every layer), "ignore" (FedIT)
    limits_policy: ClassVar[str] = "restrict"
    # the class of the options registered for ``name`` (set by register)
    options: ClassVar[type[StrategyOptions]] = StrategyOptions

    def __init__(self, cfg: Section, num_layers: int, budgets: Sequence[int]):
        self.cfg = self.options.of(cfg)
        self.num_layers = int(num_layers)
        self.budgets = [int(b) for b in budgets]
        for b in self.budgets:
            if b > self.num_layers:
                raise ConfigError(
                    f"clients.budgets: budget {b} is larger than the model's {self.num_layers} LoRA layers"
                )

    def eligible(self, client: ClientSlot) -> bool:
        """Whether the client may be sampled at all (Exclusive excludes weak clients)."""
        return True

    # -- declared limits: the one place a strategy learns which layers a client can reach --
    def floor(self, client: ClientSlot, k: int | None = None) -> int:
        """The lowest layer a ``k``-layer set (default: the client's count) may reach.

        0 without limits. Under limits every k-subset of ``[floor, L)`` fits the client's
        limits, so a strategy restricted to that window draws only feasible sets; its
        per-layer weights restricted to the window and renormalised are its distribution
        restricted to those sets (:func:`restrict`).
        """
        k = client.budget if k is None else int(k)
        if client.floors is None or k <= 0:
            return 0
        if k > len(client.floors):
            return self.num_layers
        return int(client.floors[k - 1])

    def restricted_sample(self, weights: np.ndarray, client: ClientSlot, k: int, rng: np.random.Generator) -> list[int]:
        """``k`` layers drawn with ``strategy.sampler`` from ``weights`` restricted to the client's window
        ``[floor, L)`` and renormalised (uniform there if the weights give it no mass).

        Without limits (floor 0) this is exactly the sampler on ``weights``: the same draws as before
        limits existed. A window no larger than ``k`` is trained whole."""
        from fedhello.allocation.samplers import sample_layers

        m = self.floor(client, k)
        if k >= self.num_layers - m:
            return list(range(m, self.num_layers))
        w = np.asarray(weights, dtype=float)[m:]
        if w.sum() <= 0:
            w = np.ones_like(w)
        return [m + x for x in sample_layers(w, k, rng, self.cfg.sampler)]

    def allocate(
        self,
        round: int,
        clients: Sequence[ClientSlot],
        rng: np.random.Generator,
        scores: ScoreProvider | None = None,
    ) -> RoundPlan:
        """Decide which LoRA layers each sampled client trains in round ``round``.

        Parameters
        ----------
        round : int
            The round index, from 0.
        clients : Sequence[ClientSlot]
            The clients sampled this round (only those :meth:`eligible` accepts).
        rng : numpy.random.Generator
            The round's generator, derived from the run's seed and ``round``; the
            only source of randomness a strategy may use.
        scores : ScoreProvider | None
            Returns the current global model's per-layer Fisher scores when
            called. Call it only when needed (it is costly); None where the
            runtime offers no scores (a strategy that needs them raises
            ``ValueError`` then).

        Returns
        -------
        RoundPlan
            ``allocations`` with one entry per client in ``clients``: sorted,
            distinct layer indices in ``[0, L)``, usually ``client.budget`` of
            them (FedIT and the rank strategies give every layer, Straggler the
            smallest budget); ``info`` with anything the round's metrics record
            should show.
        """
        raise NotImplementedError

    def client_rank(self, client: ClientSlot, max_rank: int) -> int | None:
        """LoRA rank the client trains (its first components of the global adapter).

        ``max_rank`` is the global adapter's rank (``lora.r``). None (the default):
        the full rank. Rank-heterogeneous strategies (hetlora, flexlora) override it.
        """
        return None

    def trained_layers(self, budget: int) -> int:
        """How many LoRA layers a client of this budget trains (for cost reports)."""
        return budget

    # Strategies with state across rounds (cached Fisher scores, ...) override these.
    def state_dict(self) -> dict[str, Any]:
        """What the strategy keeps across rounds, as plain data saved in the checkpoint.

        The base strategy keeps nothing (``{}``).
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume); the base strategy ignores it."""
        pass


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: register a :class:`Strategy` subclass under its ``name``.

    The name's options class, registered first with
    :func:`fedhello.strategy_options.register_options` (where the config learns the
    name and its options), becomes the class's :attr:`Strategy.options`. Raises
    ValueError for a class without a name, a name without options, a merge rule its
    options class does not declare (``layerwise_merge``), or a second class under a
    taken name.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name not in strategy_names():
        raise ValueError(
            f"strategy {cls.name!r} has no options: register them first with "
            f"fedhello.strategy_options.register_options({cls.name!r}, OptionsClass)"
        )
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    declared = cls.__dict__.get("options", options_class(cls.name))
    if declared is not options_class(cls.name):
        raise ValueError(f"strategy {cls.name!r} declares options {getattr(declared, '__name__', declared)} "
                         f"but its name is registered with {options_class(cls.name).__name__}")
    if (cls.aggregation == "layerwise") != options_class(cls.name).layerwise_merge:
        # the config reads the options class's flag (it cannot import this floor): the two must agree
        raise ValueError(f"strategy {cls.name!r} merges with {cls.aggregation!r} but its options "
                         f"{options_class(cls.name).__name__} say layerwise_merge="
                         f"{options_class(cls.name).layerwise_merge}")
    cls.options = options_class(cls.name)
    _REGISTRY[cls.name] = cls
    return cls


def available_strategies() -> list[str]:
    """The registered strategy names, sorted."""
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``.

    Raises :class:`~fedhello.errors.ConfigError` for an unknown name, suggesting the
    closest one and listing the known names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(unknown_strategy(name, _REGISTRY)) from None


def build_strategy(cfg: Section, num_layers: int, budgets: Sequence[int]) -> Strategy:
    """The strategy ``cfg.name`` for a model of ``num_layers`` LoRA layers and these budgets."""
    return strategy_class(cfg.name)(cfg, num_layers, budgets)


def spread_evenly(num_layers: int, budget: int) -> list[int]:
    """``budget`` layer indices spread evenly over depth (both ends included when b>1)."""
    if budget >= num_layers:
        return list(range(num_layers))
    if budget == 1:
        return [num_layers // 2]
    # round half up of l*(L-1)/(b-1): distinct because the step (L-1)/(b-1) >= 1
    return [int((2 * i * (num_layers - 1) + (budget - 1)) // (2 * (budget - 1))) for i in range(budget)]
