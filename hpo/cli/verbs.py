"""What each CLI verb does once its config is composed. Each returns an exit code."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpo.core.config import CHARS_PER_TOKEN, RunConfig, to_generate_config, to_run_config
from hpo.core.errors import UserError
from hpo.core.record import format_params

log = logging.getLogger("hpo")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print_results(meta: dict[str, Any], path: Path) -> None:
    val, test = meta["metrics"]["validation"], meta["metrics"]["test"]
    lo, hi = test["ci95"]
    params = format_params(meta["study"]["params"])
    print()
    print(f"study       {meta['study']['name']}: {meta['study']['n_trials']} trials")
    print(
        f"validation  baseline {_fmt(val['baseline'])} -> best {_fmt(val['steered'])}  "
        f"(trial {meta['study']['trial']}: {params})"
    )
    if val.get("prompted") is not None:
        print(f"validation  prompted baseline {_fmt(val['prompted'])} (instruction, alpha = 0)")
    print(
        f"test (n={test['n']})  baseline {_fmt(test['baseline'])} -> steered "
        f"{_fmt(test['steered'])}  difference {test['difference']:+.4f} "
        f"[95% CI {lo:+.4f}, {hi:+.4f}]"
    )
    if test["per_letter"]["steered"]:
        letters = "  ".join(
            f"{k}: {test['per_letter']['baseline'][k]:.3f}->{v:.3f}"
            for k, v in test["per_letter"]["steered"].items()
        )
        print(f"per letter  {letters}")
    acc = test.get("accuracy")
    if acc:
        print(
            f"accuracy    baseline {acc['baseline']:.4f} -> steered {acc['steered']:.4f}  "
            f"difference {acc['steered'] - acc['baseline']:+.4f} "
            f"[95% CI {acc['ci95'][0]:+.4f}, {acc['ci95'][1]:+.4f}]"
        )
    unparsed = test.get("unparsed")
    if unparsed and (any(unparsed["baseline"].values()) or any(unparsed["steered"].values())):
        shown = ", ".join(
            f"{k} {unparsed['baseline'].get(k, 0)} -> {unparsed['steered'][k]}"
            for k in unparsed["steered"]
        )
        print(f"unreadable  {shown} (answers scored as wrong)")
    fluency = test.get("fluency")
    if fluency:
        s, b = fluency["steered"], fluency["baseline"]
        print(
            f"fluency     perplexity {b['perplexity']:.1f} -> {s['perplexity']:.1f}, "
            f"distinct-2 {b['distinct2']:.2f} -> {s['distinct2']:.2f} "
            f"({'feasible' if fluency['feasible'] else 'INFEASIBLE'})"
        )
    side = {k: v for k, v in test.get("metrics", {}).items() if k != "score"}
    for name, m in side.items():
        ci = f" [95% CI {m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}]" if "ci95" in m else ""
        base = val["metrics"].get(name, {})
        print(
            f"{name:<11} validation {_fmt(base.get('baseline'))} -> {_fmt(base.get('steered'))}"
            f"; test {_fmt(m['baseline'])} -> {_fmt(m['steered'])}{ci}"
        )
    vs = test.get("vs_prompting")
    if vs:
        p_lo, p_hi = vs["prompted_minus_unsteered"]["ci95"]
        print(
            f"prompted    test {_fmt(vs['unsteered'])} -> {_fmt(vs['prompted'])} with the "
            f"instruction alone  difference {vs['prompted_minus_unsteered']['difference']:+.4f} "
            f"[95% CI {p_lo:+.4f}, {p_hi:+.4f}]"
        )
        print(f"vs prompt   {vs['verdict']}")
    if test.get("steerability"):
        from hpo.export.against_prompting import steerability_line

        print(f"per item    {steerability_line(test['steerability'])}")
    everywhere = (meta.get("control_vector") or {}).get("measured")
    if everywhere:
        print(f"llama.cpp   {llama_cpp_line(everywhere)}")
    selection = meta.get("selection", {})
    if "front" in selection:
        print(
            f"pareto      {len(selection['front'])} trials on the front "
            f"({', '.join(m['name'] for m in selection['metrics'])}); rule {selection['rule']}"
        )
    for sample in test.get("samples", []):
        print(f"\nprompt      {sample['prompt']}")
        print(f"  unsteered {sample['unsteered']}")
        print(f"  steered   {sample['steered']}")
        if "reference" in sample:
            u, s = ("right" if sample["correct"][k] else "wrong" for k in ("unsteered", "steered"))
            gold = " ".join(str(sample["reference"]).split())[-60:]
            print(f"  gold      ...{gold}  (unsteered {u}, steered {s})")
    if test.get("samples"):
        print()
    for warning in meta["metrics"]["warnings"]:
        print(f"warning     {warning}")
    print(f"bundle      {path}")


def llama_cpp_line(m: dict[str, Any]) -> str:
    """One line: the test split scored at every position, as the control vector applies."""
    lo, hi = m["ci95"]
    line = (
        f"every position (control_vector.gguf): test {_fmt(m['baseline'])} -> "
        f"{_fmt(m['steered'])}  difference {m['difference']:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]"
    )
    fluency = m.get("fluency")
    if fluency:
        line += f"; perplexity {fluency['perplexity']:.1f}, distinct-2 {fluency['distinct2']:.2f}"
    kl = m.get("metrics", {}).get("kl")
    if kl:
        line += f"; kl {kl['steered']:.4f}"
    return line + ("" if m["feasible"] else " (INFEASIBLE)")


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


def status(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo status`: one table of the study's state."""
    from hpo.monitor.status import render_status
    from hpo.run.study import open_study, storage_url
    from storage import mask_url

    cfg = to_run_config(raw)
    study = open_study(cfg, create=False, join=False)
    print(render_status(study, mask_url(storage_url(cfg))))
    return 0


