"""RFC 9728 Protected Resource Metadata, and the WWW-Authenticate challenges naming it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from proxy.policy.model import ResourceMetadata

__all__ = ["WELL_KNOWN", "challenge", "metadata_document", "metadata_url"]

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def challenge(
    metadata_url: str | None, *, invalid_token: bool = False, scope: str | None = None
) -> str:
    """The ``WWW-Authenticate`` value of a 401 (``scope`` None) or of a 403 for missing
    scopes (``scope``: the scopes required, space-separated)."""
    params: list[tuple[str, str]] = []
    if scope is not None:
        params += [("error", "insufficient_scope"), ("scope", scope)]
    if metadata_url:
        params.append(("resource_metadata", metadata_url))
    if invalid_token and scope is None:
        params.append(("error", "invalid_token"))
    if not params:
        return "Bearer"
    return "Bearer " + ", ".join(f'{name}="{_quoted(value)}"' for name, value in params)


def _quoted(value: str) -> str:
    """``value`` fit for an RFC 9110 quoted-string: no control characters, escaped."""
    printable = "".join(c for c in value if c.isprintable())
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def metadata_document(meta: ResourceMetadata, resource_fallback: str) -> dict[str, Any]:
    """The metadata JSON; ``resource_fallback`` when the policy names no resource."""
    doc: dict[str, Any] = {"resource": meta.resource or resource_fallback}
    if meta.authorization_servers:
        doc["authorization_servers"] = list(meta.authorization_servers)
    if meta.scopes_supported:
        doc["scopes_supported"] = list(meta.scopes_supported)
    doc["bearer_methods_supported"] = ["header"]  # tokens are read from Authorization only
    return doc


def metadata_url(resource: str) -> str:
    """Where the metadata of ``resource`` (an https URL) is, by RFC 9728 §3.1:
    ``https://h/mcp`` -> ``https://h/.well-known/oauth-protected-resource/mcp``."""
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, parts.query, ""))
