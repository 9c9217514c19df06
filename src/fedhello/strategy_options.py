"""The allocation strategies' options: one pydantic class per strategy, registered with its name.

A strategy's options are declared once, here, as a class of fields (type, default,
description): :class:`StrategyOptions` holds what every strategy may read (the
geometric ``pattern`` and the ``sampler``); :class:`FisherOptions` adds what the
Fisher-score strategies read, :class:`FedHelloOptions` fedhello's warm-up and
combination rule, :class:`RankOptions` the ranks of the rank-heterogeneous
strategies. :func:`register_options` pairs a strategy name with its class, and
everything else is generated from the registry:

- the config's ``strategy`` section (:func:`strategy_section`): ``name`` plus every
  registered class's options, so one config can drive a sweep over strategies
  (keys a strategy does not use are validated and ignored);
- ``fedhello allocate``'s flags, one per option of that section;
- the options a strategy instance holds (:meth:`StrategyOptions.of`): only its own
  class's, so a strategy cannot read an option it did not declare.

Where this sits: below :mod:`fedhello.config` (which builds its ``strategy`` section
from the registry) and so below :mod:`fedhello.allocation`, whose strategies bind
their behaviour to these names (``fedhello.allocation.register`` reads the name's
options class from here and writes nothing below its own floor). Config validates
``strategy.name`` and every option without importing allocation. Because every
config section extends one strict base and the options classes are sections of the
config, that base (:class:`Section`) lives here too. A strategy added from outside
fedhello registers its options here first (``register_options``), then its class
with ``fedhello.allocation.register``.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationInfo, field_validator


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return any(_admits_bool(a) for a in typing.get_args(annotation) if not isinstance(a, (int, str)))


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated,
    a YAML boolean is refused where the field does not take one, and so is an infinite
    or NaN float (``.inf``, ``.nan``) in any float key, by this one rule."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: ValidationInfo) -> Any:
        # YAML's true/false would otherwise pass as 1/0 (`rounds: true` ran one round)
        items = v if isinstance(v, list) else [v]
        if any(isinstance(x, bool) for x in items) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"a boolean ({str(v).lower()}) is not a valid value here")
        return v


def config_key(option: str) -> str:
    """How the config names an option in an error: ``config key 'strategy.<option>'``."""
    return f"config key 'strategy.{option}'"


class StrategyOptions(Section):
    """Options every strategy may read (the base the others extend)."""

    # the strategy merges replies with the layer-wise rule, so aggregation.robust may
    # replace its mean (a strategy with its own merge rule says False)
    layerwise_merge: ClassVar[bool] = True

    pattern: Literal["uniform", "triangle", "inverted_triangle", "bottleneck"] = Field(
        "bottleneck", description="Geometric pattern of gd-hla / rgd-hla and the prior of fedhello."
    )
    sampler: Literal["systematic", "weighted_without_replacement"] = Field(
        "systematic",
        description="Layer draw: systematic (exact inclusion probabilities b*p_l) or "
        "weighted_without_replacement (the reference's draw; flattens the pattern).",
    )

    @classmethod
    def of(cls, section: BaseModel) -> "StrategyOptions":
        """This class's options alone, taken from a ``strategy`` section (or another options object)."""
        if type(section) is cls:
            return section
        return cls.model_validate({key: getattr(section, key) for key in cls.model_fields})

    def check_rounds(self, rounds: int, key: Callable[[str], str] = config_key, rounds_key: str = "rounds") -> None:
        """Rules between these options and the run's number of rounds; ValueError naming the
        option as ``key(option)`` and the rounds as ``rounds_key``. None here."""


class FisherOptions(StrategyOptions):
    """Options of the strategies that weight layers by Fisher scores (fim-hla, fedhello)."""

    fim_source: Literal["server", "clients"] = Field(
        "server",
        description="Fisher scores from a server-held calibration set (server) or from the sampled clients, "
        "who upload only per-layer scores (clients).",
    )
    fim_samples: int = Field(
        100, ge=1, description="Size of the server calibration set; with clients: samples each client scores at most."
    )
    fim_every: int = Field(50, ge=1, description="Rounds between Fisher recomputations (E).")
    fim_weights: Literal["tiers", "scores"] = Field(
        "tiers", description="Layer weights by k-means tier (1:2:3 for three tiers) or proportional to the scores."
    )
    fim_tiers: int = Field(3, ge=1, description="Number of k-means tiers of the Fisher scores.")
    fim_scale: Literal["raw", "log"] = Field(
        "log",
        description="Fisher tiers by k-means on the raw scores (the paper) or on their logarithms (raw k-means "
        "puts all but the top layer in the lowest tier, as scores grow by orders of magnitude with depth).",
    )
    prob_floor: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of uniform weight mixed into Fisher-derived layer probabilities: every layer keeps an "
        "inclusion probability of at least prob_floor * b / L; 0 is the paper.",
    )


class FedHelloOptions(FisherOptions):
    """fedhello: the Fisher options, its warm-up and how prior and Fisher weights combine."""

    warmup_rounds: int = Field(
        50, ge=0, description="fedhello: rounds of RGD-HLA before the Fisher scores are used (W)."
    )
    combine: Literal["product", "fim", "reference"] = Field(
        "product",
        description="fedhello after the warm-up: product (prior x Fisher weights), fim (Fisher alone) or reference "
        "(Fisher in recomputation rounds only); the default was chosen by measurement (README).",
    )

    def check_rounds(self, rounds: int, key: Callable[[str], str] = config_key, rounds_key: str = "rounds") -> None:
        """The warm-up may not exceed the rounds: the Fisher scores would never be used.

        Equal is allowed (the geometric prior alone, which the benchmarks time on
        purpose). A short run sets a short warm-up explicitly (nothing is shortened
        silently). The one rule of ``fedhello run`` and ``fedhello allocate``.
        """
        if self.warmup_rounds > rounds:
            raise ValueError(
                f"{key('warmup_rounds')}: {self.warmup_rounds} is more than {rounds_key} ({rounds}): fedhello would "
                f"never use its Fisher scores (lower it, e.g. to half the rounds, or run rgd-hla)"
            )


