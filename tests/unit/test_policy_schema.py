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
from proxy.policy.load import DOMAIN_RE, DURATION_RE, HEADER_RE, ORIGIN_RE, key_paths

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
    def objects(node: object) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "properties" in node:
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
            elif "properties" in child:
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
    assert schema_errors(document) == []
    assert parse_policy(yaml.safe_dump(document), "d.yaml") == DEFAULT_POLICY


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
    ("schema_path", "loader_re"),
    [
        (("properties", "identity", "properties", "header"), HEADER_RE),
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
