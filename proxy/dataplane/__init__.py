"""The data plane: the proxy's own HTTP/1.1 machinery on llhttp (httptools)."""

from proxy.dataplane.upstream import (
    UpstreamConnectTimeout,
    UpstreamCut,
    UpstreamError,
    UpstreamPool,
    UpstreamReadTimeout,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "UpstreamConnectTimeout",
    "UpstreamCut",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamReadTimeout",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]
