"""Durations as operators write them: integer seconds or ``500ms``, ``90s``, ``15m``, ``1h``."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: object) -> float:
    """Seconds in ``value``; ``ValueError`` names what is wrong. Zero and negatives are refused."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 90s, 15m, 1h or integer seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            seconds = float(text)
        else:
            match = _DURATION.fullmatch(text)
            if match is None:
                raise ValueError(
                    f"bad duration {value!r}: use 500ms, 90s, 15m, 1h or integer seconds"
                )
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("expected a duration such as 500ms, 90s, 15m, 1h or integer seconds")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds
