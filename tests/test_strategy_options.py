"""Strategy options are declared once, with their strategy's name, and reach the config, ``allocate`` and the strategy."""

import argparse
import json

import pytest
from pydantic import Field

import fedhello.allocation.base as allocation_base
import fedhello.strategy_options as so
from fedhello.allocation import RoundPlan, Strategy, build_strategy, register
from fedhello.cli import add_allocate_parser, run_allocate
from fedhello.config import build_config
from fedhello.errors import ConfigError
from fedhello.strategy_options import (
    FedHelloOptions,
    FisherOptions,
    RankOptions,
    StrategyOptions,
    register_options,
    strategy_names,
    strategy_section,
)


@pytest.fixture
def registries(monkeypatch):
    """The two registries as they stand, restored after the test."""
    monkeypatch.setattr(so, "_OPTIONS", dict(so._OPTIONS))
    monkeypatch.setattr(so, "_section", None)
    monkeypatch.setattr(allocation_base, "_REGISTRY", dict(allocation_base._REGISTRY))


def test_every_registered_name_has_a_strategy_and_its_options():
    from fedhello.allocation import available_strategies, strategy_class

    assert strategy_names() == available_strategies()
    assert strategy_class("fedhello").options is FedHelloOptions
    assert strategy_class("fim-hla").options is FisherOptions
    assert strategy_class("hetlora").options is strategy_class("flexlora").options is RankOptions
    assert strategy_class("fedra").options is StrategyOptions


def test_the_section_is_name_and_every_option_once():
    fields = list(strategy_section().model_fields)
    assert fields == ["name", "pattern", "sampler", "fim_source", "fim_samples", "fim_every", "fim_weights",
                      "fim_tiers", "fim_scale", "prob_floor", "warmup_rounds", "combine", "ranks"]
    for cls in (StrategyOptions, FisherOptions, FedHelloOptions, RankOptions):
        for key, field in cls.model_fields.items():
            assert strategy_section().model_fields[key].default == field.default


def test_a_strategy_holds_only_its_own_options():
    section = build_config({"strategy": {"name": "fedra", "fim_every": 7, "pattern": "triangle"}}).strategy
    assert section.fim_every == 7  # accepted and kept: one config drives a sweep over strategies
    fedra = build_strategy(section, 12, [6])
    assert fedra.cfg == StrategyOptions(pattern="triangle")
    assert not hasattr(fedra.cfg, "fim_every")
    hello = build_strategy(section.model_copy(update={"name": "fedhello"}), 12, [6])
    assert type(hello.cfg) is FedHelloOptions and hello.cfg.fim_every == 7 and hello.cfg.warmup_rounds == 50


def test_an_option_is_declared_by_one_class(registries):
    class Clash(StrategyOptions):
        fim_every: int = 3

    with pytest.raises(ValueError, match="'fim_every' of Clash is already declared by FisherOptions"):
        register_options("clash", Clash)
    class Override(FisherOptions):  # a new default would change fim-hla's and fedhello's too
        fim_every: int = 3

    with pytest.raises(ValueError, match="'fim_every' of Override is already declared by FisherOptions"):
        register_options("override", Override)
    with pytest.raises(ValueError, match="already has options FedHelloOptions"):
        register_options("fedhello", FisherOptions)
    with pytest.raises(ValueError, match="StrategyOptions subclass"):
        register_options("plain", dict)
    assert "clash" not in strategy_names()


def test_registering_a_strategy_writes_only_its_own_registry(registries):
    class Nameless(Strategy):
        name = "nameless"
        aggregation = "hetlora"  # RankOptions, below, declare a rule of their own

    with pytest.raises(ValueError, match=r"has no options: register them first with .*register_options\('nameless'"):
        register(Nameless)
    assert "nameless" not in strategy_names()
    register_options("nameless", RankOptions)

    class Mislabelled(Nameless):
        options = FisherOptions

    with pytest.raises(ValueError, match="declares options FisherOptions but its name is registered with RankOptions"):
        register(Mislabelled)
    assert register(Nameless).options is RankOptions


def test_a_strategy_s_merge_rule_agrees_with_its_options(registries):
    class Averaged(Strategy):
        name = "averaged"  # the layer-wise rule, but options that say otherwise

    register_options("averaged", RankOptions)
    with pytest.raises(ValueError, match="merges with 'layerwise' but its options RankOptions say layerwise_merge=False"):
        register(Averaged)


def test_a_strategy_added_from_outside_brings_its_options(registries, capsys):
    class TopOptions(StrategyOptions):
        top_share: float = Field(0.5, gt=0, le=1, description="Share of the top layers a client trains.")

    register_options("top", TopOptions)

    @register
    class Top(Strategy):
        name = "top"

        def allocate(self, round, clients, rng, scores=None):
            n = max(1, int(self.cfg.top_share * self.num_layers))
            return RoundPlan({c.id: list(range(self.num_layers - n, self.num_layers)) for c in clients})

    cfg = build_config({"strategy": {"name": "top", "top_share": 0.25}})
    assert cfg.to_dict()["strategy"]["top_share"] == 0.25
    assert build_config({}).to_dict()["strategy"]["top_share"] == 0.5  # every strategy's options, as before
    assert build_strategy(cfg.strategy, 12, [6]).cfg == TopOptions(top_share=0.25)
    with pytest.raises(ConfigError, match=r"^config key 'strategy.top_share': Input should be less than or equal to 1$"):
        build_config({"strategy": {"name": "top", "top_share": 2}})
    with pytest.raises(ConfigError, match=r"^unknown config key 'strategy.top_shar' \(did you mean 'top_share'\?\)$"):
        build_config({"strategy": {"name": "top", "top_shar": 0.3}})

    parser = argparse.ArgumentParser()
    add_allocate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args("allocate --strategy top --top-share 0.25 --rounds 1 --clients 2 --per-round 2 --json".split())
    assert run_allocate(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["layers"] for c in out["rounds"][0]["clients"]] == [[9, 10, 11], [9, 10, 11]]
