"""API keys: a watched file maps the SHA-256 of each key to the agent it names.

Decisions:

- The file is YAML or JSON, one flat mapping ``{<sha256 hex of the key>: <agent id>}``;
  keys are compared as SHA-256 digests, so the file holds no secret. YAML is read as
  events, not constructed: no aliases, anchors or nesting, and a digest that happens to
  be all digits stays a string.
- A digest must be 64 hex digits (either case) and listed once; an agent id a non-empty
  printable string. A file with any bad entry is refused as a whole (the last good
  version stays); problems name entries by line, never by content, in case a raw key
  was pasted in.
- The presented key's SHA-256 picks a bucket by its first bytes (timing that depends on
  a digest tells nothing about any key), then every digest in the bucket is compared
  with ``hmac.compare_digest``, without early exit. Keys are never logged, only a short
  prefix of their digest.
- With no file ever loaded, every key is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import yaml
from multidict import CIMultiDictProxy
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    StreamEndEvent,
    StreamStartEvent,
)

from proxy.identity.credential import Credential, Rejected, agent_problem
from proxy.identity.files import WatchedFile
from proxy.identity.presented import AUTHORIZATION, bearer, raw
from proxy.policy.model import ApiKeysConfig

__all__ = ["ApiKeyVerifier", "KeyTable", "digest_of", "parse_key_file"]

log = logging.getLogger("agent_warden.identity")

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DIGEST_RE = re.compile(r"[0-9a-fA-F]{64}")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_MAX_PROBLEMS = 10
_BUCKET = 4  # bytes of digest that pick a bucket: about one key per bucket


@dataclass(frozen=True, slots=True)
class KeyTable:
    buckets: Mapping[bytes, tuple[tuple[bytes, str], ...]]
    """The first bytes of a key's SHA-256 digest -> (digest, agent id) of each listed key."""

    def lookup(self, digest: bytes) -> str | None:
        """The agent of the key with this digest; every digest of the bucket is compared
        in constant time, with no early exit."""
        agent = None
        for stored, name in self.buckets.get(digest[:_BUCKET], ()):
            if hmac.compare_digest(stored, digest):
                agent = name
        return agent

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.buckets.values())


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def parse_key_file(data: bytes) -> KeyTable:
    """The table in a key file; ValueError naming the bad entries if it is not one."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    entries = _json_entries(text) if text.lstrip().startswith("{") else None
    if entries is None:
        entries = _yaml_entries(text)
    agents: dict[bytes, str] = {}
    problems: list[str] = []
    for where, key, agent in entries:
        if not isinstance(key, str) or not _DIGEST_RE.fullmatch(key):
            problems.append(f"{where}: the key is not a SHA-256 hex digest (64 hex digits)")
            continue
        digest = bytes.fromhex(key)
        problem = agent_problem(agent)
        if problem is not None or not isinstance(agent, str):
            problems.append(f"{where}: the agent id is {problem}")
        elif digest in agents:
            problems.append(f"{where}: digest {digest.hex()[:8]}... listed twice")
        else:
            agents[digest] = agent
    if problems:
        more = len(problems) - _MAX_PROBLEMS
        shown = problems[:_MAX_PROBLEMS] + ([f"and {more} more"] if more > 0 else [])
        raise ValueError("; ".join(shown))
    buckets: dict[bytes, list[tuple[bytes, str]]] = {}
    for digest, agent in agents.items():
        buckets.setdefault(digest[:_BUCKET], []).append((digest, agent))
    return KeyTable(MappingProxyType({k: tuple(v) for k, v in buckets.items()}))


def _json_entries(text: str) -> list[tuple[str, object, object]] | None:
    """The entries of a JSON object, in order and with duplicates; None if not JSON."""
    try:
        pairs = json.loads(text, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return None  # perhaps a YAML flow mapping: let YAML say what is wrong
    if not isinstance(pairs, _Pairs):
        raise ValueError("expected a mapping of SHA-256 hex digests to agent ids")
    return [(f"entry {n}", k, v) for n, (k, v) in enumerate(pairs, 1)]


class _Pairs(list[tuple[str, object]]):
    """A JSON object as the list of its pairs (so a key listed twice is seen)."""


def _yaml_entries(text: str) -> list[tuple[str, object, object]]:
    events = _events(text)
    expected = "a mapping of SHA-256 hex digests to agent ids"
    first = next(events)
    assert isinstance(first, StreamStartEvent)
    event = next(events)
    if isinstance(event, StreamEndEvent):
        return []  # empty, or comments only: no keys
    if not isinstance(event, DocumentStartEvent):
        raise ValueError(f"line {_line(event)}: expected {expected}")
    event = next(events)
    if not isinstance(event, MappingStartEvent):
        raise ValueError(f"line {_line(event)}: expected {expected}")
    entries: list[tuple[str, object, object]] = []
    while not isinstance(event := next(events), MappingEndEvent):
        value = next(events)
        where = f"line {_line(event)}"
        entries.append((where, _scalar(event, where), _scalar(value, where)))
    end, after = next(events), next(events)
    if not isinstance(end, DocumentEndEvent) or not isinstance(after, StreamEndEvent):
        raise ValueError(f"line {_line(after)}: one mapping only, not several documents")
    return entries


def _events(text: str) -> Iterator[Event]:
    try:
        yield from yaml.parse(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:  # its str() quotes the file: a key may be there
        mark = exc.problem_mark
        raise ValueError(f"line {mark.line + 1 if mark else 0}: not YAML: {exc.problem}") from None
    except yaml.YAMLError:
        raise ValueError("not YAML") from None


def _scalar(event: Event, where: str) -> str | None:
    """The text of a plain or quoted scalar (None for a plain null); ValueError otherwise."""
    if isinstance(event, AliasEvent) or (isinstance(event, NodeEvent) and event.anchor):
        raise ValueError(f"{where}: anchors and aliases are not allowed")
    if not isinstance(event, ScalarEvent):
        raise ValueError(f"{where}: expected a string, not a mapping or a list")
    if event.implicit[0] and event.value in _NULLS:
        return None
    return str(event.value)


def _line(event: Event) -> int:
    mark = event.start_mark
    return int(mark.line) + 1 if mark is not None else 0


class ApiKeyVerifier:
    """Keys presented in ``config.header`` (as ``Bearer <key>`` when that is Authorization)."""

    def __init__(self, config: ApiKeysConfig, clock: Callable[[], float]) -> None:
        self._header = config.header
        self._bearer = config.header.lower() == AUTHORIZATION.lower()
        self._file = WatchedFile(config.file, parse_key_file, "API key file", clock)

    async def start(self) -> None:
        await self._file.start()

    async def aclose(self) -> None:
        return None

    async def verify(self, headers: CIMultiDictProxy[str]) -> Credential | Rejected | None:
        key = bearer(headers) if self._bearer else raw(headers, self._header)
        if not isinstance(key, str):
            return key
        try:
            table = await self._file.get()
            if table is None:
                return Rejected(True, "no API keys loaded")
            digest = digest_of(key)
            agent = table.lookup(digest)
            if agent is None:
                return Rejected(True, f"unknown API key (sha256 {digest.hex()[:8]}...)")
            return Credential(agent, "api_key")
        except Exception as exc:
            log.error("API key verification failed unexpectedly", exc_info=exc)
            return Rejected(True, f"verification failed: {type(exc).__name__}")
