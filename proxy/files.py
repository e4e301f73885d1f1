"""What a watched file is right now: a cheap fingerprint to tell when to read it again."""

from __future__ import annotations

import os
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
