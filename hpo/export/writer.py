"""Write a study's winner as a bundle: vectors + config + honest metrics, written atomically.

The numbers come from `hpo.export.measure` (the held-out test split, read only there, after
the winner is chosen); the winner from `hpo.core.selection.pick_trial`. A winner whose test
gain is not shown is not written (`NothingToShip`) unless `export.require_gain` is off.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial
from safetensors.torch import save_file

from hpo.core.config import RunConfig
from hpo.core.positions import positions_named
from hpo.core.selection import Rule, front_record
from hpo.core.version import __version__
from hpo.export.bundle import SCHEMA_VERSION, STEERING_JSON, sha256_file, vector_relpath
from hpo.export.control_vector import FILENAME as CONTROL_VECTOR
from hpo.export.control_vector import ControlVectorError, model_hint, write_control_vector
from hpo.export.measure import (
    TestSplit,
    measure,
    measure_every_position,
    no_gain_reason,
    prompting_of,
)
from hpo.export.model_card import model_card
from hpo.export.target import check_target, protected_paths, publish, staging_dir
from hpo.export.verify import RECORD_SHA256, bundle_tensors, record_digest
from hpo.run.worker import Worker
from search_spaces import PROMPTING_PARAM

log = logging.getLogger(__name__)


class NothingToShip(Exception):
    """The winner's held-out test gain is not distinguishable from the unsteered model, and
    `export.require_gain` is on: no bundle was written.

    Not an error of input: the study ran, and found nothing worth shipping. `str(e)` is the
    one line that says why; `metrics` holds what was measured (as `steering.json` would).
    """

    def __init__(self, reason: str, metrics: dict[str, Any]) -> None:
        super().__init__(reason)
        self.metrics = metrics


def _experiment_yaml(cfg: RunConfig, trial: FrozenTrial) -> str:
    """The winner as an experiment config: the study's settings pinned to the winning params."""
    p = trial.params
    space: dict[str, Any] = _pinned_heads_and_gates(p)
    if p.get("site") == "heads":
        pass  # no layers: the heads come from the probe ranking
    elif "layer_set" in p:
        space["layer_sets"] = [[int(x) for x in str(p["layer_set"]).split(",")]]
    else:
        space["layers"] = {"low": p["layer"], "high": p["layer"], "step": 1}
        window = int(p.get("window", 1))
        space["window"] = {"low": window, "high": window, "step": 1}
    alpha = p.get("alpha")
    space["alpha"] = (
        dataclasses.asdict(cfg.search_space.alpha)
        if alpha is None  # ablate: alpha is not searched
        else {"low": alpha, "high": alpha, "log": False}
    )
    if PROMPTING_PARAM in p:
        space["prompting"] = [p[PROMPTING_PARAM]]
    space.update(
        aggregation=[p["aggregation"]],
        method=[p.get("method", "caa")],
        positions=[p["positions"]],
        mode=[p.get("mode", "add")],
        alpha_scale=cfg.search_space.alpha_scale,
        derived=dict(cfg.search_space.derived),
    )
    pinned = {
        "model": dataclasses.asdict(cfg.model),
        "model_diff": dataclasses.asdict(cfg.model_diff),
        "task": dataclasses.asdict(cfg.task),
        "search_space": space,
        "study": {"name": f"{cfg.study.name}-replay", "n_trials": 2, "seed": cfg.study.seed},
    }
    header = (
        "# @package _global_\n"
        f"# Winner of study {cfg.study.name!r} (trial {trial.number}), pinned as an experiment:\n"
        "# Replay: copy to <dir>/experiment/winner.yaml, then\n"
        "#   hpo optimize --config-dir <dir> experiment=winner\n"
    )
    return header + yaml.safe_dump(pinned, sort_keys=False)


