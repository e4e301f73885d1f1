"""API keys: the key file (YAML or JSON, watched), the headers keys come in, refusals."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.identity import Credential, Rejected, Verifier, build_verifier
from proxy.identity.apikeys import parse_key_file
from proxy.policy.model import ApiKeysConfig, Identity
from tests.unit.test_identity_jwks import Clock, bearer, headers, write

KEY = "sk-live-0123456789abcdef"
OTHER = "sk-live-fedcba9876543210"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def yaml_file(entries: dict[str, str]) -> bytes:
    return "".join(f"{digest}: {agent}\n" for digest, agent in entries.items()).encode()


Make = Callable[..., Awaitable[tuple[Verifier, Clock]]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """``await make(content, header=...)``: a started verifier of a key file holding
    ``content`` (None: no file), and its clock."""
    made: list[Verifier] = []
    async with aiohttp.ClientSession() as client:

        async def build(content: bytes | None, **config: Any) -> tuple[Verifier, Clock]:
            path = tmp_path / "keys.yaml"
            if content is not None:
                write(path, content)
            clock = Clock()
            identity = Identity(api_keys=ApiKeysConfig(file=str(path), **config))
            verifier = build_verifier(identity, client, clock=clock)
            assert verifier is not None
            await verifier.start()
            made.append(verifier)
            return verifier, clock

        yield build
        for verifier in made:
            await verifier.aclose()


# -- the file ------------------------------------------------------------------------------


def test_a_yaml_file_maps_digests_to_agents() -> None:
    content = f"# billing agents\n{sha(KEY)}: billing-7\n'{sha(OTHER).upper()}': \"b 2\"\n"
    table = parse_key_file(content.encode())
    assert len(table) == 2
    assert table.lookup(hashlib.sha256(KEY.encode()).digest()) == "billing-7"
    assert table.lookup(hashlib.sha256(OTHER.encode()).digest()) == "b 2"
    assert table.lookup(hashlib.sha256(b"guess").digest()) is None


def test_a_json_file_works_too() -> None:
    table = parse_key_file(json.dumps({sha(KEY): "billing-7"}).encode())
    assert table.lookup(hashlib.sha256(KEY.encode()).digest()) == "billing-7"
    flow = parse_key_file(f"{{{sha(KEY)}: billing-7}}".encode())  # YAML flow, not JSON
    assert len(flow) == 1


def test_a_digest_of_digits_stays_a_string_and_an_empty_file_holds_no_keys() -> None:
    digits = "1" * 64
    assert parse_key_file(f"{digits}: numeric\n".encode()).lookup(bytes.fromhex(digits)) == (
        "numeric"
    )
    assert len(parse_key_file(b"")) == 0
    assert len(parse_key_file(b"# nothing yet\n")) == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{KEY}: billing-7\n", "line 1: the key is not a SHA-256 hex digest"),
        (f"{sha(KEY)[:-1]}: billing-7\n", "line 1: the key is not a SHA-256 hex digest"),
        (f"{sha(KEY)}:\n", "line 1: the agent id is not a non-empty string"),
        (f"{sha(KEY)}: ''\n", "line 1: the agent id is not a non-empty string"),
        (f'{sha(KEY)}: "\\t x"\n', "surrounding white space"),
        (f'{sha(KEY)}: "a\\nb"\n', "control characters"),
        (f"{sha(KEY)}: a\n{sha(KEY).upper()}: b\n", f"line 2: digest {sha(KEY)[:8]}"),
        (f"{sha(KEY)}: [a, b]\n", "line 1: expected a string"),
        (f"{sha(KEY)}: &x a\n{sha(OTHER)}: *x\n", "anchors and aliases are not allowed"),
        ("- a\n- b\n", "expected a mapping"),
        ("just text\n", "expected a mapping"),
        (f"{sha(KEY)}: a\n---\n{sha(OTHER)}: b\n", "one mapping only"),
        (f"{sha(KEY)}: [unclosed\n", "line 1: expected a string"),
        (f"{sha(KEY)}: 'unclosed\n", "not YAML"),
        (json.dumps({sha(KEY): "a", sha(KEY).upper(): "b"}), "entry 2: digest"),
        (json.dumps({sha(KEY): 7}), "entry 1: the agent id is not a non-empty string"),
        (json.dumps({sha(KEY): {"agent": "a"}}), "entry 1: the agent id"),
        (json.dumps([sha(KEY)]), "expected a mapping"),
        ("{nope", "not YAML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_entry(content: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_key_file(content.encode())


@pytest.mark.parametrize(
    ("content", "line"),
    [(f"{sha(KEY)}: a\n{OTHER}: b\n", 2), (f"{sha(KEY)}: a\n{OTHER}: 'b\n", 3)],
)
def test_problems_never_quote_a_key_pasted_in_by_mistake(content: str, line: int) -> None:
    with pytest.raises(ValueError, match=f"line {line}") as raised:
        parse_key_file(content.encode())
    assert OTHER not in str(raised.value)


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_key_file(b"\xff\xfe: a\n")


# -- the headers ---------------------------------------------------------------------------


async def test_a_key_in_authorization_bearer_names_its_agent(make: Make) -> None:
    verifier, _ = await make(yaml_file({sha(KEY): "billing-7"}))
    assert await verifier.verify(bearer(KEY)) == Credential("billing-7", "api_key")
    assert await verifier.verify(headers(("authorization", f"bearer {KEY}"))) == Credential(
        "billing-7", "api_key"
    )
    assert await verifier.verify(headers()) is None
    assert await verifier.verify(headers(("X-Api-Key", KEY))) is None  # not where it is read


@pytest.mark.parametrize("name", ["X-Api-Key", "x-api-key"])
async def test_a_key_in_its_own_header_is_read_raw(make: Make, name: str) -> None:
    verifier, _ = await make(yaml_file({sha(KEY): "billing-7"}), header=name)
    assert await verifier.verify(headers(("X-API-KEY", f" {KEY} "))) == Credential(
        "billing-7", "api_key"
    )
    assert await verifier.verify(bearer(KEY)) is None  # Authorization is not looked at
    outcome = await verifier.verify(headers(("X-Api-Key", f"Bearer {KEY}")))
    assert isinstance(outcome, Rejected)  # the raw value, scheme and all


@pytest.mark.parametrize(
    ("header", "pairs", "detail"),
    [
        ("Authorization", [("Authorization", f"Basic {KEY}")], "scheme 'Basic' is not Bearer"),
        ("Authorization", [("Authorization", "Bearer ")], "empty Bearer credentials"),
        ("Authorization", [("Authorization", f"Bearer {KEY}")] * 2, "more than one"),
        ("X-Api-Key", [("X-Api-Key", "")], "empty X-Api-Key header"),
        ("X-Api-Key", [("X-Api-Key", KEY), ("X-Api-Key", KEY)], "more than one X-Api-Key"),
        ("X-Api-Key", [("X-Api-Key", "a b")], "hold white space"),
    ],
)
async def test_a_malformed_presentation_is_refused(
    make: Make, header: str, pairs: list[tuple[str, str]], detail: str
) -> None:
    verifier, _ = await make(yaml_file({sha(KEY): "billing-7"}), header=header)
    outcome = await verifier.verify(headers(*pairs))
    assert isinstance(outcome, Rejected)
    assert outcome.presented
    assert detail in outcome.detail


async def test_a_wrong_key_is_refused_without_being_told(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent_warden.identity")
    verifier, _ = await make(yaml_file({sha(KEY): "billing-7"}))
    outcome = await verifier.verify(bearer(OTHER))
    assert outcome == Rejected(True, f"unknown API key (sha256 {sha(OTHER)[:8]}...)")
    assert OTHER not in caplog.text
    assert KEY not in caplog.text


# -- reloading -----------------------------------------------------------------------------


async def test_the_file_is_read_again_when_keys_are_added_or_removed(
    make: Make, tmp_path: Path
) -> None:
    verifier, clock = await make(yaml_file({sha(KEY): "billing-7"}))
    path = tmp_path / "keys.yaml"
    write(path, yaml_file({sha(KEY): "billing-7", sha(OTHER): "billing-8"}))
    clock.advance(0.5)  # looked at no more than once a second
    assert isinstance(await verifier.verify(bearer(OTHER)), Rejected)
    clock.advance(0.5)
    assert await verifier.verify(bearer(OTHER)) == Credential("billing-8", "api_key")

    write(path, yaml_file({sha(OTHER): "billing-8"}))
    clock.advance(1)
    assert isinstance(await verifier.verify(bearer(KEY)), Rejected)
    assert await verifier.verify(bearer(OTHER)) == Credential("billing-8", "api_key")


async def test_a_bad_or_missing_file_keeps_the_last_good_keys(
    make: Make, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_warden.identity")
    verifier, clock = await make(yaml_file({sha(KEY): "billing-7"}))
    path = tmp_path / "keys.yaml"
    write(path, f"{KEY}: billing-7\n".encode())  # a raw key: refused, and not logged
    clock.advance(1)
    assert await verifier.verify(bearer(KEY)) == Credential("billing-7", "api_key")
    assert "API key file rejected (keeping the last good version)" in caplog.text
    assert KEY not in caplog.text
    path.unlink()
    clock.advance(1)
    assert await verifier.verify(bearer(KEY)) == Credential("billing-7", "api_key")
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 2  # each bad version once, however often it is looked at
    clock.advance(1)
    await verifier.verify(bearer(KEY))
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 2


async def test_with_no_file_ever_loaded_every_key_is_refused(make: Make, tmp_path: Path) -> None:
    verifier, clock = await make(None)
    assert await verifier.verify(bearer(KEY)) == Rejected(True, "no API keys loaded")
    assert await verifier.verify(headers()) is None
    write(tmp_path / "keys.yaml", f"{sha(KEY)}: [broken\n".encode())
    clock.advance(1)
    assert await verifier.verify(bearer(KEY)) == Rejected(True, "no API keys loaded")
    write(tmp_path / "keys.yaml", yaml_file({sha(KEY): "billing-7"}))
    clock.advance(1)
    assert await verifier.verify(bearer(KEY)) == Credential("billing-7", "api_key")


async def test_a_fifo_at_the_path_is_refused_at_once(make: Make, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "keys.yaml")
    verifier, _ = await make(None)
    assert await verifier.verify(bearer(KEY)) == Rejected(True, "no API keys loaded")
