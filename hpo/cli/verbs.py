"""What each CLI verb does once its config is composed. Each returns an exit code.

The verbs live in one module per group (`study_verbs`, `inspect_verbs`, `generate_verb`; the
printed results in `results`); every name stays importable from here.
"""

from __future__ import annotations

from hpo.cli.generate_verb import _check_replayable, generate
from hpo.cli.inspect_verbs import dashboard, layers, report, status
from hpo.cli.results import _fmt, _print_results, llama_cpp_line
from hpo.cli.study_verbs import (
    NOTHING_TO_SHIP,
    PEER_EXPORT_WAIT_S,
    _check_export_target,
    _choose,
    _export,
    _exported_by_a_peer,
    _stored_run_config,
    export,
    log,
    optimize,
    worker,
)

__all__ = [
    "NOTHING_TO_SHIP",
    "PEER_EXPORT_WAIT_S",
    "_check_export_target",
    "_check_replayable",
    "_choose",
    "_export",
    "_exported_by_a_peer",
    "_fmt",
    "_print_results",
    "_stored_run_config",
    "dashboard",
    "export",
    "generate",
    "layers",
    "llama_cpp_line",
    "log",
    "optimize",
    "report",
    "status",
    "worker",
]
