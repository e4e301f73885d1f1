"""`agent-warden explain`: golden outputs for the first-match trace, the effective limits
and the verdict (tests/unit/golden/explain-*.txt and .json; regenerate with
`AGENT_WARDEN_GOLDEN=write pytest tests/unit/test_explain.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.explain import explain, parse_claims
from proxy.policy import parse_policy

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[2]

POLICY = """\
version: 1
identity:
  jwt:
    issuers: ["https://idp.example.test/"]
    audiences: ["https://agents.example.test/"]
    jwks_url: https://idp.example.test/jwks.json
defaults:
  session: {ttl: 1h, idle_timeout: 10m, max_per_agent: 5}
  budget: {calls: 100}
  rate_limit: {per_minute: 60}
  tools: {deny: ["*_admin"]}
policies:
  - name: billing-admins
    match: {agents: ["billing-*"], scopes: ["billing.admin"]}
    tools: {allow: ["*"]}
  - name: billing
    match: {agents: ["billing-*"]}
    budget: {calls: 20, tools: {refund: 2}}
    tools: {allow: ["lookup_*", "refund"], deny: ["*_admin"]}
  - name: eu-team
    match: {claims: {region: "eu-*", tier: 2}}
    mode: audit
    methods: {deny: ["resources/*"]}
"""

CASES = {
    "billing-refund": {"agent": "billing-7", "tool": "refund"},
    "billing-admin-denied": {"agent": "billing-7", "tool": "drop_admin"},
    "billing-admin-scoped": {
        "agent": "billing-7",
        "tool": "drop_admin",
        "scopes": ["billing.admin"],
    },
    "claims-audit": {
        "agent": "ops-1",
        "method": "resources/read",
        "claims": {"region": "eu-west", "tier": 2},
    },
    "claims-miss": {"agent": "ops-1", "tool": "echo", "claims": {"region": "us-east", "tier": 2}},
    "defaults": {"agent": "someone", "tool": "echo"},
}


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("AGENT_WARDEN_GOLDEN") == "write":
        path.write_text(text)
    assert path.exists(), f"{path} missing: regenerate with AGENT_WARDEN_GOLDEN=write"
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    policy = parse_policy(POLICY, "explain.yaml")
    found = explain(policy, **CASES[case])  # type: ignore[arg-type]
    _check(f"explain-{case}.txt", found.to_text())
    _check(f"explain-{case}.json", found.to_json() + "\n")


def test_verdicts() -> None:
    policy = parse_policy(POLICY, "explain.yaml")
    assert explain(policy, "billing-7", tool="refund").decision == "allow"
    denied = explain(policy, "billing-7", tool="drop_admin")
    assert (denied.policy, denied.decision, denied.reason) == (
        "billing",
        "deny",
        "TOOL_NOT_AUTHORIZED",
    )
    # The first policy is skipped (scope missing) and the trace says so.
    assert [s.matched for s in denied.trace] == [False, True]
    assert "billing.admin" in denied.trace[0].why
    audit = explain(policy, "ops-1", method="resources/read", claims={"region": "eu-1", "tier": 2})
    assert (audit.policy, audit.decision) == ("eu-team", "audit-deny")
    tier = explain(policy, "ops-1", tool="x", claims={"region": "eu-1", "tier": "2"})
    assert tier.policy == "default"  # "2" is a string, the policy wants the number 2
    assert "tier" in tier.trace[-2].why


def test_claims_parse_as_json_scalars() -> None:
    assert parse_claims(["a=1", "b=true", 'c="1"', "d=eu-*", "e=1.5"]) == {
        "a": 1,
        "b": True,
        "c": "1",
        "d": "eu-*",
        "e": 1.5,
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_claims(["novalue"])


def test_the_command(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "explain", "--policy", str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    out = cli("--agent", "billing-7", "--tool", "drop_admin", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["reason"] == "TOOL_NOT_AUTHORIZED"
    text = cli(
        "--agent", "ops-1", "--method", "resources/read", "--claims", "region=eu-x", "tier=2"
    )
    assert text.returncode == 0, text.stderr
    assert "applies: eu-team" in text.stdout
    bad = cli("--agent", "a", "--claims", "oops")
    assert bad.returncode == 2
    assert "NAME=VALUE" in bad.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "explain",
            "--policy",
            str(tmp_path / "no.yaml"),
            "--agent",
            "a",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
