"""The request line (see proxy/line/requestline.py for the map of its steps)."""

from proxy.line.requestline import RequestLine

__all__ = ["RequestLine"]
