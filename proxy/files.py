"""Watched files: a cheap fingerprint to tell when to read one again, and a bounded read
that never blocks."""

from __future__ import annotations

import os
import stat
from typing import NamedTuple


class Fingerprint(NamedTuple):
    ino: int
    dev: int
    mtime_ns: int
    ctime_ns: int
    size: int
    realpath: str  # a symlink swap (a Kubernetes ConfigMap or Secret update) changes it


def fingerprint(path: str) -> Fingerprint | None:
    """Cheap identity of what ``path`` names now; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    real = os.path.realpath(path)
    return Fingerprint(st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns, st.st_size, real)


class NotRegularFile(ValueError):
    """The path names a FIFO, a device, a directory...: ``mode`` says which."""

    def __init__(self, mode: int) -> None:
        super().__init__("not a regular file")
        self.mode = mode


class FileTooLarge(ValueError):
    """More bytes than the limit; ``size`` is what is known of the size ("2048", "more
    than 1024")."""

    def __init__(self, size: str, limit: int) -> None:
        super().__init__(f"{size} bytes, more than {limit}")
        self.size = size


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them. Never blocks
    on a FIFO or a device: opened non-blocking, the open file checked before reading.
    OSError if unreadable, NotRegularFile or FileTooLarge otherwise."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(st.st_mode)
        if st.st_size > limit:
            raise FileTooLarge(str(st.st_size), limit)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # grown since the fstat
                raise FileTooLarge(f"more than {limit}", limit)
        return b"".join(chunks)
    finally:
        os.close(fd)
