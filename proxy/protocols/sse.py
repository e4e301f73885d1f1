"""Server-sent events, incrementally: forward whole events only, read their data lines."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NoReturn

# A blank line ends an event; CRLF is one line terminator, never CR then LF.
_EOL = rb"(?:\r\n|\n|\r(?!\n))"
_EVENT_END = re.compile(_EOL + _EOL)
_LINE = re.compile(_EOL)

# An event ending is at most 4 bytes (CRLF CRLF): a match that the next chunk can still
# change starts within the last 3 bytes held, so those are all a new chunk is scanned with.
_CARRY = 3

# The largest event relayed, its blank line included: 8 MiB. An event can carry a whole
# tool result (a file, a base64 image) of several MiB; the proxy's other per-request
# buffers are bounded by --max-body-size (10 MiB by default), and this stays within that.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class EventTooLarge(ValueError):
    """An upstream event grew past the splitter's cap: the stream should end with an error.

    ``ready`` holds the whole events that came before it in the same chunk: forward them,
    then the error event.
    """

    def __init__(self, limit: int, ready: bytes = b"") -> None:
        super().__init__(f"an upstream event exceeds {limit} bytes")
        self.limit = limit
        self.ready = ready


def _event_ends(data: bytes) -> list[int]:
    """Where events end in ``data``, leaving out one whose last byte ends ``data`` as a CR:
    an LF may follow it (CRLF, one terminator) in bytes not seen yet."""
    ends = [match.end() for match in _EVENT_END.finditer(data)]
    if ends and ends[-1] == len(data) and data.endswith(b"\r"):
        ends.pop()
    return ends


class EventSplitter:
    """Holds back a trailing partial event so the client only ever receives whole events.

    A cut stream then never leaves half an event in the client's parser, and the
    proxy's own error event is read on its own. Each chunk is scanned once (with the last
    3 bytes held) and each byte is copied once when released: linear in the stream.
    An event longer than ``max_event`` bytes makes ``feed`` raise :class:`EventTooLarge`
    (then and on every later call); what was held is dropped.
    """

    __slots__ = ("_held", "_held_len", "_max", "_over", "_tail")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        if max_event < 1:
            raise ValueError("max_event must be positive")
        self._max = max_event
        self._held: list[bytes] = []  # the pending event as its chunks, joined once: on release
        self._held_len = 0
        self._tail = b""  # its last _CARRY bytes
        self._over = False

    @property
    def max_event(self) -> int:
        return self._max

    def feed(self, chunk: bytes) -> bytes:
        """The bytes now safe to forward (whole events), possibly empty.

        Raises :class:`EventTooLarge` once an event exceeds ``max_event``.
        """
        if self._over:
            raise EventTooLarge(self._max)
        if not chunk:
            return b""
        tail = self._tail
        window = tail + chunk
        ends = _event_ends(window)
        # Each event's length from where it starts in the window (the held one: at or before 0).
        start = first = len(tail) - self._held_len
        for end in ends:
            if end - start > self._max:
                self._overflow(chunk, start - len(tail) if start > first else None)
            start = end
        if len(window) - start > self._max:  # the event still held, so far
            self._overflow(chunk, start - len(tail) if start > first else None)
        if not ends:
            self._held.append(chunk)
            self._held_len += len(chunk)
            self._tail = window[-_CARRY:]
            return b""
        cut = ends[-1] - len(tail)  # >= 0: a match within the held tail was released before
        ready = b"".join([*self._held, chunk[:cut]])
        rest = chunk[cut:]
        self._held = [rest] if rest else []
        self._held_len = len(rest)
        self._tail = rest[-_CARRY:]
        return ready

    def _overflow(self, chunk: bytes, cut: int | None) -> NoReturn:
        """Stop, with the whole events before ``cut`` (a chunk offset; None: the held event
        is the one too large) for the forwarder to release before its error event."""
        ready = b"".join([*self._held, chunk[:cut]]) if cut is not None else b""
        self._over = True
        self._held, self._held_len, self._tail = [], 0, b""
        raise EventTooLarge(self._max, ready)

    def finish(self) -> bytes:
        """The stream ended cleanly: the held event if it is whole after all (its blank
        line ends in a CR that no LF can follow now), else b"" (``pending`` is cut short)."""
        tail = self._tail
        if tail.endswith(b"\r") and any(
            match.end() == len(tail) for match in _EVENT_END.finditer(tail)
        ):
            ready = self.pending
            self._held, self._held_len, self._tail = [], 0, b""
            return ready
        return b""

    @property
    def pending(self) -> bytes:
        """What is held back: a partial event (dropped if the stream is cut), or a whole
        one whose last CR may yet be followed by LF (see ``finish``)."""
        if len(self._held) > 1:
            self._held = [b"".join(self._held)]
        return self._held[0] if self._held else b""


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
