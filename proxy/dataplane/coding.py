"""Request body content codings: what the proxy judges is what goes up, inflated.

A body sent with ``Content-Encoding: gzip`` (or ``x-gzip``, ``deflate``) is inflated as it
is read, and the inflated bytes are judged and forwarded without the header; the limit on
the body applies to the inflated size, so a small compressed body cannot expand past it.
Any other coding, or more than one, is refused: a body the proxy cannot read is a body it
cannot judge.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

__all__ = ["CodingError", "Inflater", "UnsupportedCoding", "inflater_for"]

_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS  # zlib detects a gzip or a zlib header


class CodingError(ValueError):
    """A body in a coding the proxy does not read, or one that does not inflate."""


class UnsupportedCoding(CodingError):
    """A coding the proxy does not read."""


class Inflater:
    """Inflates pieces of a body; ``feed`` never returns more than ``limit`` bytes in all
    (``OverflowError`` past it)."""

    __slots__ = ("_d", "_left")

    def __init__(self, limit: int) -> None:
        self._d = zlib.decompressobj(_GZIP_OR_ZLIB)
        self._left = limit

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._d.decompress(data, self._left + 1)
        except zlib.error as exc:
            raise CodingError(f"body does not inflate: {exc}") from None
        self._left -= len(out)
        if self._left < 0 or self._d.unconsumed_tail:
            raise OverflowError("inflated body too large")
        return out

    def finish(self) -> bytes:
        if not self._d.eof:
            raise CodingError("compressed body ends early")
        if self._d.unused_data.strip():
            raise CodingError("data after the compressed body")
        return b""


def inflater_for(values: Iterable[str], limit: int) -> Inflater | None:
    """The inflater the ``Content-Encoding`` values ask for; None for identity (or none).
    Raises ``CodingError`` for a coding the proxy does not read."""
    codings = [c.strip().lower() for v in values for c in v.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return Inflater(limit)
    raise UnsupportedCoding("content coding not supported: " + ", ".join(codings))
