"""proxy.protocols.card: agent card interface URLs moved to the proxy's public URL.

Cards are built with the installed a2a-sdk: v1.0 with its protobuf types and ProtoJSON
(`MessageToDict`, and `agent_card_to_dict`, which its server serves, v0.3 fields merged
in), v0.3 with its pydantic models; so the field names are the real ones.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from a2a.compat.v0_3 import types as v03
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types import a2a_pb2 as pb
from aiohttp.test_utils import TestServer
from google.protobuf.json_format import MessageToDict, ParseDict

from proxy.protocols.a2a import LEGACY_AGENT_CARD_PATH
from proxy.protocols.card import card_is_signed, rewrite_card
from tests.upstreams import legacy_a2a
from tests.upstreams.a2a_server import build_agent_card
from tests.upstreams.serve import LOOPBACK, free_port

UP = "http://127.0.0.1:9000"
PUB = "https://agents.example.com"
ELSEWHERE = [
    "grpc://other:50051",
    "http://127.0.0.1:9001/",  # another port
    "https://127.0.0.1:9000/",  # another scheme
    "http://localhost:9000/",  # another name for the same host: not ours to guess
    "http://10.0.0.1:9000/",
    "not a url",
    "",
]


def v10_card(*urls: str, signed: bool = False) -> dict[str, Any]:
    card = pb.AgentCard(
        name="n",
        description="d",
        version="1",
        supported_interfaces=[
            pb.AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
            for url in urls
        ],
        provider=pb.AgentProvider(organization="o", url=UP + "/about"),
        documentation_url=UP + "/docs",
        icon_url=UP + "/icon.png",
        capabilities=pb.AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[pb.AgentSkill(id="s", name="s", description="s", tags=["t"])],
        signatures=[pb.AgentCardSignature(protected="eyJhbGciOiJFUzI1NiJ9", signature="c2ln")]
        if signed
        else [],
    )
    return MessageToDict(card)


def v03_card(url: str, *additional: str) -> dict[str, Any]:
    card = v03.AgentCard(
        name="n",
        description="d",
        version="1",
        url=url,
        preferred_transport="JSONRPC",
        additional_interfaces=[
            v03.AgentInterface(url=u, transport="HTTP+JSON") for u in additional
        ],
        provider=v03.AgentProvider(organization="o", url=UP + "/about"),
        capabilities=v03.AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[v03.AgentSkill(id="s", name="s", description="s", tags=["t"])],
    )
    return card.model_dump(mode="json", by_alias=True, exclude_none=True)


def interface_urls(doc: dict[str, Any]) -> list[str]:
    urls = [doc["url"]] if "url" in doc else []
    for key in ("supportedInterfaces", "additionalInterfaces"):
        urls += [item["url"] for item in doc.get(key, [])]
    return urls


# --- v1.0 ---------------------------------------------------------------------------


def test_v10_interfaces_move() -> None:
    doc = v10_card(UP + "/", UP + "/rest", "grpc://other:50051")
    before = copy.deepcopy(doc)
    out = rewrite_card(doc, UP, PUB)
    assert out is not None
    assert interface_urls(out) == [PUB + "/", PUB + "/rest", "grpc://other:50051"]
    assert doc == before  # the input is not mutated
    # Everything but the interface URLs is as it was, other URLs at the upstream included.
    assert {k: v for k, v in out.items() if k != "supportedInterfaces"} == {
        k: v for k, v in doc.items() if k != "supportedInterfaces"
    }
    assert out["provider"]["url"] == UP + "/about"
    assert out["documentationUrl"] == UP + "/docs"
    assert out["iconUrl"] == UP + "/icon.png"
    # Still a v1.0 card, with its other interface fields intact.
    parsed = ParseDict(out, pb.AgentCard())
    assert parsed.supported_interfaces[1].protocol_binding == "JSONRPC"
    assert rewrite_card(out, UP, PUB) is None  # idempotent


def test_card_of_the_sdk_server_moves_every_field() -> None:
    doc = agent_card_to_dict(build_agent_card(UP))
    out = rewrite_card(doc, UP, PUB)
    assert out is not None
    assert interface_urls(out) == [PUB + "/", PUB + "/rest"]


def test_merged_v10_and_v03_card_moves_every_field() -> None:
    card = pb.AgentCard(
        name="n",
        description="d",
        version="1",
        supported_interfaces=[
            pb.AgentInterface(url=UP + "/", protocol_binding="JSONRPC", protocol_version="1.0"),
            pb.AgentInterface(url=UP + "/", protocol_binding="JSONRPC", protocol_version="0.3"),
            pb.AgentInterface(
                url=UP + "/rest", protocol_binding="HTTP+JSON", protocol_version="0.3"
            ),
            pb.AgentInterface(
                url="grpc://other:50051", protocol_binding="GRPC", protocol_version="0.3"
            ),
        ],
        capabilities=pb.AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[pb.AgentSkill(id="s", name="s", description="s", tags=["t"])],
    )
    doc = agent_card_to_dict(card)
    assert {"url", "additionalInterfaces", "supportedInterfaces"} <= set(doc)
    out = rewrite_card(doc, UP, PUB)
    assert out is not None
    assert out["url"] == PUB + "/"
    assert [i["url"] for i in out["supportedInterfaces"]] == [
        PUB + "/",
        PUB + "/",
        PUB + "/rest",
        "grpc://other:50051",
    ]
    assert [i["url"] for i in out["additionalInterfaces"]] == [PUB + "/rest", "grpc://other:50051"]
    ParseDict(out, pb.AgentCard(), ignore_unknown_fields=True)
    v03.AgentCard.model_validate(out)


# --- v0.3 ---------------------------------------------------------------------------


def test_v03_url_and_additional_interfaces_move() -> None:
    doc = v03_card(UP + "/", UP + "/", UP, "http://other.example/a2a")
    out = rewrite_card(doc, UP, PUB)
    assert out is not None
    assert interface_urls(out) == [PUB + "/", PUB + "/", PUB, "http://other.example/a2a"]
    assert out["provider"]["url"] == UP + "/about"
    assert v03.AgentCard.model_validate(out).url == PUB + "/"
    assert rewrite_card(out, UP, PUB) is None


def test_only_additional_interfaces_move() -> None:
    doc = v03_card("http://other.example/", UP + "/rest")
    out = rewrite_card(doc, UP, PUB)
    assert out is not None
    assert interface_urls(out) == ["http://other.example/", PUB + "/rest"]


def test_snake_case_fields_are_read_too() -> None:
    doc = {
        "supported_interfaces": [{"url": UP + "/a"}],
        "additional_interfaces": [{"url": UP + "/b"}],
    }
    assert rewrite_card(doc, UP, PUB) == {
        "supported_interfaces": [{"url": PUB + "/a"}],
        "additional_interfaces": [{"url": PUB + "/b"}],
    }


# --- what stays ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ELSEWHERE)
def test_urls_elsewhere_stay(url: str) -> None:
    assert rewrite_card(v10_card(url), UP, PUB) is None
    assert rewrite_card(v03_card(url, url), UP, PUB) is None


@pytest.mark.parametrize(
    "doc",
    [
        None,
        "card",
        [{"url": UP}],
        {},
        {"url": 42},
        {"supportedInterfaces": {"url": UP}},  # not a list
        {"supportedInterfaces": [UP, None, 3]},  # items that are no objects
        {"additionalInterfaces": [{"uri": UP}]},
    ],
)
def test_no_card_or_nothing_to_move(doc: object) -> None:
    assert rewrite_card(doc, UP, PUB) is None


def test_odd_items_are_kept_in_place() -> None:
    doc = {"supportedInterfaces": ["x", {"url": UP + "/a"}, None]}
    assert rewrite_card(doc, UP, PUB) == {"supportedInterfaces": ["x", {"url": PUB + "/a"}, None]}


def test_same_public_and_upstream_changes_nothing() -> None:
    assert rewrite_card(v10_card(UP + "/"), UP, UP) is None


# --- base paths, ports, spelling ----------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "public", "url", "expected"),
    [
        # an upstream with a base path: only URLs at or below it move
        (UP + "/agent", PUB, UP + "/agent", PUB),
        (UP + "/agent", PUB, UP + "/agent/", PUB + "/"),
        (UP + "/agent", PUB, UP + "/agent/rest", PUB + "/rest"),
        (UP + "/agent/", PUB, UP + "/agent/rest", PUB + "/rest"),
        (UP + "/agent", PUB, UP + "/agentx", None),
        (UP + "/agent", PUB, UP + "/other/rest", None),
        (UP + "/agent", PUB, UP + "/", None),
        # a public URL with a path, with or without its trailing slash
        (UP, PUB + "/team/a2a", UP + "/rest", PUB + "/team/a2a/rest"),
        (UP, PUB + "/team/a2a/", UP + "/", PUB + "/team/a2a/"),
        (UP + "/agent", PUB + "/p", UP + "/agent/v1", PUB + "/p/v1"),
        (UP + "/", PUB + "/", UP, PUB),
        # query and fragment kept
        (UP, PUB, UP + "/rpc?tenant=t#x", PUB + "/rpc?tenant=t#x"),
        # default ports, case of scheme and host
        ("http://agent.internal", PUB, "http://agent.internal:80/a", PUB + "/a"),
        ("http://agent.internal:80", PUB, "http://agent.internal/a", PUB + "/a"),
        ("https://agent.internal", PUB, "https://agent.internal:443/a", PUB + "/a"),
        ("https://agent.internal", PUB, "http://agent.internal:443/a", None),
        ("http://agent.internal", PUB, "HTTP://Agent.Internal/a", PUB + "/a"),
        ("http://[::1]:9000", PUB, "http://[::1]:9000/a", PUB + "/a"),
        ("http://[::1]:9000", PUB, "http://[::2]:9000/a", None),
        # public URL on another port
        (UP, "http://proxy.local:8080", UP + "/", "http://proxy.local:8080/"),
        # unreadable URLs stay
        (UP, PUB, "http://127.0.0.1:notaport/", None),
        (UP, PUB, "http://[::1/", None),
    ],
)
def test_url_mapping(upstream: str, public: str, url: str, expected: str | None) -> None:
    out = rewrite_card({"url": url, "supportedInterfaces": [{"url": url}]}, upstream, public)
    if expected is None:
        assert out is None
    else:
        assert out == {"url": expected, "supportedInterfaces": [{"url": expected}]}


# --- signatures ---------------------------------------------------------------------


def test_signed_card() -> None:
    doc = v10_card(UP + "/", signed=True)
    assert card_is_signed(doc)
    out = rewrite_card(doc, UP, PUB)
    assert out is not None
    assert out["signatures"] == doc["signatures"]  # kept: the proxy cannot re-sign
    assert card_is_signed(out)


@pytest.mark.parametrize(
    "doc",
    [v10_card(UP), v03_card(UP), {"signatures": []}, {"signatures": {}}, None, [], "x"],
)
def test_unsigned_card(doc: object) -> None:
    assert not card_is_signed(doc)


# --- the legacy upstream's card -----------------------------------------------------


@pytest.fixture
async def legacy_base() -> AsyncIterator[str]:
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    server = TestServer(legacy_a2a.build_app(base), host=LOOPBACK, port=port)
    await server.start_server()
    try:
        yield base
    finally:
        await server.close()


async def test_legacy_upstream_card(legacy_base: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(legacy_base + LEGACY_AGENT_CARD_PATH) as resp:
            assert resp.status == 200
            doc = await resp.json()
        async with session.get(legacy_base + "/.well-known/agent-card.json") as resp:
            assert resp.status == 404  # a legacy agent: only the old path
    card = v03.AgentCard.model_validate(doc)
    assert card.url == legacy_base + "/"
    assert card.protocol_version == "0.3.0"
    out = rewrite_card(doc, legacy_base, PUB)
    assert out is not None
    assert interface_urls(out) == [PUB + "/", PUB + "/", PUB]
    assert out["provider"] == doc["provider"]
