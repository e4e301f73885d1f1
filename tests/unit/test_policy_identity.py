"""The ``identity:`` block and matching on the verified credential (contract, Identity).

Every key valid and invalid with its exact problem; algorithm confusion impossible at
load time (and in the model); ``match.agents/scopes/claims`` AND semantics; claim globs
and exact JSON types; ``require_scopes`` inheritance; resolution and its cache.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from proxy.policy import (
    DEFAULT_POLICY,
    ApiKeysConfig,
    GlobSet,
    Identity,
    JwtConfig,
    NamedPolicy,
    PolicyError,
    PolicyFile,
    ResourceMetadata,
    Rules,
    parse_policy,
)
from proxy.policy.model import HMAC_ALGORITHMS, JWT_ALGORITHMS, KEY_SOURCE_PROBLEM

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "example.yaml"

JWT = "{issuers: [i], audiences: [a], jwks_url: 'https://idp.example/jwks'}"
JWT_HEAD = f"version: 1\nidentity:\n  jwt: {JWT}\n"
"""A file with a valid identity.jwt on line 3; what follows starts on line 4."""
HEADER_HINT = "allowed: letters, digits and !#$%&'*+-.^_`|~"
NO_JWT = "needs identity.jwt: only a verified JWT carries scopes and claims"
ALL_ALGORITHMS = ", ".join(JWT_ALGORITHMS)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(textwrap.dedent(text), "p.yaml")
    return [str(p) for p in info.value.problems]


def policy(text: str) -> PolicyFile:
    return parse_policy(textwrap.dedent(text), "p.yaml")


def jwt_file(body: str) -> str:
    """A file whose identity.jwt mapping is ``body`` (lines 4 on, indented by 4)."""
    return "version: 1\nidentity:\n  jwt:\n" + textwrap.indent(textwrap.dedent(body), "    ")


# --- valid identity blocks --------------------------------------------------------


def test_contract_identity_example() -> None:
    loaded = policy(
        """\
        version: 1
        identity:
          required: false
          header: X-Agent-Id
          forward_credentials: true
          jwt:
            issuers: ["https://idp.example.com/"]
            audiences: ["https://agents.example.com/billing"]
            jwks_url: https://idp.example.com/.well-known/jwks.json
            algorithms: [RS256, ES256]
            agent_claim: sub
            leeway: 30s
          resource_metadata:
            resource: https://agents.example.com/billing
            authorization_servers: ["https://idp.example.com/"]
            scopes_supported: [tools.read, tools.call]
        """
    )
    assert loaded.identity == Identity(
        header="X-Agent-Id",
        required=False,
        forward_credentials=True,
        jwt=JwtConfig(
            issuers=("https://idp.example.com/",),
            audiences=("https://agents.example.com/billing",),
            jwks_url="https://idp.example.com/.well-known/jwks.json",
            algorithms=("RS256", "ES256"),
            agent_claim="sub",
            leeway=30.0,
        ),
        resource_metadata=ResourceMetadata(
            resource="https://agents.example.com/billing",
            authorization_servers=("https://idp.example.com/",),
            scopes_supported=("tools.read", "tools.call"),
        ),
    )
    assert not loaded.identity.trusted_header
    assert loaded.identity.api_keys is None


def test_identity_defaults() -> None:
    identity = DEFAULT_POLICY.identity
    assert identity == Identity()
    assert (identity.header, identity.required, identity.forward_credentials) == (
        "X-Agent-Id",
        False,
        True,
    )
    assert (identity.jwt, identity.api_keys, identity.resource_metadata) == (None, None, None)
    assert identity.trusted_header
    assert policy("version: 1\nidentity:\n").identity == identity
    assert policy("version: 1\nidentity: {resource_metadata: null}\n").identity == identity


def test_jwt_defaults() -> None:
    jwt = policy(JWT_HEAD).identity.jwt
    assert jwt == JwtConfig(issuers=("i",), audiences=("a",), jwks_url="https://idp.example/jwks")
    assert jwt is not None
    assert (jwt.algorithms, jwt.agent_claim, jwt.leeway) == (("RS256", "ES256"), "sub", 30.0)
    assert (jwt.jwks_file, jwt.secret_file, jwt.hmac) == (None, None, False)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "{issuers: [i, j], audiences: [a], jwks_file: /etc/jwks.json}",
            JwtConfig(issuers=("i", "j"), audiences=("a",), jwks_file="/etc/jwks.json"),
        ),
        (
            "{issuers: [i], audiences: [a], secret_file: s, algorithms: [HS256, HS384, HS512]}",
            JwtConfig(
                issuers=("i",),
                audiences=("a",),
                secret_file="s",
                algorithms=("HS256", "HS384", "HS512"),
            ),
        ),
        (
            "{issuers: [i], audiences: [a], jwks_file: j, algorithms: [PS512, EdDSA, ES384]}",
            JwtConfig(
                issuers=("i",),
                audiences=("a",),
                jwks_file="j",
                algorithms=("PS512", "EdDSA", "ES384"),
            ),
        ),
        (
            "{issuers: [i], audiences: [a], jwks_file: j, agent_claim: azp, leeway: 0}",
            JwtConfig(issuers=("i",), audiences=("a",), jwks_file="j", agent_claim="azp", leeway=0),
        ),
        (
            "{issuers: [i], audiences: [a], jwks_file: j, leeway: 1m500ms}",
            JwtConfig(issuers=("i",), audiences=("a",), jwks_file="j", leeway=60.5),
        ),
        (
            "{issuers: [i], audiences: [a], jwks_url: 'http://[::1]:8080/keys?x=1'}",
            JwtConfig(issuers=("i",), audiences=("a",), jwks_url="http://[::1]:8080/keys?x=1"),
        ),
    ],
)
def test_jwt_valid(body: str, expected: JwtConfig) -> None:
    assert policy(f"version: 1\nidentity: {{jwt: {body}}}\n").identity.jwt == expected


def test_secret_file_means_hmac() -> None:
    jwt = policy(
        "version: 1\nidentity: {jwt: {issuers: [i], audiences: [a], secret_file: s, "
        "algorithms: [HS256]}}\n"
    ).identity.jwt
    assert jwt is not None
    assert jwt.hmac


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{file: /etc/keys.yaml}", ApiKeysConfig(file="/etc/keys.yaml")),
        ("{file: k, header: X-Api-Key}", ApiKeysConfig(file="k", header="X-Api-Key")),
    ],
)
def test_api_keys_valid(body: str, expected: ApiKeysConfig) -> None:
    identity = policy(f"version: 1\nidentity: {{api_keys: {body}, required: true}}\n").identity
    assert identity.api_keys == expected
    assert identity.required
    assert not identity.trusted_header
    assert ApiKeysConfig(file="k").header == "Authorization"


def test_forward_credentials_and_resource_metadata() -> None:
    identity = policy(
        """\
        version: 1
        identity:
          forward_credentials: false
          resource_metadata: {resource: "http://localhost:8080/mcp"}
        """
    ).identity
    assert identity.forward_credentials is False
    assert identity.resource_metadata == ResourceMetadata(resource="http://localhost:8080/mcp")
    assert identity.trusted_header  # metadata alone verifies nothing


# --- invalid identity blocks: every key, exact messages -----------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # identity itself
        (
            "version: 1\nidentity:\n  forward_credentials: 'no'\n",
            ["p.yaml:3: identity.forward_credentials: expected a boolean, got a string 'no'"],
        ),
        (
            "version: 1\nidentity:\n  required: yes please\n",
            ["p.yaml:3: identity.required: expected a boolean, got a string 'yes please'"],
        ),
        (
            "version: 1\nidentity:\n  header: X Agent\n",
            [f"p.yaml:3: identity.header: invalid header name 'X Agent'; {HEADER_HINT}"],
        ),
        (
            "version: 1\nidentity:\n  jwks_url: https://a\n",
            ["p.yaml:3: identity.jwks_url: unknown key, did you mean 'jwt.jwks_url'?"],
        ),
        (
            "version: 1\nidentity:\n  api_key: {file: k}\n",
            ["p.yaml:3: identity.api_key: unknown key, did you mean 'api_keys'?"],
        ),
        (
            "version: 1\njwt: {}\n",
            ["p.yaml:2: jwt: unknown key, did you mean 'identity.jwt'?"],
        ),
        # identity.jwt
        (
            "version: 1\nidentity:\n  jwt:\n",
            ["p.yaml:3: identity.jwt: expected a mapping, got null"],
        ),
        (
            "version: 1\nidentity:\n  jwt: [a]\n",
            ["p.yaml:3: identity.jwt: expected a mapping, got a list"],
        ),
        (
            "version: 1\nidentity:\n  jwt: {}\n",
            [
                "p.yaml:3: identity.jwt: missing required key 'issuers'",
                "p.yaml:3: identity.jwt: missing required key 'audiences'",
                "p.yaml:3: identity.jwt: missing key source: set one of "
                "jwks_url, jwks_file, secret_file",
            ],
        ),
        (
            jwt_file("issuers: []\naudiences: [a]\njwks_file: j\n"),
            ["p.yaml:4: identity.jwt.issuers: must not be empty"],
        ),
        (
            jwt_file("issuers: https://idp\naudiences: [a]\njwks_file: j\n"),
            ["p.yaml:4: identity.jwt.issuers: expected a list, got a string 'https://idp'"],
        ),
        (
            jwt_file("issuers: ['', 3]\naudiences: [a]\njwks_file: j\n"),
            [
                "p.yaml:4: identity.jwt.issuers[0]: must not be empty",
                "p.yaml:4: identity.jwt.issuers[1]: expected a string, got an integer '3'",
            ],
        ),
        (
            jwt_file("issuers:\naudiences: [a]\njwks_file: j\n"),
            ["p.yaml:4: identity.jwt.issuers: expected a list, got null"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\nsecret_file: s\nalgorithms:\n"),
            ["p.yaml:7: identity.jwt.algorithms: expected a list, got null"],
        ),
        (
            jwt_file("issuers: [i]\naudiences:\njwks_file: j\n"),
            ["p.yaml:5: identity.jwt.audiences: expected a list, got null"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: []\njwks_file: j\n"),
            ["p.yaml:5: identity.jwt.audiences: must not be empty"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\n"),
            [
                "p.yaml:4: identity.jwt: missing key source: set one of "
                "jwks_url, jwks_file, secret_file"
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_url: https://a\njwks_file: j\n"),
            [
                "p.yaml:7: identity.jwt.jwks_file: only one of jwks_url, jwks_file, "
                "secret_file may be set (jwks_url on line 6)"
            ],
        ),
        (
            jwt_file(
                "issuers: [i]\naudiences: [a]\nsecret_file: s\njwks_url: https://a\n"
                "jwks_file: j\nalgorithms: [HS256]\n"
            ),
            [
                "p.yaml:7: identity.jwt.jwks_url: only one of jwks_url, jwks_file, "
                "secret_file may be set (secret_file on line 6)",
                "p.yaml:8: identity.jwt.jwks_file: only one of jwks_url, jwks_file, "
                "secret_file may be set (secret_file on line 6)",
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_url: ftp://idp.example/jwks\n"),
            [
                "p.yaml:6: identity.jwt.jwks_url: invalid URL 'ftp://idp.example/jwks': "
                "the scheme must be http or https"
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_url: https://idp.example/jwks#k\n"),
            [
                "p.yaml:6: identity.jwt.jwks_url: invalid URL 'https://idp.example/jwks#k': "
                "no fragment (#...) allowed"
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_url: https://me:pw@idp.example/\n"),
            [
                "p.yaml:6: identity.jwt.jwks_url: invalid URL 'https://me:pw@idp.example/': "
                "no user info (user@) allowed"
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_url: idp.example/jwks\n"),
            [
                "p.yaml:6: identity.jwt.jwks_url: invalid URL 'idp.example/jwks'; expected "
                "http:// or https://, a host, an optional port and path, in printable ASCII "
                "(like https://idp.example.com/.well-known/jwks.json)"
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_url: 7\n"),
            ["p.yaml:6: identity.jwt.jwks_url: expected a URL string, got an integer '7'"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: ''\n"),
            ["p.yaml:6: identity.jwt.jwks_file: must not be empty"],
        ),
        (
            jwt_file('issuers: [i]\naudiences: [a]\njwks_file: "a\\0b"\n'),
            ["p.yaml:6: identity.jwt.jwks_file: must not contain a NUL character"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\nsecret_file: [s]\nalgorithms: [HS256]\n"),
            ["p.yaml:6: identity.jwt.secret_file: expected a path string, got a list"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nalgorithms: []\n"),
            ["p.yaml:7: identity.jwt.algorithms: must not be empty"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nalgorithms: RS256\n"),
            ["p.yaml:7: identity.jwt.algorithms: expected a list, got a string 'RS256'"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nalgorithms: [rs256, RS257]\n"),
            [
                "p.yaml:7: identity.jwt.algorithms[0]: unknown algorithm 'rs256', "
                "did you mean 'RS256'?",
                "p.yaml:7: identity.jwt.algorithms[1]: unknown algorithm 'RS257', "
                "did you mean 'RS256'?",
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nalgorithms: [XYZ, 256]\n"),
            [
                "p.yaml:7: identity.jwt.algorithms[0]: unknown algorithm 'XYZ'; "
                f"expected one of: {ALL_ALGORITHMS}",
                "p.yaml:7: identity.jwt.algorithms[1]: expected an algorithm name, "
                "got an integer '256'",
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nagent_claim: ''\n"),
            ["p.yaml:7: identity.jwt.agent_claim: must not be empty"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nagent_claim: [sub]\n"),
            ["p.yaml:7: identity.jwt.agent_claim: expected a string, got a list"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nleeway: -1\n"),
            ["p.yaml:7: identity.jwt.leeway: duration must be zero or more, got '-1'"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nleeway: 30 seconds\n"),
            [
                "p.yaml:7: identity.jwt.leeway: bad duration '30 seconds'; "
                "use integer seconds or a string like 500ms, 90s, 15m, 1h or 1h30m"
            ],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nleway: 1s\n"),
            ["p.yaml:7: identity.jwt.leway: unknown key, did you mean 'leeway'?"],
        ),
        (
            jwt_file("issuers: [i]\naudiences: [a]\njwks_file: j\nscopes: [a]\n"),
            [
                "p.yaml:7: identity.jwt.scopes: unknown key; expected one of: issuers, "
                "audiences, jwks_url, jwks_file, secret_file, algorithms, agent_claim, leeway"
            ],
        ),
        # identity.api_keys
        (
            "version: 1\nidentity:\n  api_keys:\n",
            ["p.yaml:3: identity.api_keys: expected a mapping, got null"],
        ),
        (
            "version: 1\nidentity:\n  api_keys: {header: X-Api-Key}\n",
            ["p.yaml:3: identity.api_keys: missing required key 'file'"],
        ),
        (
            "version: 1\nidentity:\n  api_keys: {file: ''}\n",
            ["p.yaml:3: identity.api_keys.file: must not be empty"],
        ),
        (
            "version: 1\nidentity:\n  api_keys: {file: k, header: 'X:Key'}\n",
            [f"p.yaml:3: identity.api_keys.header: invalid header name 'X:Key'; {HEADER_HINT}"],
        ),
        (
            "version: 1\nidentity:\n  api_keys: {file: k, header: ''}\n",
            ["p.yaml:3: identity.api_keys.header: must not be empty"],
        ),
        (
            "version: 1\nidentity:\n  api_keys: {files: k}\n",
            [
                "p.yaml:3: identity.api_keys.files: unknown key, did you mean 'file'?",
                "p.yaml:3: identity.api_keys: missing required key 'file'",
            ],
        ),
        # identity.resource_metadata
        (
            "version: 1\nidentity:\n  resource_metadata: {}\n",
            ["p.yaml:3: identity.resource_metadata: missing required key 'resource'"],
        ),
        (
            "version: 1\nidentity:\n  resource_metadata: {resource: 'urn:agents:billing'}\n",
            [
                "p.yaml:3: identity.resource_metadata.resource: invalid URL "
                "'urn:agents:billing'; expected http:// or https://, a host, an optional port "
                "and path, in printable ASCII (like https://idp.example.com/.well-known/jwks.json)"
            ],
        ),
        (
            "version: 1\nidentity:\n  resource_metadata:\n    resource: https://a\n"
            "    authorization_servers: [https://idp, 'mailto://x']\n",
            [
                "p.yaml:5: identity.resource_metadata.authorization_servers[1]: invalid URL "
                "'mailto://x': the scheme must be http or https"
            ],
        ),
        (
            "version: 1\nidentity:\n  resource_metadata:\n    resource: https://a\n"
            "    scopes_supported: ['tools read', '', 3]\n",
            [
                "p.yaml:5: identity.resource_metadata.scopes_supported[0]: invalid scope "
                "'tools read'; a scope is printable ASCII without spaces, '\"' or '\\'",
                "p.yaml:5: identity.resource_metadata.scopes_supported[1]: must not be empty",
                "p.yaml:5: identity.resource_metadata.scopes_supported[2]: "
                "expected a scope string, got an integer '3'",
            ],
        ),
    ],
)
def test_identity_problems(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


# --- alg none, and algorithm confusion ---------------------------------------------


@pytest.mark.parametrize("name", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused_in_any_case(name: str) -> None:
    text = jwt_file(f"issuers: [i]\naudiences: [a]\njwks_file: j\nalgorithms: [RS256, {name}]\n")
    assert problems(text) == [
        f"p.yaml:7: identity.jwt.algorithms[1]: {name!r} is never accepted: "
        "an unsigned token proves nothing"
    ]
    with pytest.raises(ValueError, match="never accepted"):
        JwtConfig(jwks_file="j", algorithms=("RS256", name))


@pytest.mark.parametrize("source", ["jwks_url: https://idp.example/jwks", "jwks_file: j"])
@pytest.mark.parametrize("algorithms", ["[HS256]", "[HS512, HS384]", "[RS256, HS256]"])
def test_hmac_with_a_jwks_is_refused(source: str, algorithms: str) -> None:
    text = jwt_file(f"issuers: [i]\naudiences: [a]\n{source}\nalgorithms: {algorithms}\n")
    assert problems(text) == [f"p.yaml:7: identity.jwt.algorithms: {KEY_SOURCE_PROBLEM}"]


@pytest.mark.parametrize("algorithms", ["[RS256]", "[EdDSA]", "[HS256, ES256]", "[PS384]"])
def test_public_key_algorithms_with_a_secret_are_refused(algorithms: str) -> None:
    text = jwt_file(f"issuers: [i]\naudiences: [a]\nsecret_file: s\nalgorithms: {algorithms}\n")
    assert problems(text) == [f"p.yaml:7: identity.jwt.algorithms: {KEY_SOURCE_PROBLEM}"]


def test_secret_file_with_the_default_algorithms_is_refused() -> None:
    assert problems(jwt_file("issuers: [i]\naudiences: [a]\nsecret_file: s\n")) == [
        f"p.yaml:6: identity.jwt.secret_file: {KEY_SOURCE_PROBLEM}; with secret_file, "
        "set algorithms to HS256, HS384 or HS512 (the default is RS256, ES256)"
    ]


def test_key_source_message_is_the_contracts() -> None:
    assert KEY_SOURCE_PROBLEM == (
        "HS* algorithms need secret_file; RS/PS/ES/EdDSA need jwks_url or jwks_file"
    )


@pytest.mark.parametrize("algorithm", JWT_ALGORITHMS)
@pytest.mark.parametrize("source", ["jwks_url", "jwks_file", "secret_file"])
def test_every_algorithm_loads_only_with_its_kind_of_key(algorithm: str, source: str) -> None:
    value = "https://idp.example/jwks" if source == "jwks_url" else "/k"
    text = f"version: 1\nidentity: {{jwt: {{issuers: [i], audiences: [a], {source}: '{value}', "
    text += f"algorithms: [{algorithm}]}}}}\n"
    fits = (algorithm in HMAC_ALGORITHMS) == (source == "secret_file")
    if fits:
        jwt = policy(text).identity.jwt
        assert jwt is not None
        assert jwt.algorithms == (algorithm,)
    else:
        assert problems(text) == [f"p.yaml:2: identity.jwt.algorithms: {KEY_SOURCE_PROBLEM}"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jwks_url": "https://a", "algorithms": ("HS256",)}, KEY_SOURCE_PROBLEM),
        ({"jwks_file": "j", "algorithms": ("RS256", "HS256")}, KEY_SOURCE_PROBLEM),
        ({"secret_file": "s"}, KEY_SOURCE_PROBLEM),  # the default algorithms are RS256, ES256
        ({"secret_file": "s", "algorithms": ("ES256",)}, KEY_SOURCE_PROBLEM),
        ({"algorithms": ("HS256",)}, KEY_SOURCE_PROBLEM),
        ({"jwks_file": "j", "algorithms": ("rs256",)}, "unknown algorithm 'rs256'"),
        ({"jwks_file": "j", "algorithms": ("none",)}, "never accepted"),
        (
            {"jwks_file": "j", "secret_file": "s", "algorithms": ("HS256",)},
            "only one of jwks_url, jwks_file, secret_file may be set",
        ),
        (
            {"jwks_file": "j", "jwks_url": "https://a"},
            "only one of jwks_url, jwks_file, secret_file may be set",
        ),
    ],
)
def test_the_model_refuses_algorithm_confusion_too(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        JwtConfig(issuers=("i",), audiences=("a",), **kwargs)  # type: ignore[arg-type]


def test_the_model_accepts_each_kind_of_key() -> None:
    assert JwtConfig(jwks_url="https://a").algorithms == ("RS256", "ES256")
    assert JwtConfig(secret_file="s", algorithms=HMAC_ALGORITHMS).hmac
    assert not JwtConfig(jwks_file="j", algorithms=("EdDSA",)).hmac


# --- at most one of jwt and api_keys; identity.header vs the credential's ----------


def test_jwt_and_api_keys_together_are_refused_at_the_second() -> None:
    assert problems(
        f"version: 1\nidentity:\n  jwt: {JWT}\n  required: true\n  api_keys: {{file: k}}\n"
    ) == ["p.yaml:5: identity.api_keys: only one of jwt and api_keys may be set (jwt on line 3)"]
    assert problems(f"version: 1\nidentity:\n  api_keys: {{file: k}}\n  jwt: {JWT}\n") == [
        "p.yaml:4: identity.jwt: only one of jwt and api_keys may be set (api_keys on line 3)"
    ]


def test_jwt_and_api_keys_together_are_refused_even_when_invalid() -> None:
    assert problems("version: 1\nidentity:\n  jwt: {}\n  api_keys: {}\n") == [
        "p.yaml:3: identity.jwt: missing required key 'issuers'",
        "p.yaml:3: identity.jwt: missing required key 'audiences'",
        "p.yaml:3: identity.jwt: missing key source: set one of jwks_url, jwks_file, secret_file",
        "p.yaml:4: identity.api_keys: missing required key 'file'",
        "p.yaml:4: identity.api_keys: only one of jwt and api_keys may be set (jwt on line 3)",
    ]


REASON = "the proxy sets identity.header to the verified agent id"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"version: 1\nidentity:\n  header: authorization\n  jwt: {JWT}\n",
            [
                "p.yaml:3: identity.header: must not be the credential header "
                f"'Authorization': {REASON}"
            ],
        ),
        (
            "version: 1\nidentity:\n  header: Authorization\n  api_keys: {file: k}\n",
            [
                "p.yaml:3: identity.header: must not be the credential header "
                f"'Authorization': {REASON}"
            ],
        ),
        (
            "version: 1\nidentity:\n  header: X-Api-Key\n"
            "  api_keys: {file: k, header: x-api-key}\n",
            [f"p.yaml:3: identity.header: must not be the credential header 'x-api-key': {REASON}"],
        ),
        (
            "version: 1\nidentity:\n  api_keys: {file: k, header: x-agent-id}\n",
            [
                "p.yaml:3: identity.api_keys.header: must not be identity.header "
                f"'X-Agent-Id': {REASON}"
            ],
        ),
    ],
)
def test_identity_header_is_not_the_credential_header(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_trusted_header_mode_may_use_any_header() -> None:
    assert policy("version: 1\nidentity: {header: Authorization}\n").identity.trusted_header
    assert policy(
        "version: 1\nidentity: {header: X-Caller, api_keys: {file: k, header: X-Api-Key}}\n"
    ).identity.api_keys == ApiKeysConfig(file="k", header="X-Api-Key")


# --- match: agents, scopes, claims -------------------------------------------------

MATCHING = (
    JWT_HEAD
    + """\
