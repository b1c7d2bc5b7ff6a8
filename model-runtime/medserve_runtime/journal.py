"""An append-only, fsynced JSON-lines file: the file audit log and the PostgreSQL writer's local spool.

`append(lines)` writes a batch and fsyncs it before returning, so a record the caller then answers for
survives a SIGKILL or a power loss. A batch that fails to write (disk full, I/O error) is cut off again
(the file is truncated back to its last good size), so a retry never writes a line twice. A torn last
line — the process was killed in the middle of a write — is cut off when the journal is opened and
reported (`repaired_bytes`), instead of making the runtime refuse to start on the same volume.

A spool (`exclusive=True`) holds an exclusive `flock` on its file for as long as its writer lives, so
writers sharing one spool directory (a ReadWriteMany volume, one file per pod) can tell a live writer's
file from a dead one's: `Journal.claim` takes the lock of a file whose writer is gone (the kernel drops
a lock when its holder dies, SIGKILL and node loss included — on NFS through the lock manager's lease),
and the claimer drains the file and removes it. A writer re-checks after locking that its path still
names the file it locked, as a claimer may have removed the file between the writer's open and its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Self

logger = logging.getLogger(__name__)

PROBE_BYTES = 4096


class JournalLocked(OSError):
    """Another live writer holds the journal's lock: two writers must never share one spool file."""


class Journal:
    """See the module docstring. Not thread-safe: one writer thread owns it."""

    def __init__(self, path: Path, *, exclusive: bool = False) -> None:
        self.path = path
        self.exclusive = exclusive
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self.size = 0  # bytes known good (fsynced, ending in a newline)
        self.repaired_bytes = self._open()

    @classmethod
    def claim(cls, path: Path) -> Self | None:
        """The spool at `path` with its lock taken, when its writer is gone; None while a live writer holds
        it, or when it is no longer there (another claimer removed it)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None
        if not _lock(fd, path):  # a live writer's, or removed since the open
            os.close(fd)
            return None
        journal = cls.__new__(cls)
        journal.path, journal.exclusive, journal._fd, journal.size = path, True, None, 0
        journal.repaired_bytes = journal._repair(fd)
        return journal

    def _open(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            if not self.exclusive:
                break
            try:
                locked = _lock(fd, self.path)
            except BaseException:
                os.close(fd)
                raise
            if locked:
                break
            os.close(fd)
            if locked is None:
                raise JournalLocked(f"{self.path} is held by another live writer (two runtimes on one spool file)")
            # removed by a claimer between the open and the lock: open the new file
        return self._repair(fd)

    def _repair(self, fd: int) -> int:
        """Adopt `fd`: cut off a torn last line; the number of bytes cut off."""
        try:
            size = os.fstat(fd).st_size
            good = _last_newline_end(fd, size)
            if good != size:
                os.ftruncate(fd, good)
                os.fsync(fd)
                logger.warning("audit journal %s: cut off a torn last line (%d bytes, an interrupted write)",
                               self.path, size - good)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.size = fd, good
        return size - good

    def _ensure_open(self) -> int:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        return self._fd

    def append(self, lines: list[str]) -> None:
        """Write and fsync `lines` (each without its newline); on OSError the file is as it was."""
        data = "".join(line + "\n" for line in lines).encode()
        try:
            fd = self._ensure_open()
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            self._cut_back()
            raise
        self.size += len(data)

    def _cut_back(self) -> None:
        """After a failed write: truncate to the last good size; if even that fails, reopen next time."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        except OSError:
            self.close()  # the next append reopens and repairs from the file itself

    def probe(self) -> None:
        """Raise OSError unless PROBE_BYTES can be written and fsynced now (then cut them off again)."""
        fd = self._ensure_open()
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            self._cut_back()
        if self._fd is None:
            raise OSError(f"{self.path}: could not truncate after a probe")

    def read_lines(self) -> list[str]:
        with self.path.open("rb") as fh:
            data = fh.read(self.size)
        return [line.decode() for line in data.split(b"\n") if line]

    def reset(self) -> None:
        """Empty the journal (the spool, once drained) and fsync that."""
        fd = self._ensure_open()
        os.ftruncate(fd, 0)
        os.fsync(fd)
        self.size = 0

    def remove(self) -> None:
        """Delete the file (a drained, claimed spool), still holding its lock, then close it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _lock(fd: int, path: Path) -> bool | None:
    """Take `fd`'s exclusive lock without waiting: True when held and `path` still names the locked file,
    False when `path` no longer does (removed by a claimer), None when a live writer holds the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _last_newline_end(fd: int, size: int) -> int:
    """The offset just after the file's last newline (0 when it has none)."""
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        end = start
    return 0


def last_record_line(path: Path, size: int) -> bytes | None:
    """The last complete line of the first `size` bytes of `path`, or None for an empty file."""
    with path.open("rb") as fh:
        block = 1 << 16
        while True:
            start = max(0, size - block)
            fh.seek(start)
            data = fh.read(size - start)
            lines = data.rstrip(b"\n").rsplit(b"\n", 1)
            if len(lines) == 2 or start == 0:
                return lines[-1] or None
            block *= 4