def _pinned_heads_and_gates(p: dict[str, Any]) -> dict[str, Any]:
    """The winner's site, head and gate dimensions as one-value search-space entries."""
    space: dict[str, Any] = {}
    if "site" in p:
        space["site"] = [p["site"]]
    if "head_ratio" in p:
        space["head_ratio"] = {"low": p["head_ratio"], "high": p["head_ratio"], "log": False}
    if "heads_top_k" in p:
        space["heads_top_k"] = {"low": p["heads_top_k"], "high": p["heads_top_k"], "step": 1}
    for key in ("head_point", "head_mode", "trigger", "probe_gate"):
        if key in p:
            space[key] = [p[key]]
    if "gate_threshold" in p:
        t = p["gate_threshold"]
        space["gate_threshold"] = {"low": t, "high": t, "log": False}
    return space


def _control_vector(
    tmp: Path, meta: dict[str, Any], steps: dict[int, torch.Tensor]
) -> dict[str, Any]:
    """Write llama.cpp's `control_vector.gguf` (`steps`: what each layer adds, alpha applied)
    when the steering fits that format.

    When it does not (a layer-0 vector, a mode llama.cpp lacks) the rest of the bundle is still
    written; the reason is logged and recorded in `steering.json`.
    """
    hint = model_hint(meta["model"]["model_type"])
    positions = meta["application"]["positions"]
    info: dict[str, Any] = {"file": None, "model_hint": hint, "scale": 1.0}
    try:
        write_control_vector(
            tmp / CONTROL_VECTOR,
            steps,
            1.0,
            hint,
            meta["application"].get("mode", "add"),
            meta["application"],
        )
    except ControlVectorError as e:
        log.warning("no %s in the bundle: %s", CONTROL_VECTOR, e)
        info["skipped"] = str(e)
        return info
    info["file"] = CONTROL_VECTOR
    if not positions_named(positions).every:
        info["note"] = (
            f"llama.cpp adds the vector at every position; this bundle was tuned with "
            f"positions={positions}: `measured` holds the test split scored at every position, "
            "what to expect in llama.cpp"
        )
    return info


def environment(worker: Worker) -> dict[str, str]:
    """Where the bundle's numbers were measured: what a replay elsewhere may differ in."""
    import platform

    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(worker.loaded.device),
        "dtype": worker.cfg.model.dtype,
    }


def selection_record(study: optuna.Study, trial: FrozenTrial, rule: Rule | None) -> dict[str, Any]:
    """How the winner was chosen: the study's metrics, the rule and (multi-objective) the front."""
    names = study.metric_names or ["score"]
    record: dict[str, Any] = {
        "metrics": [
            {"name": n, "direction": d.name.lower()}
            for n, d in zip(names, study.directions, strict=True)
        ],
        "rule": None if rule is None else rule.record(),
        "trial": trial.number,
    }
    if len(study.directions) > 1:
        record["front"] = front_record(study)
    return record


