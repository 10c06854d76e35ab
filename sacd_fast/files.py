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
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TEMPORARY_SUFFIX = ".tmp"


class OutputError(OSError):
    """An output could not be written (disk full, read-only folder, ...); the message names the folder."""


def temporary_path(path: Path) -> Path:
    """A new hidden name beside ``path`` for its temporary (a file, or a folder being filled), which
    :func:`remove_stale_temporaries` removes once its writer process has gone."""
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
    tmp = temporary_path(path)
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


_TEMPORARY = re.compile(rf"^\..+\.(\d+)\.[0-9a-f]{{8}}{re.escape(TEMPORARY_SUFFIX)}$")


def remove_stale_temporaries(folder: str | os.PathLike, of: str | None = None) -> list[Path]:
    """Delete the temporaries (:func:`temporary_path`'s, files or folders)
    anywhere under ``folder``, or only those of its entry named ``of``, whose
    writer process no longer exists (a run killed while it wrote); returns
    them. Links are neither followed nor removed."""
    stale = []
    walk = os.walk(folder) if of is None else [(folder, os.listdir(folder) if os.path.isdir(folder) else [], [])]
    for parent, folders, names in walk:
        for name in folders + names:
            match = _TEMPORARY.match(name)
            path = Path(parent) / name
            if not match or (of is not None and not name.startswith(f".{of}.")) or _alive(int(match.group(1))):
                continue
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                shutil.rmtree(path, ignore_errors=True)
                folders.remove(name)
            elif stat.S_ISREG(mode):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                continue
            stale.append(path)
    return stale


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a regular file (links followed); FileNotFoundError or
    ValueError that says what it is otherwise (absent, a folder, a FIFO, ...)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "not a regular file"
        raise ValueError(f"{what} {path} is {kind}, not a file")
    return path


LOCK_NAME = ".sacd-fast.lock"


def _open_lock(folder: Path) -> int:
    """The lock file's descriptor, opened without following a link: a link
    there (which could point anywhere) or a file that is not a regular file
    owned by this user is refused by name, never written through."""
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) or (path.is_symlink()):
            raise RuntimeError(f"{path} is a symbolic link: sacd-fast does not write through it; remove it "
                               "(and check who put it there)") from None
        raise _explain(e, path) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        os.close(fd)
        why = ("not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"owned by user {info.st_uid}, not by you" if info.st_uid != os.geteuid() else "a hard link")
        raise RuntimeError(f"{path} is {why}: sacd-fast does not use it as its lock; remove it")
    return fd


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike, what: str = "sacd-fast") -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock for the block.

    A second process asking for the same folder is refused at once
    (RuntimeError naming the holder's command and pid). The lock is a
    ``flock`` on ``folder/.sacd-fast.lock``: the kernel releases it when its
    holder exits, killed or not, so no stale lock can outlive a run. Once it is
    held, the temporaries that killed runs left anywhere in the folder are
    removed (:func:`remove_stale_temporaries`).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _explain(e, folder / LOCK_NAME) from e
    fd = _open_lock(folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            pid, _, command = holder.partition(" ")
            by = f"{command or 'another sacd-fast command'} (pid {pid})" if pid.isdigit() else "another process"
            raise RuntimeError(f"{folder} is in use by {by}: wait for it to finish or choose another --out") \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}".encode(), 0)
        remove_stale_temporaries(folder)
        yield folder
    finally:
        os.close(fd)
