"""Reading policy files: YAML nodes (with line numbers) checked against key tables.

Every problem in a file is reported, each as ``file:line: key.path: message``.

Decisions:

- An empty file (or one holding only comments) is valid and equals the built-in
  policy. A file with any content must say ``version: 1``.
- ``null`` (a key with nothing after it, e.g. a section whose body is commented
  out) on a mapping- or list-valued key means "not set": the value is inherited.
  On a scalar key it is a type error.
- Durations: a positive YAML integer of seconds, or a string of one or more
  ``<digits><unit>`` parts in the order h, m, s, ms (``500ms``, ``90s``, ``15m``,
  ``1h``, ``1h30m``). No floats, no bare numbers in strings: use ``ms`` for
  fractions of a second.
- Limits are integers >= 1 (booleans are not integers); deny a tool to forbid it. A
  limit set nowhere (neither in the policy nor in ``defaults``) is no limit: the model
  holds None. ``null`` does not unset a limit (a scalar key); the built-in policy is
  transparent, with no cap, budget or rate limit.
- ``origins.allow`` holds origins, ``scheme://host[:port]`` with scheme http or https and
  no path (``https://app.example.com``, ``http://localhost:3000``), or ``*`` for any
  origin. Case and a default port (80, 443) do not matter.
- YAML merge keys (``<<: *anchor``) work; explicit keys override merged ones.
  Top-level keys starting with ``x-`` are ignored, to hold anchors.
- ``default`` is reserved as a policy name: it names the fallback to ``defaults``.
- ``identity``: at most one of ``jwt`` and ``api_keys`` (trusted-header mode without
  either). ``jwt`` names exactly one key source; HMAC algorithms (HS*) go only with
  ``secret_file`` and public-key ones only with ``jwks_url`` or ``jwks_file``, so an
  algorithm-confusion attack cannot be configured; ``none`` is never accepted.
  ``jwt: null`` and ``api_keys: null`` are problems, not "unset": a commented-out body
  must not fall back silently to believing a header. ``identity.header`` must differ
  from the credential's header (the proxy sets it to the verified agent id). Paths are
  kept as written (relative ones are relative to the working directory); whether they
  exist is checked when they are read, not here.
- ``match`` needs at least one of ``agents``, ``scopes``, ``claims``. Matching on scopes
  or claims, and ``require_scopes``, need ``identity.jwt``: nothing else carries them.
  A claim value is a string (a glob), a number or a boolean.
- Bounds, each a ``file:line`` problem rather than a hang, a huge allocation or a
  traceback: only a regular file is read (opened non-blocking, so a FIFO or a device
  at the path is refused at once), of at most ``MAX_FILE_BYTES``; at most ``MAX_NODES``
  YAML nodes, nested at most ``MAX_DEPTH`` levels (composed without recursion, so no
  depth reaches a recursion limit); merges at most ``MAX_DEPTH`` levels deep, the keys
  each mapping brings to a merge worked out once; checking visits at most
  ``MAX_VISITS`` nodes and ``MAX_VISITED_CHARS`` characters of scalars, counting again
  every use of an alias and every key a merge brings in (so an alias or merge "billion
  laughs" stops early); at most ``MAX_PROBLEMS`` problems, each shortened to about
  ``MAX_MESSAGE`` characters.

To add a key: add a field to the model class and one line to its table below.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

from proxy.durations import DURATION_HINT, DURATION_RE, parse_duration
from proxy.files import FileTooLarge, NotRegularFile, read_bounded
from proxy.policy.globs import glob_problem
from proxy.policy.lint import Written, lint
from proxy.policy.model import (
    ANY_ORIGIN,
    DEFAULT_POLICY_NAME,
    HMAC_ALGORITHMS,
    JWT_ALGORITHMS,
    KEY_SOURCE_PROBLEM,
    ORIGIN_RE,
    URL_RE,
    ApiKeysConfig,
    GlobSet,
    Identity,
    JwtConfig,
    NamedPolicy,
    PolicyFile,
    ResourceMetadata,
    Rules,
    normalize_origin,
)

# libyaml parses about ten times faster than the pure-Python loader; same nodes and marks.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = [
    "DOMAIN_RE",
    "DURATION_RE",
    "EXTENSION_PREFIX",
    "HEADER_RE",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_MESSAGE",
    "MAX_NODES",
    "MAX_PROBLEMS",
    "MAX_VISITED_CHARS",
    "MAX_VISITS",
    "ORIGIN_RE",
    "SCOPE_RE",
    "URL_RE",
    "PolicyError",
    "Problem",
    "check_file",
    "check_files",
    "key_paths",
    "load_policy",
    "load_policy_checked",
    "parse_duration",
    "parse_policy",
    "parse_policy_bytes",
    "parse_policy_checked",
    "read_policy_file",
]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_D = TypeVar("_D", bound="DataclassInstance")

# RFC 9110 token characters.
HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# RFC 6749 scope-token: printable ASCII but space, '"' and '\'.
SCOPE_RE = re.compile(r"[!#-\[\]-~]+")

_MERGE_TAG = "tag:yaml.org,2002:merge"

MAX_FILE_BYTES = 1 << 20
"""The largest policy file read (1 MiB); a policy is a few kilobytes."""
MAX_NODES = 100_000
"""The most YAML nodes (scalars, mappings, lists and aliases) a policy file may hold."""
MAX_DEPTH = 64
"""The deepest nesting of mappings and lists, and the deepest chain of merges (``<<``)."""
MAX_VISITS = 200_000
"""The most nodes checking a file may visit, counting again each use of an alias and each
key a merge brings in: what stops an alias or merge "billion laughs"."""
MAX_VISITED_CHARS = 2 * MAX_FILE_BYTES
"""The most characters of scalars (keys and values) checking may visit, counted the same
way: what stops a long string used many times by alias (globs compile at about 1 s for
1 MB)."""
MAX_PROBLEMS = 1000
"""The most problems reported for one file; then checking stops, saying so."""
MAX_MESSAGE = 400
"""Problems quoting a long value or key are shortened to about this many characters."""
EXTENSION_PREFIX = "x-"
"""Top-level keys with this prefix are ignored: a place for anchors (``x-common: &c``)."""


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    """1-based; 0 when the problem concerns the whole file (e.g. it cannot be read)."""
    message: str
    warning: bool = False
    """A mistake in a valid file (``check``'s warnings, ``proxy.policy.lint``), not an error."""

    def __str__(self) -> str:
        if self.warning:
            return f"{self.file}:{self.line}: warning: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --- walking the node tree ----------------------------------------------------------


class _Skip(Enum):
    """Returned by a spec when the key gets no value: invalid (reported) or null."""

    SKIP = 0


_SKIP = _Skip.SKIP


class _Lined(dict[str, Any]):
    """Keys and their values, with the line of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, int] = {}


class _Partial(_Lined):
    """The keys a section sets, with the line of each key (and of each item of a list)."""

    def __init__(self) -> None:
        super().__init__()
        self.item_lines: dict[str, tuple[int, ...]] = {}


class _Limit(Exception):
    """A bound of the loader crossed: checking stops; ``problems`` is what to report."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _shorten(message: str) -> str:
    """A message of at most about MAX_MESSAGE characters: the middle of a long one elided."""
    if len(message) <= MAX_MESSAGE:
        return message
    head, tail = MAX_MESSAGE * 3 // 4, MAX_MESSAGE // 4
    return f"{message[:head]}[... {len(message) - head - tail} characters ...]{message[-tail:]}"


@dataclass(slots=True)
class _Ctx:
    file: str
    problems: list[Problem] = field(default_factory=list)
    constructor: SafeConstructor = field(default_factory=SafeConstructor)
    visits: int = 0
    characters: int = 0
    merged: dict[int, dict[str, tuple[Node, Node]]] = field(default_factory=dict)
    """The keys each mapping brings to a merge, by id of the node: worked out once."""
    merging: set[int] = field(default_factory=set)
    """Ids of the mappings whose merges are being worked out (a cycle merges nothing)."""

    def visit(self, node: Node, path: str) -> None:
        """Count a node visited; past MAX_VISITS or MAX_VISITED_CHARS, stop (raises _Limit)."""
        self.visits += 1
        if isinstance(node, ScalarNode):
            self.characters += len(node.value)
        if self.visits > MAX_VISITS:
            what = f"{MAX_VISITS} nodes"
        elif self.characters > MAX_VISITED_CHARS:
            what = f"{MAX_VISITED_CHARS} characters of values"
        else:
            return
        message = (
            f"{path or '(top level)'}: the file expands to more than {what} (the limit), "
            "counting every use of an alias or merge"
        )
        raise _Limit([Problem(self.file, _line(node), message)])

    def add(self, problem: Problem) -> None:
        """Record a problem; past MAX_PROBLEMS, stop checking (raises _Limit)."""
        if len(self.problems) >= MAX_PROBLEMS:
            stop = Problem(
                self.file, problem.line, f"more than {MAX_PROBLEMS} problems; checking stopped"
            )
            raise _Limit([*sorted(self.problems, key=lambda p: p.line), stop])
        message = _shorten(problem.message)
        self.problems.append(
            problem if message is problem.message else replace(problem, message=message)
        )

    def report(self, node: Node, path: str, message: str) -> _Skip:
        text = f"{path}: {message}" if path else message
        self.add(Problem(self.file, _line(node), text))
        return _SKIP

    def wrong_type(self, node: Node, path: str, expected: str) -> _Skip:
        return self.report(node, path or "(top level)", f"expected {expected}, got {_kind(node)}")

    def scalar(self, node: ScalarNode, path: str) -> object:
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            return self.report(node, path, f"cannot read value: {reason}")


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


_TAG_KINDS = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a float",
    "str": "a string",
    "timestamp": "a timestamp",
    "binary": "binary data",
}


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if _is_null(node):
        return "null"
    kind = _TAG_KINDS.get(str(node.tag).rsplit(":", 1)[-1], f"a value tagged {node.tag}")
    return f"{kind} {node.value!r}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Spec:
    """Checks one YAML value; returns the model value, or _SKIP."""

    nullable = False

    def parse(self, ctx: _Ctx, node: Node, path: str) -> object:
        ctx.visit(node, path)
        if self.nullable and _is_null(node):
            return _SKIP
        return self.check(ctx, node, path)

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        raise NotImplementedError