def report(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo report`: the study's plots as PNG files and one self-contained HTML page."""
    from hpo.core.record import metric_label
    from hpo.monitor.report import write_report
    from hpo.monitor.status import render_status
    from hpo.run.study import open_study, storage_url, stored_config
    from storage import mask_url

    cfg = to_run_config(raw)
    study = open_study(cfg, create=False, join=False)
    record = stored_config(study)
    objective = record["task"]["objective"]
    label = metric_label(objective["kind"], objective.get("scorer"))
    lines = render_status(study, mask_url(storage_url(cfg))).splitlines()
    paths = write_report(
        study, cfg.report.dir, label, record["search_space"]["alpha_scale"], lines
    )
    for name, path in paths.items():
        print(f"{name:<13}{path}")
    return 0


def layers(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo layers`: each layer's attribution-patching effect (seed 002) on the task's train
    pairs, as a table, a plot and JSON under `<output_dir>/layers/`; no study is made.

    The vectors and positions are those `search_space.layer_selection` ranks a study with.
    """
    import json

    from hpo.core.paths import check_writable_dir
    from hpo.monitor.layer_plot import plot_layers, render_table
    from hpo.run.layer_selection import candidate_layers, rank_layers
    from hpo.run.study import check_config, prepare_worker

    cfg = to_run_config(raw)
    out = Path(cfg.output_dir) / "layers"
    check_writable_dir("output_dir", cfg.output_dir)  # not after a minute of ranking
    check_writable_dir("output_dir/layers", out)
    candidate_layers(cfg.search_space)  # a bad top_k fails before the model loads
    task = check_config(cfg)
    worker = prepare_worker(cfg, task, validation=False)
    record = rank_layers(worker, task.train).record(cfg.search_space.layer_selection.top_k)
    print(render_table(record))
    title = f"{cfg.task.name}: attribution per layer ({record['method']}, {record['aggregation']})"
    png = plot_layers(record, out / "attribution.png", title)
    data = out / "attribution.json"
    data.write_text(json.dumps(record, indent=2) + "\n")
    print(f"plot         {png}")
    print(f"data         {data}")
    return 0


def dashboard(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo dashboard`: optuna-dashboard on the study's storage, with its artifact store."""
    from hpo.core.selection import parse_rule
    from hpo.monitor.dashboard import check_listen, serve
    from hpo.monitor.note import refresh_note
    from hpo.run.study import open_study, storage_url
    from storage import create_storage, mask_url

    cfg = to_run_config(raw)
    rule = parse_rule(cfg.export.rule, cfg.task.objective) if cfg.export.rule is not None else None
    url = storage_url(cfg)
    study = open_study(cfg, create=False, join=False)
    check_listen(cfg.dashboard.host, cfg.dashboard.port)  # before the note or any banner
    refresh_note(study)  # current baseline and best in the note
    serve(
        create_storage(cfg.storage, url),
        cfg.dashboard.host,
        cfg.dashboard.port,
        cfg.artifacts_dir,
        mask_url(url),
        rule,
    )
    return 0


def _check_replayable(path: str, recorded: list[dict[str, Any]]) -> None:
    """Every recorded sample replays (a sample without its text and ids is not skipped)."""
    from hpo.export.bundle import REPLAY_KEYS

    if not recorded:
        raise UserError(f"bundle {path} records no generated samples to replay")
    lacking = [i for i, s in enumerate(recorded) if not all(k in s for k in REPLAY_KEYS)]
    if lacking:
        raise UserError(
            f"bundle {path}: {len(lacking)} of {len(recorded)} recorded samples (#"
            f"{', #'.join(map(str, lacking[:5]))}) lack {'/'.join(REPLAY_KEYS)}: not replayable"
        )


def generate(raw: DictConfig, args: Sequence[str] = ()) -> int:
    """`hpo generate`: a bundle's unsteered vs steered completions, side by side.

    Each prompt is generated alone (batch of one, no padding): what `model.generate` gives a
    user on that prompt. `replay=true` regenerates the bundle's recorded samples with their exact
    prompt text, length and stop strings, and checks them token for token (exit 1 on a mismatch).
    """
    from hpo.core.progress import progress
    from hpo.export.bundle import load_bundle
    from hpo.model.decoding import complete_each
    from hpo.model.loading import load_model

    gen = to_generate_config(raw)
    if gen.replay and gen.alpha is not None:
        raise UserError(
            "replay=true checks the recorded samples at the bundle's alpha; "
            f"drop alpha={gen.alpha}"
        )
    if not (gen.replay or gen.prompt or gen.prompts_file):
        raise UserError('generate needs prompt="...", prompts_file=PATH or replay=true, got none')
    bundle = load_bundle(gen.bundle)
    samples = bundle.samples() if gen.replay else []
    if gen.replay:
        _check_replayable(gen.bundle, bundle.recorded_samples())
    prompts = [str(s["prompt"]) for s in samples] or ([gen.prompt] if gen.prompt else [])
    if gen.prompts_file and not gen.replay:
        path = Path(gen.prompts_file).expanduser()
        if not path.is_file():
            raise UserError(f"prompts_file must be an existing file, got {gen.prompts_file!r}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"prompts_file {gen.prompts_file!r} must be UTF-8, got byte "
                f"{e.object[e.start]:#x} at offset {e.start}"
            ) from e
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError('generate needs prompt="...", prompts_file=PATH or replay=true, got none')
    longest = max(len(p) for p in prompts)
    if longest > gen.max_prompt_tokens * CHARS_PER_TOKEN:
        raise UserError(
            f"a prompt ({longest} characters) cannot fit max_prompt_tokens="
            f"{gen.max_prompt_tokens} tokens; long prompts are refused, not truncated"
        )
    if gen.alpha is not None:
        bundle.alpha = gen.alpha
    loaded = load_model(bundle.model_config(gen.device))
    tok = loaded.tokenizer
    if samples:
        texts = [str(s["text"]) for s in samples]
        budget, stop = bundle.generation["max_new_tokens"], bundle.generation["stop"] or None
    else:
        texts = [bundle.prompt(tok, p, gen.chat_template) for p in prompts]
        budget, stop = gen.max_new_tokens, None
    ids = [tok.encode(t) for t in texts]
    if max(len(x) for x in ids) > gen.max_prompt_tokens:
        raise UserError(
            f"a prompt has {max(len(x) for x in ids)} tokens, more than max_prompt_tokens="
            f"{gen.max_prompt_tokens}; long prompts are refused, not truncated"
        )
    if bundle.instruction is not None:
        print(
            f"instruction the bundle was measured with ({bundle.instruction.placement} message), "
            f"in every prompt: {bundle.instruction.text}"
        )
    plain: list[tuple[list[int], str]] = []
    steered: list[tuple[list[int], str]] = []
    for which in progress(("unsteered", "steered"), "generating", unit="pass"):
        if which == "unsteered":
            plain = complete_each(loaded.model, tok, ids, budget, stop_strings=stop)
            continue
        with bundle.apply(loaded.model) as handle:
            steered = complete_each(loaded.model, tok, ids, budget, handle, stop)
    for prompt, (_, a), (_, b) in zip(prompts, plain, steered, strict=True):
        print(f"=== prompt: {prompt}")
        print(f"--- unsteered:\n{a.strip()}")
        print(f"--- steered (alpha={bundle.alpha:.3f}, layers {sorted(bundle.vectors)}):")
        print(b.strip())
    if not samples:
        return 0
    same_u = sum(s["unsteered_ids"] == u for s, (u, _) in zip(samples, plain, strict=True))
    same_s = sum(s["steered_ids"] == v for s, (v, _) in zip(samples, steered, strict=True))
    n = len(samples)
    print(
        f"replay      {same_s}/{n} steered and {same_u}/{n} unsteered samples identical to the "
        "bundle's record, token for token"
    )
    if same_s == same_u == n:
        return 0
    print(
        "replay differs from the bundle's record: another model copy, dtype, device or library "
        "version than the export's (see steering.json `environment`)",
        file=sys.stderr,
    )
    return 1
