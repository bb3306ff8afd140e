"""Atomic writes: every file goes to a temporary name beside its target, is flushed and fsynced, then renamed.

A write that fails (disk full, quota, read-only file system, any other ``OSError``; also the ``RuntimeError``
that ``torch.save`` / safetensors raise for a failed write) raises ``WriteError`` naming the target file,
after removing the temporary file: the previous file under the target name is untouched. ``modlisa`` prints a
``WriteError`` as one line and exits with its own code (``WRITE_ERROR_EXIT``, see docs/TROUBLESHOOTING.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

WRITE_ERROR_EXIT = 4


class WriteError(OSError):
    """Writing a file or folder failed; the message names it, the reason and what to do."""


def describe_os_error(err: BaseException) -> str:
    """A short reason for a failed write: "no space left on device (ENOSPC)", or the error's own text."""
    code = getattr(err, "errno", None)
    if code is not None and code in errno.errorcode:
        reason = os.strerror(code).lower()
        return f"{reason} ({errno.errorcode[code]})"
    return str(err) or type(err).__name__


def write_error(target: str | Path, err: BaseException, what: str = "write") -> WriteError:
    """A ``WriteError`` for ``target`` with a fix that fits the reason (free space, permissions, ...)."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or point output_dir elsewhere), then run the command again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable (or point output_dir elsewhere), then run the command again"
    else:
        fix = "check the disk and the folder, then run the command again"
    reason = describe_os_error(err)
    return WriteError(code or errno.EIO, f"{target}: cannot {what}: {reason}; {fix}")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: str | Path) -> None:
    """fsync a folder (its entries are durable after a rename); ignored where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str | Path) -> None:
    """Remove a file or folder if it exists; failures are logged, never raised (clean-up paths)."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as err:
        logger.warning("could not remove %s: %s", path, err)


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "write") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it to ``path``.

    Any OSError/RuntimeError inside the block (or in the fsync/rename) removes the temporary file and raises
    WriteError naming ``path``. The previous ``path`` is only ever replaced by a complete file.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as err:
        remove_quietly(tmp)
        if isinstance(err, WriteError):
            raise
        raise write_error(path, err, what) from err
    except BaseException:
        remove_quietly(tmp)
        raise


def fsync_file(path: str | Path) -> None:
    """Flush a written file to disk (``os.fsync``)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename); WriteError on failure."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; WriteError naming ``path`` on failure."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | Path, writer: Callable[[Path], None], what: str = "write") -> None:
    """Call ``writer(tmp_path)`` (e.g. ``safetensors.torch.save_file``) and rename the result into place."""
    with atomic_path(path, what) as tmp:
        writer(tmp)


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log file (``train_log.jsonl``); WriteError naming it on failure.

    Not atomic by design (a log grows); a line cut by a crash is dropped when the run resumes.
    """
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as err:
        raise write_error(path, err, "append to") from err