class _Scalar(_Spec):
    """A scalar of one Python type, then an optional check returning a problem or None."""

    def __init__(
        self,
        kind: type,
        expected: str,
        check: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.kind, self.expected, self.extra = kind, expected, check

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        if not isinstance(node, ScalarNode):
            return ctx.wrong_type(node, path, self.expected)
        value = ctx.scalar(node, path)
        if value is _SKIP:
            return _SKIP
        if type(value) is not self.kind:  # exact: bool is a subclass of int
            return ctx.wrong_type(node, path, self.expected)
        problem = self.extra(value) if self.extra else None
        if problem is not None:
            return ctx.report(node, path, problem)
        return value


class _Duration(_Spec):
    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        if not isinstance(node, ScalarNode):
            return ctx.wrong_type(node, path, "a duration")
        value = ctx.scalar(node, path)
        if value is _SKIP:
            return _SKIP
        if type(value) is int:
            seconds = float(value)
        elif isinstance(value, str) and (parsed := parse_duration(value)) is not None:
            seconds = parsed
        elif isinstance(value, str | float):
            return ctx.report(node, path, f"bad duration {node.value!r}; {DURATION_HINT}")
        else:
            return ctx.wrong_type(node, path, "a duration")
        if seconds < 0 or (seconds == 0 and not self.allow_zero):
            least = "zero or more" if self.allow_zero else "greater than zero"
            return ctx.report(node, path, f"duration must be {least}, got {node.value!r}")
        return seconds


class _Globs(_Spec):
    def __init__(self, *, nullable: bool = True, non_empty: bool = False) -> None:
        self.nullable, self.non_empty = nullable, non_empty

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        if not isinstance(node, SequenceNode):
            return ctx.wrong_type(node, path, "a list of globs")
        if self.non_empty and not node.value:
            return ctx.report(node, path, "must not be empty")
        globs: list[str] = []
        for i, item in enumerate(node.value):
            value = _GLOB.parse(ctx, item, f"{path}[{i}]")
            if isinstance(value, str):
                globs.append(value)
        return tuple(globs) if len(globs) == len(node.value) else _SKIP


class _IntMap(_Spec):
    """``{name: limit}``: names are exact strings, values limits."""

    nullable = True

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        if not isinstance(node, MappingNode):
            return ctx.wrong_type(node, path, "a mapping of names to limits")
        out = _Lined()  # the lines are kept for `check`'s warnings
        ok = True
        for key, value_node, key_line in _mapping_items(ctx, node, path):
            if not key:
                ctx.report(value_node, path, "empty name")
                ok = False
                continue
            value = _LIMIT.parse(ctx, value_node, _join(path, key))
            if isinstance(value, int):
                out[key], out.lines[key] = value, key_line
            else:
                ok = False
        return out if ok else _SKIP


class _ClaimMap(_Spec):
    """``{claim name: value}``: a string (a glob), a number or a boolean."""

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        if not isinstance(node, MappingNode):
            return ctx.wrong_type(node, path, "a mapping of claim names to values")
        if not node.value:
            return ctx.report(node, path, "must not be empty")
        out: dict[str, object] = {}
        ok = True
        for key, value_node, key_line in _mapping_items(ctx, node, path):
            if not key:
                ctx.add(Problem(ctx.file, key_line, f"{path}: empty claim name"))
                ok = False
                continue
            value = self._value(ctx, value_node, _join(path, key))
            if value is _SKIP:
                ok = False
            else:
                out[key] = value
        return MappingProxyType(out) if ok else _SKIP

    @staticmethod
    def _value(ctx: _Ctx, node: Node, path: str) -> object:
        ctx.visit(node, path)
        expected = "a string, number or boolean"
        if not isinstance(node, ScalarNode) or _is_null(node):
            return ctx.wrong_type(node, path, expected)
        value = ctx.scalar(node, path)
        if value is _SKIP:
            return _SKIP
        if isinstance(value, str):
            problem = glob_problem(value)
            return value if problem is None else ctx.report(node, path, problem)
        if isinstance(value, float) and not math.isfinite(value):
            return ctx.report(node, path, f"expected a finite number, got {node.value!r}")
        if type(value) in (bool, int, float):
            return value
        return ctx.wrong_type(node, path, expected)


class _Section(_Spec):
    """A mapping with a fixed set of keys."""

    def __init__(
        self,
        fields: Mapping[str, _Spec],
        *,
        required: tuple[str, ...] = (),
        nullable: bool = True,
        extensions: bool = False,
        then: Callable[[_Ctx, Node, str, _Partial], None] | None = None,
    ) -> None:
        self.fields, self.required, self.nullable = fields, required, nullable
        self.extensions, self.then = extensions, then

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        if not isinstance(node, MappingNode):
            return ctx.wrong_type(node, path, "a mapping")
        out = _Partial()
        for key, value_node, key_line in _mapping_items(ctx, node, path):
            key_path = _join(path, key)
            spec = self.fields.get(key)
            if spec is None and self.extensions and key.startswith(EXTENSION_PREFIX):
                continue
            if spec is None:
                ctx.add(Problem(ctx.file, key_line, f"{key_path}: unknown key{self._hint(key)}"))
                continue
            out.lines[key] = key_line
            value = spec.parse(ctx, value_node, key_path)
            if value is not _SKIP:
                out[key] = value
                if isinstance(value_node, SequenceNode):
                    out.item_lines[key] = tuple(_line(item) for item in value_node.value)
        for key in self.required:
            if key not in out.lines:
                ctx.report(node, path, f"missing required key '{key}'")
        if self.then is not None:
            self.then(ctx, node, path, out)
        return out

    def _hint(self, key: str) -> str:
        nested = self._find(key)
        if nested is not None:
            return f", did you mean '{nested}'?"
        close = difflib.get_close_matches(key, list(self.fields), n=1)
        if close:
            return f", did you mean '{close[0]}'?"
        return f"; expected one of: {', '.join(self.fields)}"

    def _find(self, key: str) -> str | None:
        """The shortest path to ``key`` in the sections below this one (a misplaced key)."""
        level: list[tuple[str, _Section]] = [("", self)]
        while level:
            below: list[tuple[str, _Section]] = []
            for path, section in level:
                for name, spec in section.fields.items():
                    if isinstance(spec, _Section):
                        if key in spec.fields:
                            return _join(_join(path, name), key)
                        below.append((_join(path, name), spec))
            level = below
        return None


class _List(_Spec):
    def __init__(self, item: _Spec, *, nullable: bool = True, non_empty: bool = False) -> None:
        self.item, self.nullable, self.non_empty = item, nullable, non_empty

    def check(self, ctx: _Ctx, node: Node, path: str) -> object:
        if not isinstance(node, SequenceNode):
            return ctx.wrong_type(node, path, "a list")
        if self.non_empty and not node.value:
            return ctx.report(node, path, "must not be empty")
        items = [self.item.parse(ctx, item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return tuple(items)


def _mapping_items(ctx: _Ctx, node: MappingNode, path: str) -> Iterator[tuple[str, Node, int]]:
    """(key, value node, key line) of a mapping; duplicates reported, merge keys expanded.

    Explicit keys come first, then those brought in by ``<<`` that no explicit key
    overrides (of several sources, the first wins).
    """
    explicit, sources = _split_merge(ctx, node, path)
    merged: dict[str, tuple[Node, Node]] = {}
    if sources:
        ctx.merging.add(id(node))
        try:
            for source in sources:
                for key, pair in _merged_keys(ctx, source, path, 1).items():
                    ctx.visit(pair[0], path)
                    merged.setdefault(key, pair)
        finally:
            ctx.merging.discard(id(node))
    seen: dict[str, int] = {}
    for key_node, value_node in explicit:
        ctx.visit(key_node, path)
        if not isinstance(key_node, ScalarNode):
            ctx.report(key_node, path or "(top level)", "keys must be plain strings")
            continue
        key = str(key_node.value)
        if key in seen:
            ctx.report(key_node, _join(path, key), f"duplicate key (first on line {seen[key]})")
            continue
        seen[key] = _line(key_node)
        yield key, value_node, seen[key]
    for key, (key_node, value_node) in merged.items():
        if key not in seen:
            seen[key] = _line(key_node)
            yield key, value_node, seen[key]


def _split_merge(
    ctx: _Ctx, node: MappingNode, path: str
) -> tuple[list[tuple[Node, Node]], list[MappingNode]]:
    """The explicit pairs of a mapping, and the mappings its ``<<`` keys merge, in order."""
    explicit: list[tuple[Node, Node]] = []
    sources: list[MappingNode] = []
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE_TAG:
            explicit.append((key_node, value_node))
            continue
        items = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in items:
            ctx.visit(source, _join(path, "<<"))
            if isinstance(source, MappingNode):
                sources.append(source)
            else:
                ctx.report(source, _join(path, "<<"), "can only merge mappings")
    return explicit, sources


def _merged_keys(
    ctx: _Ctx, node: MappingNode, path: str, depth: int
) -> dict[str, tuple[Node, Node]]:
    """What merging ``node`` brings: its keys, then those of its own merges; first wins.

    Worked out once per node (a merge "billion laughs" costs one pass per mapping);
    a chain of merges deeper than MAX_DEPTH is a problem; a cycle merges nothing more.
    """
    done = ctx.merged.get(id(node))
    if done is not None:
        return done
    if id(node) in ctx.merging:
        return {}
    if depth > MAX_DEPTH:
        message = f"{_join(path, '<<')}: merges nested more than {MAX_DEPTH} levels deep"
        raise _Limit([Problem(ctx.file, _line(node), message)])
    explicit, sources = _split_merge(ctx, node, path)
    out: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in explicit:
        ctx.visit(key_node, path)
        if isinstance(key_node, ScalarNode):
            out.setdefault(str(key_node.value), (key_node, value_node))
    ctx.merging.add(id(node))
    try:
        for source in sources:
            for key, pair in _merged_keys(ctx, source, path, depth + 1).items():
                ctx.visit(pair[0], path)
                out.setdefault(key, pair)
    finally:
        ctx.merging.discard(id(node))
    ctx.merged[id(node)] = out
    return out


# --- the key tables -----------------------------------------------------------------


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else f"must be at least 1, got {value}"


def _one_of(*options: str) -> Callable[[str], str | None]:
    listed = ", ".join(repr(o) for o in options)

    def check(value: str) -> str | None:
        return None if value in options else f"expected one of {listed}, got {value!r}"

    return check


def _header(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if HEADER_RE.fullmatch(value) is None:
        return f"invalid header name {value!r}; allowed: letters, digits and !#$%&'*+-.^_`|~"
    return None


def _domain(value: str) -> str | None:
    if len(value) > 253 or DOMAIN_RE.fullmatch(value) is None:
        return f"invalid domain {value!r}; expected a DNS name like agent-warden.dev"
    return None


def _policy_name(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if value == DEFAULT_POLICY_NAME:
        return f"'{DEFAULT_POLICY_NAME}' is reserved for the fallback to defaults"
    return None


def _origin(value: str) -> str | None:
    if value == ANY_ORIGIN or normalize_origin(value) is not None:
        return None
    if ANY_ORIGIN in value:
        return (
            f"invalid origin {value!r}: no wildcards in an origin; "
            f"'{ANY_ORIGIN}' alone allows every origin"
        )
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        return f"invalid origin {value!r}: the scheme must be http or https"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if sep and authority != rest and normalize_origin(f"{scheme}://{authority}") is not None:
        return f"invalid origin {value!r}: an origin has no path; write '{scheme}://{authority}'"
    return (
        f"invalid origin {value!r}; expected scheme://host[:port] with scheme http or https "
        f"(like https://app.example.com or http://localhost:3000), or '*'"
    )


def _non_empty(value: str) -> str | None:
    return "must not be empty" if not value else None


def _path(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if "\0" in value:
        return "must not contain a NUL character"
    return None


def _url(value: str) -> str | None:
    if URL_RE.fullmatch(value) is not None:
        return None
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        return f"invalid URL {value!r}: the scheme must be http or https"
    if sep and "#" in rest:
        return f"invalid URL {value!r}: no fragment (#...) allowed"
    if sep and "@" in re.split(r"[/?]", rest, maxsplit=1)[0]:
        return f"invalid URL {value!r}: no user info (user@) allowed"
    return (
        f"invalid URL {value!r}; expected http:// or https://, a host, an optional port "
        "and path, in printable ASCII (like https://idp.example.com/.well-known/jwks.json)"
    )


def _scope(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if SCOPE_RE.fullmatch(value) is None:
        return f"invalid scope {value!r}; a scope is printable ASCII without spaces, '\"' or '\\'"
    return None


def _algorithm(value: str) -> str | None:
    if value in JWT_ALGORITHMS:
        return None
    if value.lower() == "none":
        return f"{value!r} is never accepted: an unsigned token proves nothing"
    same = [alg for alg in JWT_ALGORITHMS if alg.lower() == value.lower()]
    close = same or difflib.get_close_matches(value, JWT_ALGORITHMS, n=1)
    if close:
        return f"unknown algorithm {value!r}, did you mean {close[0]!r}?"
    return f"unknown algorithm {value!r}; expected one of: {', '.join(JWT_ALGORITHMS)}"


_KEY_SOURCES = ("jwks_url", "jwks_file", "secret_file")
_DEFAULT_ALGORITHMS = JwtConfig().algorithms
_DEFAULT_API_KEY_HEADER = ApiKeysConfig().header
_DEFAULT_IDENTITY_HEADER = Identity().header


def _check_jwt(ctx: _Ctx, node: Node, path: str, jwt: _Partial) -> None:
    """Exactly one key source, and algorithms that fit it."""
    given = sorted((jwt.lines[k], k) for k in _KEY_SOURCES if k in jwt.lines)
    if not given:
        ctx.report(node, path, f"missing key source: set one of {', '.join(_KEY_SOURCES)}")
        return
    first_line, first = given[0]
    for line, key in given[1:]:
        message = (
            f"{_join(path, key)}: only one of {', '.join(_KEY_SOURCES)} may be set "
            f"({first} on line {first_line})"
        )
        ctx.add(Problem(ctx.file, line, message))
    if len(given) > 1 or ("algorithms" in jwt.lines and "algorithms" not in jwt):
        return  # no single source, or algorithms already reported
    secret = first == "secret_file"
    algorithms: tuple[str, ...] = jwt.get("algorithms", _DEFAULT_ALGORITHMS)
    if all((alg in HMAC_ALGORITHMS) == secret for alg in algorithms):
        return
    if "algorithms" in jwt.lines:
        message = f"{_join(path, 'algorithms')}: {KEY_SOURCE_PROBLEM}"
        ctx.add(Problem(ctx.file, jwt.lines["algorithms"], message))
    else:
        default = ", ".join(_DEFAULT_ALGORITHMS)
        message = (
            f"{_join(path, first)}: {KEY_SOURCE_PROBLEM}; with secret_file, set algorithms "
            f"to HS256, HS384 or HS512 (the default is {default})"
        )
        ctx.add(Problem(ctx.file, jwt.lines[first], message))


def _check_identity(ctx: _Ctx, node: Node, path: str, identity: _Partial) -> None:
    """At most one of jwt and api_keys; identity.header is not the credential's header."""
    given = sorted((identity.lines[k], k) for k in ("jwt", "api_keys") if k in identity.lines)
    if len(given) == 2:
        (first_line, first), (line, second) = given
        message = (
            f"{_join(path, second)}: only one of jwt and api_keys may be set "
            f"({first} on line {first_line})"
        )
        ctx.add(Problem(ctx.file, line, message))
        return
    credential: str | None = None
    where: tuple[int, str] | None = None  # the credential header, when set explicitly
    if "jwt" in identity:
        credential = "Authorization"
    elif isinstance(api_keys := identity.get("api_keys"), _Partial):
        credential = api_keys.get("header", _DEFAULT_API_KEY_HEADER)
        if "header" in api_keys.lines:
            where = (api_keys.lines["header"], _join(_join(path, "api_keys"), "header"))
    if credential is None or ("header" in identity.lines and "header" not in identity):
        return
    header: str = identity.get("header", _DEFAULT_IDENTITY_HEADER)
    if header.lower() != credential.lower():
        return
    reason = "the proxy sets identity.header to the verified agent id"
    if "header" in identity.lines or where is None:
        line = identity.lines.get("header", _line(node))
        message = (
            f"{_join(path, 'header')}: must not be the credential header {credential!r}: {reason}"
        )
    else:
        line, key_path = where
        message = f"{key_path}: must not be identity.header {header!r}: {reason}"
    ctx.add(Problem(ctx.file, line, message))


_MATCH_KEYS = ("agents", "scopes", "claims")


def _check_match(ctx: _Ctx, node: Node, path: str, match: _Partial) -> None:
    if not any(key in match.lines for key in _MATCH_KEYS):
        ctx.report(node, path, f"set at least one of {', '.join(_MATCH_KEYS)}")


def _enum(*options: str) -> _Scalar:
    return _Scalar(str, f"one of {', '.join(repr(o) for o in options)}", _one_of(*options))


_LIMIT = _Scalar(int, "an integer", _at_least_one)
_GLOB = _Scalar(str, "a glob string", glob_problem)
_SCOPE = _Scalar(str, "a scope string", _scope)
_URL = _Scalar(str, "a URL string", _url)
_PATH = _Scalar(str, "a path string", _path)
_HEADER = _Scalar(str, "a string", _header)
_NON_EMPTY = _Scalar(str, "a string", _non_empty)

_RULES: dict[str, _Spec] = {
    "mode": _enum("enforce", "audit"),
    "session": _Section(
        {
            "ttl": _Duration(),
            "idle_timeout": _Duration(),
            "max_per_agent": _LIMIT,
            "require": _enum("any", "minted"),
        }
    ),
    "budget": _Section({"calls": _LIMIT, "tools": _IntMap()}),
    "rate_limit": _Section({"per_minute": _LIMIT}),
    "tools": _Section({"allow": _Globs(), "deny": _Globs()}),
    "methods": _Section({"allow": _Globs(), "deny": _Globs()}),
    "require_scopes": _List(_SCOPE),
}

_POLICY = _Section(
    {
        "name": _Scalar(str, "a string", _policy_name),
        "match": _Section(
            {
                "agents": _Globs(nullable=False, non_empty=True),
                "scopes": _List(_SCOPE, nullable=False, non_empty=True),
                "claims": _ClaimMap(),
            },
            nullable=False,
            then=_check_match,
        ),
        **_RULES,
    },
    required=("name", "match"),
    nullable=False,
)

_FILE = _Section(
    {
        "version": _Scalar(
            int, "an integer", lambda v: None if v == 1 else f"unsupported version {v}; expected 1"
        ),
        "identity": _Section(
            {
                "required": _Scalar(bool, "a boolean"),
                "header": _HEADER,
                "forward_credentials": _Scalar(bool, "a boolean"),
                "jwt": _Section(
                    {
                        "issuers": _List(_NON_EMPTY, nullable=False, non_empty=True),
                        "audiences": _List(_NON_EMPTY, nullable=False, non_empty=True),
                        "jwks_url": _URL,
                        "jwks_file": _PATH,
                        "secret_file": _PATH,
                        "algorithms": _List(
                            _Scalar(str, "an algorithm name", _algorithm),
                            nullable=False,
                            non_empty=True,
                        ),
                        "agent_claim": _NON_EMPTY,
                        "leeway": _Duration(allow_zero=True),
                    },
                    required=("issuers", "audiences"),
                    nullable=False,
                    then=_check_jwt,
                ),
                "api_keys": _Section(
                    {"file": _PATH, "header": _HEADER}, required=("file",), nullable=False
                ),
                "resource_metadata": _Section(
                    {
                        "resource": _URL,
                        "authorization_servers": _List(_URL),
                        "scopes_supported": _List(_SCOPE),
                    },
                    required=("resource",),
                ),
            },
            then=_check_identity,
        ),
        "errors": _Section(
            {"domain": _Scalar(str, "a string", _domain), "a2a_spec": _enum("1.0.0", "1.0.1")}
        ),
        "origins": _Section({"allow": _List(_Scalar(str, "an origin string", _origin))}),
        "store_failure": _enum("open", "closed"),
        "defaults": _Section(_RULES),
        "policies": _List(_POLICY),
    },
    required=("version",),
    extensions=True,
)


def key_paths() -> frozenset[str]:
    """Every key path the loader accepts (``policies[].budget.calls``); for the schema test."""

    def walk(spec: _Spec, path: str) -> Iterator[str]:
        if isinstance(spec, _List):
            yield from walk(spec.item, f"{path}[]")
        elif isinstance(spec, _Section):
            for key, child in spec.fields.items():
                yield _join(path, key)
                yield from walk(child, _join(path, key))

    return frozenset(walk(_FILE, ""))


# --- building the model -------------------------------------------------------------


_OPTIONAL_SECTIONS: dict[str, Callable[[], Any]] = {
    "jwt": JwtConfig,
    "api_keys": ApiKeysConfig,
    "resource_metadata": ResourceMetadata,
}
"""Sections the model holds as None when absent: built from their class's defaults."""


def _apply(base: _D, partial: Mapping[str, Any]) -> _D:
    """``base`` with the keys of ``partial`` replaced, nested sections field by field."""
    changes: dict[str, Any] = {}
    for key, value in partial.items():
        if isinstance(value, _Partial):
            current = getattr(base, key)
            if current is None:
                current = _OPTIONAL_SECTIONS[key]()
            value = _apply(current, value)
        changes[key] = value
    return replace(base, **changes)


def _named_policy(p: Mapping[str, Any], defaults: Rules) -> NamedPolicy:
    match = p["match"]
    return NamedPolicy(
        name=p["name"],
        agents=GlobSet(allow=match["agents"]) if "agents" in match else GlobSet(),
        rules=_apply(defaults, {k: v for k, v in p.items() if k in _RULES}),
        scopes=frozenset(match.get("scopes", ())),
        claims=match.get("claims", MappingProxyType({})),
    )


def _build(top: _Partial, filename: str) -> PolicyFile:
    defaults = _apply(Rules(), top.get("defaults", {}))
    policies = tuple(_named_policy(p, defaults) for p in top.get("policies", ()))
    rest = {k: v for k, v in top.items() if k not in ("defaults", "policies")}
    return replace(_apply(PolicyFile(source=filename), rest), defaults=defaults, policies=policies)


def _duplicate_names(ctx: _Ctx, top: _Partial) -> None:
    first: dict[str, int] = {}
    for i, policy in enumerate(top.get("policies", ())):
        if not isinstance(policy, _Partial) or "name" not in policy:
            continue
        name, line = policy["name"], policy.lines["name"]
        if name in first:
            ctx.add(
                Problem(
                    ctx.file,
                    line,
                    f"policies[{i}].name: duplicate policy name {name!r} "
                    f"(first on line {first[name]})",
                )
            )
        else:
            first[name] = line


def _credentials_without_jwt(ctx: _Ctx, top: _Partial) -> None:
    """Scopes and claims come only from a verified JWT: matching on them, or requiring
    scopes, without ``identity.jwt`` could never hold (or would refuse everyone)."""
    identity = top.get("identity")
    if isinstance(identity, _Partial) and "jwt" in identity.lines:
        return
    reason = "needs identity.jwt: only a verified JWT carries scopes and claims"
    sections: list[tuple[str, object]] = [("defaults", top.get("defaults"))]
    sections += [(f"policies[{i}]", p) for i, p in enumerate(top.get("policies", ()))]
    for path, section in sections:
        if not isinstance(section, _Partial):
            continue
        if section.get("require_scopes"):
            line = section.lines["require_scopes"]
            ctx.add(Problem(ctx.file, line, f"{path}.require_scopes: {reason}"))
        match = section.get("match")
        if isinstance(match, _Partial):
            for key in ("scopes", "claims"):
                if key in match.lines:
                    ctx.add(Problem(ctx.file, match.lines[key], f"{path}.match.{key}: {reason}"))


def _yaml_problem(filename: str, text: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line = int(mark.line) + 1
    else:
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        what = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    else:
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        what = "; ".join(str(p) for p in parts if p) or str(exc).replace("\n", " ")
    return Problem(filename, line, f"invalid YAML: {what}")


def _compose(text: str, filename: str, loader: type[yaml.SafeLoader]) -> Node | None:
    """The root node of the single YAML document in ``text`` (None when there is none).

    PyYAML's composers recurse once per level of nesting (deep input ends in a
    RecursionError, or in libyaml's own limit then the pure-Python fallback's
    RecursionError); this one keeps an explicit stack, bounded by MAX_DEPTH, and counts
    nodes against MAX_NODES. Raises yaml.YAMLError for invalid YAML, _Limit past a bound.
    """
    parser: Any = loader(text)  # the stubs leave the event API untyped
    try:
        parser.get_event()  # stream start
        if parser.check_event(StreamEndEvent):
            return None
        parser.get_event()  # document start
        anchors: dict[str, Node] = {}
        stack: list[tuple[CollectionNode, list[Node]]] = []  # open collections, pending key
        root: Node | None = None
        nodes = 0
        while root is None:
            event: Any = parser.get_event()
            if not isinstance(event, NodeEvent):  # the end of a collection
                done, _ = stack.pop()
                done.end_mark = event.end_mark
                if not stack:
                    root = done
                continue
            line = _event_line(event)
            nodes += 1
            if nodes > MAX_NODES:
                message = f"more than {MAX_NODES} YAML nodes; the limit is {MAX_NODES}"
                raise _Limit([Problem(filename, line, message)])
            node = _node(parser, event, anchors)
            if stack:
                parent, pending = stack[-1]
                if isinstance(parent, SequenceNode):
                    parent.value.append(node)
                elif not pending:
                    pending.append(node)  # a key: its value comes next
                else:
                    parent.value.append((pending.pop(), node))
            if isinstance(event, CollectionStartEvent):
                assert isinstance(node, CollectionNode)
                if len(stack) >= MAX_DEPTH:
                    message = f"YAML nested more than {MAX_DEPTH} levels deep"
                    raise _Limit([Problem(filename, line, message)])
                stack.append((node, []))
            elif not stack:
                root = node  # a document that is a single scalar
        end = parser.get_event()
        assert isinstance(end, DocumentEndEvent)
        if not parser.check_event(StreamEndEvent):
            first: Any = root.start_mark
            raise ComposerError(
                "expected a single document in the stream",
                first,
                "but found another document",
                parser.get_event().start_mark,
            )
        return root
    finally:
        parser.dispose()


def _event_line(event: Any) -> int:
    return int(event.start_mark.line) + 1


def _node(parser: Any, event: Any, anchors: dict[str, Node]) -> Node:
    """The node an event starts: a new one, or the one an alias names."""
    start: Any = event.start_mark
    end: Any = event.end_mark
    if isinstance(event, AliasEvent):
        if event.anchor not in anchors:
            raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", start)
        return anchors[event.anchor]
    if event.anchor is not None and event.anchor in anchors:
        raise ComposerError(
            f"found duplicate anchor {event.anchor!r}; first occurrence",
            anchors[event.anchor].start_mark,
            "second occurrence",
            start,
        )
    node: Node
    tag = event.tag
    if isinstance(event, ScalarEvent):
        if tag is None or tag == "!":
            tag = parser.resolve(ScalarNode, event.value, event.implicit)
        node = ScalarNode(tag, event.value, start, end, style=event.style)
    else:
        assert isinstance(event, SequenceStartEvent | MappingStartEvent)
        kind = SequenceNode if isinstance(event, SequenceStartEvent) else MappingNode
        if tag is None or tag == "!":
            tag = parser.resolve(kind, None, event.implicit)
        node = kind(tag, [], start, None, flow_style=event.flow_style)
    if event.anchor is not None:
        anchors[event.anchor] = node
    return node


def parse_policy(text: str, filename: str) -> PolicyFile:
    """The policy in ``text``; raises PolicyError listing every problem (sorted by line).

    Never raises anything else for any input: bounds crossed are problems too.
    """
    return _guarded(text, filename)[0]


def parse_policy_checked(text: str, filename: str) -> tuple[PolicyFile, tuple[Problem, ...]]:
    """The policy in ``text`` and its warnings (``Problem.warning``: rules that can never
    apply, ``proxy.policy.lint``), sorted by line; raises PolicyError as ``parse_policy``
    does. Warnings are worked out only for a valid file."""
    policy, top = _guarded(text, filename)
    if top is None:
        return policy, ()
    try:
        findings = lint(policy, _written(top.get("defaults"), "defaults"), _written_policies(top))
    except Exception as exc:  # a bug of the linter: one warning, never a traceback
        message = f"cannot look for rules that can never apply: {type(exc).__name__}"
        return policy, (Problem(filename, 0, message, warning=True),)
    return policy, tuple(Problem(filename, f.line, f.message, warning=True) for f in findings)


def _guarded(text: str, filename: str) -> tuple[PolicyFile, _Partial | None]:
    try:
        return _parse(text, filename)
    except _Limit as exc:
        raise PolicyError(exc.problems) from None
    except RecursionError:  # the bounds above should make this unreachable
        raise PolicyError(
            [Problem(filename, 0, f"nested too deeply to check (limit {MAX_DEPTH} levels)")]
        ) from None


def _parse(text: str, filename: str) -> tuple[PolicyFile, _Partial | None]:
    """The policy, and the checked tree it was built from (None for an empty file)."""
    try:
        root = _compose(text, filename, _LOADER)
    except yaml.YAMLError:
        try:  # the pure-Python loader words syntax errors best; rare path
            root = _compose(text, filename, yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise PolicyError([_yaml_problem(filename, text, exc)]) from None
    if root is None or _is_null(root):
        return PolicyFile(source=filename), None
    ctx = _Ctx(filename)
    top = _FILE.parse(ctx, root, "")
    if isinstance(top, _Partial):
        _duplicate_names(ctx, top)
        _credentials_without_jwt(ctx, top)
    if ctx.problems or not isinstance(top, _Partial):
        raise PolicyError(sorted(ctx.problems, key=lambda p: p.line))
    try:
        return _build(top, filename), top
    except ValueError as exc:  # the model refusing what checking let through: a loader bug
        raise PolicyError([Problem(filename, 0, f"invalid policy: {exc}")]) from None


def _written(section: object, path: str) -> Written:
    """Where ``section`` (a checked ``defaults`` or policy) set each key, for ``lint``."""
    if not isinstance(section, _Partial):
        return Written(path)
    keys: dict[str, int] = {}
    items: dict[str, tuple[int, ...]] = {}
    budgets: dict[str, int] = {}
    todo: list[tuple[str, _Partial]] = [("", section)]
    while todo:
        prefix, partial = todo.pop()
        for key, value in partial.items():
            key_path = _join(prefix, key)
            keys[key_path] = partial.lines[key]
            if key in partial.item_lines:
                items[key_path] = partial.item_lines[key]
            if isinstance(value, _Partial):
                todo.append((key_path, value))
            elif key_path == "budget.tools" and isinstance(value, _Lined):
                budgets = dict(value.lines)
    line = section.lines.get("name", min(section.lines.values(), default=0))
    return Written(path, line, keys, items, budgets)


def _written_policies(top: _Partial) -> list[Written]:
    return [_written(p, f"policies[{i}]") for i, p in enumerate(top.get("policies", ()))]


def _decode(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError([Problem(filename, line, "not UTF-8 text")]) from None


def parse_policy_bytes(data: bytes, filename: str) -> PolicyFile:
    """The policy in a file's bytes (UTF-8); raises PolicyError as ``parse_policy`` does."""
    return parse_policy(_decode(data, filename), filename)


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _refuse(name: str, mode: int) -> None:
    """Raise for anything but a regular file: IsADirectoryError, or PolicyError."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
    raise PolicyError([Problem(name, 0, f"cannot read policy file: not a regular file but {kind}")])


def _too_big(name: str, size: str) -> PolicyError:
    message = f"cannot read policy file: the file is {size} bytes, the limit is {MAX_FILE_BYTES}"
    return PolicyError([Problem(name, 0, message)])


def read_policy_file(path: str | Path) -> bytes:
    """The bytes of the regular file at ``path``, at most MAX_FILE_BYTES of them.

    Never blocks on a FIFO or a device: the path is stat'ed first, opened non-blocking,
    and the open file checked again (the path may be swapped in between). Raises
    OSError when the file cannot be read, PolicyError (line 0) when it is not a
    regular file or is too big.
    """
    name = str(path)
    _refuse(name, os.stat(path).st_mode)
    try:
        return read_bounded(name, MAX_FILE_BYTES)
    except NotRegularFile as exc:  # swapped in between the stat and the open
        _refuse(name, exc.mode)
        raise
    except FileTooLarge as exc:
        raise _too_big(name, exc.size) from None


def load_policy(path: str | Path) -> PolicyFile:
    """The policy in the file at ``path``; raises PolicyError (line 0 if unreadable)."""
    name = str(path)
    return parse_policy_bytes(_read_or_raise(path), name)


def load_policy_checked(path: str | Path) -> tuple[PolicyFile, tuple[Problem, ...]]:
    """The policy in the file at ``path`` and its warnings (``parse_policy_checked``)."""
    name = str(path)
    return parse_policy_checked(_decode(_read_or_raise(path), name), name)


def _read_or_raise(path: str | Path) -> bytes:
    try:
        return read_policy_file(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError([Problem(str(path), 0, f"cannot read policy file: {reason}")]) from None


def check_file(path: str) -> tuple[tuple[Problem, ...], tuple[Problem, ...]]:
    """The problems (errors) of the file at ``path`` and, when it has none, its warnings."""
    try:
        return (), load_policy_checked(path)[1]
    except PolicyError as exc:
        return exc.problems, ()
    except Exception as exc:  # a loader bug: still one line, never a traceback
        return (Problem(path, 0, f"cannot check: {type(exc).__name__}"),), ()


def check_files(paths: Sequence[str]) -> list[str]:
    """``file:line: message`` for every problem in ``paths``; empty when all are valid.
    Warnings are not problems here: ``check_file`` has them."""
    return [str(p) for path in paths for p in check_file(path)[0]]
