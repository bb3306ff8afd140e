"""`modlisa` command line: make-data | check-data | convert | train | eval | predict | chat | serve | export | import-lisa |
bench | analyze.

Exit codes (docs/TROUBLESHOOTING.md): 0 success; 1 `check-data` found errors in the data (or an unexpected
internal error, with its traceback: a bug to report); 2 a user error (bad config, bad data, missing file,
corrupt or unsafe checkpoint, weights that do not match), one line; 3 training stopped by non-finite
losses/gradients; 4 a write failed (disk full or another OS error; temporary files removed, the last good
checkpoint intact); 5 the run folder is in use by a live run; 130 Ctrl-C; 143 SIGTERM (checkpoint saved).
`--debug` shows the traceback instead of the one line.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from modlisa.config import ConfigError

# command -> (module under modlisa.cli with a ``main(argv) -> int``, one-line help); imported when run
COMMANDS: dict[str, tuple[str, str]] = {
    "make-data": ("make_data", "generate the synthetic ReasonSeg-format dataset"),
    "check-data": ("check_data", "validate a ReasonSeg-format folder"),
    "convert": ("convert_data", "turn your images + masks (or a COCO JSON) into a ReasonSeg-format folder"),
    "train": ("train", "train a ModifiedLISA model"),
    "eval": ("eval", "evaluate a checkpoint with LISA's protocol"),
    "predict": ("predict", "segment what a query asks for in an image (or a JSONL batch)"),
    "chat": ("chat", "ask queries about images in the terminal; mask and overlay PNGs per answer"),
    "serve": ("serve", "serve a checkpoint as a local web app (Gradio; pip install 'modlisa[demo]')"),
    "export": ("export", "export a checkpoint as a merged Hugging Face-style folder"),
    "import-lisa": ("import_lisa", "convert a LISA checkpoint folder (e.g. LISA-7B-v1) into an export folder"),
    "bench": ("bench", "benchmark training/eval steps (components, FLOPs, MFU) or --plan_memory"),
    "analyze": ("analyze", "write the analysis report of run folders (md, html, json, plots)"),
}


def command_main(name: str) -> Callable[[list[str]], int]:
    """The ``main`` of command ``name`` (imported on use: ``modlisa --help`` loads no model code)."""
    return importlib.import_module(f"modlisa.cli.{COMMANDS[name][0]}").main


def _version() -> str:
    """``modlisa X.Y.Z`` with the versions of what it runs on (torch, transformers, peft, accelerate)."""
    from importlib.metadata import PackageNotFoundError, version

    import modlisa

    found = []
    for name in ("torch", "transformers", "peft", "accelerate"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} missing")
    return f"modlisa {modlisa.__version__} ({', '.join(found)}; Python {sys.version.split()[0]})"


def _usage() -> str:
    lines = ["usage: modlisa [--debug] [--version] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`modlisa COMMAND --help` shows the options of a command."]
    return "\n".join(lines)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (config, data, files, weights): one line, exit 2, no traceback.

    OSError covers missing or unreadable files and model folders/ids that cannot be loaded offline.
    """
    types: list[type[BaseException]] = [ConfigError, OSError]
    try:
        from modlisa.data.reasonseg import DataError
        from modlisa.model.smol import SmolUnavailableError
        from modlisa.weights import WeightsError

        types += [DataError, WeightsError, SmolUnavailableError]
    except ImportError:  # the data layer is optional for `modlisa --help`
        pass
    return tuple(types)


def _special_exit(exc: BaseException) -> int | None:
    """The exit code of errors that have their own: a failed write (4), a locked run folder (5)."""
    from modlisa.atomic import WRITE_ERROR_EXIT, WriteError
    from modlisa.engine.run_folder import RUN_LOCKED_EXIT, RunFolderLocked

    if isinstance(exc, WriteError):
        return WRITE_ERROR_EXIT
    if isinstance(exc, RunFolderLocked):
        return RUN_LOCKED_EXIT
    return None


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; a DataError keeps its list of files, one per line."""
    from modlisa.data.reasonseg import DataError

    text = str(exc)
    if isinstance(exc, DataError):
        return text
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _training_stopped_type() -> type[BaseException]:
    try:
        from modlisa.engine.train import TrainingStopped
    except ImportError:
        return _NeverRaised
    return TrainingStopped


class _NeverRaised(Exception):
    """Placeholder type for an ``except`` clause when the training engine cannot be imported."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:  # Accelerate logs every file of every checkpoint at INFO
        for noisy in ("accelerate", "httpx", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(_version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"modlisa: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return command_main(name)(rest)
    except KeyboardInterrupt:
        print(f"modlisa {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every known error becomes one line and its exit code; others re-raise
        code = _exit_code(exc)
        if code is None or debug:
            raise
        verb = "stopped" if code == 3 else "error"
        print(f"modlisa {name}: {verb}: {_one_line(exc)}", file=sys.stderr)
        return code


def _exit_code(exc: BaseException) -> int | None:
    """3 training stopped (non-finite), 4 a failed write, 5 a locked run folder, 2 a user error, else None."""
    special = _special_exit(exc)
    if special is not None:
        return special
    if isinstance(exc, _training_stopped_type()):
        return 3
    if isinstance(exc, _user_error_types()):
        return 2
    return None

