"""What every command's parser shares: one flag style, unknown options as a ConfigError with "did you mean".

Flags are spelled with underscores (the original script's field names: ``--num_epochs``, ``--num_train``); the dashed
spelling (``--num-epochs``) is accepted as an alias for every option of every command.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence

from modlisa.config import ConfigError

CHECKPOINT_HELP = ("a run folder (its best model), best_model_epoch_N.json (or .safetensors, or a legacy .pt), "
                   "checkpoints/last, an exported / imported folder, or a Hugging Face Hub repo id owner/name "
                   "holding an export (fetched into the Hugging Face cache; offline: read from it)")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, required, as every command that loads a model names it (``weights.load_checkpoint``)."""
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--long`` option the parser knows (its own and its groups')."""
    return {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}


def normalize_spelling(argv: Sequence[str], known: set[str]) -> list[str]:
    """``--a-b[=v]`` -> ``--a_b[=v]`` where only the underscore spelling is known; stops at ``--``."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        if arg.startswith("--") and arg not in known:
            name, eq, value = arg.partition("=")
            alias = "--" + name[2:].replace("-", "_")
            if name not in known and alias in known:
                arg = alias + eq + value
        out.append(arg)
    return out


def unknown_option_error(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> ConfigError:
    """A ConfigError naming the unknown option(s), with the closest known option as a suggestion."""
    known = sorted(option_strings(parser))
    words = [a for a in unknown if not a.startswith("-")]
    if words and len(words) == len(unknown):
        return ConfigError(f"unexpected argument(s) {' '.join(words)}; see `{parser.prog} --help`")
    parts = []
    for arg in dict.fromkeys(a.partition("=")[0] for a in unknown if a.startswith("-")):
        hint = difflib.get_close_matches(arg.replace("-", "_"), known, n=1, cutoff=0.75)
        parts.append(f"{arg} (did you mean {hint[0]}?)" if hint else arg)
    noun = "option" if len(parts) == 1 else "options"
    return ConfigError(f"unknown {noun} {', '.join(parts)}; see `{parser.prog} --help`")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` with the dashed alias of every option and a ConfigError for unknown options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(normalize_spelling(argv, option_strings(parser)))
    if unknown:
        raise unknown_option_error(parser, unknown)
    return args
