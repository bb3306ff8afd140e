"""Run ``modlisa`` with a test hook injected: ``python tests/hooked_cli.py POINT:SECONDS:STEP ARGS...`` sleeps
``SECONDS`` at the save point ``POINT`` (``tmp`` or ``swap``, see ``checkpoint.add_save_hook``) of every save of
global step >= ``STEP``, so that a test can kill the process exactly there. ``-`` instead of the spec: no hook."""

from __future__ import annotations

import sys
import time

from modlisa.cli import main
from modlisa.engine import checkpoint as ckpt


def run(spec: str, argv: list[str]) -> int:
    if spec != "-":
        point, seconds, min_step = spec.split(":")

        def hook(name: str, global_step: int) -> None:
            if name == point and global_step >= int(min_step):
                time.sleep(float(seconds))

        ckpt.add_save_hook(hook)
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
