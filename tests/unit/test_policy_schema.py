"""policies/schema.json and the loader stay in step: same keys, same verdicts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.policy import DEFAULT_POLICY, PolicyError, parse_policy
from proxy.policy.load import (
    DOMAIN_RE,
    DURATION_RE,
    HEADER_RE,
    ORIGIN_RE,
    SCOPE_RE,
    URL_RE,
    key_paths,
)
from proxy.policy.model import HMAC_ALGORITHMS, JWT_ALGORITHMS, PUBLIC_KEY_ALGORITHMS

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
SCHEMA: dict[str, Any] = json.loads((ROOT / "policies" / "schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
DATA = ROOT / "tests" / "data" / "policies"
VALID_FILES = sorted((ROOT / "policies").glob("*.yaml")) + sorted(
    p for p in DATA.glob("*.yaml") if not p.with_suffix(".expected").exists()
)


def deref(node: dict[str, Any]) -> dict[str, Any]:
    """The node with a local ``$ref`` merged in (siblings of ``$ref`` win)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target = SCHEMA
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**deref(target), **{k: v for k, v in node.items() if k != "$ref"}}


def schema_paths(node: dict[str, Any], path: str = "") -> Iterator[str]:
    node = deref(node)
    for key, child in node.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        yield child_path
        yield from schema_paths(child, child_path)
    if "items" in node and "properties" in deref(node["items"]):
        yield from schema_paths(node["items"], f"{path}[]")


def schema_errors(document: object) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(document)]


def loader_accepts(text: str) -> bool:
    try:
        parse_policy(text, "t.yaml")
    except PolicyError:
        return False
    return True


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_and_loader_accept_the_same_keys() -> None:
    assert set(schema_paths(SCHEMA)) == key_paths()


def test_every_object_in_the_schema_is_closed() -> None:
    """Every object that lists properties rejects others. Subschemas without a type (the
    then/else of identity.jwt) only add constraints to an object already closed."""

    def objects(node: object) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "properties" in node and "type" in node:
                yield node
            for child in node.values():
                yield from objects(child)
        elif isinstance(node, list):
            for child in node:
                yield from objects(child)

    for obj in objects(SCHEMA):
        assert obj.get("additionalProperties") is False, obj.get("description")


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.name)
def test_valid_files_pass_loader_and_schema(path: Path) -> None:
    text = path.read_text()
    parse_policy(text, str(path))
    document = yaml.safe_load(text)
    if document is not None:
        assert schema_errors(document) == []


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_point_editors_at_the_schema(path: Path) -> None:
    assert path.read_text().startswith("# yaml-language-server: $schema=./schema.json\n")


