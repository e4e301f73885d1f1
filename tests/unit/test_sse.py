"""SSE splitting at event boundaries, whatever the chunking."""

from __future__ import annotations

import pytest

from proxy.protocols.sse import EventSplitter, event_data

STREAM = b'event: message\ndata: {"a":1}\n\nid: 2\ndata: x\ndata: y\n\n: comment\n\ndata:z\n\n'


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64, 1000])
def test_any_chunking_yields_the_same_bytes_at_event_boundaries(size: int) -> None:
    splitter = EventSplitter()
    out: list[bytes] = []
    for i in range(0, len(STREAM), size):
        ready = splitter.feed(STREAM[i : i + size])
        if ready:
            assert ready.endswith(b"\n\n")
            out.append(ready)
    assert b"".join(out) == STREAM
    assert splitter.pending == b""


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings(eol: bytes) -> None:
    stream = b"data: one" + eol + eol + b"data: two" + eol + eol
    splitter = EventSplitter()
    got = b"".join(splitter.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert got + splitter.pending == stream
    assert list(event_data(got + splitter.pending)) == ["one", "two"]


def test_crlf_is_one_line_end_not_two() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\ndata: b\r\n") == b""
    assert splitter.feed(b"\r\n") == b"data: a\r\ndata: b\r\n\r\n"


def test_partial_event_is_held() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'data: {"x":1}\n\ndata: {"y"') == b'data: {"x":1}\n\n'
    assert splitter.pending == b'data: {"y"'


def test_event_data_joins_lines_and_skips_comments() -> None:
    assert list(event_data(STREAM)) == ['{"a":1}', "x\ny", "z"]
