"""Mistakes in a valid policy: rules that can never apply (``check``'s warnings; pure).

A file can load and still not do what its author meant. Two kinds are found, each exactly
(globs are compared as the languages they match, ``globs.uncovered``), and only when
certain: a warning is never given for a rule that some request could reach.

- **An unreachable policy.** The first policy whose ``match`` holds applies (``resolve``),
  so a policy is never reached when earlier policies together match every caller it
  matches. An earlier policy ``E`` matches every caller a later ``P`` matches when its
  agent globs cover those of ``P``, every scope ``E`` requires ``P`` requires too, and
  every claim ``E`` tests ``P`` tests too, as strictly: a string glob whose matches are
  all matches of ``E``'s glob, or the same number or boolean. Several earlier policies
  whose other conditions ``P`` implies can share ``P``'s agents between them. (The agent
  id and a claim such as ``sub`` may be one value; they are compared as independent, so
  such a shadow is missed, never invented.)
- **A tool rule that can never apply.** A ``budget.tools`` entry for a tool the section's
  rules never let through (a ``tools.deny`` glob denies it, no ``tools.allow`` glob
  admits it, or ``methods`` refuse ``tools/call``); an allow glob (``tools.allow``,
  ``methods.allow``) whose every match a deny glob denies. What ``defaults`` write is
  inherited by the policies that do not write the same key, so it is reported only when
  it can apply neither in ``defaults`` nor in any policy that inherits it. A deny glob that
  denies nothing allowed is not reported: denying ``*_admin`` everywhere is a fine habit.

Comparing globs is bounded (``MAX_STEPS`` automaton steps for a whole file); past it the
checks stop with one warning saying so.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.policy.decide import method_allowed
from proxy.policy.globs import Effort, TooComplex, common, covered
from proxy.policy.model import GlobSet, NamedPolicy, PolicyFile, Rules

__all__ = ["MAX_STEPS", "Finding", "Written", "lint"]

MAX_STEPS = 1_000_000
"""Automaton steps all glob comparisons of one file may take together."""

TOOLS_CALL = "tools/call"


def _no_lines() -> Mapping[str, int]:
    return MappingProxyType({})


def _no_items() -> Mapping[str, tuple[int, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Written:
    """What one section of the file (``defaults`` or one policy) sets itself, and where."""

    path: str
    """``defaults`` or ``policies[i]``."""
    line: int = 0
    """The line of the section (a policy: its ``name`` key); 0 when it is not written."""
    keys: Mapping[str, int] = field(default_factory=_no_lines)
    """Line of every key path the section sets a value for (``match``, ``tools.allow``,
    ``budget.tools``...); a key whose value is null is not set."""
    items: Mapping[str, tuple[int, ...]] = field(default_factory=_no_items)
    """Line of each item of a list the section sets (``tools.allow``: one per glob)."""
    budgets: Mapping[str, int] = field(default_factory=_no_lines)
    """Line of each tool name of the section's ``budget.tools``."""


@dataclass(frozen=True, slots=True)
class Finding:
    line: int
    message: str
    """``key.path: what``, as a problem line has it."""


@dataclass(frozen=True, slots=True)
class _Section:
    rules: Rules
    written: Written
    name: str | None
    """The policy's name; None for ``defaults``."""

    @property
    def who(self) -> str:
        return "defaults" if self.name is None else f"policy {self.name!r}"


def lint(policy: PolicyFile, defaults: Written, policies: Sequence[Written]) -> list[Finding]:
    """Every warning for ``policy``, by line; ``defaults`` and ``policies`` say where each
    section was written (``policies`` in the order of ``policy.policies``)."""
    if len(policies) != len(policy.policies):
        raise ValueError("one Written per policy")
    effort = Effort(MAX_STEPS)
    own = _Section(policy.defaults, defaults, None)
    named = [_Section(p.rules, w, p.name) for p, w in zip(policy.policies, policies, strict=True)]
    out: list[Finding] = []
    try:
        out += _unreachable(policy.policies, policies, effort)
        for section in (own, *named):
            inheritors = [] if section.name is not None else named
            out += _dead_budgets(section, inheritors)
            for key in ("tools", "methods"):
                out += _dead_allows(section, inheritors, key, effort)
    except TooComplex:
        message = (
            f"the globs are too many or too intricate to finish looking for rules that can "
            f"never apply (limit: {MAX_STEPS} steps); some may be missed"
        )
        out.append(Finding(0, message))
    return sorted(out, key=lambda f: f.line)


# --- unreachable policies -----------------------------------------------------------


def _json_type(value: object) -> str:
    if isinstance(value, str):
        return "string"
    return "boolean" if isinstance(value, bool) else "number"