def write_bundle(
    worker: Worker,
    study: optuna.Study,
    trial: FrozenTrial,
    out_dir: str | Path,
    rule: Rule | None = None,
    force: bool = False,
) -> Path:
    """Score the winner on the test split and write the bundle directory atomically.

    `rule` is the export rule that picked `trial` (recorded in `steering.json`'s `selection`
    with the Pareto front of a multi-objective study). `out_dir` must be new, empty, or (with
    `force`) hold a bundle an earlier export wrote; see `hpo.export.target`.

    Raises:
        NothingToShip: `export.require_gain` is on and the test split's 95% interval of the
            winner's difference is not wholly on the better side of 0 (nothing is written,
            an earlier bundle in `out_dir` is left as it was).
    """
    from hpo.run.study import storage_url

    cfg = worker.cfg
    protected = protected_paths(cfg.output_dir, storage_url(cfg), cfg.artifacts_dir)
    target = check_target(out_dir, force, protected)  # before the test split is scored
    plan = worker.plan(trial.params)
    vectors, resolved, app = plan.vectors, plan.resolved, plan.application
    test = TestSplit.load(worker)
    metrics = measure(worker, trial, study, test, plan)
    reason = no_gain_reason(metrics, cfg.task.objective.direction, trial.number)
    if reason is not None:
        if cfg.export.require_gain:
            raise NothingToShip(reason, metrics)
        metrics["warnings"].append(
            "shipped with export.require_gain=false although the held-out test gain is not "
            "shown (its 95% interval is not wholly on the better side of 0)"
        )
    trait = cfg.task.name
    shape = worker.loaded.shape
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "trait": trait,
        "model": {
            "name_or_path": cfg.model.name_or_path,
            "gguf_file": cfg.model.gguf_file,
            "revision": cfg.model.revision,
            "architecture": shape.architecture,
            "num_layers": shape.num_layers,
            "hidden_size": shape.hidden_size,
            "dtype": cfg.model.dtype,
        },
        "method": resolved["method"],
        "site": app.site,
        "aggregation": resolved["aggregation"],
        # Per-layer multiplier of alpha: what each layer gets is alpha * scales[L].
        "application": app.record(),
        "layers": sorted(vectors),
        "alpha": app.alpha,
        "layer_alpha": {str(layer): app.layer_alpha(layer) for layer in sorted(vectors)},
        "alpha_scale": cfg.search_space.alpha_scale,
        "metrics": metrics,
        "objective": {
            "kind": cfg.task.objective.kind,
            "direction": cfg.task.objective.direction,
            "scorer": cfg.task.objective.scorer,
        },
        "selection": selection_record(study, trial, rule),
        "study": {
            "name": study.study_name,
            "trial": trial.number,
            "params": trial.params,
            "resolved_params": resolved,
            "n_trials": len(study.get_trials(deepcopy=False)),
        },
        "package": {"name": "steering-hpo", "version": __version__},
        "environment": environment(worker),
    }
    # The prompt the numbers were measured with: load_bundle / hpo generate apply the same.
    instruction = cfg.task.instructed
    meta["prompting"] = {
        "mode": prompting_of(plan),
        "instruction": None if instruction is None else instruction.record(),
        "chat_template": cfg.task.chat_template,
    }
    record = worker.objective.bundle_record()  # generation: its decoding settings
    if record is not None:
        meta[worker.objective.kind] = record
    meta["model"]["model_type"] = str(getattr(worker.loaded.model.config, "model_type", ""))
    tmp = staging_dir(target)
    try:
        vec_path = tmp / vector_relpath(trait)
        vec_path.parent.mkdir(parents=True)
        gate = app.gate
        save_file(
            bundle_tensors(
                vectors,
                meta["application"],
                gate.probes if gate is not None else None,
                gate.trigger_ids if gate is not None else None,
            ),
            str(vec_path),
            metadata={"trait": trait, "alpha": str(app.alpha), "mode": app.mode},
        )
        # llama.cpp has one scale for all layers: each layer's alpha is folded in.
        steps = {layer: app.layer_alpha(layer) * v for layer, v in vectors.items()}
        meta["control_vector"] = _control_vector(tmp, meta, steps)
        if meta["control_vector"]["file"] and not app.positions_rule.every:
            measured = measure_every_position(worker, plan, test)
            meta["control_vector"]["measured"] = measured
            if not measured["feasible"]:
                metrics["warnings"].append(
                    "control_vector.gguf steers every position (llama.cpp), and there the winner "
                    "breaks the constraints on the test split (see control_vector.measured): "
                    "use a scale below 1 or the bundle's own positions through hpo.load_bundle"
                )
        (tmp / "config.yaml").write_text(_experiment_yaml(cfg, trial))
        (tmp / "README.md").write_text(model_card(meta))
        files = [vector_relpath(trait), "config.yaml", "README.md"]
        if meta["control_vector"]["file"]:
            files.append(CONTROL_VECTOR)
        meta["sha256"] = {rel: sha256_file(tmp / rel) for rel in files}
        meta[RECORD_SHA256] = record_digest(json.loads(json.dumps(meta)))
        (tmp / STEERING_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        publish(tmp, target, force, protected)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundle written to %s", target)
    return target
