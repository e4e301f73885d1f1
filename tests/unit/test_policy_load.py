"""Policy model and loader: good files, every problem with its line, inheritance, matching."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.policy import (
    DEFAULT_POLICY,
    Budget,
    GlobSet,
    Origins,
    PolicyError,
    PolicyFile,
    Problem,
    RateLimit,
    Rules,
    SessionRules,
    check_files,
    load_policy,
    parse_policy,
)
from proxy.policy.decide import limits_for
from proxy.policy.limits import UNLIMITED, Limits
from proxy.policy.load import parse_duration

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "policies"
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))
GOLDEN = sorted(DATA.glob("*.expected"))
GOOD = sorted(p for p in DATA.glob("*.yaml") if not p.with_suffix(".expected").exists())


NOT_AN_ORIGIN = (
    "expected scheme://host[:port] with scheme http or https "
    "(like https://app.example.com or http://localhost:3000), or '*'"
)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(textwrap.dedent(text), "p.yaml")
    return [str(p) for p in info.value.problems]


def policy(text: str) -> PolicyFile:
    return parse_policy(textwrap.dedent(text), "p.yaml")


# --- good files -------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES + GOOD, ids=lambda p: p.name)
def test_good_files_load(path: Path) -> None:
    assert load_policy(path).source == str(path)
    assert check_files([str(path)]) == []


def test_contract_example_is_its_defaults_plus_billing() -> None:
    loaded = load_policy(DATA / "contract.yaml")
    example = SessionRules(ttl=3600, idle_timeout=900, max_per_agent=10, require="any")
    assert loaded.defaults == Rules(
        session=example, budget=Budget(calls=1000), rate_limit=RateLimit(per_minute=600)
    )
    assert loaded.identity == DEFAULT_POLICY.identity
    assert loaded.errors == DEFAULT_POLICY.errors
    assert loaded.origins == Origins() == DEFAULT_POLICY.origins
    [billing] = loaded.policies
    assert billing.name == "billing"
    assert billing.rules == Rules(
        session=SessionRules(ttl=3600, idle_timeout=900, max_per_agent=3),
        budget=Budget(calls=50, tools={"refund_payment": 2}),
        rate_limit=RateLimit(per_minute=30),
        tools=GlobSet(allow=("lookup_*", "refund_payment"), deny=("*_admin",)),
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_is_the_built_in_default(text: str) -> None:
    parsed = parse_policy(text, "empty.yaml")
    assert parsed == DEFAULT_POLICY
    assert parsed.source == "empty.yaml"
    assert DEFAULT_POLICY.source is None


def test_minimal_file_is_the_built_in_default() -> None:
    assert policy("version: 1\n") == DEFAULT_POLICY


def test_built_in_default_values() -> None:
    d = DEFAULT_POLICY
    assert (d.version, d.identity.header, d.identity.required) == (1, "X-Agent-Id", False)
    assert (d.errors.domain, d.errors.a2a_spec, d.store_failure) == (
        "agent-warden.dev",
        "1.0.1",
        "closed",
    )
    r = d.defaults
    assert r.mode == "enforce"
    # Transparent: sessions expire (24h, 1h idle) but nothing is capped, budgeted or limited.
    assert (r.session.ttl, r.session.idle_timeout) == (86400, 3600)
    assert (r.session.max_per_agent, r.session.require) == (None, "any")
    assert (r.budget.calls, dict(r.budget.tools), r.rate_limit.per_minute) == (None, {}, None)
    assert r.tools.allows("anything")
    assert r.methods.allows("tools/call")
    assert d.origins.allow == ()
    assert d.policies == ()
    assert d.resolve("whoever") == ("default", r)


def test_built_in_default_limits_are_the_stores_unlimited() -> None:
    limits = limits_for(DEFAULT_POLICY.defaults)
    assert limits == Limits(
        ttl=86400, idle_timeout=3600, max_per_agent=UNLIMITED, calls=UNLIMITED, per_minute=UNLIMITED
    )
    assert limits == Limits()
    assert limits_for(DEFAULT_POLICY.defaults) is limits  # cached


def test_unset_limits_are_none_explicit_limits_are_ints() -> None:
    loaded = policy(
        """
        version: 1
        defaults:
          session: {ttl: 1h}
          budget: {tools: {refund: 2}}
        policies:
          - name: capped
            match: {agents: ["c-*"]}
            session: {max_per_agent: 1}
            budget: {calls: 1}
            rate_limit: {per_minute: 1}
          - name: open
            match: {agents: ["*"]}
        """
    )
    d = loaded.defaults
    assert (d.session.max_per_agent, d.budget.calls, d.rate_limit.per_minute) == (None, None, None)
    assert (d.session.ttl, d.session.idle_timeout) == (3600.0, 3600.0)
    capped, unlimited = (p.rules for p in loaded.policies)
    assert (capped.session.max_per_agent, capped.budget.calls, capped.rate_limit.per_minute) == (
        1,
        1,
        1,
    )
    assert all(
        type(v) is int
        for v in (capped.session.max_per_agent, capped.budget.calls, capped.rate_limit.per_minute)
    )
    assert capped.budget.tools == {"refund": 2}
    assert unlimited == d
    assert limits_for(capped) == Limits(
        ttl=3600, max_per_agent=1, calls=1, tool_calls={"refund": 2}, per_minute=1
    )
    assert limits_for(unlimited) == Limits(ttl=3600, tool_calls={"refund": 2})


def test_session_require() -> None:
    loaded = policy(
        """
        version: 1
        defaults:
          session: {require: minted}
        policies:
          - name: inherits
            match: {agents: ["i-*"]}
            session: {max_per_agent: 2}
          - name: relaxed
            match: {agents: ["r-*"]}
            session: {require: any}
        """
    )
    assert loaded.defaults.session.require == "minted"
    inherits, relaxed = (p.rules.session for p in loaded.policies)
    assert (inherits.require, inherits.max_per_agent) == ("minted", 2)
    assert relaxed.require == "any"
    assert policy("version: 1\n").defaults.session.require == "any"


@pytest.mark.parametrize(
    ("yaml_value", "allow"),
    [
        ("[]", ()),
        ("", ()),  # null: not set
        ('["*"]', ("*",)),
        (
            '["https://app.example.com", "http://localhost:3000", "HTTPS://Console.Example.COM:8443"]',
            (
                "https://app.example.com",
                "http://localhost:3000",
                "HTTPS://Console.Example.COM:8443",
            ),
        ),
        (
            '["http://127.0.0.1:8080", "http://[::1]:3000"]',
            ("http://127.0.0.1:8080", "http://[::1]:3000"),
        ),
    ],
)
def test_origins_valid(yaml_value: str, allow: tuple[str, ...]) -> None:
    loaded = policy(f"version: 1\norigins:\n  allow: {yaml_value}\n")
    assert loaded.origins == Origins(allow=allow)


@pytest.mark.parametrize(
    ("allow", "origin", "allowed"),
    [
        ((), "https://app.example.com", False),
        (("https://app.example.com",), "https://app.example.com", True),
        (("https://app.example.com",), "https://APP.example.com", True),
        (("HTTPS://App.Example.com",), "https://app.example.com", True),
        (("https://app.example.com",), "https://app.example.com:443", True),
        (("https://app.example.com:443",), "https://app.example.com", True),
        (("http://app.example.com:80",), "http://app.example.com", True),
        (("https://app.example.com",), "http://app.example.com", False),  # scheme matters
        (("https://app.example.com",), "https://app.example.com:8443", False),
        (("http://app.example.com",), "http://app.example.com:443", False),  # not http's default
        (("http://localhost:3000",), "http://localhost:3000", True),
        (("http://localhost:3000",), "http://localhost:3001", False),
        (("http://localhost:3000",), "http://localhost", False),
        (("https://app.example.com",), "https://evil.app.example.com", False),
        (("https://app.example.com",), "https://app.example.com.evil.com", False),
        (("https://app.example.com",), "null", False),
        (("https://app.example.com",), "https://app.example.com/path", False),
        (("https://app.example.com",), "", False),
        (("http://[::1]:3000",), "http://[::1]:3000", True),
        (("*",), "https://anything.example", True),
        (("*",), "null", True),
        (("https://a.example", "*"), "http://b.example", True),
    ],
)
def test_origins_allows(allow: tuple[str, ...], origin: str, allowed: bool) -> None:
    assert Origins(allow=allow).allows(origin) is allowed


def test_origins_model_refuses_a_non_origin() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        Origins(allow=("https://app.example.com/",))


def test_nulls_mean_not_set() -> None:
    loaded = load_policy(DATA / "nulls.yaml")
    assert loaded.identity == DEFAULT_POLICY.identity
    assert loaded.defaults.session == SessionRules()
    assert loaded.defaults.tools == GlobSet(allow=("*",), deny=("*_admin",))
    assert loaded.policies == ()


def test_merge_keys_and_extension_keys() -> None:
    loaded = load_policy(DATA / "merge.yaml")
    assert [(p.name, p.rules.session.max_per_agent) for p in loaded.policies] == [
        ("one", 1),
        ("two", 2),
    ]


def test_store_failure_and_identity_keys() -> None:
    loaded = policy(
        """
        version: 1
        store_failure: open
        identity: {header: X-Caller, required: true}
        errors: {domain: errors.example.com, a2a_spec: "1.0.0"}
        """
    )
    assert loaded.store_failure == "open"
    assert (loaded.identity.header, loaded.identity.required) == ("X-Caller", True)
    assert (loaded.errors.domain, loaded.errors.a2a_spec) == ("errors.example.com", "1.0.0")


# --- bad files --------------------------------------------------------------------


@pytest.mark.parametrize("expected", GOLDEN, ids=lambda p: p.stem)
def test_bad_files_report_every_problem(expected: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    got = check_files([expected.with_suffix(".yaml").name])
    assert got == expected.read_text().splitlines()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\n", ["p.yaml:1: version: unsupported version 2; expected 1"]),
        (
            'version: "1"\n',
            ["p.yaml:1: version: expected an integer, got a string '1'"],
        ),
        (
            "defaults: {}\n",
            ["p.yaml:1: missing required key 'version'"],
        ),
        (
            "- version: 1\n",
            ["p.yaml:1: (top level): expected a mapping, got a list"],
        ),
        (
            "version: 1\nversoin: 1\n",
            ["p.yaml:2: versoin: unknown key, did you mean 'version'?"],
        ),
        (
            "version: 1\nsession: {ttl: 1h}\n",
            ["p.yaml:2: session: unknown key, did you mean 'defaults.session'?"],
        ),
        (
            "version: 1\nidle_timeout: 1h\n",
            ["p.yaml:2: idle_timeout: unknown key, did you mean 'defaults.session.idle_timeout'?"],
        ),
        (
            "version: 1\nrules: {}\n",
            [
                "p.yaml:2: rules: unknown key; expected one of: "
                "version, identity, errors, origins, store_failure, defaults, policies"
            ],
        ),
        (
            "version: 1\ndefaults:\n  ttl: 1h\n",
            ["p.yaml:3: defaults.ttl: unknown key, did you mean 'session.ttl'?"],
        ),
        (
            "version: 1\nversion: 1\n",
            ["p.yaml:2: version: duplicate key (first on line 1)"],
        ),
        (
            "version: 1\ndefaults:\n  budget:\n    calls: true\n",
            ["p.yaml:4: defaults.budget.calls: expected an integer, got a boolean 'true'"],
        ),
        (
            "version: 1\ndefaults:\n  budget:\n    calls: -5\n",
            ["p.yaml:4: defaults.budget.calls: must be at least 1, got -5"],
        ),
        (
            "version: 1\ndefaults:\n  rate_limit:\n    per_minute:\n",
            ["p.yaml:4: defaults.rate_limit.per_minute: expected an integer, got null"],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    - ttl: 1h\n",
            ["p.yaml:4: defaults.session: expected a mapping, got a list"],
        ),
        (
            "version: 1\ndefaults:\n  tools:\n    deny: {a: 1}\n",
            ["p.yaml:4: defaults.tools.deny: expected a list of globs, got a mapping"],
        ),
        (
            "version: 1\ndefaults:\n  tools:\n    deny: [ok, 'b[ad', 3]\n",
            [
                "p.yaml:4: defaults.tools.deny[1]: bad glob 'b[ad': unclosed '['",
                "p.yaml:4: defaults.tools.deny[2]: expected a glob string, got an integer '3'",
            ],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    idle_timeout: 15 minutes\n",
            [
                "p.yaml:4: defaults.session.idle_timeout: bad duration '15 minutes'; "
                "use integer seconds or a string like 500ms, 90s, 15m, 1h or 1h30m"
            ],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    ttl: -1\n",
            ["p.yaml:4: defaults.session.ttl: duration must be greater than zero, got '-1'"],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    ttl: [1h]\n",
            ["p.yaml:4: defaults.session.ttl: expected a duration, got a list"],
        ),
        (
            "version: 1\ndefaults:\n  mode: audit-only\n",
            ["p.yaml:3: defaults.mode: expected one of 'enforce', 'audit', got 'audit-only'"],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    require: minted-only\n",
            [
                "p.yaml:4: defaults.session.require: expected one of 'any', 'minted', "
                "got 'minted-only'"
            ],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    require: true\n",
            [
                "p.yaml:4: defaults.session.require: expected one of 'any', 'minted', "
                "got a boolean 'true'"
            ],
        ),
        (
            "version: 1\npolicies:\n  - name: a\n    match: {agents: [a]}\n    require: minted\n",
            ["p.yaml:5: policies[0].require: unknown key, did you mean 'session.require'?"],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    max_per_agent:\n",
            ["p.yaml:4: defaults.session.max_per_agent: expected an integer, got null"],
        ),
        (
            "version: 1\ndefaults:\n  session:\n    max_per_agent: 0\n",
            ["p.yaml:4: defaults.session.max_per_agent: must be at least 1, got 0"],
        ),
        (
            "version: 1\ndefaults:\n  rate_limit:\n    per_minute: 1.5\n",
            ["p.yaml:4: defaults.rate_limit.per_minute: expected an integer, got a float '1.5'"],
        ),
        (
            "version: 1\norigins:\n  allow:\n    - https://app.example.com/\n",
            [
                "p.yaml:4: origins.allow[0]: invalid origin 'https://app.example.com/': "
                "an origin has no path; write 'https://app.example.com'"
            ],
        ),
        (
            "version: 1\norigins:\n  allow:\n    - http://localhost:3000/app?x=1\n",
            [
                "p.yaml:4: origins.allow[0]: invalid origin 'http://localhost:3000/app?x=1': "
                "an origin has no path; write 'http://localhost:3000'"
            ],
        ),
        (
            "version: 1\norigins:\n  allow:\n    - ftp://files.example.com\n",
            [
                "p.yaml:4: origins.allow[0]: invalid origin 'ftp://files.example.com': "
                "the scheme must be http or https"
            ],
        ),
        (
            "version: 1\norigins:\n  allow: [app.example.com, 'https://*.example.com', "
            "'http://a:99999', 'null', '', 7]\n",
            [
                f"p.yaml:3: origins.allow[0]: invalid origin 'app.example.com'; {NOT_AN_ORIGIN}",
                "p.yaml:3: origins.allow[1]: invalid origin 'https://*.example.com': "
                "no wildcards in an origin; '*' alone allows every origin",
                f"p.yaml:3: origins.allow[2]: invalid origin 'http://a:99999'; {NOT_AN_ORIGIN}",
                f"p.yaml:3: origins.allow[3]: invalid origin 'null'; {NOT_AN_ORIGIN}",
                f"p.yaml:3: origins.allow[4]: invalid origin ''; {NOT_AN_ORIGIN}",
                "p.yaml:3: origins.allow[5]: expected an origin string, got an integer '7'",
            ],
        ),
        (
            "version: 1\norigins:\n  allow: https://app.example.com\n",
            ["p.yaml:3: origins.allow: expected a list, got a string 'https://app.example.com'"],
        ),
        (
            "version: 1\norigins: [https://app.example.com]\n",
            ["p.yaml:2: origins: expected a mapping, got a list"],
        ),
        (
            "version: 1\norigins:\n  allowed: []\n",
            ["p.yaml:3: origins.allowed: unknown key, did you mean 'allow'?"],
        ),
        (
            "version: 1\npolicies:\n  - name: a\n    match: {agents: [a]}\n    origins: {}\n",
            [
                "p.yaml:5: policies[0].origins: unknown key; expected one of: "
                "name, match, mode, session, budget, rate_limit, tools, methods, require_scopes"
            ],
        ),
        (
            "version: 1\nerrors:\n  a2a_spec: 1.0.2\n",
            ["p.yaml:3: errors.a2a_spec: expected one of '1.0.0', '1.0.1', got '1.0.2'"],
        ),
        (
            "version: 1\nerrors:\n  domain: agent warden\n",
            [
                "p.yaml:3: errors.domain: invalid domain 'agent warden'; "
                "expected a DNS name like agent-warden.dev"
            ],
        ),
        (
            "version: 1\nidentity:\n  header: X-Agent:Id\n",
            [
                "p.yaml:3: identity.header: invalid header name 'X-Agent:Id'; "
                "allowed: letters, digits and !#$%&'*+-.^_`|~"
            ],
        ),
        (
            "version: 1\nidentity:\n  required: 1\n",
            ["p.yaml:3: identity.required: expected a boolean, got an integer '1'"],
        ),
        (
            "version: 1\nstore_failure: true\n",
            ["p.yaml:2: store_failure: expected one of 'open', 'closed', got a boolean 'true'"],
        ),
        (
            "version: 1\npolicies:\n  - name: a\n    match: {agents: [a]}\n    budget:\n"
            "      tools: {search: 0}\n",
            ["p.yaml:6: policies[0].budget.tools.search: must be at least 1, got 0"],
        ),
        (
            "version: 1\npolicies:\n  - name: a\n    match: {agents: [a]}\n    <<: [1]\n",
            ["p.yaml:5: policies[0].<<: can only merge mappings"],
        ),
        (
            "version: 1\n? [a, b]\n: 1\n",
            ["p.yaml:2: (top level): keys must be plain strings"],
        ),
        (
            "version: 1\ndefaults:\n  mode: !custom enforce\n",
            [
                "p.yaml:3: defaults.mode: cannot read value: could not determine a "
                "constructor for the tag '!custom'"
            ],
        ),
        (
            "version: [1\n",
            [
                "p.yaml:2: invalid YAML: while parsing a flow sequence; "
                "expected ',' or ']', but got '<stream end>'"
            ],
        ),
        (
            "version: 1\n\tdefaults: {}\n",
            [
                "p.yaml:2: invalid YAML: while scanning for the next token; "
                "found character '\\t' that cannot start any token"
            ],
        ),
        (
            "version: 1\n---\nversion: 1\n",
            [
                "p.yaml:2: invalid YAML: expected a single document in the stream; "
                "but found another document"
            ],
        ),
        (
            "version: 1\nx: \x07\n",
            [
                "p.yaml:2: invalid YAML: unacceptable character #x0007: special characters "
                "are not allowed"
            ],
        ),
    ],
)
def test_problem_messages(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_all_problems_are_reported_sorted_by_line() -> None:
    got = problems(
        """\
        version: 1
        policies:
          - name: a
            match: {agents: [a]}
            budget: {calls: 0}
        defaults:
          rate_limit: {per_minute: 0}
        """
    )
    assert got == [
        "p.yaml:5: policies[0].budget.calls: must be at least 1, got 0",
        "p.yaml:7: defaults.rate_limit.per_minute: must be at least 1, got 0",
    ]


def test_policy_error_and_problem_format() -> None:
    problem = Problem("f.yaml", 3, "budget.calls: must be at least 1, got 0")
    assert str(problem) == "f.yaml:3: budget.calls: must be at least 1, got 0"
    error = PolicyError([problem, Problem("f.yaml", 4, "x")])
    assert error.problems == (problem, Problem("f.yaml", 4, "x"))
    assert str(error) == "f.yaml:3: budget.calls: must be at least 1, got 0\nf.yaml:4: x"


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert [str(p) for p in info.value.problems] == [
        f"{missing}:0: cannot read policy file: No such file or directory"
    ]
    assert check_files([str(tmp_path)]) == [
        f"{tmp_path}:0: cannot read policy file: Is a directory"
    ]


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    assert check_files([str(path)]) == [f"{path}:2: not UTF-8 text"]


def test_check_files_collects_every_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("version: 1\n")
    bad.write_text("version: 1\ndefaults: {mode: off}\n")
    assert check_files([str(good), str(bad), str(good)]) == [
        f"{bad}:2: defaults.mode: expected one of 'enforce', 'audit', got a boolean 'off'"
    ]


# --- durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2h0m5s", 7205),
        ("1m500ms", 60.5),
        ("0s", 0),
        ("", None),
        ("90", None),
        ("1.5h", None),
        ("30m1h", None),
        ("1d", None),
        ("1 h", None),
        ("1H", None),
        ("-5s", None),
        ("\u0661s", None),  # ARABIC-INDIC DIGIT ONE: \d would take it
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("yaml_value", "seconds"),
    [("7", 7.0), ("500ms", 0.5), ('"90s"', 90.0), ("1h30m", 5400.0), ("1m500ms", 60.5)],
)
def test_duration_values(yaml_value: str, seconds: float) -> None:
    loaded = policy(f"version: 1\ndefaults:\n  session:\n    ttl: {yaml_value}\n")
    assert loaded.defaults.session.ttl == seconds
    assert isinstance(loaded.defaults.session.ttl, float)


# --- inheritance and matching -----------------------------------------------------

LAYERED = """\
version: 1
defaults:
  mode: audit
  session: {ttl: 2h, max_per_agent: 4}
  budget: {calls: 100, tools: {search: 10, refund: 1}}
  tools: {deny: ["*_admin"]}
