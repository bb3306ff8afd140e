"""``--config`` + one ``--<field>`` option per TrainingConfig field, through ``transformers.HfArgumentParser``.

HfArgumentParser turns the dataclass into options with each field's ``help`` metadata (``--help`` shows the
documentation of every field), ``--no_<field>`` for true-by-default booleans, dashed aliases and lists as
``nargs="+"``. Values are NOT converted by argparse: ``coerce_value`` does it, the same function that reads
YAML, so a bad value gets the same ConfigError from either source. Only the fields given on the command line
reach the namespace (their defaults are suppressed), so the precedence default < preset < YAML < command line
is decided in ``config.resolve_config``.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from transformers import HfArgumentParser

from modlisa.config import TrainingConfig, field_types, load_yaml, resolve_config, unwrap_optional

GROUP_TITLE = "TrainingConfig fields (override the YAML; --name value or --name=value; --name-with-dashes works too)"
USAGE = "%(prog)s [-h] [--config YAML] [--FIELD VALUE ...]"


def _metavar(tp: Any) -> str:
    """INT, FLOAT, BOOL, TEXT or LIST for a field type (Optional unwrapped)."""
    base, _ = unwrap_optional(tp)
    if typing.get_origin(base) is list:
        return "NAME"
    return {int: "INT", float: "FLOAT", bool: "BOOL"}.get(base, "TEXT")


def _document(action: argparse.Action, types: dict[str, Any]) -> None:
    """Underscore spelling only (dashes are aliased by ``cli.common``), "(default: X)" appended, defaults
    suppressed (only given fields reach the namespace), values left as strings for ``coerce_value``."""
    action.option_strings = [opt for opt in action.option_strings if "-" not in opt[2:]]
    if action.const is False:  # --no_<field>
        action.help = f"set {action.dest} to false"
    else:
        action.help = f"{action.help or ''} (default: {action.default})".strip()
        action.metavar = _metavar(types[action.dest])
    action.default = argparse.SUPPRESS
    action.type = None
    action.choices = None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and the documented TrainingConfig options to ``parser``."""
    parser.add_argument("--config", metavar="YAML", help="YAML config file; command-line options override it")
    group = parser.add_argument_group(GROUP_TITLE)
    types = field_types()
    for action in HfArgumentParser(TrainingConfig, add_help=False)._actions:
        _document(action, types)
        group._add_action(action)


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainingConfig fields given on the command line; a list given as one ``a,b`` word is split."""
    values = {name: getattr(args, name) for name in field_types() if hasattr(args, name)}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = [part for item in value for part in str(item).split(",") if part.strip()]
    return values


def config_and_sources_from_args(args: argparse.Namespace) -> tuple[TrainingConfig, dict[str, str]]:
    """Resolve ``--config`` YAML, the preset's recipe and the per-field command-line overrides."""
    yaml_values: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    return resolve_config(yaml_values, _cli_values(args), source=getattr(args, "config", None) or "command line")


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Merge the preset's recipe, ``--config`` YAML and the per-field command-line overrides."""
    return config_and_sources_from_args(args)[0]
