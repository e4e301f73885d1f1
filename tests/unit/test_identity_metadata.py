"""RFC 9728 metadata (document, URL) and the WWW-Authenticate challenges."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.identity import challenge, metadata_document, metadata_url
from proxy.policy.model import ResourceMetadata

URL = "https://agents.example.com/.well-known/oauth-protected-resource/mcp"


@pytest.mark.parametrize(
    ("args", "kwargs", "value"),
    [
        ((URL,), {}, f'Bearer resource_metadata="{URL}"'),
        (
            (URL,),
            {"invalid_token": True},
            f'Bearer resource_metadata="{URL}", error="invalid_token"',
        ),
        ((None,), {"invalid_token": True}, 'Bearer error="invalid_token"'),
        ((None,), {}, "Bearer"),
        (
            (None,),
            {"scope": "tools.read tools.call"},
            'Bearer error="insufficient_scope", scope="tools.read tools.call"',
        ),
        (
            (URL,),
            {"scope": "tools.call", "invalid_token": True},
            f'Bearer error="insufficient_scope", scope="tools.call", resource_metadata="{URL}"',
        ),
    ],
)
def test_challenges(args: tuple[str | None], kwargs: dict[str, Any], value: str) -> None:
    assert challenge(*args, **kwargs) == value


def test_a_challenge_value_cannot_break_the_header() -> None:
    value = challenge('https://h/"x\\y\r\nSet-Cookie: a=b')
    assert value == 'Bearer resource_metadata="https://h/\\"x\\\\ySet-Cookie: a=b"'


def test_the_document_lists_what_the_policy_gives() -> None:
    meta = ResourceMetadata(
        resource="https://agents.example.com/billing",
        authorization_servers=("https://idp.example.com/",),
        scopes_supported=("tools.read", "tools.call"),
    )
    assert metadata_document(meta, "https://fallback.example.com/mcp") == {
        "resource": "https://agents.example.com/billing",
        "authorization_servers": ["https://idp.example.com/"],
        "scopes_supported": ["tools.read", "tools.call"],
        "bearer_methods_supported": ["header"],
    }


def test_the_document_falls_back_to_the_requested_resource() -> None:
    assert metadata_document(ResourceMetadata(), "https://agents.example.com/mcp") == {
        "resource": "https://agents.example.com/mcp",
        "bearer_methods_supported": ["header"],
    }


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        ("https://agents.example.com/mcp", URL),
        (
            "https://agents.example.com",
            "https://agents.example.com/.well-known/oauth-protected-resource",
        ),
        (
            "https://agents.example.com/",
            "https://agents.example.com/.well-known/oauth-protected-resource",
        ),
        (
            "http://127.0.0.1:8080/a/b?x=1",
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/a/b?x=1",
        ),
    ],
)
def test_the_metadata_url_of_a_resource(resource: str, url: str) -> None:
    assert metadata_url(resource) == url
