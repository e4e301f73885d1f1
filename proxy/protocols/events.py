"""What a relayed event stream has delivered so far: answers, A2A terminal events, results."""

from __future__ import annotations

import json
from typing import Any

from proxy.protocols import a2a, jsonrpc
from proxy.protocols.sse import event_data, event_fields, split_events


class StreamWatch:
    """Reads whole SSE events as they are relayed (never holds them back).

    ``complete`` says whether the stream delivered what it owes: an answer for every
    pending JSON-RPC id (MCP), or a terminal event (A2A streaming operations, both
    bindings). A stream that ends while incomplete was cut.
    """

    __slots__ = (
        "_a2a_stream",
        "_error_codes",
        "_jsonrpc",
        "_pending",
        "_terminal",
        "last_event_id",
    )

    def __init__(
        self, pending: set[jsonrpc.JsonRpcId] | None, *, jsonrpc_binding: bool, a2a_stream: bool
    ) -> None:
        self._pending = pending
        self._jsonrpc = jsonrpc_binding
        self._a2a_stream = a2a_stream
        self._terminal = False
        self._error_codes: list[int | str] = []
        self.last_event_id: str | None = None  # of the latest event: set means resumable

    @property
    def complete(self) -> bool:
        if self._a2a_stream:
            return self._terminal
        return not self._pending

    @property
    def pending(self) -> tuple[jsonrpc.JsonRpcId, ...]:
        return tuple(self._pending) if self._pending else ()

    def take_error_codes(self) -> list[int | str]:
        """JSON-RPC error codes answered since the last call."""
        codes, self._error_codes = self._error_codes, []
        return codes

    def feed(self, events: bytes) -> list[Any]:
        """Results carried by ``events`` (whole events), in order."""
        results: list[Any] = []
        if b"id:" in events or self.last_event_id is not None:
            for block in split_events(events):
                self.last_event_id = event_fields(block)[2] or None
        for data in event_data(events):
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError):  # not ours to judge: relayed as it came
                continue
            if not self._jsonrpc:  # REST stream: each event is a StreamResponse
                results.append(doc)
                if self._a2a_stream and a2a.is_terminal_event(doc):
                    self._terminal = True
                continue
            items = doc if isinstance(doc, list) else [doc]
            for item in items:
                if not isinstance(item, dict) or "method" in item or "id" not in item:
                    continue
                if "error" in item:
                    self._terminal = True
                    error = item["error"]
                    code = error.get("code") if isinstance(error, dict) else None
                    if isinstance(code, int | str):
                        self._error_codes.append(code)
                elif "result" in item:
                    result = item["result"]
                    results.append(result)
                    if self._a2a_stream and a2a.is_terminal_event(result):
                        self._terminal = True
                else:
                    continue
                if self._pending and not self._a2a_stream:
                    self._pending.discard(item["id"])
        return results