policies:
  - name: narrow
    match: {agents: ["billing-eu-*"]}
    session: {max_per_agent: 1}
  - name: billing
    match: {agents: ["billing-*", "finance"]}
    mode: enforce
    budget: {tools: {refund: 3}}
    tools: {allow: ["lookup_*", "refund"]}
  - name: shadowed
    match: {agents: ["billing-us-*"]}
"""


def test_unset_fields_inherit_defaults_leaf_by_leaf() -> None:
    loaded = policy(LAYERED)
    narrow = loaded.policies[0].rules
    assert narrow.mode == "audit"
    assert narrow.session == SessionRules(ttl=7200, idle_timeout=3600, max_per_agent=1)
    assert narrow.budget == loaded.defaults.budget
    assert narrow.tools is loaded.defaults.tools

    billing = loaded.policies[1].rules
    assert billing.mode == "enforce"
    assert billing.session == loaded.defaults.session
    # budget.calls inherited, budget.tools replaced as a whole
    assert billing.budget == Budget(calls=100, tools={"refund": 3})
    assert billing.tools == GlobSet(allow=("lookup_*", "refund"), deny=("*_admin",))


def test_first_match_wins() -> None:
    loaded = policy(LAYERED)
    assert loaded.resolve("billing-eu-1")[0] == "narrow"
    assert loaded.resolve("billing-us-1")[0] == "billing"  # never "shadowed"
    assert loaded.resolve("finance")[0] == "billing"
    assert loaded.resolve("finance-2") == ("default", loaded.defaults)
    assert loaded.resolve("Billing-eu-1")[0] == "default"  # case-sensitive


def test_resolve_caches_and_stays_bounded() -> None:
    loaded = policy(LAYERED)
    first = loaded.resolve("billing-eu-9")
    assert loaded.resolve("billing-eu-9") is first
    for i in range(5000):
        assert loaded.resolve(f"agent-{i}")[0] == "default"
    assert len(loaded._cache) <= 4096
    assert loaded.resolve("billing-eu-9") == first


@pytest.mark.parametrize(
    ("allow", "deny", "name", "allowed"),
    [
        (("*",), (), "anything", True),
        (("*",), ("*_admin",), "user_admin", False),
        (("*",), ("*_admin",), "admin_user", True),
        (("refund",), ("refund",), "refund", False),  # deny wins over allow
        (("lookup_*",), (), "lookup_order", True),
        (("lookup_*",), (), "xlookup_order", False),
        (("lookup_*",), (), "Lookup_order", False),  # case-sensitive
        (("tool_?",), (), "tool_a", True),
        (("tool_?",), (), "tool_ab", False),
        (("tool_[ab]",), (), "tool_b", True),
        (("tool_[!ab]",), (), "tool_b", False),
        (("tools/*",), (), "tools/call", True),
        (("a.b",), (), "axb", False),  # a dot is literal
        (("*",), (), "line\nbreak", True),
        ((), (), "anything", False),
    ],
)
def test_glob_set(allow: tuple[str, ...], deny: tuple[str, ...], name: str, allowed: bool) -> None:
    assert GlobSet(allow=allow, deny=deny).allows(name) is allowed


def test_model_values_are_frozen_and_hashable() -> None:
    rules = policy(LAYERED).policies[1].rules
    with pytest.raises(AttributeError):
        rules.mode = "audit"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rules.budget.tools["refund"] = 9  # type: ignore[index]
    assert hash(rules) == hash(policy(LAYERED).policies[1].rules)
    assert hash(DEFAULT_POLICY) == hash(PolicyFile())


def test_origins_file() -> None:
    loaded = load_policy(DATA / "origins.yaml")
    assert loaded.origins.allows("https://console.example.com")
    assert loaded.origins.allows("http://[::1]:5173")
    assert not loaded.origins.allows("http://localhost:5173")
    assert loaded.defaults.session.require == "minted"
    [browser] = loaded.policies
    assert browser.rules.session == SessionRules(require="any", max_per_agent=2)
    assert hash(loaded) == hash(load_policy(DATA / "origins.yaml"))
