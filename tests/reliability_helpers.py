"""Shared helpers of the reliability tests (issue 13): pickle payloads, file damage, in-process CLI runs."""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from modlisa.cli import main
from modlisa.config import TrainingConfig

REPO = Path(__file__).resolve().parents[1]
MARKER = Path(f"/tmp/modlisa_payload_ran_{os.getpid()}")
CPU = ["--cpu", "true", "--use_mixed_precision", "false"]


class Payload:
    """Unpickling this runs code (it would create ``MARKER``): the loaders must refuse it."""

    def __reduce__(self):
        return (exec, (f"open({str(MARKER)!r}, 'w').write('ran')",))


def payload_bytes() -> bytes:
    return pickle.dumps({"state": Payload()})


def torch_payload(path: Path) -> None:
    """A torch.save zip whose pickle holds ``Payload`` (what a planted ``.bin``/``.pkl``/``.pt`` looks like)."""
    _unlink(path)
    torch.save({"model": Payload(), "config": {}}, path)


def _unlink(path: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()


def rewrite(path: Path, data: bytes) -> None:
    """Replace ``path`` by a new file (the run copies share inodes with the module's run)."""
    _unlink(path)
    path.write_bytes(data)


def flip(path: Path, offset_fraction: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0x7F
    rewrite(path, bytes(data))


def overwrite_64k(path: Path) -> None:
    """The probe's damage: 64 KiB in the middle of the file overwritten with 0x7f bytes."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - 32 * 1024)
    data[start:start + 64 * 1024] = b"\x7f" * len(data[start:start + 64 * 1024])
    rewrite(path, bytes(data))


def stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, expected_code: int, needle: str, command: str) -> None:
    assert "Traceback" not in err, err
    assert code == expected_code, err
    lines = [line for line in stderr_lines(err) if f"modlisa {command}:" in line or "error:" in line]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]


def _run_config(data_root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(data_root=str(data_root), output_dir=str(out), model="tiny", img_size=32, sam_image_size=32,
                         batch_size=2, num_epochs=1, learning_rate=1e-3, warmup_steps=1, use_mixed_precision=False,
                         cpu=True, log_every_steps=1, seed=5, queries_per_image=1, save_every_steps=1)
    return replace(cfg, **overrides)


def _copy_run(source: Path, target: Path) -> Path:
    """Checkpoints hard-linked, outputs copied; lock files left out."""
    target.mkdir(parents=True)
    shutil.copytree(source / "checkpoints", target / "checkpoints", copy_function=os.link)
    shutil.copytree(source / "outputs", target / "outputs")
    return target
