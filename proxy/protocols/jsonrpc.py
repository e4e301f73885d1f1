"""JSON-RPC 2.0 messages as the proxy sees them: parsed once, pure, no I/O.

How a POST body is read (issue 11, findings 1 and 19). The proxy forwards the bytes it
received, so it must read them exactly as the upstream will, or refuse them: fail closed.

1. Encoding, as ``json.loads(bytes)`` detects it (``json.detect_encoding``; the A2A SDK
   and MCP's stateless transport call ``json.loads`` on the raw body, whatever the
   Content-Type; MCP's other transports use pydantic's parser, which reads only UTF-8
   without a BOM, a subset): UTF-8 with or without a BOM, UTF-16 and UTF-32 with a BOM
   or by the pattern of NUL bytes. The body is decoded strictly: invalid sequences and lone
   surrogates, which ``json.loads`` lets through ('surrogatepass'), are refused (-32700).
2. JSON, as ``json.loads`` reads it, but stricter: a duplicate key anywhere is refused
   (-32600, parsers disagree on which copy wins), and so are ``NaN``, ``Infinity``,
   ``-Infinity`` and numbers that overflow to infinity such as ``1e400`` (-32700; they are
   not JSON). Integers of any size (below ``json``'s digit limit) stay exact.
3. A body that parses is judged as JSON whatever its Content-Type says. A declared
   ``charset`` must decode the body to the same text (a leading BOM aside); if it does
   not, or Python does not know it, the body is refused 415 (``Invalid.unsupported``):
   a server that honours the charset would read something else. (Content codings are
   not this module's: the forwarder inflates a gzip or deflate body as it reads it,
   refuses any other coding, and sends the inflated bytes up without
   ``Content-Encoding``: proxy/dataplane/coding.py.)
4. A body that does not parse passes as opaque (unjudged) only when it is clearly not
   JSON: no declared JSON Content-Type, plain ``json.loads(bytes)`` refuses it too, and
   in none of the encodings a server might pick (the detected one, UTF-8, UTF-16 LE/BE,
   UTF-32 LE/BE, the declared charset) does its first significant character, after any
   whitespace, control characters and BOMs, open an object or an array; a declared
   charset Python cannot decode rules nothing out. Everything else is refused: -32700,
   or 415 when its declared charset disagrees with its bytes.
   An empty body reads as opaque; callers decide what an empty JSON body means.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

JsonRpcId = str | int | float | None

_NO_ID: Any = object()


class DuplicateKeyError(ValueError):
    """A JSON object named one key twice: refused, never resolved differently from the upstream."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateKeyError("duplicate key in JSON object")
    return obj


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_float=_finite_float, parse_constant=_no_constant
).decode


def detect_encoding(body: bytes) -> str:
    """The encoding ``json.loads(bytes)`` reads ``body`` in (CPython's own detection)."""
    return json.detect_encoding(body)


def decode_text(body: bytes) -> str:
    """``body`` as text, in the encoding ``json.loads`` detects; strict (raises ValueError)."""
    return body.decode(detect_encoding(body))


def loads_strict(body: bytes) -> Any:
    """``json.loads(body)`` as the upstream runs it, minus what it should never accept.

    Raises ``DuplicateKeyError`` for a repeated key and ``ValueError`` (or
    ``RecursionError``) for anything else: invalid encoding, non-finite numbers, bad JSON.
    """
    return _decode(decode_text(body))


