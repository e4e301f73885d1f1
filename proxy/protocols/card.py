"""The A2A agent card, its interface URLs moved from the upstream to the proxy's public URL.

Pure: a parsed card in, a rewritten copy out. A client that follows the card then stays
behind the sidecar.

Wire facts, from a2a-sdk 1.3 as installed:
- v1.0 (`a2a/types/a2a_pb2.py` AgentCard, ProtoJSON): `supportedInterfaces[].url`.
- v0.3 (`a2a/compat/v0_3/types.py` AgentCard): `url` (the preferred transport's) and
  `additionalInterfaces[].url`.
- The SDK 1.x server serves both at once: the v1.0 fields merged with the v0.3 ones
  (`agent_card_to_dict`), so every field above is rewritten wherever it appears. ProtoJSON
  parsers also accept snake_case names, so `supported_interfaces` and
  `additional_interfaces` are read too.
- The same body is the result of GetExtendedAgentCard (`/extendedAgentCard`, v0.3
  `/v1/card`, `agent/getAuthenticatedExtendedCard`).

Decisions:
- Only interface URLs move. `provider.url`, `documentationUrl`, `iconUrl` and security
  scheme URLs (OAuth endpoints) name other services, not where A2A requests go.
- A URL moves when its scheme, host and port (default ports filled in) are the
  upstream's and its path is the upstream's base path or below it; it keeps the rest of
  its path, query and fragment under `public_url`. Host names are compared as written:
  `localhost` is not `127.0.0.1`, as the proxy cannot know which names reach the upstream.
- Signed cards (v1.0 `signatures`, JWS over the card) are still rewritten and their
  signatures kept: the proxy cannot sign, and a verifying client should see that the
  card was changed rather than receive an unsigned card. `card_is_signed` lets the
  caller log that.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_INTERFACE_LISTS: Final = (
    "supportedInterfaces",
    "supported_interfaces",
    "additionalInterfaces",
    "additional_interfaces",
)


def _origin(parts: SplitResult) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if unreadable."""
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not parts.scheme or host is None:
        return None
    scheme = parts.scheme.lower()
    return scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)


class _Mover:
    """Maps URLs under the upstream's base to the same place under the public URL."""

    __slots__ = ("_base", "_origin", "_public")

    def __init__(self, upstream: str, public_url: str) -> None:
        parts = urlsplit(upstream)
        self._origin = _origin(parts)
        self._base = parts.path.rstrip("/")
        public = urlsplit(public_url)
        self._public = f"{public.scheme}://{public.netloc}{public.path.rstrip('/')}"

    def move(self, url: object) -> str | None:
        """The public URL for `url`, or None when it points elsewhere (or is no string)."""
        if not isinstance(url, str) or self._origin is None:
            return None
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            return None
        if _origin(parts) != self._origin:
            return None
        path = parts.path
        base = self._base
        if base and not (path == base or path.startswith(base + "/")):
            return None
        moved = self._public + path[len(base) :]
        if parts.query:
            moved += "?" + parts.query
        if parts.fragment:
            moved += "#" + parts.fragment
        return moved if moved != url else None


def _moved_interfaces(interfaces: object, mover: _Mover) -> list[object] | None:
    if not isinstance(interfaces, list):
        return None
    changed = False
    out: list[object] = []
    for item in interfaces:
        moved = mover.move(item.get("url")) if isinstance(item, dict) else None
        if isinstance(item, dict) and moved is not None:
            out.append({**item, "url": moved})
            changed = True
        else:
            out.append(item)
    return out if changed else None


def rewrite_card(doc: object, upstream: str, public_url: str) -> dict[str, Any] | None:
    """The card with every interface URL under `upstream` moved under `public_url`.

    `upstream` is the proxy's upstream base URL, `public_url` the proxy's public one.
    Returns a copy (the input is not mutated), or None when no URL changed or `doc`
    is no JSON object.
    """
    if not isinstance(doc, dict):
        return None
    mover = _Mover(upstream, public_url)
    changes: dict[str, object] = {}
    moved = mover.move(doc.get("url"))
    if moved is not None:
        changes["url"] = moved
    for key in _INTERFACE_LISTS:
        interfaces = _moved_interfaces(doc.get(key), mover)
        if interfaces is not None:
            changes[key] = interfaces
    return {**doc, **changes} if changes else None


def card_is_signed(doc: object) -> bool:
    """True when the card carries signatures, which a rewrite invalidates (log a warning)."""
    if not isinstance(doc, dict):
        return False
    signatures = doc.get("signatures")
    return isinstance(signatures, list) and len(signatures) > 0


SCHEME_NAME: Final = "agentWarden"


def advertise_security(
    card: dict[str, Any], *, bearer_jwt: bool, api_key_header: str | None
) -> dict[str, Any]:
    """The card with the scheme the proxy verifies as the one clients must satisfy.

    Written in both generations' shapes merged, as the a2a SDK serves a card (v1.0
    ProtoJSON ``httpAuthSecurityScheme``/``apiKeySecurityScheme`` and
    ``securityRequirements``; v0.3 ``type``/``scheme``/``in`` and ``security``). The
    upstream's own schemes stay listed; the requirement is the proxy's.
    """
    if api_key_header is not None and api_key_header.lower() != "authorization":
        scheme: dict[str, Any] = {
            "apiKeySecurityScheme": {"location": "header", "name": api_key_header},
            "type": "apiKey",
            "in": "header",
            "name": api_key_header,
        }
    else:
        scheme = {
            "httpAuthSecurityScheme": {"scheme": "Bearer"},
            "type": "http",
            "scheme": "bearer",
        }
        if bearer_jwt:
            scheme["httpAuthSecurityScheme"]["bearerFormat"] = "JWT"
            scheme["bearerFormat"] = "JWT"
    out = dict(card)
    schemes = out.get("securitySchemes")
    out["securitySchemes"] = {**(schemes if isinstance(schemes, dict) else {}), SCHEME_NAME: scheme}
    out["securityRequirements"] = [{"schemes": {SCHEME_NAME: {}}}]
    out["security"] = [{SCHEME_NAME: []}]
    out.pop("security_requirements", None)  # snake_case spelling: one requirement only
    return out
