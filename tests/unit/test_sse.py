"""SSE splitting at event boundaries, whatever the chunking."""

from __future__ import annotations

import re
import tracemalloc
from typing import Any

import pytest

from proxy.protocols import sse
from proxy.protocols.sse import EventSplitter, event_data, split_events

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


# --- issue 11, finding 10: an unterminated event ----------------------------------------
# New names are read off the module inside each test, so on the old code each new test
# fails on its own (AttributeError) rather than the whole file failing to import.

KIB = 1024
UNTERMINATED = [b"data: " + b"x" * (KIB - 6)] + [b"x" * KIB] * 2047  # 2 MiB, no blank line


class _RecordingPattern:
    """The event-end pattern, noting the length of every buffer handed to it."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.sizes: list[int] = []

    def finditer(self, string: bytes, *args: Any) -> Any:
        self.sizes.append(len(string))
        return self.pattern.finditer(string, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


def test_each_chunk_is_scanned_with_only_the_last_bytes_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 10 (MED): an event with no blank line was re-copied with every chunk
    (pending + chunk) and that whole buffer handed to the scanner: quadratic, 200 MiB took
    132 s. Each chunk must now be scanned with at most the 3 bytes held before it, so the
    work over N chunks is O(total bytes)."""
    recorder = _RecordingPattern(sse._EVENT_END)
    monkeypatch.setattr(sse, "_EVENT_END", recorder)
    splitter = EventSplitter()
    for chunk in UNTERMINATED:
        assert splitter.feed(chunk) == b""
    total = sum(map(len, UNTERMINATED))
    assert len(recorder.sizes) == len(UNTERMINATED)
    assert max(recorder.sizes) <= KIB + 3
    assert sum(recorder.sizes) <= total + 3 * len(UNTERMINATED)
    assert splitter.pending == b"".join(UNTERMINATED)


def test_a_held_event_is_kept_as_its_chunks_not_copied_per_chunk() -> None:
    """Finding 10 (MED): holding an unterminated event built a new copy of it per chunk
    (peak memory twice the event, bytes copied quadratic). Held chunks are now kept as they
    came: feeding 2 MiB allocates a small fraction of that."""
    total = sum(map(len, UNTERMINATED))
    splitter = EventSplitter()
    tracemalloc.start()
    try:
        for chunk in UNTERMINATED:
            splitter.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < total // 8
    assert splitter.pending == b"".join(UNTERMINATED)


def test_the_default_cap_admits_a_large_tool_result() -> None:
    """Finding 10 (MED): an event now has a cap (default MAX_EVENT_BYTES, 8 MiB); an event
    of several MiB (a tool result carrying a file) still goes through whole."""
    assert sse.MAX_EVENT_BYTES == 8 * 1024 * 1024
    splitter = sse.EventSplitter()
    assert splitter.max_event == sse.MAX_EVENT_BYTES
    event = b"data: " + b"r" * (6 * 1024 * 1024) + b"\n\n"
    out = [splitter.feed(event[i : i + 64 * KIB]) for i in range(0, len(event), 64 * KIB)]
    assert b"".join(out) == event
    assert out[-1] == event
    assert splitter.pending == b""


def test_an_unterminated_event_past_the_cap_ends_the_stream() -> None:
    """Finding 10 (MED): an unterminated event grew without bound. Past ``max_event`` bytes
    ``feed`` raises EventTooLarge (a ValueError) so the forwarder can end the stream with
    its error event; what was held is dropped, and later chunks raise too."""
    splitter = sse.EventSplitter(max_event=64)
    assert splitter.feed(b"data: ok\n\n" + b"data: ") == b"data: ok\n\n"
    assert splitter.feed(b"y" * 58) == b""  # 64 bytes held: at the cap, not past it
    with pytest.raises(sse.EventTooLarge) as caught:
        splitter.feed(b"y")
    assert isinstance(caught.value, ValueError)
    assert caught.value.limit == 64
    assert caught.value.ready == b""
    assert splitter.pending == b""
    with pytest.raises(sse.EventTooLarge):
        splitter.feed(b"\n\n")


def test_events_before_the_oversized_one_come_with_the_error() -> None:
    """Finding 10 (MED): whole events in the chunk that also overflows are handed back on
    the exception (``ready``), to be forwarded before the error event."""
    splitter = sse.EventSplitter(max_event=32)
    assert splitter.feed(b"data: a") == b""
    with pytest.raises(sse.EventTooLarge) as caught:
        splitter.feed(b"\n\ndata: b\n\n" + b"data: " + b"z" * 40)
    assert caught.value.ready == b"data: a\n\ndata: b\n\n"


def test_a_whole_event_past_the_cap_is_refused_however_it_arrives() -> None:
    """Finding 10 (MED): the cap is per event, not per chunk: an oversized event that
    arrives whole in one chunk is refused like one held across many."""
    event = b"data: " + b"w" * 100 + b"\n\n"
    for size in (len(event), 7):
        splitter = sse.EventSplitter(max_event=100)
        with pytest.raises(sse.EventTooLarge):  # noqa: PT012
            for i in range(0, len(event), size):
                splitter.feed(event[i : i + size])
    assert sse.EventSplitter(max_event=len(event)).feed(event) == event


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        sse.EventSplitter(max_event=0)


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        ([b"data: a\n\r", b"\ndata: b\n\n"], [b"data: a\n\r\n", b"data: b\n\n"]),
        ([b"data: a\r\r", b"\n\n"], [b"data: a\r\r\n"]),
        ([b"data: a\r\n\r", b"\n"], [b"data: a\r\n\r\n"]),
    ],
)
def test_a_cr_ending_a_chunk_waits_for_a_possible_lf(
    chunks: list[bytes], events: list[bytes]
) -> None:
    """Finding 10 (MED), with the incremental scan: CRLF is one terminator, never CR then
    LF. A blank line whose CR ends a chunk is not released until the next byte shows
    whether an LF follows; the old splitter released it and took the LF for a new line."""
    splitter = EventSplitter()
    got = [splitter.feed(chunk) for chunk in chunks]
    assert got[0] == b""
    assert split_events(b"".join(got)) == events
    whole = b"".join(chunks)
    assert [*events, *([splitter.pending] if splitter.pending else [])] == split_events(whole)


def test_finish_releases_an_event_ended_by_cr_at_the_end_of_the_stream() -> None:
    """Finding 10 (MED), with the incremental scan: a CR-only stream's event is held until
    the next byte; at a clean end ``finish`` releases it, while a cut event stays held."""
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\r") == b""
    assert splitter.feed(b"data: b\r\r") == b"data: a\r\r"
    assert splitter.finish() == b"data: b\r\r"
    assert splitter.pending == b""
    assert splitter.finish() == b""
    cut = EventSplitter()
    assert cut.feed(b"data: c\r") == b""
    assert cut.finish() == b""
    assert cut.pending == b"data: c\r"