def test_schema_defaults_are_the_built_in_defaults() -> None:
    """A file spelling out every schema default parses to DEFAULT_POLICY."""

    def defaults_of(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, child in deref(node).get("properties", {}).items():
            child = deref(child)
            if "default" in child:
                out[key] = child["default"]
            elif "properties" in child and not child.get("required"):
                # A section with required keys (identity.jwt, ...) is optional as a whole.
                out[key] = defaults_of(child)
        return out

    document = {"version": 1, **defaults_of(SCHEMA)}
    assert set(document) == {
        "version",
        "identity",
        "errors",
        "origins",
        "store_failure",
        "defaults",
    }
    assert set(document["identity"]) == {"header", "required", "forward_credentials"}
    assert document["defaults"]["require_scopes"] == []
    assert schema_errors(document) == []
    assert parse_policy(yaml.safe_dump(document), "d.yaml") == DEFAULT_POLICY


def test_schema_jwt_defaults_are_the_models() -> None:
    """Defaults inside identity.jwt and identity.api_keys (sections that have required
    keys, so the test above leaves them out) are the model's too."""
    jwt = SCHEMA["properties"]["identity"]["properties"]["jwt"]["properties"]
    loaded = parse_policy(
        yaml.safe_dump(
            {
                "version": 1,
                "identity": {
                    "jwt": {
                        "issuers": ["i"],
                        "audiences": ["a"],
                        "jwks_file": "j",
                        **{k: v["default"] for k, v in jwt.items() if "default" in v},
                    }
                },
            }
        ),
        "d.yaml",
    )
    built = parse_policy(
        "version: 1\nidentity: {jwt: {issuers: [i], audiences: [a], jwks_file: j}}", "e.yaml"
    )
    assert loaded.identity == built.identity
    api = SCHEMA["properties"]["identity"]["properties"]["api_keys"]["properties"]
    keys = parse_policy(
        yaml.safe_dump(
            {
                "version": 1,
                "identity": {"api_keys": {"file": "k", "header": api["header"]["default"]}},
            }
        ),
        "k.yaml",
    )
    assert (
        keys.identity
        == parse_policy("version: 1\nidentity: {api_keys: {file: k}}", "k.yaml").identity
    )


def test_schema_gives_no_default_for_limits() -> None:
    """Unset limits are no limits: the schema may not suggest a number for them."""
    defs = SCHEMA["$defs"]
    for section, key in [
        ("session", "max_per_agent"),
        ("budget", "calls"),
        ("rate_limit", "per_minute"),
    ]:
        node = defs[section]["properties"][key]
        assert "default" not in node
        assert "Unset: no limit." in node["description"]


JWT = "{issuers: [i], audiences: [a], jwks_url: 'https://idp.example/jwks'}"
JWT_FILE = f"version: 1\nidentity: {{jwt: {JWT}}}"
JWT_KEYS = {"issuers": ["i"], "audiences": ["a"]}

IDENTITY_REJECTED = [
    "identity: {forward_credentials: 'no'}",
    "identity: {jwt: null}",
    "identity: {jwt: {}}",
    "identity: {jwt: {audiences: [a], jwks_file: j}}",
    "identity: {jwt: {issuers: [i], jwks_file: j}}",
    "identity: {jwt: {issuers: [], audiences: [a], jwks_file: j}}",
    "identity: {jwt: {issuers: null, audiences: [a], jwks_file: j}}",
    "identity: {jwt: {issuers: [i], audiences: null, jwks_file: j}}",
    "identity: {jwt: {issuers: [i], audiences: [a], secret_file: s, algorithms: null}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, algorithms: null}}",
    "identity: {jwt: {issuers: [''], audiences: [a], jwks_file: j}}",
    "identity: {jwt: {issuers: i, audiences: [a], jwks_file: j}}",
    "identity: {jwt: {issuers: [i], audiences: [], jwks_file: j}}",
    "identity: {jwt: {issuers: [i], audiences: [7], jwks_file: j}}",
    "identity: {jwt: {issuers: [i], audiences: [a]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, jwks_url: 'https://x'}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, secret_file: s}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_url: 'ftp://x'}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_url: 'https://x/#f'}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: ''}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, algorithms: []}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, algorithms: [none]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, algorithms: [None]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, algorithms: [rs256]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, algorithms: RS256}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, algorithms: [HS256]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_url: 'https://x', algorithms: [HS512]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], secret_file: s}}",
    "identity: {jwt: {issuers: [i], audiences: [a], secret_file: s, algorithms: [RS256]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], secret_file: s, algorithms: [HS256, ES256]}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, agent_claim: ''}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, leeway: -1}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, leeway: 1.5}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, leewy: 1}}",
    "identity: {jwt: {issuers: [i], audiences: [a], jwks_file: j}, api_keys: {file: k}}",
    "identity: {api_keys: null}",
    "identity: {api_keys: {}}",
    "identity: {api_keys: {file: ''}}",
    "identity: {api_keys: {file: k, header: 'X Api'}}",
    "identity: {api_keys: {file: k, header: ''}}",
    "identity: {api_keys: [k]}",
    "identity: {resource_metadata: {}}",
    "identity: {resource_metadata: {resource: 'urn:x'}}",
    "identity: {resource_metadata: {resource: 'https://a', authorization_servers: ['a']}}",
    "identity: {resource_metadata: {resource: 'https://a', authorization_servers: 'https://a'}}",
    "identity: {resource_metadata: {resource: 'https://a', scopes_supported: ['a b']}}",
    "identity: {resource_metadata: {resource: 'https://a', scopes_supported: ['']}}",
    "identity: {resource_metadata: {resource: 'https://a', scopes: []}}",
    "defaults: {require_scopes: [a b]}",
    "defaults: {require_scopes: read}",
]

MATCH_REJECTED = [
    "policies: [{name: p, match: {}}]",
    "policies: [{name: p, match: null}]",
    "policies: [{name: p, match: {scopes: []}}]",
    "policies: [{name: p, match: {scopes: null}}]",
    "policies: [{name: p, match: {scopes: ['a b']}}]",
    "policies: [{name: p, match: {scopes: read}}]",
    "policies: [{name: p, match: {claims: {}}}]",
    "policies: [{name: p, match: {claims: null}}]",
    "policies: [{name: p, match: {claims: [a]}}]",
    "policies: [{name: p, match: {claims: {'': a}}}]",
    "policies: [{name: p, match: {claims: {a: ''}}}]",
    "policies: [{name: p, match: {claims: {a: null}}}]",
    "policies: [{name: p, match: {claims: {a: [1]}}}]",
    "policies: [{name: p, match: {claims: {a: {b: 1}}}}]",
    "policies: [{name: p, match: {agents: [a], claims: {a: b}, groups: [g]}}]",
    "policies: [{name: p, match: {agents: [a]}, require_scopes: ['']}]",
]


@pytest.mark.parametrize(
    "snippet",
    [
        f"{JWT_FILE}",
        f"{JWT_FILE}\ndefaults: {{require_scopes: [read, 'tools:call', 'a/b']}}",
        f"{JWT_FILE}\ndefaults: {{require_scopes: []}}",
        f"{JWT_FILE}\ndefaults: {{require_scopes: null}}",
        f"{JWT_FILE}\npolicies: [{{name: p, match: {{scopes: [a]}}}}]",
        f"{JWT_FILE}\npolicies: [{{name: p, match: {{claims: "
        "{t: 'acme-*', n: 1, f: 1.5, b: true}}}]",
        f"{JWT_FILE}\npolicies: [{{name: p, match: {{agents: [a], scopes: [s], "
        "claims: {t: x}}}]",
        f"{JWT_FILE}\npolicies: [{{name: p, match: {{agents: [a]}}, require_scopes: [s]}}]",
        "version: 1\nidentity: {jwt: {issuers: [i], audiences: [a], secret_file: s, "
        "algorithms: [HS256, HS512]}}",
        "version: 1\nidentity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, "
        "algorithms: [RS256, PS384, ES512, EdDSA], agent_claim: azp, leeway: 0}}",
        "version: 1\nidentity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, leeway: 1m30s}}",
        "version: 1\nidentity: {jwt: {issuers: [i], audiences: [a], jwks_file: j, leeway: 0s}}",
        "version: 1\nidentity: {api_keys: {file: /etc/keys.yaml}}",
        "version: 1\nidentity: {api_keys: {file: k, header: X-Api-Key}, "
        "forward_credentials: false}",
        "version: 1\nidentity: {required: true, header: X-Caller, resource_metadata: "
        "{resource: 'https://a.example/mcp', authorization_servers: ['https://idp.example/'], "
        "scopes_supported: [tools.read]}}",
        "version: 1\nidentity: {resource_metadata: null, jwt: " + JWT + "}",
        "version: 1\nidentity: {resource_metadata: {resource: 'http://127.0.0.1:8080', "
        "authorization_servers: null, scopes_supported: null}}",
    ],
)
def test_schema_and_loader_accept_the_same_identity_snippets(snippet: str) -> None:
    assert loader_accepts(snippet), snippet
    assert schema_errors(yaml.safe_load(snippet)) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "version: 2",
        "defaults: {}",
        "version: 1\nextra: 1",
        "version: 1\nidentity: {header: ''}",
        "version: 1\nidentity: {header: 'X Agent'}",
        "version: 1\nidentity: {required: 'yes'}",
        "version: 1\nerrors: {domain: 'a..b'}",
        "version: 1\nerrors: {a2a_spec: 1.0}",
        "version: 1\nstore_failure: ajar",
        "version: 1\ndefaults: {mode: Enforce}",
        "version: 1\ndefaults: {session: {ttl: 0}}",
        "version: 1\ndefaults: {session: {ttl: 0s}}",
        "version: 1\ndefaults: {session: {ttl: 15x}}",
        "version: 1\ndefaults: {session: {ttl: '90'}}",
        "version: 1\ndefaults: {session: {max_per_agent: true}}",
        "version: 1\ndefaults: {session: {max_per_agent: null}}",
        "version: 1\ndefaults: {session: {require: minted-only}}",
        "version: 1\ndefaults: {session: {require: true}}",
        "version: 1\ndefaults: {require: minted}",
        "version: 1\norigins: [https://a.example]",
        "version: 1\norigins: {allow: https://a.example}",
        "version: 1\norigins: {allowed: []}",
        "version: 1\norigins: {allow: [7]}",
        "version: 1\norigins: {allow: ['https://a.example/']}",
        "version: 1\npolicies: [{name: a, match: {agents: [a]}, origins: {allow: []}}]",
        "version: 1\ndefaults: {budget: {calls: 0}}",
        "version: 1\ndefaults: {budget: {tools: {a: -1}}}",
        "version: 1\ndefaults: {budget: {tools: {'': 1}}}",
        "version: 1\ndefaults: {budget: {tools: [a]}}",
        "version: 1\ndefaults: {rate_limit: 600}",
        "version: 1\ndefaults: {tools: ['*']}",
        "version: 1\ndefaults: {tools: {deny: ['']}}",
        "version: 1\ndefaults: {methods: {denny: []}}",
        "version: 1\npolicies: {name: a}",
        "version: 1\npolicies: [{name: a}]",
        "version: 1\npolicies: [{match: {agents: [a]}}]",
        "version: 1\npolicies: [{name: a, match: {agents: []}}]",
        "version: 1\npolicies: [{name: a, match: {agents: a}}]",
        "version: 1\npolicies: [{name: default, match: {agents: [a]}}]",
        "version: 1\npolicies: [{name: a, match: {agents: [a]}, identity: {}}]",
        *[f"version: 1\n{snippet}" for snippet in IDENTITY_REJECTED],
        *[f"{JWT_FILE}\n{snippet}" for snippet in MATCH_REJECTED],
    ],
)
def test_schema_and_loader_reject_the_same_snippets(snippet: str) -> None:
    assert not loader_accepts(snippet)
    assert schema_errors(yaml.safe_load(snippet)) != []


