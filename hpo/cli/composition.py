"""Compose a verb's Hydra config, refuse config files too big to be configs, and say in one
line why a config did not compose."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException
from omegaconf import DictConfig

from hpo.core.errors import UserError

# The most a config file of a --config-dir may hold (task files, experiments, a bundle's
# config.yaml): far above any real config, far below what stalls composition.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


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