policies:
  - name: acme-admins
    match:
      agents: ["svc-*"]
      scopes: [billing.admin, tools.call]
      claims: {tenant: "acme-*", tier: 2, verified: true}
  - name: scoped
    match: {scopes: [billing.read]}
  - name: claimed
    match: {claims: {org: acme}}
  - name: named
    match: {agents: ["svc-*"]}
"""
)

ADMIN = frozenset({"billing.admin", "tools.call", "other"})
ACME = {"tenant": "acme-eu", "tier": 2, "verified": True}


@pytest.mark.parametrize(
    ("agent", "scopes", "claims", "name"),
    [
        ("svc-1", ADMIN, ACME, "acme-admins"),
        ("svc-1", ADMIN, {**ACME, "tier": 2.0}, "acme-admins"),  # one JSON number type
        ("svc-1", ADMIN, {**ACME, "extra": [1]}, "acme-admins"),
        ("bot-1", ADMIN, ACME, "default"),  # agents fails
        ("svc-1", frozenset({"billing.admin"}), ACME, "named"),  # one scope missing
        ("svc-1", frozenset(), ACME, "named"),
        ("svc-1", ADMIN, {**ACME, "tenant": "globex"}, "named"),  # glob fails
        ("svc-1", ADMIN, {"tier": 2, "verified": True}, "named"),  # claim missing
        ("svc-1", ADMIN, None, "named"),  # no claims at all
        ("svc-1", ADMIN, {**ACME, "tier": "2"}, "named"),  # a string is not the number 2
        ("svc-1", ADMIN, {**ACME, "tier": 3}, "named"),
        ("svc-1", ADMIN, {**ACME, "verified": 1}, "named"),  # 1 is not true
        ("svc-1", ADMIN, {**ACME, "verified": "true"}, "named"),
        ("svc-1", ADMIN, {**ACME, "tenant": ["acme-eu"]}, "named"),  # a list is not a string
        ("svc-1", ADMIN, {**ACME, "tenant": None}, "named"),
        ("bot-1", frozenset({"billing.read"}), None, "scoped"),  # agents omitted: any agent
        ("anonymous", frozenset({"billing.read", "x"}), {}, "scoped"),
        ("bot-1", frozenset(), {"org": "acme"}, "claimed"),
        ("bot-1", frozenset(), {"org": "acme-eu"}, "default"),  # no glob: exact
        ("bot-1", frozenset(), {"org": "ACME"}, "default"),  # case-sensitive
        ("bot-1", frozenset({"billing"}), {"org": 1}, "default"),
        ("svc-2", frozenset(), None, "named"),
    ],
)
def test_match_keys_all_hold(
    agent: str, scopes: frozenset[str], claims: dict[str, object] | None, name: str
) -> None:
    loaded = policy(MATCHING)
    got, rules = loaded.resolve(agent, scopes, claims)
    assert got == name
    by_name = {p.name: p.rules for p in loaded.policies}
    assert rules is by_name.get(name, loaded.defaults)


def test_match_model_values() -> None:
    admins, scoped, claimed, named = policy(MATCHING).policies
    assert admins.agents == GlobSet(allow=("svc-*",))
    assert admins.scopes == frozenset({"billing.admin", "tools.call"})
    assert dict(admins.claims) == {"tenant": "acme-*", "tier": 2, "verified": True}
    assert isinstance(admins.claims, MappingProxyType)
    assert scoped.agents == GlobSet()  # omitted: any agent
    assert (scoped.scopes, dict(scoped.claims)) == (frozenset({"billing.read"}), {})
    assert claimed.scopes == frozenset()
    assert named.uses_credential is False
    assert all(p.uses_credential for p in (admins, scoped, claimed))


@pytest.mark.parametrize(
    ("expected", "claim", "holds"),
    [
        ("acme-*", "acme-eu", True),
        ("acme-*", "acme-", True),
        ("acme-*", "xacme-eu", False),
        ("team-?", "team-a", True),
        ("team-?", "team-ab", False),
        ("team-[ab]", "team-b", True),
        ("team-[!ab]", "team-b", False),
        ("*", "", True),
        ("*", 7, False),  # a glob matches strings only
        ("a.b", "axb", False),  # a dot is literal
        ("exact", "exact", True),
        ("exact", "Exact", False),
        (7, 7, True),
        (7, 7.0, True),
        (7, "7", False),
        (7, True, False),
        (1, True, False),
        (True, True, True),
        (True, 1, False),
        (False, 0, False),
        (False, False, True),
        (1.5, 1.5, True),
        (1.5, "1.5", False),
        (0, None, False),
    ],
)
def test_claim_values(expected: object, claim: object, holds: bool) -> None:
    named = NamedPolicy("p", claims={"c": expected})  # type: ignore[dict-item]
    assert named.matches("a", frozenset(), {"c": claim}) is holds
    assert named.matches("a", frozenset(), {}) is False
    assert named.matches("a") is False


@pytest.mark.parametrize(
    ("yaml_value", "value"),
    [
        ("acme", "acme"),
        ('"42"', "42"),
        ("42", 42),
        ("0x10", 16),
        ("-1.5", -1.5),
        ("true", True),
        ("false", False),
        ("'true'", "true"),
    ],
)
def test_claim_values_keep_their_yaml_type(yaml_value: str, value: object) -> None:
    loaded = policy(
        JWT_HEAD + f"policies:\n  - name: p\n    match: {{claims: {{c: {yaml_value}}}}}\n"
    )
    [named] = loaded.policies
    assert dict(named.claims) == {"c": value}
    assert type(named.claims["c"]) is type(value)
    assert named.matches("x", frozenset(), {"c": value})


def test_claim_values_one_and_true_are_different_policies() -> None:
    one = NamedPolicy("p", claims={"c": 1})
    true = NamedPolicy("p", claims={"c": True})
    assert one != true
    assert one == NamedPolicy("p", claims={"c": 1.0})
    assert hash(one) == hash(NamedPolicy("p", claims={"c": 1}))
    with pytest.raises(ValueError, match="not a string, number or boolean"):
        NamedPolicy("p", claims={"c": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="not a string, number or boolean"):
        NamedPolicy("p", claims={"c": float("nan")})


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("{}", ["p.yaml:6: policies[0].match: set at least one of agents, scopes, claims"]),
        ("", ["p.yaml:6: policies[0].match: expected a mapping, got null"]),
        ("{scopes: []}", ["p.yaml:6: policies[0].match.scopes: must not be empty"]),
        ("{scopes: }", ["p.yaml:6: policies[0].match.scopes: expected a list, got null"]),
        (
            "{scopes: read}",
            ["p.yaml:6: policies[0].match.scopes: expected a list, got a string 'read'"],
        ),
        (
            "{scopes: ['a b']}",
            [
                "p.yaml:6: policies[0].match.scopes[0]: invalid scope 'a b'; "
                "a scope is printable ASCII without spaces, '\"' or '\\'"
            ],
        ),
        ("{claims: {}}", ["p.yaml:6: policies[0].match.claims: must not be empty"]),
        (
            "{claims: [tenant]}",
            [
                "p.yaml:6: policies[0].match.claims: expected a mapping of claim names "
                "to values, got a list"
            ],
        ),
        ("{claims: {'': x}}", ["p.yaml:6: policies[0].match.claims: empty claim name"]),
        ("{claims: {t: ''}}", ["p.yaml:6: policies[0].match.claims.t: empty glob"]),
        (
            "{claims: {t: 'acme-[eu'}}",
            ["p.yaml:6: policies[0].match.claims.t: bad glob 'acme-[eu': unclosed '['"],
        ),
        (
            "{claims: {t: }}",
            [
                "p.yaml:6: policies[0].match.claims.t: expected a string, number or boolean, "
                "got null"
            ],
        ),
        (
            "{claims: {t: [a]}}",
            [
                "p.yaml:6: policies[0].match.claims.t: expected a string, number or boolean, "
                "got a list"
            ],
        ),
        (
            "{claims: {t: {a: 1}}}",
            [
                "p.yaml:6: policies[0].match.claims.t: expected a string, number or boolean, "
                "got a mapping"
            ],
        ),
        (
            "{claims: {t: 2024-01-01}}",
            [
                "p.yaml:6: policies[0].match.claims.t: expected a string, number or boolean, "
                "got a timestamp '2024-01-01'"
            ],
        ),
        (
            "{claims: {t: .nan, u: -.inf}}",
            [
                "p.yaml:6: policies[0].match.claims.t: expected a finite number, got '.nan'",
                "p.yaml:6: policies[0].match.claims.u: expected a finite number, got '-.inf'",
            ],
        ),
        (
            "{agents: [a], groups: [g]}",
            [
                "p.yaml:6: policies[0].match.groups: unknown key; "
                "expected one of: agents, scopes, claims"
            ],
        ),
        (
            "{agent: [a]}",
            [
                "p.yaml:6: policies[0].match.agent: unknown key, did you mean 'agents'?",
                "p.yaml:6: policies[0].match: set at least one of agents, scopes, claims",
            ],
        ),
    ],
)
def test_match_problems(match: str, expected: list[str]) -> None:
    assert problems(JWT_HEAD + f"policies:\n  - name: p\n    match: {match}\n") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\npolicies:\n  - name: p\n    match: {scopes: [a]}\n",
            [f"p.yaml:4: policies[0].match.scopes: {NO_JWT}"],
        ),
        (
            "version: 1\npolicies:\n  - name: p\n    match: {agents: [a], claims: {t: x}}\n",
            [f"p.yaml:4: policies[0].match.claims: {NO_JWT}"],
        ),
        (
            "version: 1\ndefaults:\n  require_scopes: [a]\n",
            [f"p.yaml:3: defaults.require_scopes: {NO_JWT}"],
        ),
        (
            "version: 1\nidentity: {api_keys: {file: k}}\npolicies:\n  - name: p\n"
            "    match: {agents: [a]}\n    require_scopes: [a]\n",
            [f"p.yaml:6: policies[0].require_scopes: {NO_JWT}"],
        ),
    ],
)
def test_scopes_and_claims_need_jwt(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_empty_require_scopes_need_nothing() -> None:
    loaded = policy(
        "version: 1\ndefaults: {require_scopes: []}\npolicies:\n  - name: p\n"
        "    match: {agents: [a]}\n    require_scopes:\n"
    )
    assert loaded.policies[0].rules.require_scopes == ()


# --- require_scopes ----------------------------------------------------------------


def test_require_scopes_inherit_from_defaults() -> None:
    loaded = policy(
        JWT_HEAD
        + """\
