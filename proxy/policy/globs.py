"""Glob lists compiled once into a single regular expression (``fnmatchcase`` semantics)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache


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


# --- comparing glob lists (for `check`'s warnings) --------------------------------------
#
# A glob is a small automaton over characters: its positions are the states, ``*`` loops,
# ``?`` takes any character, a literal or a ``[...]`` set takes the characters it names.
# Two lists are compared by walking both automata together (every list a set of states),
# one representative character at a time: the characters the patterns name split the
# alphabet into runs that every pattern treats alike, so one character of each run stands
# for all of it. Sets are tested with fnmatch's own translation, so ranges, ``[!...]`` and
# the odd cases (``[]a]``, ``[z-a]``) mean exactly what they mean when matching.

_STAR, _ANY, _CHAR, _SET = range(4)
_Token = tuple[int, str]
_State = frozenset[tuple[int, int]]
_MAX_CODE = 0x10FFFF
_SPECIAL = frozenset("*?[")


class TooComplex(Exception):
    """The globs compared need more steps than the ``Effort`` left allows."""


class Effort:
    """A budget of automaton steps shared by several comparisons: a policy file of many
    or contrived globs ends in ``TooComplex`` rather than in a long wait. A step is one
    automaton state moved over one character (about a microsecond)."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def spend(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left < 0:
            raise TooComplex


def _tokens(pattern: str) -> tuple[_Token, ...]:
    """The pattern as fnmatch.translate reads it: runs of ``*`` as one, an unclosed ``[``
    as a literal bracket."""
    out: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if not out or out[-1][0] != _STAR:
                out.append((_STAR, ""))
        elif c == "?":
            out.append((_ANY, ""))
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append((_CHAR, "["))
            else:
                out.append((_SET, pattern[i - 1 : j + 1]))
                i = j + 1
        else:
            out.append((_CHAR, c))
    return tuple(out)


@lru_cache(maxsize=1024)
def _set_re(text: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(text))


def _takes(token: _Token, ch: str) -> bool:
    kind, text = token
    if kind == _ANY:
        return True
    if kind == _CHAR:
        return text == ch
    return _set_re(text).match(ch) is not None


def _representatives(groups: Iterable[Sequence[tuple[_Token, ...]]]) -> tuple[str, ...]:
    """One character of each run of characters that every token treats alike: a run
    starts at 0, at each character a token names and just after it."""
    starts = {0}
    for group in groups:
        for tokens in group:
            for _kind, text in tokens:
                for ch in text:
                    starts.update((ord(ch), ord(ch) + 1))
    return tuple(chr(code) for code in sorted(starts) if code <= _MAX_CODE)


def _closure(group: Sequence[tuple[_Token, ...]], states: Iterable[tuple[int, int]]) -> _State:
    out: set[tuple[int, int]] = set()
    for k, i in states:
        out.add((k, i))
        if i < len(group[k]) and group[k][i][0] == _STAR:
            out.add((k, i + 1))  # runs of * are one token: the next is not a star
    return frozenset(out)


def _step(group: Sequence[tuple[_Token, ...]], states: _State, ch: str) -> _State:
    moved: list[tuple[int, int]] = []
    for k, i in states:
        tokens = group[k]
        if i == len(tokens):
            continue
        if tokens[i][0] == _STAR:
            moved.append((k, i))
        elif _takes(tokens[i], ch):
            moved.append((k, i + 1))
    return _closure(group, moved)


def _accepts(group: Sequence[tuple[_Token, ...]], states: _State) -> bool:
    return any(i == len(group[k]) for k, i in states)


def _walk(a: Sequence[str], b: Sequence[str], effort: Effort, *, both: bool) -> str | None:
    """A shortest-first string matched by a pattern of ``a`` and (``both``) by a pattern of
    ``b``, or (not ``both``) by no pattern of ``b``; None when there is none."""
    ga = [_tokens(p) for p in a]
    gb = [_tokens(p) for p in b]
    chars = _representatives((ga, gb))
    start = (
        _closure(ga, ((k, 0) for k in range(len(ga)))),
        _closure(gb, ((k, 0) for k in range(len(gb)))),
    )
    came: dict[tuple[_State, _State], tuple[tuple[_State, _State], str] | None] = {start: None}
    level = [start]
    while level:
        below: list[tuple[_State, _State]] = []
        for pair in level:
            sa, sb = pair
            if _accepts(ga, sa) and _accepts(gb, sb) == both:
                return _spell(came, pair)
            for ch in chars:
                effort.spend(1 + len(sa) + len(sb))
                na = _step(ga, sa, ch)
                if not na:
                    continue
                nb = _step(gb, sb, ch)
                if both and not nb:
                    continue
                after = (na, nb)
                if after not in came:
                    came[after] = (pair, ch)
                    below.append(after)
        level = below
    return None


def _spell(
    came: Mapping[tuple[_State, _State], tuple[tuple[_State, _State], str] | None],
    pair: tuple[_State, _State],
) -> str:
    chars: list[str] = []
    step = came[pair]
    while step is not None:
        pair, ch = step
        chars.append(ch)
        step = came[pair]
    return "".join(reversed(chars))


def uncovered(patterns: Sequence[str], by: Sequence[str], effort: Effort) -> str | None:
    """A string some glob of ``patterns`` matches and no glob of ``by`` does, or None when
    ``by`` covers ``patterns`` (exactly, with fnmatchcase semantics); raises TooComplex
    past ``effort``."""
    if "*" in by:
        return None
    regex = compile_globs(by)
    rest: list[str] = []
    for pattern in patterns:
        if _SPECIAL.isdisjoint(pattern):  # one string: match it
            effort.spend()
            if regex is None or regex.match(pattern) is None:
                return pattern
        else:
            rest.append(pattern)
    return _walk(rest, by, effort, both=False) if rest else None


def covered(patterns: Sequence[str], by: Sequence[str], effort: Effort) -> bool:
    """Every string some glob of ``patterns`` matches is matched by some glob of ``by``."""
    return uncovered(patterns, by, effort) is None


def common(a: Sequence[str], b: Sequence[str], effort: Effort) -> str | None:
    """A string matched both by a glob of ``a`` and by a glob of ``b``, or None."""
    if not a or not b:
        return None
    return _walk(a, b, effort, both=True)
