"""SSE splitting under any chunking: the same events as splitting the whole stream at once.

Issue 11, finding 10: the splitter now scans each chunk with only the last 3 bytes held
and caps an event's size; these properties pin that incremental scan to the whole-input
split (``split_events``) for arbitrary bytes cut at arbitrary points.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocols import sse
from proxy.protocols.sse import EventSplitter, split_events

# Line ends dominate, so blank lines, CRLF pairs and CRs at chunk edges are common.
_TOKENS = [b"\r", b"\n", b"\r\n", b"\r\n", b"\n\n", b"data: x", b"a", b":", b" "]
streams = st.lists(st.sampled_from(_TOKENS), max_size=60).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A stream and the chunks it arrives in (never empty chunks)."""
    data = draw(streams)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=len(data))))
    bounds = [0, *(c for c in cuts if c < len(data)), len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _is_whole(piece: bytes) -> bool:
    """Whether ``piece`` (one split_events piece) is an event with its blank line."""
    return split_events(piece + b"x")[0] == piece


def _boundaries(events: list[bytes]) -> set[int]:
    ends, at = {0}, 0
    for event in events:
        at += len(event)
        if _is_whole(event):
            ends.add(at)
    return ends


@settings(max_examples=400, deadline=None)
@given(chunked())
def test_any_chunking_splits_like_the_whole_input(case: tuple[bytes, list[bytes]]) -> None:
    data, chunks = case
    whole = split_events(data)
    boundaries = _boundaries(whole)
    splitter = EventSplitter()
    released: list[bytes] = []
    at = 0
    for chunk in chunks:
        ready = splitter.feed(chunk)
        if ready:
            released.append(ready)
            at += len(ready)
            assert at in boundaries  # every piece ends where an event ends
    assert b"".join(released) + splitter.pending == data
    events = [e for piece in released for e in split_events(piece)]
    pending = splitter.pending
    assert events + ([pending] if pending else []) == whole
    # At a clean end, what is whole is released; only a cut event stays held.
    last = splitter.finish()
    events += split_events(last)
    assert events == [e for e in whole if _is_whole(e)]
    assert splitter.pending == (whole[-1] if whole and not _is_whole(whole[-1]) else b"")


@settings(max_examples=400, deadline=None)
@given(chunked(), st.integers(1, 24))
def test_the_cap_trips_on_the_same_event_whatever_the_chunking(
    case: tuple[bytes, list[bytes]], cap: int
) -> None:
    data, chunks = case
    # The whole-input answer: the first chunk after which some event (the one still
    # arriving included) is longer than the cap.
    prefixes = [b"".join(chunks[: k + 1]) for k in range(len(chunks))]
    trips = [k for k, fed in enumerate(prefixes) if any(len(e) > cap for e in split_events(fed))]
    splitter = EventSplitter(max_event=cap)
    released = b""
    for chunk in chunks[: trips[0]] if trips else chunks:
        released += splitter.feed(chunk)
    if not trips:
        assert released + splitter.pending == data
        return
    with pytest.raises(sse.EventTooLarge) as caught:
        splitter.feed(chunks[trips[0]])
    events = split_events(prefixes[trips[0]])
    first_big = next(i for i, e in enumerate(events) if len(e) > cap)
    assert caught.value.limit == cap
    assert released + caught.value.ready == b"".join(events[:first_big])
    assert splitter.pending == b""
    with pytest.raises(sse.EventTooLarge):
        splitter.feed(b"\n\n")
