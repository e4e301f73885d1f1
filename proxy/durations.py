"""Durations as operators write them: ``500ms``, ``90s``, ``15m``, ``1h``, ``1h30m``."""

from __future__ import annotations

import re

DURATION_RE = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?")
_DURATION_UNITS = (3600.0, 60.0, 1.0, 0.001)
DURATION_HINT = "use integer seconds or a string like 500ms, 90s, 15m, 1h or 1h30m"


def parse_duration(text: str) -> float | None:
    """Seconds of a duration string (``1h30m``), or None when it is not one."""
    m = DURATION_RE.fullmatch(text)
    if m is None or not text:
        return None
    return sum(
        float(part) * unit for part, unit in zip(m.groups(), _DURATION_UNITS, strict=True) if part
    )


def parse_flag_duration(text: str) -> float:
    """A command-line duration: integer seconds or a duration string, greater than zero."""
    value = text.strip()
    seconds = float(value) if value.isdigit() else parse_duration(value)
    if seconds is None:
        raise ValueError(f"bad duration {text!r}; {DURATION_HINT}")
    if seconds <= 0:
        raise ValueError(f"duration must be greater than zero, got {text!r}")
    return seconds