defaults:
  require_scopes: [tools.call, tools.read]
  budget: {calls: 5}
policies:
  - name: inherits
    match: {agents: ["i-*"]}
    budget: {calls: 1}
  - name: replaces
    match: {agents: ["r-*"]}
    require_scopes: [admin]
  - name: clears
    match: {agents: ["c-*"]}
    require_scopes: []
  - name: null-inherits
    match: {agents: ["n-*"]}
    require_scopes:
"""
    )
    assert loaded.defaults.require_scopes == ("tools.call", "tools.read")
    inherits, replaces, clears, nulls = (p.rules for p in loaded.policies)
    assert (inherits.require_scopes, inherits.budget.calls) == (("tools.call", "tools.read"), 1)
    assert (replaces.require_scopes, replaces.budget.calls) == (("admin",), 5)
    assert clears.require_scopes == ()
    assert nulls == loaded.defaults
    assert loaded.resolve("r-1") == ("replaces", replaces)


def test_require_scopes_default_is_empty() -> None:
    assert Rules().require_scopes == ()
    assert DEFAULT_POLICY.defaults.require_scopes == ()
    assert policy(JWT_HEAD).defaults.require_scopes == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("read", "p.yaml:5: defaults.require_scopes: expected a list, got a string 'read'"),
        ("['']", "p.yaml:5: defaults.require_scopes[0]: must not be empty"),
        (
            "['a\"b']",
            "p.yaml:5: defaults.require_scopes[0]: invalid scope 'a\"b'; "
            "a scope is printable ASCII without spaces, '\"' or '\\'",
        ),
        (
            "[1]",
            "p.yaml:5: defaults.require_scopes[0]: expected a scope string, got an integer '1'",
        ),
    ],
)
def test_require_scopes_problems(value: str, expected: str) -> None:
    assert problems(JWT_HEAD + f"defaults:\n  require_scopes: {value}\n") == [expected]


# --- resolve: signature, cache ------------------------------------------------------


def test_resolve_by_agent_alone_still_works_and_caches() -> None:
    loaded = policy("version: 1\npolicies:\n  - name: b\n    match: {agents: ['b-*']}\n")
    assert not loaded.matches_credentials
    first = loaded.resolve("b-1")
    assert first[0] == "b"
    assert loaded.resolve("b-1") is first
    assert loaded.resolve("b-1", frozenset({"x"}), {"t": 1}) is first  # irrelevant: same entry
    assert len(loaded._cache) == 1


def test_resolve_with_credential_matching_depends_on_scopes_and_claims() -> None:
    loaded = policy(MATCHING)
    assert loaded.matches_credentials
    assert loaded.resolve("svc-1")[0] == "named"
    assert loaded.resolve("svc-1", ADMIN, ACME)[0] == "acme-admins"
    assert loaded.resolve("svc-1")[0] == "named"  # not the cached answer of another caller
    assert loaded.resolve("svc-1", frozenset({"billing.admin"}), ACME)[0] == "named"
    assert loaded.resolve("svc-1", ADMIN, {**ACME, "tier": "2"})[0] == "named"
    assert loaded.resolve("svc-1", ADMIN, {**ACME, "verified": 1})[0] == "named"
    assert loaded.resolve("svc-1", ADMIN, {**ACME, "tier": 2.0})[0] == "acme-admins"
    assert loaded.resolve("x", frozenset({"billing.read"}))[0] == "scoped"
    assert loaded.resolve("x", frozenset(), {"org": "acme"})[0] == "claimed"
    assert loaded.resolve("x", frozenset(), {"org": ["acme"]})[0] == "default"


def test_resolve_cache_keeps_only_what_matching_reads_and_stays_bounded() -> None:
    loaded = policy(MATCHING)
    first = loaded.resolve("svc-1", ADMIN, ACME)
    # Scopes and claims no policy names do not make new entries.
    again = loaded.resolve("svc-1", ADMIN | {"unrelated"}, {**ACME, "iat": 123, "jti": "x"})
    assert again is first
    assert len(loaded._cache) == 1
    for i in range(5000):
        assert loaded.resolve("svc-1", ADMIN, {**ACME, "tenant": f"t-{i}"})[0] == "named"
    assert len(loaded._cache) <= 4096
    assert loaded.resolve("svc-1", ADMIN, ACME) == first


def test_resolve_accepts_read_only_claims() -> None:
    loaded = policy(MATCHING)
    claims = MappingProxyType(dict(ACME))
    assert loaded.resolve("svc-1", ADMIN, claims)[0] == "acme-admins"


def test_policy_files_with_credentials_compare_and_hash() -> None:
    assert policy(MATCHING) == policy(MATCHING)
    assert hash(policy(MATCHING)) == hash(policy(MATCHING))
    assert policy(MATCHING) != policy(MATCHING.replace("tier: 2", "tier: 3"))
    assert policy(MATCHING) != policy(MATCHING.replace("verified: true", "verified: 1"))


# --- the example policy's commented identity blocks ---------------------------------


def _uncommented(text: str, first: str) -> str:
    """``text`` with the commented block starting at the line ``first`` uncommented (up
    to the next line that is a bare ``#`` or not a comment)."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = start
    while end < len(lines) and lines[end].lstrip().startswith("#") and lines[end].strip() != "#":
        lines[end] = re.sub(r"^(\s*)# ", r"\1", lines[end])
        end += 1
    return "".join(lines)


def test_example_identity_is_trusted_header_by_default() -> None:
    loaded = parse_policy(EXAMPLE.read_text(), str(EXAMPLE))
    assert loaded.identity == Identity()


def test_example_jwt_block_is_valid_when_uncommented() -> None:
    text = EXAMPLE.read_text()
    for first in ("  # jwt:", "  # resource_metadata:", "  # - name: acme-operators"):
        text = _uncommented(text, first)
    loaded = parse_policy(text, "example.yaml")
    jwt = loaded.identity.jwt
    assert jwt is not None
    assert (jwt.jwks_url, jwt.algorithms, jwt.agent_claim, jwt.leeway) == (
        "https://idp.example.com/.well-known/jwks.json",
        ("RS256", "ES256"),
        "sub",
        30.0,
    )
    assert loaded.identity.resource_metadata is not None
    operators = loaded.policies[-1]
    assert operators.name == "acme-operators"
    assert operators.rules.require_scopes == ("tools.call",)
    scopes = frozenset({"billing.admin", "tools.call"})
    assert loaded.resolve("anyone", scopes, {"tenant": "acme-eu"})[0] == "acme-operators"


def test_example_api_keys_block_is_valid_when_uncommented() -> None:
    loaded = parse_policy(_uncommented(EXAMPLE.read_text(), "  # api_keys:"), "example.yaml")
    assert loaded.identity.api_keys == ApiKeysConfig(file="/etc/agent-warden/keys.yaml")


def test_example_jwt_and_api_keys_together_are_refused() -> None:
    text = _uncommented(_uncommented(EXAMPLE.read_text(), "  # jwt:"), "  # api_keys:")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "example.yaml")
    assert [p.message.split(":")[0] for p in info.value.problems] == ["identity.api_keys"]


def test_the_model_refuses_jwt_and_api_keys_together() -> None:
    with pytest.raises(ValueError, match="only one of jwt and api_keys may be set"):
        Identity(jwt=JwtConfig(jwks_file="j"), api_keys=ApiKeysConfig(file="k"))
