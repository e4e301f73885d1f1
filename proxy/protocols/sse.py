"""Server-sent events, incrementally: forward whole events only, read their data lines."""

from __future__ import annotations

import re
from collections.abc import Iterator

# A blank line ends an event; CRLF is one line terminator, never CR then LF.
_EOL = rb"(?:\r\n|\n|\r(?!\n))"
_EVENT_END = re.compile(_EOL + _EOL)
_LINE = re.compile(_EOL)


class EventSplitter:
    """Holds back a trailing partial event so the client only ever receives whole events.

    A cut stream then never leaves half an event in the client's parser, and the
    proxy's own error event is read on its own.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes now safe to forward (whole events), possibly empty."""
        if self._pending:
            scan_from = max(0, len(self._pending) - 3)
            chunk = self._pending + chunk
        else:
            scan_from = 0
        end = -1
        for match in _EVENT_END.finditer(chunk, scan_from):
            end = match.end()
        if end < 0:
            self._pending = chunk
            return b""
        self._pending = chunk[end:]
        return chunk[:end]

    @property
    def pending(self) -> bytes:
        """A partial event held back (dropped if the stream is cut)."""
        return self._pending


def event_data(events: bytes) -> Iterator[str]:
    """The ``data`` of each event in ``events`` (whole events), joined per the SSE spec."""
    for block in _EVENT_END.split(events):
        if not block:
            continue
        data: list[str] = []
        for line in _LINE.split(block):
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                data.append(value.decode("utf-8", "replace"))
            elif line == b"data":
                data.append("")
        if data:
            yield "\n".join(data)


def split_events(events: bytes) -> list[bytes]:
    """Whole events (as EventSplitter releases them) one by one, each with its terminator."""
    out: list[bytes] = []
    start = 0
    for match in _EVENT_END.finditer(events):
        out.append(events[start : match.end()])
        start = match.end()
    if start < len(events):
        out.append(events[start:])
    return out


def event_fields(block: bytes) -> tuple[str, str | None, str | None]:
    """(event type, data, id) of one event; data None when it has no data line."""
    kind = "message"
    data: list[str] = []
    event_id: str | None = None
    for line in _LINE.split(block):
        name, colon, value = line.partition(b":")
        if not colon:
            name, value = line, b""
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            kind = value.decode("utf-8", "replace") or "message"
        elif name == b"id":
            event_id = value.decode("utf-8", "replace")
    return kind, ("\n".join(data) if data else None), event_id


def build_event(kind: str, data: str, event_id: str | None = None) -> bytes:
    """One event; ``data`` may hold newlines (each becomes a data line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"{head}event: {kind}\n{lines}\n".encode()