@pytest.mark.parametrize(
    "value",
    [
        "500ms",
        "90s",
        "15m",
        "1h",
        "1h30m",
        "0h1m",
        "1m500ms",
        "0s",
        "0ms",
        "90",
        "1.5h",
        "30m1h",
        "1d",
        "",
        "h",
    ],
)
def test_duration_pattern_agrees_with_loader(value: str) -> None:
    document = {"version": 1, "defaults": {"session": {"ttl": value}}}
    assert (schema_errors(document) == []) == loader_accepts(yaml.safe_dump(document))


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "https://app.example.com",
        "http://localhost:3000",
        "HTTPS://App.Example.COM:443",
        "http://127.0.0.1:8080",
        "http://[::1]:3000",
        "http://a:1",
        "http://a:65535",
        "http://a:65536",
        "http://a:0",
        "http://a:080",
        "http://a:",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?q",
        "https://app.example.com#f",
        "https://user@app.example.com",
        "https://*.example.com",
        "ftp://files.example.com",
        "app.example.com",
        "//app.example.com",
        "https://",
        "https://-a.example",
        "https://a..example",
        "https://a.example.",
        "https://app example.com",
        "null",
        "**",
        "",
    ],
)
def test_origin_pattern_agrees_with_loader(value: str) -> None:
    document = {"version": 1, "origins": {"allow": [value]}}
    assert (schema_errors(document) == []) == loader_accepts(yaml.safe_dump(document))


