"""The `hpo` console script: `hpo <verb> [--config-dir DIR] [key=value ...]`.

Each verb composes its Hydra config (package `conf/` plus any `--config-dir`), validates it into
dataclasses, and runs. Exit codes: 0 success, 2 user error (one line on stderr), 1 internal error
(one line naming the file that holds the traceback; `HPO_DEBUG=1` prints the traceback).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from hydra import compose, initialize_config_module
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpo.core.errors import UserError

# Set to print an internal error's traceback instead of saving it to a file.
DEBUG_ENV = "HPO_DEBUG"
MAX_ERROR_CHARS = 300
# The most a config file of a --config-dir may hold (task files, experiments, a bundle's
# config.yaml): far above any real config, far below what stalls composition.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000

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


def _schema_keys(schema: type, prefix: str = "") -> set[str]:
    """Every dotted key of a config dataclass (`task.max_prompt_tokens`, ...), nested ones too."""
    keys: set[str] = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        keys.add(key)
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        for kind in kinds:
            if dataclasses.is_dataclass(kind) and isinstance(kind, type):
                keys |= _schema_keys(kind, f"{key}.")
    return keys


def _schema_overrides(config_name: str, overrides: list[str]) -> list[str]:
    """`task.max_prompt_tokens=N` as written in the README: a key the schema defines but a
    config file may leave out (its default applies) is set with Hydra's `++` (add or
    override), so it needs no `+`. Unknown keys stay as they are and are refused."""
    from hpo.core.config import GenerateConfig, RunConfig

    keys = _schema_keys(GenerateConfig if config_name == "generate" else RunConfig)
    out = []
    for item in overrides:
        key, eq, _ = item.partition("=")
        plain = eq and "." in key and key[0].isalpha() and key in keys
        out.append(f"++{item}" if plain else item)
    return out


def _compose(config_name: str, overrides: list[str], config_dirs: list[str]) -> DictConfig:
    overrides = _schema_overrides(config_name, overrides)
    if config_dirs:
        paths = ",".join(f"file://{Path(d).expanduser().resolve()}" for d in config_dirs)
        overrides = [*overrides, f"hydra.searchpath=[{paths}]"]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _expanded_values(node: yaml.Node, counts: dict[int, int], open_: set[int]) -> int:
    """How many values `node` stands for once every alias is expanded (as OmegaConf does),
    counted over the shared node graph in linear time."""
    key = id(node)
    if key in counts:
        return counts[key]
    if key in open_:
        raise UserError("a YAML alias refers to the node that holds it")
    open_.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_values(k, counts, open_) + _expanded_values(v, counts, open_)
            if total > MAX_CONFIG_VALUES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_values(item, counts, open_)
            if total > MAX_CONFIG_VALUES:
                break
    open_.discard(key)
    counts[key] = total
    return total


def check_config_files(config_dirs: list[str]) -> None:
    """Refuse a config file too big to be a config before Hydra reads it: more than
    `MAX_CONFIG_BYTES`, or more than `MAX_CONFIG_VALUES` values once its aliases are expanded
    (a "billion laughs" alias bomb would keep composition busy until killed). A file YAML
    cannot parse is left to Hydra, whose message names it."""
    for d in config_dirs:
        for path in sorted(Path(d).expanduser().rglob("*.yaml")):
            where = f"config file {str(path)!r}"
            try:
                size = path.stat().st_size
                if size > MAX_CONFIG_BYTES:
                    raise UserError(
                        f"bad config: {where} holds {size} bytes, more than the "
                        f"{MAX_CONFIG_BYTES} a config file may"
                    )
                node = yaml.compose(path.read_bytes(), Loader=yaml.SafeLoader)
            except (OSError, yaml.YAMLError, RecursionError):
                continue
            if node is None:
                continue
            try:
                values = _expanded_values(node, {}, set())
            except UserError as e:
                raise UserError(f"bad config: {where}: {e}") from None
            except RecursionError:
                values = MAX_CONFIG_VALUES + 1
            if values > MAX_CONFIG_VALUES:
                raise UserError(
                    f"bad config: {where} expands to more than {MAX_CONFIG_VALUES} values "
                    "(YAML aliases or nesting: an alias bomb?)"
                )


def _hydra_message(e: Exception) -> str:
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        options = f"; choices: {', '.join(sorted(e.options))}" if e.options else ""
        return f"unknown {group or 'config'} {name!r}{options}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def _yaml_message(e: yaml.YAMLError) -> str:
    """`while parsing a flow mapping: expected ',' or '}' (task/mine.yaml, line 2, column 10)`."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f" ({mark.name}, line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = ": ".join(x for x in (e.context, e.problem) if x)
        return f"malformed YAML: {what}{where}"
    return f"malformed YAML: {' '.join(str(e).split())}"


def _not_utf8(config_dirs: list[str], e: UnicodeDecodeError) -> str:
    """Name the config file that is not UTF-8 (Hydra's error does not)."""
    for d in config_dirs:
        for path in sorted(Path(d).expanduser().rglob("*.yaml")):
            try:
                path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as bad:
                return (
                    f"config file {str(path)!r} is not UTF-8 (byte {bad.object[bad.start]:#x} "
                    f"at offset {bad.start})"
                )
    return f"a config file is not UTF-8 ({e.reason} at offset {e.start})"


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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="[%(asctime)s %(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    import optuna
    import transformers

    # Our own log lines say what happened to each trial (Optuna's repeat them with tracebacks).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    transformers.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()


def _multirun(
    verb: str,
    config_name: str,
    run: Callable[[DictConfig, Sequence[str]], int],
    overrides: list[str],
    config_dirs: list[str],
) -> int:
    """`hpo worker -m hydra/launcher=submitit_slurm ...`: let a Hydra launcher start the workers.

    Each launched job composes the same config and runs the verb; SLURM (through submitit) or
    any other Hydra launcher owns scheduling, we own nothing but the job body.
    """
    import hydra

    errors: list[str] = []

    @hydra.main(version_base="1.3", config_path="pkg://conf", config_name=config_name)
    def job(cfg: DictConfig) -> int:
        _setup_logging(str(cfg.get("log_level", "INFO")))
        try:
            return run(cfg, overrides)
        except UserError as e:
            errors.append(str(e))
            return 2

    extra = [f"--config-dir={Path(d).expanduser().resolve()}" for d in config_dirs]
    saved = sys.argv
    sys.argv = [f"hpo-{verb}", "--multirun", *extra, *overrides]
    try:
        job()
    except SystemExit as e:  # Hydra reported a launched job that failed (SLURM: which one)
        if e.code in (0, None) or verb != "worker":
            raise
        return _after_failed_job(config_name, overrides, config_dirs)
    finally:
        sys.argv = saved
    if errors:
        raise UserError(errors[0])
    return 0


def _thread_error(args: threading.ExceptHookArgs) -> None:
    """A background thread's storage error (Optuna's heartbeat while the database is down):
    one log line instead of a traceback; the trial loop reports the lost storage itself."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(args.exc_value, SQLAlchemyError | StorageInternalError):
        logging.getLogger("hpo").warning(
            "%s: the storage did not answer (%s); the trial goes on",
            args.thread.name if args.thread else "a thread",
            type(args.exc_value).__name__,
        )
        return
    threading.__excepthook__(args)


REQUEUE_WAIT_S = 180.0


def _after_failed_job(config_name: str, overrides: list[str], config_dirs: list[str]) -> int:
    """0 when the other jobs still meet the study's budget, else one line and exit 2."""
    from hpo.core.config import to_run_config
    from hpo.run.budget import outlast_failed_job
    from hpo.run.study import open_study

    sweep = ("hydra/launcher=", "hydra.", "worker_rank=")
    kept = [o for o in overrides if not o.lstrip("+~").startswith(sweep)]
    cfg = to_run_config(_compose(config_name, kept, config_dirs))
    study = open_study(cfg, create=False)
    n = cfg.study.n_trials
    # long enough for a requeued job to queue, start and load the model again
    stall_s = max(2.0 * cfg.storage.grace_period, REQUEUE_WAIT_S)
    done = outlast_failed_job(study, n, stall_s)
    if done < n:
        raise UserError(
            f"a launched job failed (see above) and the study has {done} of study.n_trials={n} "
            f"finished trials after {stall_s:.0f}s without progress; run `hpo worker` again"
        )
    logging.getLogger(__name__).warning(
        "a launched job failed (see above); the other jobs met study.n_trials=%d", n
    )
    return 0


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
