"""What both listeners share: the connection cap that fits the open-file limit, and the
``Server`` header of answers the proxy makes itself (never a library and its version).

The data plane's listener is proxy/dataplane/server.py; the admin listener is aiohttp.
"""

from __future__ import annotations

import resource

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

# File descriptors kept free for the upstream pool, the admin listener, the store, logs.
FD_HEADROOM = 128
BANNER = "agent-warden"


def connection_cap(wanted: int, upstream_pool: int) -> int:
    """``wanted`` client connections, lowered so that they, the upstream pool and some
    headroom fit the soft open-file limit."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - upstream_pool - FD_HEADROOM))


async def no_banner(_: web.Request, response: web.StreamResponse) -> None:
    """No version banner on the admin listener: aiohttp would announce itself."""
    if response.headers.get("Server", SERVER_SOFTWARE) == SERVER_SOFTWARE:
        response.headers["Server"] = BANNER
