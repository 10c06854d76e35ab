"""Writing output files safely: whole or not at all, with the user's umask,
a clear error when the disk is full, and one writer per output folder.

Every file sacd_fast writes (checkpoints, logs, metrics, CSV, heatmaps,
reports) goes through :func:`atomic_write`: the bytes go to a temporary file
beside the target, are flushed to disk, and the temporary file is renamed over
the target. A crash, a kill or a full disk leaves either the old file or the
new one, never a truncated one; temporaries of a killed process are removed by
:func:`remove_stale_temporaries` when the next run starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TEMPORARY_SUFFIX = ".tmp"


class OutputError(OSError):
    """An output could not be written (disk full, read-only folder, ...); the message names the folder."""


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def _explain(error: OSError, path: Path) -> OutputError:
    folder = path.parent
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(error.errno, f"no space left on {folder} (writing {path.name})")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(error.errno, f"cannot write to {folder}: {os.strerror(error.errno)} (writing {path.name})")
    return OutputError(error.errno, f"cannot write {path}: {error.strerror or error}")


def _original_error(error: BaseException) -> BaseException:
    """What ``error`` stands for. torch.save reports a full disk, or a Ctrl-C /
    SIGTERM that lands while it writes, as a RuntimeError about the stream
    position, raised while the original is handled: a RuntimeError's context
    is followed to the interrupt or OS error it hides."""
    cause, seen = error, set()
    while isinstance(cause, RuntimeError) and id(cause) not in seen:
        seen.add(id(cause))
        cause = cause.__context__
    return cause if isinstance(cause, (KeyboardInterrupt, OSError)) else error


class _AbandonableFile:
    """A binary file whose writes are ignored once the atomic write has failed
    (``abandoned``): an interrupt can leave torch's zip writer unfinished, and
    when it is freed, possibly only at exit and after this file was closed and
    deleted, it writes the zip's end. Failing there would abort the
    interpreter (an exception in a C++ destructor)."""

    def __init__(self, file: BinaryIO):
        self._file, self.abandoned = file, False

    def write(self, data) -> int:
        if self.abandoned:
            return memoryview(data).nbytes
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666
    less the umask). Raises :class:`OutputError` naming the folder when the
    disk is full or the folder is not writable.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    file = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            file = _AbandonableFile(f)
            write(file)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if file is not None:
            file.abandoned = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = _original_error(e)
        if isinstance(cause, KeyboardInterrupt):
            raise cause from None
        if isinstance(cause, OSError) and not isinstance(cause, OutputError):
            raise _explain(cause, path) from e
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text (file names that are not valid UTF-8 keep their bytes)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` whose writer process no longer exists
    (a run killed while it wrote); returns them."""
    path = Path(path)
    stale = []
    for p in path.parent.glob(f".{path.name}.*{TEMPORARY_SUFFIX}"):
        pid = p.name[len(path.name) + 2:].split(".")[0]
        if p.is_file() and pid.isdigit() and not _alive(int(pid)):
            stale.append(p)
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return stale


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike, what: str = "sacd-fast") -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock for the block.

    A second process asking for the same folder is refused at once
    (RuntimeError naming the holder's pid). The lock is a ``flock`` on
    ``folder/.sacd-fast.lock``: the kernel releases it when its holder exits,
    killed or not, so no stale lock can outlive a run.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".sacd-fast.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise _explain(e, folder / ".sacd-fast.lock") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise RuntimeError(f"{folder} is in use by {what} (pid {holder}): wait for it to finish or choose "
                               "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield folder
    finally:
        os.close(fd)
