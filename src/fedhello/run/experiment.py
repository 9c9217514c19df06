"""The driver: one experiment, assembled and run into its run directory.

:func:`run_experiment` prepares the experiment (:func:`~fedhello.run.preparation.prepare`:
data, partitions, resource groups, one frozen backbone with LoRA, every check that
needs the model or the data), opens its run directory (:mod:`fedhello.run.lifecycle`:
a new run, or the same run to resume), then drives
:class:`~fedhello.federation.server.Server` over a client runner (in-process by
default: :class:`~fedhello.federation.simulation.SimulationRunner`; the Flower
ServerApp passes its own) and writes the run directory (:mod:`fedhello.run.rundir`).
Reports (TensorBoard, plots) are a hook the caller passes in: this layer imports
nothing of :mod:`fedhello.report`.

Preparation (:mod:`fedhello.run.preparation`), the run directory's lifecycle
(:mod:`fedhello.run.lifecycle`), device choice (:mod:`fedhello.run.device`) and the
groups' cost figures (:mod:`fedhello.run.costs`) live in their own modules; the
public names callers import from here still are.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Protocol

from fedhello.config import ExperimentConfig
from fedhello.errors import ConfigError, FedHelloError
from fedhello.federation.progress import NO_PROGRESS, ProgressHook
from fedhello.federation.records import Summary
from fedhello.federation.seams import ClientRunner
from fedhello.federation.server import Server, summarize
from fedhello.federation.simulation import SimulationRunner
from fedhello.model.adapter import export_adapter
from fedhello.model.state import check_state
from fedhello.run.costs import trainable_params_per_group
from fedhello.run.device import pick_device
from fedhello.run.lifecycle import (check_config_unchanged, check_data, holds_config, keep_checkpoint_time,
                                    open_rundir, resume_config, write_setup)
from fedhello.run.limits import PROFILE, profile_record, resume_costs
from fedhello.run.preparation import (Experiment, PreparedData, check_model_fit, positive_label_index, prepare,
                                      prepare_data)
from fedhello.run.rundir import CHECKPOINT, DATA, SUMMARY, RunDir

# the names callers import from here, wherever they now live
__all__ = ["Experiment", "PreparedData", "Reporter", "check_config_unchanged", "check_data", "check_model_fit",
           "holds_config", "keep_checkpoint_time", "open_rundir", "pick_device", "positive_label_index", "prepare",
           "prepare_data", "resume_config", "run_experiment", "write_setup"]

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


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    on_round: Callable[[dict], None] | None = None,
    on_start: Callable[[Experiment], None] | None = None,
    stop_after: int | None = None,
    runner_factory: Callable[[Experiment], ClientRunner] | None = None,
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


def _run(cfg: ExperimentConfig, exp: Experiment, rundir: RunDir, ckpt: dict | None,
         on_round: Callable[[dict], None] | None, stop_after: int | None,
         runner_factory: Callable[[Experiment], ClientRunner] | None, reporter: Callable[[Path], Reporter] | None,
         progress: ProgressHook = NO_PROGRESS) -> dict:
    if ckpt is not None:  # costs measured at the start stay those of the start (same allocations)
        resume_costs(exp, rundir.file(PROFILE))
    server = Server.for_experiment(exp, client_runner(cfg, exp, runner_factory, progress))
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
            summary = finish(cfg, exp, rundir, server)
            if rep is not None:
                rep.finish(server.state.records)
    finally:
        if rep is not None:
            rep.close()
    return summary or {"rounds": server.state.round, "incomplete": True}


def client_runner(cfg: ExperimentConfig, exp: Experiment, runner_factory: Callable[[Experiment], ClientRunner] | None,
                  progress: ProgressHook) -> ClientRunner:
    """The run's ClientRunner: the caller's (``runner_factory``), else in-process; with
    ``attack.kind`` set, one simulated attacker over the in-process runner."""
    runner = runner_factory(exp) if runner_factory is not None else SimulationRunner(exp, progress)
    if cfg.attack.kind != "none":  # experiments only: one simulated attacker (fedhello.federation.attacks)
        if runner_factory is not None:
            raise ConfigError("config key 'attack.kind': a simulated attack is for in-process runs only")
        from fedhello.federation.attacks import AttackRunner

        runner = AttackRunner(runner, cfg.attack)
    return runner


def finish(cfg: ExperimentConfig, exp: Experiment, rundir: RunDir, server: Server) -> Summary:
    """After the last round: summary.json, then the final adapter (the run's product; a failed
    export only warns, the checkpoint holds the state)."""
    summary = summarize(cfg, server.state.records)
    summary["trainable_params_per_group"] = trainable_params_per_group(exp)
    rundir.write_json(SUMMARY, summary)
    try:
        export_adapter(exp.model, server.state.global_state, rundir.path, exp.label_names, cfg,
                       exp.backbone.pooling, tokenizer=exp.backbone.tokenizer or exp.backbone.image_processor,
                       summary=summary)
    except Exception as err:
        log.warning("adapter export failed: %s: %s", type(err).__name__, err)
    return summary