def loads_like_stdlib(body: bytes) -> bool:
    """True when plain ``json.loads(body)`` accepts ``body`` (what the A2A SDK runs)."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


# --- what a body is: JSON, refused, or opaque -----------------------------------------

# Characters no JSON parser reads as a value but one might skip: whitespace of every
# kind, C0 controls, DEL, BOMs (and a byte-swapped one), zero-width characters.
_SKIP: Final = (
    "".join(
        chr(c)
        for c in range(0x3000 + 1)
        if chr(c).isspace() or c < 0x20 or c == 0x7F or c in (0x200B, 0x200C, 0x200D, 0x2060)
    )
    + "\ufeff\ufffe"
)
_SNIFF_CHUNK: Final = 4096
# Encodings a server might read a body in, besides the detected one and a declared one.
_SNIFF_ENCODINGS: Final = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")


def _is_text_codec(name: str) -> bool:
    try:
        b"".decode(name)  # LookupError for unknown and bytes-to-bytes codecs (base64, zlib)
    except (LookupError, ValueError):
        return False
    return True


def _opens_structure(body: bytes, encoding: str) -> bool:
    """Does ``body``, read in ``encoding``, start (after skippable characters) with { or [?"""
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    size = len(body)
    for start in range(0, size, _SNIFF_CHUNK):
        end = start + _SNIFF_CHUNK
        try:
            text = decoder.decode(body[start:end], final=end >= size)
        except (ValueError, TypeError):
            return True  # a codec that cannot even read it leniently: assume the worst
        stripped = text.lstrip(_SKIP)
        if stripped:
            return stripped[0] in "{["
    return False


def might_be_json(body: bytes, charsets: Iterable[str] = ()) -> bool:
    """True unless ``body`` is clearly not a JSON object or array in any encoding a server
    might read it in (the detected one, UTF-8/16/32, each declared charset). A declared
    charset Python cannot decode counts as "might be": it cannot be ruled out."""
    encodings = dict.fromkeys((detect_encoding(body), *_SNIFF_ENCODINGS))
    for charset in charsets:
        if not _is_text_codec(charset):
            return True
        encodings[charset] = None
    return any(_opens_structure(body, encoding) for encoding in encodings)


def charset_of(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type value, unquoted; None when absent or
    empty (a server falls back to its default then)."""
    for param in content_type.split(";")[1:]:
        key, sep, value = param.partition("=")
        if sep and key.strip().lower() == "charset":
            return value.strip().strip('"').strip() or None
    return None


def _charset_agrees(body: bytes, text: str, detected: str, charset: str) -> bool:
    """Does a server that honours ``charset`` read the text the proxy judged?"""
    try:
        declared = codecs.lookup(charset).name
        if declared == codecs.lookup(detected).name or (
            declared == "utf-8" and detected == "utf-8-sig"
        ):
            return True
        other = body.decode(charset)
    except (LookupError, ValueError):
        return False
    return other.removeprefix("\ufeff") == text.removeprefix("\ufeff")


@dataclass(frozen=True, slots=True)
class Json:
    """A body read as JSON: ``value`` is the document (any JSON value)."""

    value: Any


def read_body(body: bytes, content_types: Sequence[str] = ()) -> Json | Invalid | None:
    """Read a POST body (as it goes up) as the upstream would (see the module docstring).

    ``content_types`` are every value of the Content-Type header. Returns the JSON
    document, an ``Invalid`` to refuse (``unsupported`` means 415, ``parse_error`` -32700,
    else -32600), or None: not JSON, forwarded unjudged.
    """
    if not body:
        return None
    charsets = [c for c in map(charset_of, content_types) if c is not None]
    detected = detect_encoding(body)
    failure: Invalid | None = None
    doc: Any = None
    try:
        doc = loads_strict(body)
    except DuplicateKeyError:
        failure = Invalid(False, None, "duplicate key in JSON object")
    except (ValueError, RecursionError):
        failure = Invalid(True, None, "body is not valid JSON")
    if failure is None:
        if not charsets:
            return Json(doc)
        text = decode_text(body)
        if all(_charset_agrees(body, text, detected, c) for c in charsets):
            return Json(doc)
        return Invalid(False, None, "charset does not match the body", unsupported=True)
    declared_json = any(is_json_type(c) for c in content_types)
    if not (declared_json or might_be_json(body, charsets) or loads_like_stdlib(body)):
        return None  # clearly not JSON: opaque
    if charsets:
        text = body.decode(detected, "replace")
        if not all(_charset_agrees(body, text, detected, c) for c in charsets):
            return Invalid(False, None, "charset does not match the body", unsupported=True)
    return failure


_JSON_TYPES: Final = ("application/json", "application/a2a+json", "application/json-rpc")


def is_json_type(content_type: str) -> bool:
    """A JSON media type (``application/json``, ``application/a2a+json``, ``*+json``...)."""
    base = content_type.partition(";")[0].strip().lower()
    return base in _JSON_TYPES or base.endswith("+json")


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
    """Why a body is refused: ``unsupported`` means 415 (a charset or content coding the
    proxy cannot read as the upstream would), else ``parse_error`` selects -32700 over
    -32600 (invalid request)."""

    parse_error: bool
    id: JsonRpcId  # echoed when readable, else None
    detail: str
    unsupported: bool = False


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
    return parse_doc(doc)


def parse_doc(doc: Any) -> Body | Invalid:
    """A parsed JSON document as JSON-RPC: one message or a batch, element by element."""
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