class RankOptions(StrategyOptions):
    """Options of the rank-heterogeneous strategies (hetlora, flexlora)."""

    layerwise_merge: ClassVar[bool] = False  # they merge rank-truncated replies with their own rule

    ranks: list[int] | None = Field(
        None, description="hetlora / flexlora: LoRA rank of each resource group; null: round(lora.r * budget / L)."
    )


class StrategySection(Section):
    """``strategy``: the allocation strategy and its options (keys a strategy does not use are ignored).

    The base of :func:`strategy_section`'s class, which adds every registered strategy's options."""

    name: str = Field(
        "fedit",
        description="The allocation strategy: fedit, fedra, exclusive, straggler, gd-hla, rgd-hla, fim-hla, "
        "fedhello, hetlora, flexlora, depth, or one added through fedhello.strategy_options.register_options "
        "and fedhello.allocation.register.",
    )

    def options(self) -> StrategyOptions:
        """The options of the strategy ``name`` names: its own class's (:func:`register_options`)."""
        return options_class(self.name).of(self)

    def check_rounds(self, rounds: int, key: Callable[[str], str] = config_key, rounds_key: str = "rounds") -> None:
        """The named strategy's rules between its options and the run's rounds
        (:meth:`StrategyOptions.check_rounds`)."""
        self.options().check_rounds(rounds, key, rounds_key)


StrategyField = SerializeAsAny[StrategySection]
"""How a model declares a ``strategy`` section: dumped with every option of its actual class."""

_OPTIONS: dict[str, type[StrategyOptions]] = {}
_section: type[StrategySection] | None = None  # built from the registry as it stands


def _declared_by(cls: type[StrategyOptions]) -> dict[str, type]:
    """Option name -> the class that declares it (not the one that inherits it)."""
    return {key: next(k for k in cls.__mro__ if key in inspect.get_annotations(k)) for key in cls.model_fields}


def register_options(name: str, options_cls: type[StrategyOptions]) -> None:
    """Register ``options_cls`` as the options of strategy ``name`` (several names may share a class).

    ``name`` becomes a valid ``strategy.name`` and every option of the class a key of the
    config's ``strategy`` section and a flag of ``fedhello allocate``. Raises ValueError for a
    name registered with another class, a class that is not a :class:`StrategyOptions`, or an
    option name another registered class declares differently (an option is declared once).
    """
    if not (isinstance(options_cls, type) and issubclass(options_cls, StrategyOptions)):
        raise ValueError(f"strategy {name!r}: options must be a StrategyOptions subclass, got {options_cls!r}")
    if not name or not isinstance(name, str):
        raise ValueError(f"a strategy name must be a non-empty string, got {name!r}")
    if _OPTIONS.get(name, options_cls) is not options_cls:
        raise ValueError(f"strategy {name!r} already has options {_OPTIONS[name].__name__}")
    owners: dict[str, type] = {"name": StrategySection}
    for cls in [*_OPTIONS.values(), options_cls]:
        for key, owner in _declared_by(cls).items():
            if owners.setdefault(key, owner) is not owner:
                raise ValueError(f"strategy option {key!r} of {owner.__name__} is already declared by "
                                 f"{owners[key].__name__}: declare it once, in a class both extend")
    global _section
    _OPTIONS[name] = options_cls
    _section = None


def strategy_names() -> list[str]:
    """The registered strategy names, sorted (what ``strategy.name`` accepts)."""
    return sorted(_OPTIONS)


def options_class(name: str) -> type[StrategyOptions]:
    """The options class registered for strategy ``name`` (KeyError for an unknown name)."""
    return _OPTIONS[name]


def strategy_section() -> type[StrategySection]:
    """The config's ``strategy`` section: ``name`` and every registered class's options.

    One class built from the registry (rebuilt after a registration): it extends every
    registered options class, so their fields, defaults and validators all apply. Options
    come in registration order, each class's inherited ones first.
    """
    global _section
    if _section is None:
        leaves: list[type[StrategyOptions]] = []
        for cls in _OPTIONS.values():  # the most derived classes, in registration order
            if cls not in leaves and not any(issubclass(other, cls) for other in _OPTIONS.values() if other is not cls):
                leaves.append(cls)
        # pydantic orders fields from the base of the MRO up: the base section's name first, then
        # the first registered class's options, then those that later classes add
        bases = (*reversed(leaves), StrategySection)
        # the section's own methods before those it inherits from the options classes
        own = {k: StrategySection.__dict__[k] for k in ("options", "check_rounds")}
        _section = type("StrategyConfig", bases, {"__module__": __name__, "__doc__": StrategySection.__doc__, **own})
    return _section


# The built-in strategies (their behaviour: fedhello.allocation). The order is the
# order of the options in the config and in ``fedhello allocate --help``.
for _name in ("fedit", "fedra", "depth", "gd-hla", "rgd-hla", "exclusive", "straggler"):
    register_options(_name, StrategyOptions)
register_options("fim-hla", FisherOptions)
register_options("fedhello", FedHelloOptions)
register_options("hetlora", RankOptions)
register_options("flexlora", RankOptions)