def _implies(later: NamedPolicy, earlier: NamedPolicy, effort: Effort) -> bool:
    """Every caller ``later``'s scopes and claims admit is admitted by ``earlier``'s."""
    if not earlier.scopes <= later.scopes:
        return False
    for name, wanted in earlier.claims.items():
        if name not in later.claims:
            return False  # a caller without the claim matches later, not earlier
        value = later.claims[name]
        if _json_type(value) != _json_type(wanted):
            return False
        if isinstance(wanted, str):
            assert isinstance(value, str)
            if not covered([value], [wanted], effort):
                return False
        elif value != wanted:
            return False
    return True


def _unreachable(
    policies: Sequence[NamedPolicy], written: Sequence[Written], effort: Effort
) -> list[Finding]:
    out: list[Finding] = []
    for j, later in enumerate(policies):
        candidates = [i for i in range(j) if _implies(later, policies[i], effort)]
        if not candidates:
            continue
        agents = later.agents.allow
        union = [glob for i in candidates for glob in policies[i].agents.allow]
        if not covered(agents, union, effort):
            continue
        single = next(
            (i for i in candidates if covered(agents, policies[i].agents.allow, effort)), None
        )
        if single is not None:
            by = [single]
        else:
            by = [i for i in candidates if common(agents, policies[i].agents.allow, effort)]
        named = _and([f"{policies[i].name!r} (line {written[i].line})" for i in by])
        if len(by) == 1:
            reason = f"policy {named} comes first and matches every caller {later.name!r} matches"
        else:
            reason = (
                f"policies {named} come first and together match every caller "
                f"{later.name!r} matches"
            )
        line = written[j].keys.get("match", written[j].line)
        message = f"{written[j].path}.match: policy {later.name!r} can never apply: {reason}"
        out.append(Finding(line, message))
    return out


def _and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


# --- tool rules that can never apply ------------------------------------------------


def _never_called(rules: Rules, tool: str) -> str | None:
    """Why ``rules`` never let a ``tools/call`` of ``tool`` through, or None."""
    if not method_allowed(rules, TOOLS_CALL):
        return f"its methods rules never allow {TOOLS_CALL}"
    denied = [glob for glob in rules.tools.deny if fnmatch.fnmatchcase(tool, glob)]
    if denied:
        return f"tools.deny {denied[0]!r} denies it"
    if not rules.tools.admits(tool):
        return "no tools.allow glob admits it"
    return None


def _users(section: _Section, inheritors: Sequence[_Section], key: str) -> list[_Section]:
    """The sections whose rules hold what ``section`` writes at ``key``: itself, and for
    ``defaults`` every policy that does not write ``key`` (it inherits the value)."""
    return [section, *(s for s in inheritors if key not in s.written.keys)]


def _dead_budgets(section: _Section, inheritors: Sequence[_Section]) -> list[Finding]:
    written = section.written
    if "budget.tools" not in written.keys:
        return []
    users = _users(section, inheritors, "budget.tools")
    out: list[Finding] = []
    for tool, line in written.budgets.items():
        if tool not in section.rules.budget.tools:
            continue
        why = [_never_called(user.rules, tool) for user in users]
        if any(reason is None for reason in why):
            continue
        path = f"{written.path}.budget.tools.{tool}"
        if section.name is not None:
            what = (
                f"{section.who} sets a budget for tool {tool!r}, which it never lets through: "
                f"{why[0]}"
            )
        elif len(users) == 1:
            what = (
                f"defaults set a budget for tool {tool!r}, which they never let through: "
                f"{why[0]}; no policy inherits this budget"
            )
        else:
            what = (
                f"defaults set a budget for tool {tool!r}, which neither defaults "
                f"({why[0]}) nor any policy that inherits this budget lets through"
            )
        message = f"{path}: {what}"
        out.append(Finding(line, message))
    return out


def _dead_allows(
    section: _Section, inheritors: Sequence[_Section], key: str, effort: Effort
) -> list[Finding]:
    written = section.written
    allow_key = f"{key}.allow"
    if allow_key not in written.keys:
        return []
    own: GlobSet = getattr(section.rules, key)
    users = _users(section, inheritors, allow_key)
    lines = written.items.get(allow_key, ())
    out: list[Finding] = []
    for k, glob in enumerate(own.allow):
        denies = [getattr(user.rules, key).deny for user in users]
        if not all(deny and covered([glob], deny, effort) for deny in denies):
            continue
        overlapping = [d for d in own.deny if common([glob], [d], effort) is not None]
        names = _and([repr(d) for d in overlapping])
        path = f"{written.path}.{allow_key}[{k}]"
        if section.name is None and len(users) > 1:
            where = " in defaults and in every policy that inherits this list"
        else:
            where = ""
        message = (
            f"{path}: {section.who} allows {key} matching {glob!r}, but {key}.deny "
            f"{names} denies every one of them{where}"
        )
        line = lines[k] if k < len(lines) else written.keys[allow_key]
        out.append(Finding(line, message))
    return out
