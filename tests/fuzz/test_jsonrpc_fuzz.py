"""The JSON-RPC body reader under arbitrary input (issue 11, findings 1 and 19).

Properties: reading never raises; a body read as JSON is exactly what ``json.loads(bytes)``
(the A2A SDK, MCP's stateless transport) and, where it reads it at all, pydantic's parser
(MCP's other transports) make of it; a body passed as opaque is one no parser would read
as a JSON object or array; duplicate keys and non-finite numbers are always refused; a
batch is parsed element by element, each element as the MCP SDK's models read it.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types
import pydantic
import pydantic_core
from hypothesis import given
from hypothesis import strategies as st

from proxy.protocols import jsonrpc
from tests.fuzz.strategies import (
    CONTENT_TYPES,
    ENCODINGS,
    NON_FINITE,
    encoded,
    json_leaf_tokens,
    json_values,
    mutated,
    raw_json,
)


def _cts(content_type: str | None) -> list[str]:
    return [] if content_type is None else [content_type]


def _container(value: Any) -> bool:
    return isinstance(value, dict | list)


def _parses_to_container(parse: Any, data: Any) -> bool:
    try:
        return _container(parse(data))
    except (ValueError, RecursionError):
        return False


@given(
    json_values.flatmap(lambda doc: st.tuples(st.just(doc), encoded(doc))),
    st.sampled_from(CONTENT_TYPES),
)
def test_json_is_read_like_json_loads_in_every_encoding(
    case: tuple[Any, bytes], content_type: str | None
) -> None:
    doc, raw = case
    read = jsonrpc.read_body(raw, _cts(content_type))
    assert isinstance(read, jsonrpc.Json), (raw, read)
    assert read.value == json.loads(raw) == doc
    if not raw.startswith(b"\xef\xbb\xbf") and jsonrpc.detect_encoding(raw) == "utf-8":
        assert read.value == pydantic_core.from_json(raw)


bodies = st.one_of(
    st.binary(max_size=64),
    json_values.flatmap(encoded).flatmap(mutated),
    raw_json(json_leaf_tokens | st.sampled_from(NON_FINITE), st.sampled_from(["a", "b", "id"]))
    .map(str.encode)
    .flatmap(mutated),
)


@given(bodies, st.sampled_from(CONTENT_TYPES))
def test_any_bytes_are_read_exactly_or_refused_never_raise(
    raw: bytes, content_type: str | None
) -> None:
    read = jsonrpc.read_body(raw, _cts(content_type))
    parsed = jsonrpc.parse(raw)  # never raises either
    if isinstance(read, jsonrpc.Json):
        assert read.value == json.loads(raw)  # judged exactly as the upstream parses it
        assert not isinstance(parsed, jsonrpc.Invalid) or not parsed.parse_error
    elif read is None:  # opaque: no parser reads a JSON object or array from it
        assert not jsonrpc.loads_like_stdlib(raw)
        assert not _parses_to_container(pydantic_core.from_json, raw)
        for encoding in ENCODINGS:
            try:
                text = raw.decode(encoding).lstrip("\ufeff")
            except ValueError:
                continue
            assert not _parses_to_container(json.loads, text), encoding
    else:
        assert isinstance(read, jsonrpc.Invalid)


def _has_duplicates(text: str) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return found


@given(
    raw_json(json_leaf_tokens, st.sampled_from(["a", "b", "jsonrpc"])), st.sampled_from(ENCODINGS)
)
def test_duplicate_keys_anywhere_are_refused(text: str, encoding: str) -> None:
    raw = text.encode(encoding)
    read = jsonrpc.read_body(raw, ["application/json"])
    if _has_duplicates(text):
        assert isinstance(read, jsonrpc.Invalid)
        assert not read.parse_error
        assert "duplicate" in read.detail
    else:
        assert isinstance(read, jsonrpc.Json)
        assert read.value == json.loads(text)


@given(
    raw_json(json_leaf_tokens | st.sampled_from(NON_FINITE), st.text(max_size=4)),
    st.sampled_from(NON_FINITE),
    st.sampled_from(ENCODINGS),
)
def test_non_finite_numbers_are_refused_wherever_they_are(
    text: str, token: str, encoding: str
) -> None:
    doc = f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"x":[{text},{token}]}}}}'
    raw = doc.encode(encoding)
    json.loads(raw)  # the standard library takes it
    read = jsonrpc.read_body(raw, ["application/json"])
    assert isinstance(read, jsonrpc.Invalid)
    assert read.parse_error or "duplicate" in read.detail


# --- batches, element by element, against the MCP SDK's envelope models ---------------

ids = st.one_of(
    st.integers(-(2**63), 2**63),
    st.text(max_size=5),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
methods = st.sampled_from(["tools/call", "ping", "notifications/initialized", "x"]) | st.text(
    max_size=6
)
params = (
    st.none()
    | st.dictionaries(st.text(max_size=5), json_values, max_size=3)
    | st.lists(json_values, max_size=2)
    | st.integers()
)


@st.composite
def elements(draw: st.DrawFn) -> Any:
    """Something like a JSON-RPC message: any subset of its members, sometimes wrong."""
    if draw(st.integers(0, 20)) == 0:
        return draw(json_values)
    element: dict[str, Any] = {}
    if draw(st.integers(0, 10)) > 0:
        element["jsonrpc"] = "2.0" if draw(st.integers(0, 10)) > 0 else "1.0"
    if draw(st.booleans()):
        element["id"] = draw(ids)
    shape = draw(st.sampled_from(["request", "request", "result", "error", "both"]))
    if shape == "request":
        element["method"] = draw(methods | st.integers())
        params_value = draw(params)
        if params_value is not None or draw(st.booleans()):
            element["params"] = params_value
    if shape in ("result", "both"):
        element["result"] = draw(json_values)
    if shape in ("error", "both"):
        element["error"] = {
            "code": draw(st.integers(-32768, 0)),
            "message": draw(st.text(max_size=4)),
        }
    return element


def _mcp(element: Any) -> Any:
    try:
        return mcp_types.jsonrpc_message_adapter.validate_python(element, by_name=False)
    except pydantic.ValidationError:
        return None


def _same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@given(st.lists(elements(), min_size=1, max_size=5), st.booleans(), st.sampled_from(ENCODINGS))
def test_a_batch_is_parsed_element_by_element(
    batch: list[Any], as_batch: bool, encoding: str
) -> None:
    doc: Any = batch if as_batch or len(batch) > 1 else batch[0]
    raw = json.dumps(doc).encode(encoding)
    parsed = jsonrpc.parse(raw)
    items = doc if isinstance(doc, list) else [doc]
    if isinstance(parsed, jsonrpc.Invalid):
        assert not parsed.parse_error
        return
    assert parsed.batch is isinstance(doc, list)
    assert len(parsed.messages) == len(items)
    for message, element in zip(parsed.messages, items, strict=True):
        assert message.raw == element
        assert message.method == element.get("method")
        assert message.params == element.get("params")
        assert message.has_id is ("id" in element)
        ref = _mcp(element)
        if isinstance(ref, mcp_types.JSONRPCRequest):
            assert message.is_request
            assert (message.method, message.params) == (ref.method, ref.params)
            assert _same_id(message.id, ref.id)
        elif isinstance(ref, mcp_types.JSONRPCNotification):
            # A request whose id MCP cannot take (a float) is a notification to the SDK;
            # the proxy still counts it as a request: never fewer calls than the upstream.
            assert message.method == ref.method
            assert message.params == ref.params


@given(st.lists(elements(), min_size=1, max_size=4))
def test_every_element_the_mcp_sdk_takes_the_proxy_takes(batch: list[Any]) -> None:
    """No element the MCP SDK would run is lost from a batch the proxy refuses silently:
    a request or notification the SDK reads is a valid element for the proxy too, unless
    its id is one the proxy refuses outright (a boolean), or it mixes result and error."""
    for element in batch:
        ref = _mcp(element)
        if not isinstance(ref, mcp_types.JSONRPCRequest | mcp_types.JSONRPCNotification):
            continue
        if isinstance(element.get("id"), bool | dict | list):
            continue
        parsed = jsonrpc.parse(json.dumps(element).encode())
        assert isinstance(parsed, jsonrpc.Body), (element, parsed)
        assert parsed.messages[0].method == ref.method


CHARSETS = ["utf-8", "UTF8", "utf-16", "utf-16le", "utf-16be", "utf-32", "latin-1", "us-ascii"]
CHARSETS += ["utf-7", "cp037", "x-bogus", "base64"]


@given(
    json_values.flatmap(lambda doc: st.tuples(st.just(doc), encoded(doc))),
    st.sampled_from(CHARSETS),
    st.sampled_from(["application/json", "text/plain"]),
)
def test_a_declared_charset_reads_the_judged_text_or_the_body_is_refused(
    case: tuple[Any, bytes], charset: str, media_type: str
) -> None:
    """A server honouring the charset (not `json.loads(bytes)`) reads the text judged."""
    doc, raw = case
    read = jsonrpc.read_body(raw, [f"{media_type}; charset={charset}"])
    assert read is not None  # JSON is never opaque
    if isinstance(read, jsonrpc.Json):
        assert read.value == doc
        text = raw.decode(charset).removeprefix("\ufeff")
        assert json.loads(text) == doc
    else:
        assert read.unsupported
