"""Record: the bounded labels a request is counted under (metrics, traces)."""

from __future__ import annotations

from proxy.metrics import HTTP_METHODS, OTHER
from proxy.protocols import a2a, mcp
from proxy.protocols.classify import Classified

__all__ = ["http_label", "method_label"]


def http_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER


def method_label(info: Classified, http_method: str) -> str:
    """A bounded label: a known JSON-RPC method or A2A operation, else the HTTP method."""
    if info.rest is not None:
        return info.rest.op.name
    if info.body is not None:
        method = info.body.first_method
        if method is not None and (method in mcp.METHODS or a2a.op_for_method(method)):
            return method
        return OTHER
    return http_label(http_method)
