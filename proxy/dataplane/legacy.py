"""MCP 2024-11-05 HTTP+SSE: the message endpoints named by event streams this process
relays. A stream's first ``endpoint`` event names where its session's POSTs go; those
POSTs are judged in that session, and their answers travel on the stream."""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from proxy.dataplane.flight import Stream
from proxy.gate import Admission, LegacySession
from proxy.protocols import jsonrpc

__all__ = ["LegacyEndpoints", "LegacyStream"]


@dataclass(slots=True)
class LegacyStream:
    """An MCP 2024-11-05 event stream this process relays: where its POSTs' answers go."""

    session: LegacySession
    out: Stream
    tools_lists: dict[jsonrpc.JsonRpcId, Admission]  # pending tools/list ids -> their caller
    remembers: Admission | None = None  # who asked last: input_required states bind to it


class LegacyEndpoints:
    """Message endpoint (path?query) -> its stream, and the bare paths they live under."""

    __slots__ = ("_base", "_base_path", "_origin", "_paths", "_public_url", "_streams")

    def __init__(self, base: str, public_url: str | None) -> None:
        self._base = base
        self._base_path = URL(base).raw_path.rstrip("/")
        self._origin = URL(base).origin()
        self._public_url = public_url
        self._streams: dict[str, LegacyStream] = {}
        self._paths: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._paths)

    def find(self, target: str, path: str) -> tuple[LegacyStream | None, bool]:
        """The stream a POST to ``target`` belongs to, and whether the path is at or under
        a message endpoint this process knows (servers mount the endpoint as a prefix)."""
        stream = self._streams.get(target)
        if stream is not None:
            return stream, True
        return None, any(path.startswith(bare) for bare in self._paths)

    def endpoint(self, data: str, stream_target: str) -> tuple[str, str] | None:
        """An ``endpoint`` event's data, read against the stream's own URL: (the endpoint
        as the client should see it, the proxy path?query it names); None when it names
        no endpoint of this upstream."""
        try:
            sent = URL(data.strip(), encoded=True)
            target = URL(self._base + stream_target, encoded=True).join(sent)
        except ValueError:
            return None  # not a URL: no endpoint, so no POST to it will be judged as one
        if target.origin() != self._origin:
            return None  # another server's endpoint: not ours to judge
        path = target.raw_path
        if self._base_path and path.startswith(self._base_path + "/"):
            path = path[len(self._base_path) :]
        key = path + (f"?{target.raw_query_string}" if target.raw_query_string else "")
        if not sent.is_absolute():
            return data.strip(), key
        if self._public_url is not None:
            return str(self._public_url).rstrip("/") + key, key
        return key, key

    def register(self, key: str, stream: LegacyStream) -> None:
        self._streams[key] = stream
        bare = key.partition("?")[0]
        self._paths[bare] = self._paths.get(bare, 0) + 1

    def forget(self, stream: LegacyStream) -> None:
        """The stream ended: its endpoints name nothing any more."""
        for key, known in list(self._streams.items()):
            if known is stream:
                del self._streams[key]
                bare = key.partition("?")[0]
                left = self._paths.get(bare, 1) - 1
                if left > 0:
                    self._paths[bare] = left
                else:
                    self._paths.pop(bare, None)
