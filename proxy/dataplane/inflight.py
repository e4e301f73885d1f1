"""Each agent's requests in flight: calls (request/response) and open event streams, each
under its own cap (``--max-inflight-per-agent``, ``--max-streams-per-agent``)."""

from __future__ import annotations

__all__ = ["InFlight", "Slot"]


class InFlight:
    """The per-agent tables of one process."""

    __slots__ = ("calls", "max_calls", "max_streams", "streams")

    def __init__(self, max_calls: int, max_streams: int) -> None:
        self.calls: dict[str, int] = {}  # in-flight request/response calls by agent
        self.streams: dict[str, int] = {}  # open event streams by agent
        self.max_calls = max_calls
        self.max_streams = max_streams

    def slot(self, key: str, stream: bool) -> Slot | None:
        """A place for one more call (or stream) of ``key``; None past its cap."""
        slot = Slot(self, key, stream)
        return slot if slot.take() else None


class Slot:
    """One request's place among its agent's calls or streams in flight."""

    __slots__ = ("_held", "_tables", "key", "stream")

    def __init__(self, tables: InFlight, key: str, stream: bool) -> None:
        self._tables = tables
        self.key = key
        self.stream = stream
        self._held = False

    def _table(self) -> tuple[dict[str, int], int]:
        t = self._tables
        if self.stream:
            return t.streams, t.max_streams
        return t.calls, t.max_calls

    def take(self) -> bool:
        table, limit = self._table()
        used = table.get(self.key, 0)
        if used >= limit:
            return False
        table[self.key] = used + 1
        self._held = True
        return True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        table, _ = self._table()
        left = table[self.key] - 1
        if left:
            table[self.key] = left
        else:
            del table[self.key]

    def to_stream(self) -> None:
        """A call whose answer turned out to be an event stream: it holds a stream's place
        from now on (uncapped: it is already flowing), so it no longer blocks calls."""
        if self.stream or not self._held:
            return
        self.release()
        self.stream = True
        table, _ = self._table()
        table[self.key] = table.get(self.key, 0) + 1
        self._held = True
