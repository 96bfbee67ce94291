"""The verbs that look at a study or a model without running trials: `status`, `report`,
`layers`, `dashboard`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from hpo.core.config import to_run_config


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
    """`hpo layers`: each layer's attribution-patching effect on the task's train
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
