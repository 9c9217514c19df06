"""The run directory's lifecycle around a run: whether it holds this run (to resume) or none,
the checks a resumed run must pass (same config but for ``rounds``, same data), the run's
fixed facts written at its start, and what a resume carries over from metrics.jsonl."""

from __future__ import annotations

import logging
from pathlib import Path

from fedhello.config import ExperimentConfig, absolute_data_path, build_config
from fedhello.errors import FedHelloError
from fedhello.run.costs import counts_under_limits, trainable_params_per_group
from fedhello.run.preparation import Experiment
from fedhello.run.rundir import CHECKPOINT, CONFIG, DATA, RunDir

log = logging.getLogger("fedhello")


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
            "trainable_params_per_group": trainable_params_per_group(exp),
            **({"counts_under_limits": counts_under_limits(exp)} if exp.resources is not None else {}),
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
