"""Export a study's winner as a bundle: vectors + config + honest metrics, written atomically.

The held-out test split is read here and only here, after the winner is chosen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import save_file

from hpo.core.chance import CHANCE_BIAS_ATTR, chance_report
from hpo.core.config import RunConfig
from hpo.core.errors import UserError
from hpo.core.objective_metrics import Metric, metric_values
from hpo.core.record import (
    BASELINE_METRICS_ATTR,
    BASELINE_VALUE_ATTR,
    is_feasible,
    steered_trials,
)
from hpo.core.selection import Rule, front_record, pick_by_rule, values_of
from hpo.core.stats import bootstrap_diff_ci
from hpo.core.version import __version__
from hpo.export.bundle import SCHEMA_VERSION, STEERING_JSON, sha256_file, vector_relpath
from hpo.export.control_vector import FILENAME as CONTROL_VECTOR
from hpo.export.control_vector import ControlVectorError, model_hint, write_control_vector
from hpo.export.model_card import model_card
from hpo.export.target import check_target, protected_paths, publish, staging_dir
from hpo.model.decoding import complete_each
from hpo.run.tasks import load_task
from hpo.run.worker import Plan, Worker
from hpo.steering.hooks import steer_with

log = logging.getLogger(__name__)

# Test prompts whose continuations the bundle records (and `hpo generate replay=true` replays).
N_SAMPLES = 3


def pick_trial(study: optuna.Study, number: int | None, rule: Rule | None = None) -> FrozenTrial:
    """`export.trial` if given, else the trial `rule` picks (see `selection`), else the best
    COMPLETE feasible steered (non-baseline) trial (multi-objective: best main metric on
    the front).

    Raises:
        UserError: the named trial does not exist or did not complete, or nothing completed, or
            no trial satisfies the rule.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if number is not None:
        for t in complete:
            if t.number == number:
                if not is_feasible(t):
                    raise UserError(
                        f"export.trial={number} is infeasible (it breaks its constraints, "
                        f"fluency or kl: {t.constraints}); pick a feasible one"
                    )
                return t
        raise UserError(
            f"export.trial must be a COMPLETE trial of study {study.study_name!r}, got {number}; "
            f"complete trials: {[t.number for t in complete]}"
        )
    if rule is not None:
        return pick_by_rule(study, rule)
    if len(study.directions) > 1:
        names = study.metric_names or ["score"]
        main = Metric(names[0], study.directions[0].name.lower())
        return pick_by_rule(study, Rule(main))
    feasible = steered_trials(study)
    if not feasible:
        n_steered = len(steered_trials(study, feasible=None))
        raise UserError(
            f"study {study.study_name!r} has no completed, feasible steered trial to export "
            f"({n_steered} steered, {n_steered - len(feasible)} infeasible)"
        )
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return (max if maximize else min)(feasible, key=lambda t: float(t.value))  # type: ignore[arg-type]


