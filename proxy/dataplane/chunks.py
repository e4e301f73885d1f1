"""What both directions' body buffers share: how much is held before reading pauses, and
how buffered pieces are handed out."""

from __future__ import annotations

from collections import deque

__all__ = ["HIGH_WATER", "LOW_WATER", "READ_CHUNK", "take_joined"]

HIGH_WATER = 256 * 1024  # buffered body above which the socket stops being read
LOW_WATER = 64 * 1024  # ... and below which it is read again
READ_CHUNK = 64 * 1024  # a read joins buffered pieces up to about this size


def take_joined(chunks: deque[bytes], limit: int = READ_CHUNK) -> bytes:
    """The oldest buffered piece, joined with the ones after it while the whole stays
    within ``limit`` (one larger piece is handed out alone)."""
    data = chunks.popleft()
    if not chunks or len(data) + len(chunks[0]) > limit:
        return data
    parts = [data]
    size = len(data)
    while chunks and size + len(chunks[0]) <= limit:
        piece = chunks.popleft()
        parts.append(piece)
        size += len(piece)
    return b"".join(parts)
