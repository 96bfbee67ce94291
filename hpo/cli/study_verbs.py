"""The verbs that run a study and export its winner: `optimize`, `worker`, `export`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpo.cli.results import _fmt, _print_results
from hpo.core.config import RunConfig, to_run_config
from hpo.core.errors import UserError

log = logging.getLogger("hpo")


def _check_export_target(cfg: RunConfig) -> None:
    """Refuse an `export.dir` that would lose data before anything is loaded or run."""
    from hpo.export.target import check_target, protected_paths
    from hpo.run.study import storage_url

    protected = protected_paths(cfg.output_dir, storage_url(cfg), cfg.artifacts_dir)
    check_target(cfg.export.dir, cfg.export.force, protected)


def _choose(cfg: RunConfig, study: Any) -> tuple[Any, Any]:
    """The trial to export and the rule that picked it (no model needed)."""
    from hpo.core.objective_metrics import is_multi
    from hpo.core.selection import parse_rule, pick_trial

    rule = None
    if cfg.export.rule is not None or is_multi(cfg.task.objective):
        rule = parse_rule(cfg.export.rule, cfg.task.objective)
    trial = pick_trial(study, cfg.export.trial, None if cfg.export.trial is not None else rule)
    return trial, rule


# `hpo export` when the winner shows no held-out gain and `export.require_gain` is on: it ran
# fine and found nothing to ship (like pytest's 5, "no tests collected"), so a script's
# `hpo export && upload bundle/` stops there. `hpo optimize` exits 0: its study is done.
NOTHING_TO_SHIP = 3
# How long `hpo optimize` waits for a peer process of its study to finish exporting there.
PEER_EXPORT_WAIT_S = 3600.0


def _export(
    cfg: RunConfig,
    study: Any,
    worker: Any,
    chosen: tuple[Any, Any] | None = None,
    nothing_code: int = 0,
) -> int:
    import json

    from hpo.export.bundle import STEERING_JSON
    from hpo.export.writer import NothingToShip, write_bundle
    from hpo.monitor.note import record_export

    trial, rule = chosen or _choose(cfg, study)
    try:
        path = write_bundle(worker, study, trial, cfg.export.dir, rule, force=cfg.export.force)
    except NothingToShip as e:
        print(f"nothing to ship: {e}")
        measured = {"study": {"trial": trial.number, "params": trial.params}, "metrics": e.metrics}
        record_export(study, measured, None, reason=str(e))
        return nothing_code
    meta = json.loads((path / STEERING_JSON).read_text())
    _print_results(meta, path)
    record_export(study, meta, path)  # the dashboard's note tells the held-out result
    return 0


def optimize(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo optimize`: create/load the study, run it to its budget, export the winner."""
    from hpo.core.record import summary
    from hpo.export.target import claimed
    from hpo.monitor.publisher import Publisher
    from hpo.run.preflight import check_workers
    from hpo.run.study import check_config, open_study, prepare_worker, run_trials

    cfg = to_run_config(raw)
    check_workers(cfg)  # N model copies: before any loads
    if cfg.export.enabled:
        _check_export_target(cfg)  # not after an hour of trials
    task = check_config(cfg)
    publisher = Publisher(cfg)
    # sets cfg.worker_rank: 0 for the creator (reproducible), else one of this process's own
    study = open_study(cfg, on_create=publisher.describe)
    if cfg.workers > 1:
        from hpo.run.launcher import run_workers

        run_workers(cfg, study, args)
        worker = None
    else:
        worker = prepare_worker(cfg, task)
        run_trials(study, worker, cfg.study.n_trials, publisher)
    info = summary(study)
    log.info("study done: baseline %s, best %s", _fmt(info["baseline"]), _fmt(info["best_value"]))
    if not cfg.export.enabled:
        return 0
    chosen = _choose(cfg, study)
    # A peer process of this study exporting now: wait for it, then find its bundle.
    with claimed(cfg.export.dir, wait_s=PEER_EXPORT_WAIT_S):
        done = _exported_by_a_peer(cfg, study, chosen[0].number)
        if done is not None:
            print(
                f"bundle      {done} (the same winner, trial {chosen[0].number}, "
                "already exported by another process of this study)"
            )
            return 0
        try:
            worker = worker or prepare_worker(cfg, task, validation=False)
            return _export(cfg, study, worker, chosen)
        except UserError:
            done = _exported_by_a_peer(cfg, study, chosen[0].number)  # a peer won the race
            if done is None:
                raise
            print(f"bundle      {done} (the same winner, exported by another process meanwhile)")
            return 0