def _compare(
    steered: dict[str, float],
    baseline: dict[str, float],
    steered_items: dict[str, list[float]],
    baseline_items: dict[str, list[float]],
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per metric: steered, baseline, difference, n and (paired items on both sides) a 95% CI."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in steered.items():
        entry: dict[str, Any] = {"steered": value, "baseline": baseline.get(name)}
        if entry["baseline"] is not None:
            entry["difference"] = value - entry["baseline"]
        a, b = steered_items.get(name), baseline_items.get(name)
        if a and b and len(a) == len(b):
            entry["n"] = len(a)
            entry["ci95"] = list(bootstrap_diff_ci(a, b, seed=seed))
        out[name] = entry
    return out


@dataclass
class TestSplit:
    """The held-out test split, read and prepared once per export."""

    rows: list[Any]
    prepared: Any

    @classmethod
    def load(cls, worker: Worker) -> TestSplit:
        """Read the task's test rows and prepare them (tokenized; unsteered reference run)."""
        rows = load_task(worker.cfg.task).test()
        return cls(rows, worker.prepare(rows))


def measure(
    worker: Worker,
    trial: FrozenTrial,
    study: optuna.Study,
    test: TestSplit | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Validation (from the study) and held-out test metrics, steered vs unsteered.

    `steered` / `baseline` are the objective's score; `metrics` holds every named metric
    (score, kl, tokens, fluency) with its baseline and, on the test split, n and a bootstrap 95%
    interval of the difference where per-item values exist.
    """
    test = TestSplit.load(worker) if test is None else test
    plan = worker.plan(trial.params) if plan is None else plan
    test_rows, prepared = test.rows, test.prepared
    steered = worker.score(plan, prepared, split="test")
    baseline = worker.baseline_result(prepared, "test")
    seed = worker.cfg.study.seed
    lo, hi = bootstrap_diff_ci(steered.per_item, baseline.per_item, seed=seed)
    per_letter_val = {
        k[len("letter_") :]: v for k, v in trial.user_attrs.items() if k.startswith("letter_")
    }
    test_letters = {"steered": steered.per_letter, "baseline": baseline.per_letter}
    warnings = honesty_warnings(lo, hi, test_letters)
    chance = chance_report(
        worker.cfg.task.objective,
        steered.value,
        baseline.per_item,
        baseline.extras.get("chance_items"),
        seed,
        study.user_attrs.get(CHANCE_BIAS_ATTR),
    )
    warnings += chance.pop("warnings", [])
    extra: dict[str, Any] = {}
    if "texts" in steered.extras:
        extra["samples"] = replay_samples(worker, plan, test_rows, prepared)
    if "counts" in steered.extras:  # answers that could not be parsed (scored as wrong)
        extra["unparsed"] = {
            "steered": steered.extras["counts"],
            "baseline": baseline.extras.get("counts", {}),
        }
    if "per_item_accuracy" in steered.extras and "per_item_accuracy" in baseline.extras:
        s_acc, b_acc = steered.extras["per_item_accuracy"], baseline.extras["per_item_accuracy"]
        a_lo, a_hi = bootstrap_diff_ci(s_acc, b_acc, seed=worker.cfg.study.seed)
        extra["accuracy"] = {
            "steered": steered.extras["accuracy"],
            "baseline": baseline.extras["accuracy"],
            "ci95": [a_lo, a_hi],
        }
    constraints = steered.extras.get("constraints", {})
    feasible = all(v <= 0 for v in constraints.values())
    if "fluency" in steered.extras:
        extra["fluency"] = {
            "steered": steered.extras["fluency"],
            "baseline": getattr(prepared, "reference", {}),
            "feasible": feasible,
        }
    if not feasible:
        warnings.append(f"on the test split the winner breaks the constraints {constraints}")
    val_metrics = values_of(trial)
    val_base = study.user_attrs.get(BASELINE_METRICS_ATTR) or {}
    test_metrics = _compare(
        metric_values(steered.value, steered.metrics),
        metric_values(baseline.value, baseline.metrics),
        {"score": steered.per_item, **steered.metric_items},
        {"score": baseline.per_item, **baseline.metric_items},
        seed,
    )
    return {
        "warnings": warnings,
        **chance,
        "validation": {
            "steered": val_metrics.get("score", trial.values[0] if trial.values else None),
            "baseline": val_base.get("score", study.user_attrs.get(BASELINE_VALUE_ATTR)),
            "n": worker.cfg.task.splits.validation,
            "per_letter": per_letter_val,
            "metrics": _compare(val_metrics, val_base, {}, {}, seed),
        },
        "test": {
            "steered": steered.value,
            "baseline": baseline.value,
            "n": steered.n,
            "difference": steered.value - baseline.value,
            "ci95": [lo, hi],
            "per_letter": test_letters,
            "metrics": test_metrics,
            **extra,
        },
    }


def replay_samples(
    worker: Worker, plan: Plan, rows: list[Any], prepared: Any, n: int = N_SAMPLES
) -> list[dict[str, Any]]:
    """The first `n` test prompts generated unsteered and steered, one prompt at a time.

    Alone (no padding), so `hpo generate replay=true` and `load_bundle(...).apply(model)` +
    `model.generate` reproduce them token for token: each sample keeps the exact prompt text and
    both continuations' token ids. `correct` (tasks with a gold answer) scores these texts.
    """
    cfg, loaded = worker.cfg, worker.loaded
    objective: Any = worker.objective
    ids = prepared.token_ids[:n]
    stop = cfg.task.objective.stop or None
    budget = cfg.task.objective.max_new_tokens
    plain = complete_each(loaded.model, loaded.tokenizer, ids, budget, stop_strings=stop)
    with steer_with(loaded.model, loaded.blocks, plan.vectors, plan.application) as handle:
        steered = complete_each(loaded.model, loaded.tokenizer, ids, budget, handle, stop)
    column = cfg.task.columns["prompt"]
    samples = []
    for i, (row, (u_ids, u_text), (s_ids, s_text)) in enumerate(
        zip(rows, plain, steered, strict=False)
    ):
        sample: dict[str, Any] = {
            "prompt": str(row[column]),
            "text": prepared.prompts[i],
            "unsteered": u_text.strip(),
            "steered": s_text.strip(),
            "unsteered_ids": u_ids,
            "steered_ids": s_ids,
        }
        refs = getattr(prepared, "references", None) or []
        if i < len(refs) and refs[i] is not None:
            sample["reference"] = refs[i]
            sample["correct"] = {
                "unsteered": objective.scorer(u_text, refs[i]).value,
                "steered": objective.scorer(s_text, refs[i]).value,
            }
        samples.append(sample)
    return samples


def everywhere(worker: Worker, plan: Plan, test: TestSplit) -> dict[str, Any]:
    """The winner scored on the test split with the vector at every position (`positions: all`).

    That is what llama.cpp's control vector does, whatever positions the study chose: its
    score, every side metric (KL, fluency) and feasibility, so a GGUF user knows what to expect.
    """
    plan = dataclasses.replace(plan, application=plan.application.at("all"))
    steered = worker.score(plan, test.prepared, split="test")
    baseline = worker.baseline_result(test.prepared, "test")
    seed = worker.cfg.study.seed
    lo, hi = bootstrap_diff_ci(steered.per_item, baseline.per_item, seed=seed)
    constraints = steered.extras.get("constraints", {})
    out: dict[str, Any] = {
        "positions": "all",
        "steered": steered.value,
        "baseline": baseline.value,
        "n": steered.n,
        "difference": steered.value - baseline.value,
        "ci95": [lo, hi],
        "feasible": all(v <= 0 for v in constraints.values()),
        "metrics": _compare(
            metric_values(steered.value, steered.metrics),
            metric_values(baseline.value, baseline.metrics),
            {"score": steered.per_item, **steered.metric_items},
            {"score": baseline.per_item, **baseline.metric_items},
            seed,
        ),
    }
    if "fluency" in steered.extras:
        out["fluency"] = steered.extras["fluency"]
    if "texts" in steered.extras:
        column = worker.cfg.task.columns["prompt"]
        out["samples"] = [
            {"prompt": str(row[column]), "steered": text}
            for row, text in zip(test.rows[:N_SAMPLES], steered.extras["texts"], strict=False)
        ]
    return out


def honesty_warnings(
    lo: float, hi: float, per_letter: dict[str, dict[str, float]], tol: float = 0.02
) -> list[str]:
    """Why a user should not trust a gain: inside the noise, or a shifted letter prior."""
    warnings = []
    if lo <= 0.0 <= hi:
        warnings.append(
            f"the test difference's 95% interval [{lo:+.4f}, {hi:+.4f}] contains 0: "
            "the gain may be noise"
        )
    moves = {
        k: per_letter["steered"][k] - per_letter["baseline"].get(k, 0.0)
        for k in per_letter["steered"]
    }
    if any(m > tol for m in moves.values()) and any(m < -tol for m in moves.values()):
        shown = ", ".join(f"{k}: {m:+.3f}" for k, m in moves.items())
        warnings.append(
            f"per-letter scores move in opposite directions ({shown}): the vector shifts the "
            "letter prior rather than the behaviour"
        )
    return warnings


def _experiment_yaml(cfg: RunConfig, trial: FrozenTrial) -> str:
    """The winner as an experiment config: the study's settings pinned to the winning params."""
    p = trial.params
    space: dict[str, Any] = {}
    if "layer_set" in p:
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
    space.update(
        aggregation=[p["aggregation"]],
        method=[p["method"]],
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
        )
    except ControlVectorError as e:
        log.warning("no %s in the bundle: %s", CONTROL_VECTOR, e)
        info["skipped"] = str(e)
        return info
    info["file"] = CONTROL_VECTOR
    if positions != "all":
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
    """
    from hpo.run.study import storage_url

    cfg = worker.cfg
    protected = protected_paths(cfg.output_dir, storage_url(cfg), cfg.artifacts_dir)
    target = check_target(out_dir, force, protected)  # before the test split is scored
    plan = worker.plan(trial.params)
    vectors, resolved, app = plan.vectors, plan.resolved, plan.application
    test = TestSplit.load(worker)
    metrics = measure(worker, trial, study, test, plan)
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
    if cfg.task.objective.kind == "generation":
        meta["generation"] = {
            "max_new_tokens": cfg.task.objective.max_new_tokens,
            "stop": list(cfg.task.objective.stop),
            "chat_template": cfg.task.chat_template,
        }
    meta["model"]["model_type"] = str(getattr(worker.loaded.model.config, "model_type", ""))
    tmp = staging_dir(target)
    try:
        vec_path = tmp / vector_relpath(trait)
        vec_path.parent.mkdir(parents=True)
        save_file(
            {
                f"layer.{layer}": v.detach().float().cpu().contiguous()
                for layer, v in vectors.items()
            },
            str(vec_path),
            metadata={"trait": trait, "alpha": str(app.alpha), "mode": app.mode},
        )
        # llama.cpp has one scale for all layers: each layer's alpha is folded in.
        steps = {layer: app.layer_alpha(layer) * v for layer, v in vectors.items()}
        meta["control_vector"] = _control_vector(tmp, meta, steps)
        if meta["control_vector"]["file"] and app.positions != "all":
            measured = everywhere(worker, plan, test)
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
        (tmp / STEERING_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        publish(tmp, target, force, protected)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundle written to %s", target)
    return target
