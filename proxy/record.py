"""Record: what was decided, as facts; never a decision.

``decisions_of`` turns one judged request into one ``Decision`` per counted call (a batch
has several), and ``DecisionLog`` writes them as JSON lines (``--decision-log``): the
input of ``agent-warden replay``. Nothing here reads a body, a credential or a store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

from proxy.errors import E
from proxy.exchange import Exchange
from proxy.gate import Admission, Refusal
from proxy.protocols import mcp

log = logging.getLogger("agent_warden.record")

__all__ = ["DEFAULT_LOG_MAX_BYTES", "Decision", "DecisionLog", "decisions_of", "read_decisions"]

DEFAULT_LOG_MAX_BYTES = 64 * 1024 * 1024
_BACKUPS = 3  # FILE.1 .. FILE.3 kept after rotation


@dataclass(frozen=True, slots=True)
class Decision:
    """One counted call and what was decided for it."""

    ts: float  # seconds since the epoch, when it was judged
    agent: str
    session: str | None  # the session it was judged in (None: no session applied)
    kind: str | None  # minted | protocol | window
    protocol: str  # mcp | a2a | unknown
    method: str  # the JSON-RPC method or A2A operation
    tool: str | None  # tools/call: the tool's name
    policy: str
    mode: str  # enforce | audit
    decision: str  # allow | deny | audit-deny
    reason: str | None  # the errors.md reason of a denial
    scopes: tuple[str, ...] = ()  # the verified token's scopes (policies may match on them)

    def to_json(self) -> str:
        doc: dict[str, Any] = asdict(self)
        doc["scopes"] = list(self.scopes)
        # ASCII: any id (a lone surrogate from undecodable header bytes included) writes.
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Decision:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.keys() == _FIELDS and _well_typed(doc):  # what this module writes, read fast
            doc["scopes"] = tuple(doc["scopes"])
            return cls(**doc)
        try:
            ts = float(doc["ts"])
            if not math.isfinite(ts):
                raise ValueError("ts is not a finite number")
            return cls(
                ts=ts,
                agent=str(doc["agent"]),
                session=_opt_str(doc.get("session")),
                kind=_opt_str(doc.get("kind")),
                protocol=str(doc.get("protocol", "unknown")),
                method=str(doc["method"]),
                tool=_opt_str(doc.get("tool")),
                policy=str(doc.get("policy", "")),
                mode=str(doc.get("mode", "enforce")),
                decision=str(doc["decision"]),
                reason=_opt_str(doc.get("reason")),
                scopes=tuple(str(s) for s in doc.get("scopes") or ()),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or malformed field: {exc}") from None


_FIELDS = frozenset(Decision.__dataclass_fields__)
_TEXT = ("agent", "protocol", "method", "policy", "mode", "decision")
_OPTIONAL_TEXT = ("session", "kind", "tool", "reason")


def _well_typed(doc: dict[str, Any]) -> bool:
    return (
        type(doc["ts"]) in (int, float)
        and math.isfinite(doc["ts"])
        and all(type(doc[k]) is str for k in _TEXT)
        and all(doc[k] is None or type(doc[k]) is str for k in _OPTIONAL_TEXT)
        and type(doc["scopes"]) is list
        and all(type(s) is str for s in doc["scopes"])
    )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def decisions_of(exchange: Exchange, verdict: Admission | Refusal, now: float) -> list[Decision]:
    """One ``Decision`` per counted call of a judged request: each JSON-RPC request of a
    body (notifications, responses, ``ping``, ``initialize`` and ``server/discover`` are
    not counted calls) or the one A2A REST operation."""
    info = exchange.info
    adm = verdict.admission if isinstance(verdict, Refusal) else verdict
    whole: E | None = verdict.error.spec if isinstance(verdict, Refusal) else adm.whole_reason
    calls: list[tuple[str, str | None, E | None]] = []
    if info.body is not None:
        reasons = adm.element_reasons
        for i, message in enumerate(info.body.messages):
            method = message.method
            if method is None or not message.has_id or method in mcp.UNCOUNTED_METHODS:
                continue
            tool = mcp.tool_name(method, message.params) if method == mcp.TOOLS_CALL else None
            reason = reasons[i] if i < len(reasons) and reasons[i] is not None else whole
            calls.append((method, tool, reason))
    elif info.rest is not None:
        calls.append((info.rest.op.name, None, whole))
    elif info.a2a_op is not None:
        calls.append((info.a2a_op.name, None, whole))
    audit = adm.mode == "audit" and not isinstance(verdict, Refusal)
    kind = adm.kind.value if adm.kind is not None else None
    scopes = tuple(sorted(exchange.caller.scopes))
    return [
        Decision(
            ts=now,
            agent=adm.agent or exchange.caller.agent,
            session=adm.session_id,
            kind=kind,
            protocol=info.protocol,
            method=method,
            tool=tool,
            policy=adm.policy,
            mode=adm.mode,
            decision="allow" if reason is None else ("audit-deny" if audit else "deny"),
            reason=reason.name if reason is not None else None,
            scopes=scopes,
        )
        for method, tool, reason in calls
    ]


class DecisionLog:
    """JSON lines to a file (rotated by size: FILE.1 .. FILE.3) or to standard output.

    Writes are synchronous and small (one line per counted call, flushed per request);
    a write that fails is reported once and the log goes on at the next request."""

    def __init__(
        self,
        target: str,
        max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        self._count = count  # (result, lines): "written" or "failed"
        self._target = target
        self._max = max_bytes
        self._file: IO[str] | None = None
        self._size = 0
        self._failed = False
        self.written = 0

    def open(self) -> None:
        if self._target == "-":
            self._file = sys.stdout
            return
        self._file = open(self._target, "a", encoding="utf-8")  # noqa: SIM115
        try:
            self._size = self._file.tell()
        except OSError:  # a pipe or a FIFO: written, never rotated
            self._max = 2**63

    def write(self, decisions: list[Decision]) -> None:
        if not decisions or self._file is None:
            return
        text = "".join(d.to_json() + "\n" for d in decisions)
        try:
            if self._target != "-" and self._size + len(text) > self._max and self._size:
                self._rotate()
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError) as exc:
            if not self._failed:
                log.error("decision log write failed", extra={"error": str(exc)[:200]})
            self._failed = True
            if self._count is not None:
                self._count("failed", len(decisions))
            return
        self._failed = False
        self._size += len(text)
        self.written += len(decisions)
        if self._count is not None:
            self._count("written", len(decisions))

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        for n in range(_BACKUPS - 1, 0, -1):
            older = f"{self._target}.{n}"
            if os.path.exists(older):
                os.replace(older, f"{self._target}.{n + 1}")
        os.replace(self._target, f"{self._target}.1")
        self._file = open(self._target, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None


def read_decisions(lines: list[str]) -> tuple[list[Decision], list[str]]:
    """Decisions from JSON lines, and one problem per line that is not one."""
    found: list[Decision] = []
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            found.append(Decision.from_json(line))
        except (ValueError, RecursionError, OverflowError) as exc:
            problems.append(f"line {number}: {type(exc).__name__}: {str(exc)[:100]}")
    return found, problems
