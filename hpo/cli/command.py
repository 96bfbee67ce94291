"""The `hpo` console script: `hpo <verb> [--config-dir DIR] [key=value ...]`.

Each verb composes its Hydra config (package `conf/` plus any `--config-dir`), validates it into
dataclasses, and runs. Exit codes: 0 success, 2 user error (one line on stderr), 1 internal error
(one line naming the file that holds the traceback; `HPO_DEBUG=1` prints the traceback).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpo.cli.composition import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_VALUES,
    _compose,
    _expanded_values,
    _hydra_message,
    _not_utf8,
    _schema_keys,
    _schema_overrides,
    _yaml_message,
    check_config_files,
)
from hpo.cli.log_setup import _setup_logging, _thread_error
from hpo.cli.multirun import REQUEUE_WAIT_S, _after_failed_job, _multirun
from hpo.core.errors import UserError

__all__ = [
    "DEBUG_ENV",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_VALUES",
    "MAX_ERROR_CHARS",
    "REQUEUE_WAIT_S",
    "USAGE",
    "_after_failed_job",
    "_compose",
    "_expanded_values",
    "_hydra_message",
    "_internal_error",
    "_interrupt",
    "_multirun",
    "_not_utf8",
    "_one_line",
    "_quiet_broken_pipe",
    "_schema_keys",
    "_schema_overrides",
    "_setup_logging",
    "_split_args",
    "_thread_error",
    "_verbs",
    "_yaml_message",
    "check_config_files",
    "main",
]


# Set to print an internal error's traceback instead of saving it to a file.
DEBUG_ENV = "HPO_DEBUG"
MAX_ERROR_CHARS = 300

USAGE = """usage: hpo <verb> [--config-dir DIR] [--cfg] [key=value ...]

verbs:
  optimize   create/load the study, run it (workers=N processes), export the winner
  worker     join an existing study (same storage.url + study.name) and run trials
  export     best trial (or export.trial=K) -> bundle, with held-out test metrics
  status     trials by state, baseline, best, failures
  report     plots of the study: PNG files + report.html (report.dir=...)
  layers     per-layer attribution-patching effect: table + plot (no study)
  dashboard  optuna-dashboard on the study's storage, on 127.0.0.1 (dashboard.port=...)
  generate   bundle=DIR prompt="..." : unsteered vs steered completions

--cfg prints the composed config and exits. Examples:
  hpo optimize experiment=smoke
  hpo optimize task=sycophancy study.n_trials=50 search_space.layers.high=20
  hpo export output_dir=outputs/smoke
"""


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _quiet_broken_pipe() -> None:
    """The reader went away (`hpo status | head`): drop what is left of stdout silently."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (captured in tests)
        pass


def _internal_error(verb: str, e: Exception) -> str:
    """`<Type>: <message> (full traceback in <file>)`; with `HPO_DEBUG=1` the traceback is
    printed here instead (CI logs, bug reports)."""
    text = "".join(traceback.format_exception(e))
    what = _one_line(f"{type(e).__name__}: {e}")
    if len(what) > MAX_ERROR_CHARS:
        what = what[: MAX_ERROR_CHARS - 3] + "..."
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        print(text, end="", file=sys.stderr)
        return what
    try:
        name = verb if verb.isalpha() else "cli"  # user text never shapes the path
        fd, path = tempfile.mkstemp(prefix=f"hpo-{name}-", suffix=".traceback.txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        return f"{what} (set {DEBUG_ENV}=1 for the full traceback)"
    return f"{what} (full traceback in {path}; {DEBUG_ENV}=1 prints it)"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _split_args(args: Sequence[str]) -> tuple[list[str], list[str], bool]:
    overrides: list[str] = []
    config_dirs: list[str] = []
    print_cfg = False
    it = iter(args)
    for arg in it:
        if arg == "--config-dir":
            value = next(it, None)
            if value is None:
                raise UserError("--config-dir needs a directory, got nothing")
            config_dirs.append(value)
        elif arg.startswith("--config-dir="):
            config_dirs.append(arg.split("=", 1)[1])
        elif arg == "--cfg":
            print_cfg = True
        elif arg.startswith("-"):
            raise UserError(f"unknown option {arg!r}; options: --config-dir DIR, --cfg")
        else:
            overrides.append(arg)
    for d in config_dirs:
        if not Path(d).expanduser().is_dir():
            raise UserError(f"--config-dir must be an existing directory, got {d!r}")
    return overrides, config_dirs, print_cfg


def _verbs() -> dict[str, tuple[str, Callable[[DictConfig, Sequence[str]], int]]]:
    import hpo.cli.verbs as verbs

    return {
        "optimize": ("hpo", verbs.optimize),
        "worker": ("hpo", verbs.worker),
        "export": ("hpo", verbs.export),
        "status": ("hpo", verbs.status),
        "report": ("hpo", verbs.report),
        "layers": ("hpo", verbs.layers),
        "dashboard": ("hpo", verbs.dashboard),
        "generate": ("generate", verbs.generate),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hpo` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        verbs = _verbs()
        if verb not in verbs:
            raise UserError(f"unknown verb {verb!r}; verbs: {', '.join(verbs)}")
        config_name, run = verbs[verb]
        multirun = bool({"-m", "--multirun"} & set(rest))
        rest = [a for a in rest if a not in ("-m", "--multirun")]
        if multirun and verb != "worker":
            raise UserError(f"-m (a Hydra launcher sweep) is for `hpo worker`, got `hpo {verb}`")
        overrides, config_dirs, print_cfg = _split_args(rest)
        check_config_files(config_dirs)
        if multirun:
            return _multirun(verb, config_name, run, overrides, config_dirs)
        try:
            cfg = _compose(config_name, overrides, config_dirs)
        except (HydraException, OmegaConfBaseException) as e:
            raise UserError(f"bad config: {_hydra_message(e)}") from e
        except yaml.YAMLError as e:
            raise UserError(f"bad config: {_yaml_message(e)}") from e
        except UnicodeDecodeError as e:
            raise UserError(f"bad config: {_not_utf8(config_dirs, e)}") from e
        if print_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        _setup_logging(str(cfg.get("log_level", "INFO")))
        threading.excepthook = _thread_error
        # SIGTERM (kill, Kubernetes, SLURM) stops like Ctrl-C: the running trial is marked FAIL.
        signal.signal(signal.SIGTERM, _interrupt)
        code = run(cfg, rest)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at exit
        return code
    except UserError as e:
        print(f"hpo {verb}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 0
    except KeyboardInterrupt:
        print(f"hpo {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's input: one line, the traceback in a file
        print(f"hpo {verb}: internal error: {_internal_error(verb, e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
