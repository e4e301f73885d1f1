"""Glob lists compiled once into a single regular expression (``fnmatchcase`` semantics)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable glob, or None when it is.

    fnmatch silently treats an unclosed ``[`` as a literal bracket; an operator who
    writes ``tool_[ab`` almost certainly made a typo, so it is reported instead.
    """
    if not pattern:
        return "empty glob"
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            # Same scan as fnmatch.translate: '!' negates, a leading ']' is literal.
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                return f"bad glob {pattern!r}: unclosed '['"
            i = j
        i += 1
    return None


def compile_globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One case-sensitive regex matching any of ``patterns``; None for an empty list."""
    parts = [fnmatch.translate(p) for p in patterns]
    if not parts:
        return None
    return re.compile("|".join(parts))