@pytest.mark.parametrize(
    "value",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "http://localhost:8080/jwks",
        "HTTPS://IDP.example.com",
        "https://idp.example.com/",
        "https://idp.example.com?x=1&y=%20",
        "https://[::1]:8443/keys",
        "https://idp.example.com:0/",
        "https://idp.example.com:65536/",
        "https://idp.example.com/a#b",
        "https://user@idp.example.com/",
        "https://idp.example.com/a b",
        "https://idp.example.com/caf\u00e9",
        "ftp://idp.example.com/",
        "idp.example.com/jwks",
        "https://",
        "https:///jwks",
        "",
    ],
)
def test_url_pattern_agrees_with_loader(value: str) -> None:
    document = {"version": 1, "identity": {"jwt": {**JWT_KEYS, "jwks_url": value}}}
    assert (schema_errors(document) == []) == loader_accepts(yaml.safe_dump(document))


@pytest.mark.parametrize(
    "value", ["read", "tools:call", "a/b", "!#$", "a b", "", 'a"b', "a\\b", "é"]
)
def test_scope_pattern_agrees_with_loader(value: str) -> None:
    document = {
        "version": 1,
        "identity": {"resource_metadata": {"resource": "https://a", "scopes_supported": [value]}},
    }
    assert (schema_errors(document) == []) == loader_accepts(yaml.safe_dump(document))


