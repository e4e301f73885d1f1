"""JSON-RPC parsing: once, strictly, element by element."""

from __future__ import annotations

import pytest

from proxy.protocols import jsonrpc
from proxy.protocols.jsonrpc import Body, Invalid


def parse_ok(body: bytes) -> Body:
    parsed = jsonrpc.parse(body)
    assert isinstance(parsed, Body), parsed
    return parsed


def parse_bad(body: bytes) -> Invalid:
    parsed = jsonrpc.parse(body)
    assert isinstance(parsed, Invalid), parsed
    return parsed


def test_request_notification_and_response() -> None:
    req = parse_ok(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t"}}')
    assert not req.batch
    (msg,) = req.messages
    assert (msg.method, msg.id, msg.has_id, msg.is_request) == ("tools/call", 3, True, True)
    assert msg.params == {"name": "t"}
    note = parse_ok(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert note.messages[0].is_notification
    assert note.request_ids == ()
    resp = parse_ok(b'{"jsonrpc":"2.0","id":"s1","result":{}}')
    assert resp.messages[0].method is None
    assert resp.request_ids == ()


@pytest.mark.parametrize("rid", ['"abc"', "0", "-5", "1.5", "null", "12345678901234567890"])
def test_ids_keep_their_type(rid: str) -> None:
    import json

    body = parse_ok(f'{{"jsonrpc":"2.0","id":{rid},"method":"ping"}}'.encode())
    assert body.request_ids == (json.loads(rid),)
    assert type(body.request_ids[0]) is type(json.loads(rid))


def test_batch_is_parsed_element_by_element() -> None:
    body = parse_ok(
        b'[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"},'
        b'{"jsonrpc":"2.0","id":2,"method":"c"}]'
    )
    assert body.batch
    assert body.request_ids == (1, 2)
    assert body.first_method == "a"


@pytest.mark.parametrize(
    ("body", "parse_error", "rid"),
    [
        (b"{", True, None),
        (b"", True, None),
        (b"\xff\xfe", True, None),
        (b"[]", False, None),
        (b"42", False, None),
        (b'"x"', False, None),
        (b'{"jsonrpc":"1.0","id":4,"method":"a"}', False, 4),
        (b'{"id":4,"method":"a"}', False, 4),
        (b'{"jsonrpc":"2.0","id":4,"method":7}', False, 4),
        (b'{"jsonrpc":"2.0","id":{},"method":"a"}', False, None),
        (b'{"jsonrpc":"2.0","id":true,"method":"a"}', False, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"a","params":"s"}', False, 1),
        (b'{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}', False, None),
        (b'{"jsonrpc":"2.0","id":1,"method":"a","params":{"x":1,"x":2}}', False, None),
        (b'[{"jsonrpc":"2.0","id":1,"method":"a"}, 5]', False, None),
        (b'{"jsonrpc":"2.0","id":1}', False, 1),
        (b'{"jsonrpc":"2.0","id":1,"result":1,"error":{}}', False, 1),
        (b"[" * 100000, True, None),
    ],
)
def test_invalid_bodies(body: bytes, parse_error: bool, rid: object) -> None:
    bad = parse_bad(body)
    assert bad.parse_error is parse_error
    assert bad.id == rid


@pytest.mark.parametrize(
    ("doc", "ok"),
    [
        ({"jsonrpc": "2.0", "id": 1, "result": None}, True),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "x"}}, True),
        ([{"jsonrpc": "2.0", "id": 1, "result": 1}], True),
        ([], False),
        ({"jsonrpc": "2.0", "id": 1}, False),
        ({"jsonrpc": "2.0", "result": 1}, False),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}, False),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": True, "message": "m"}}, False),
        ({"id": 1, "result": 1}, False),
        ({"hello": "world"}, False),
    ],
)
def test_is_response(doc: object, ok: bool) -> None:
    assert jsonrpc.is_response(doc) is ok


def test_error_response() -> None:
    err = {"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m"}}
    assert jsonrpc.is_error_response(err)
    assert not jsonrpc.is_error_response({"jsonrpc": "2.0", "id": 1, "result": 1})