def _exported_by_a_peer(cfg: RunConfig, study: Any, number: int) -> Path | None:
    """`export.dir` when another `hpo optimize` of the same study (started alongside this one)
    has already exported the same winning trial there, else None. Only without
    `export.force`: a forced export replaces it as asked."""
    import json

    from hpo.export.bundle import STEERING_JSON
    from hpo.export.target import bundle_files

    target = Path(cfg.export.dir).expanduser()
    if cfg.export.force or not target.is_dir() or bundle_files(target) is None:
        return None
    try:
        meta = json.loads((target / STEERING_JSON).read_text(encoding="utf-8"))
        written = meta["study"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if written.get("name") == study.study_name and written.get("trial") == number:
        return target
    return None


def worker(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo worker`: join an existing study and run trials until its budget is met."""
    from hpo.monitor.publisher import Publisher
    from hpo.run.budget import finished_trials
    from hpo.run.study import check_config, open_study, prepare_worker, run_trials

    cfg = to_run_config(raw)
    task = check_config(cfg)
    study = open_study(cfg, create=False)
    done = finished_trials(study)
    if done >= cfg.study.n_trials:  # nothing to do: do not load the model for it
        log.info("study %r already has its %d finished trials", study.study_name, done)
        return 0
    run_trials(study, prepare_worker(cfg, task), cfg.study.n_trials, Publisher(cfg))
    return 0


def _stored_run_config(cfg: RunConfig, study: Any) -> RunConfig:
    """The config the study was made with, with this invocation's export/storage/output.

    Settings that can run code (`trust_remote_code`, the sampler and pruner `_target_`s) come
    from this invocation only: whoever can write the study database must not choose code for
    whoever exports it. A line says so when the stored config asked for more.
    """
    from hpo.run.study import security_notes, stored_config

    record = stored_config(study)
    for note in security_notes(record, cfg):
        log.warning(note)
    for group in ("sampler", "pruner"):
        stored = record.get(group)
        theirs = stored.get("_target_") if isinstance(stored, dict) else None
        ours = getattr(cfg, group).get("_target_")
        if theirs is not None and theirs != ours:
            log.warning(
                "the study's stored config builds %s %s; not honoured: this process builds %s "
                "from its own config",
                group,
                str(theirs)[:120],
                ours or "none",
            )
    record["export"] = dataclasses.asdict(cfg.export)
    # studies made before `task.train_template` built their train pairs from raw prompts
    record["task"].setdefault("train_template", False)
    record["storage"] = dataclasses.asdict(cfg.storage)
    record["output_dir"] = cfg.output_dir
    record["log_level"] = cfg.log_level
    record["sampler"] = dict(cfg.sampler)
    record["pruner"] = dict(cfg.pruner)
    for group in ("model", "model_diff"):
        record.setdefault(group, {})["trust_remote_code"] = getattr(cfg, group).trust_remote_code
    return to_run_config(OmegaConf.create(record))


def export(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo export`: best trial (or export.trial) -> bundle, scored on the held-out test split."""
    from hpo.export.target import claimed
    from hpo.run.study import open_study, prepare_worker

    cfg = to_run_config(raw)
    _check_export_target(cfg)
    study = open_study(cfg, create=False, join=False)
    stored = _stored_run_config(cfg, study)
    chosen = _choose(stored, study)  # an unknown or unfinished trial: before the model loads
    with claimed(cfg.export.dir):  # a second export into this directory: refused now
        _check_export_target(cfg)  # the export that held it may have just written a bundle
        worker = prepare_worker(stored, validation=False)
        return _export(stored, study, worker, chosen, nothing_code=NOTHING_TO_SHIP)
