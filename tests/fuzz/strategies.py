"""Hypothesis strategies shared by the JSON-RPC and classification fuzz tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Every encoding `json.loads(bytes)` detects, with and without a BOM.
ENCODINGS = [
    "utf-8",
    "utf-8-sig",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-32-be",
]
# Content types that do not name a charset: the body must be read whatever they say.
CONTENT_TYPES: list[str | None] = [
    None,
    "application/json",
    "application/a2a+json",
    "text/plain",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def encoded(draw: st.DrawFn, doc: Any) -> bytes:
    """``doc`` serialized the way some client might: any detected encoding, ASCII or not,
    compact or indented, with JSON whitespace around it."""
    text = json.dumps(
        doc,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 0, 2])),
    )
    text = (
        draw(st.sampled_from(["", " ", "\n", "\r\n\t "])) + text + draw(st.sampled_from(["", "\n"]))
    )
    return text.encode(draw(st.sampled_from(ENCODINGS)))


# --- JSON text with control over what json.dumps cannot write ---------------------------


def _dump_key(key: str) -> str:
    return json.dumps(key)


def raw_json(
    leaves: st.SearchStrategy[str], keys: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    """JSON text built from raw leaf tokens, objects written pair by pair (keys may repeat)."""

    def objects(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        pairs = st.lists(st.tuples(keys, inner), max_size=4)
        return pairs.map(lambda ps: "{" + ",".join(f"{_dump_key(k)}:{v}" for k, v in ps) + "}")

    def arrays(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.lists(inner, max_size=4).map(lambda vs: "[" + ",".join(vs) + "]")

    return st.recursive(leaves, lambda inner: objects(inner) | arrays(inner), max_leaves=10)


json_leaf_tokens = scalars.map(json.dumps)
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1E+309", "123456789e305"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few byte-level edits and odd prefixes (BOMs, NULs, whitespace)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        at = draw(st.integers(0, len(out)))
        if op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif out and at < len(out):
            if op == "delete":
                del out[at]
            else:
                out[at] = draw(st.integers(0, 255))
    prefix = draw(
        st.sampled_from(
            [b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b" \x0c", b"\xef\xbb\xbf" * 2]
        )
    )
    return prefix + bytes(out)
