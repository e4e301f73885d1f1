"""JSON-RPC 2.0 messages as the proxy sees them: parsed once, pure, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JsonRpcId = str | int | float | None

_NO_ID: Any = object()


class DuplicateKeyError(ValueError):
    """A JSON object named one key twice: refused, never resolved differently from the upstream."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateKeyError("duplicate key in JSON object")
    return obj


_decode = json.JSONDecoder(object_pairs_hook=_no_duplicates).decode


def loads_strict(body: bytes) -> Any:
    """``json.loads`` that refuses duplicate keys; raises ``ValueError`` on any defect."""
    text = body.decode("utf-8")  # RFC 8259: JSON exchanged between systems is UTF-8
    return _decode(text)


@dataclass(frozen=True, slots=True)
class Message:
    """One element of a JSON-RPC body: a request, a notification or a response."""

    method: str | None  # None for a response (result/error) sent by the client
    id: JsonRpcId
    has_id: bool
    params: Any
    raw: dict[str, Any]  # the element as parsed, to forward a filtered batch

    @property
    def is_request(self) -> bool:
        return self.method is not None and self.has_id

    @property
    def is_notification(self) -> bool:
        return self.method is not None and not self.has_id


@dataclass(frozen=True, slots=True)
class Body:
    """A valid JSON-RPC body: one message or a batch."""

    messages: tuple[Message, ...]
    batch: bool

    @property
    def request_ids(self) -> tuple[JsonRpcId, ...]:
        return tuple(m.id for m in self.messages if m.is_request)

    @property
    def first_method(self) -> str | None:
        for m in self.messages:
            if m.method is not None:
                return m.method
        return None


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a body is not valid JSON-RPC; ``parse_error`` selects -32700 over -32600."""

    parse_error: bool
    id: JsonRpcId  # echoed when readable, else None
    detail: str


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _message(obj: Any) -> Message | Invalid:
    if not isinstance(obj, dict):
        return Invalid(False, None, "a JSON-RPC message must be an object")
    raw_id = obj.get("id", _NO_ID)
    has_id = raw_id is not _NO_ID
    if has_id and not _valid_id(raw_id):
        return Invalid(False, None, "id must be a string, a number or null")
    msg_id: JsonRpcId = raw_id if has_id else None
    if obj.get("jsonrpc") != "2.0":
        return Invalid(False, msg_id, 'jsonrpc must be "2.0"')
    method = obj.get("method", _NO_ID)
    if method is _NO_ID:
        if ("result" in obj) == ("error" in obj) or not has_id:
            return Invalid(False, msg_id, "neither a request nor a response")
        return Message(None, msg_id, True, None, obj)
    if not isinstance(method, str):
        return Invalid(False, msg_id, "method must be a string")
    params = obj.get("params")
    if params is not None and not isinstance(params, dict | list):
        return Invalid(False, msg_id, "params must be an object or an array")
    return Message(method, msg_id, has_id, params, obj)


def parse(body: bytes) -> Body | Invalid:
    """Parse a request body once: duplicates refused, batches element by element."""
    try:
        doc = loads_strict(body)
    except DuplicateKeyError:
        return Invalid(False, None, "duplicate key in JSON object")
    except (ValueError, RecursionError):
        return Invalid(True, None, "body is not valid JSON")
    if isinstance(doc, list):
        if not doc:
            return Invalid(False, None, "empty batch")
        messages: list[Message] = []
        for element in doc:
            parsed = _message(element)
            if isinstance(parsed, Invalid):
                # A batch is decided as a whole: one bad element refuses it (id null).
                return Invalid(False, None, f"batch element: {parsed.detail}")
            messages.append(parsed)
        return Body(tuple(messages), True)
    parsed = _message(doc)
    if isinstance(parsed, Invalid):
        return parsed
    return Body((parsed,), False)


def _is_response_object(obj: Any) -> bool:
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0" or "id" not in obj:
        return False
    if not _valid_id(obj["id"]):
        return False
    has_result, error = "result" in obj, obj.get("error", _NO_ID)
    if error is _NO_ID:
        return has_result
    return not has_result and is_error_object(error)


def is_error_object(error: Any) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    )


def is_response(doc: Any) -> bool:
    """A conformant JSON-RPC response: one response object or a non-empty batch of them."""
    if isinstance(doc, list):
        return bool(doc) and all(_is_response_object(item) for item in doc)
    return _is_response_object(doc)


def is_error_response(doc: Any) -> bool:
    """A conformant JSON-RPC response in which every element is an error."""
    items = doc if isinstance(doc, list) else [doc]
    return is_response(doc) and all("error" in item for item in items)


def response_ids(doc: Any) -> list[JsonRpcId]:
    """Ids answered by a JSON-RPC response or batch (responses only, not server requests)."""
    items = doc if isinstance(doc, list) else [doc]
    return [
        item["id"]
        for item in items
        if isinstance(item, dict)
        and "method" not in item
        and ("result" in item or "error" in item)
        and "id" in item
    ]