@pytest.mark.parametrize("algorithm", [*JWT_ALGORITHMS, "none", "None", "NONE", "rs256", "HS1", ""])
@pytest.mark.parametrize("source", ["jwks_url", "jwks_file", "secret_file"])
def test_algorithms_agree_with_loader(algorithm: str, source: str) -> None:
    value = "https://idp.example/jwks" if source == "jwks_url" else "/etc/k"
    document = {
        "version": 1,
        "identity": {"jwt": {**JWT_KEYS, source: value, "algorithms": [algorithm]}},
    }
    accepted = loader_accepts(yaml.safe_dump(document))
    assert (schema_errors(document) == []) == accepted
    hmac = source == "secret_file"
    assert accepted == (algorithm in (HMAC_ALGORITHMS if hmac else PUBLIC_KEY_ALGORITHMS))


@pytest.mark.parametrize(
    "value", [0, 1, 30, -1, "0s", "0", "30s", "1h30m", "500ms", "", "1.5s", 1.5]
)
def test_leeway_agrees_with_loader(value: object) -> None:
    document = {"version": 1, "identity": {"jwt": {**JWT_KEYS, "jwks_file": "j", "leeway": value}}}
    assert (schema_errors(document) == []) == loader_accepts(yaml.safe_dump(document))


@pytest.mark.parametrize(
    "value",
    [
        "acme",
        "acme-*",
        "t[ab]",
        "",
        1,
        0,
        -3,
        1.5,
        True,
        False,
        None,
        [1],
        {"a": 1},
    ],
)
def test_claim_values_agree_with_loader(value: object) -> None:
    """(A bad glob such as ``t[ab``, NaN and infinity pass the schema: the loader alone
    refuses them; see test_policy_identity.)"""
    document = yaml.safe_load(JWT_FILE)
    document["policies"] = [{"name": "p", "match": {"claims": {"c": value}}}]
    text = yaml.safe_dump(document)
    assert (schema_errors(yaml.safe_load(text)) == []) == loader_accepts(text), text


@pytest.mark.parametrize(
    ("schema_path", "loader_re"),
    [
        (("properties", "identity", "properties", "header"), HEADER_RE),
        (("properties", "identity", "properties", "api_keys", "properties", "header"), HEADER_RE),
        (("$defs", "url"), URL_RE),
        (("$defs", "scope"), SCOPE_RE),
        (("properties", "errors", "properties", "domain"), DOMAIN_RE),
        (("properties", "origins", "properties", "allow", "items", "anyOf", 1), ORIGIN_RE),
    ],
)
def test_schema_patterns_are_the_loader_patterns(
    schema_path: tuple[str | int, ...], loader_re: re.Pattern[str]
) -> None:
    node: Any = SCHEMA
    for part in schema_path:
        node = node[part]
    assert node["pattern"] == f"^{loader_re.pattern}$"


def test_duration_regex_is_ascii_only() -> None:
    assert "\\d" not in DURATION_RE.pattern
