"""What a relayed stream owes, whatever its events hold."""

from __future__ import annotations

from proxy.protocols.events import StreamWatch


def test_mcp_stream_is_complete_once_every_id_is_answered() -> None:
    watch = StreamWatch({1, "b"}, jsonrpc_binding=True, a2a_stream=False)
    watch.feed(b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n')
    assert not watch.complete
    results = watch.feed(b'data: {"jsonrpc":"2.0","id":1,"result":{"x":1}}\n\n')
    assert results == [{"x": 1}]
    assert watch.pending == ("b",)
    watch.feed(b'data: {"jsonrpc":"2.0","id":"b","error":{"code":-32601,"message":"m"}}\n\n')
    assert watch.complete
    assert watch.take_error_codes() == [-32601]
    assert watch.take_error_codes() == []


def test_a2a_stream_is_complete_only_at_its_terminal_event() -> None:
    watch = StreamWatch({7}, jsonrpc_binding=True, a2a_stream=True)
    working = b'{"taskId":"t","contextId":"c","status":{"state":"TASK_STATE_WORKING"}}'
    watch.feed(b'data: {"jsonrpc":"2.0","id":7,"result":{"statusUpdate":' + working + b"}}\n\n")
    assert not watch.complete
    watch.feed(b'data: {"jsonrpc":"2.0","id":7,"result":{"kind":"status-update","final":true}}\n\n')
    assert watch.complete


def test_garbage_and_absurd_nesting_are_relayed_not_judged() -> None:
    watch = StreamWatch({1}, jsonrpc_binding=True, a2a_stream=False)
    deep = b"data: " + b"[" * 200_000 + b"\n\n"
    assert watch.feed(deep + b"data: not json\n\n") == []
    assert not watch.complete
