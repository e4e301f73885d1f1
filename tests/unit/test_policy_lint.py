"""`check`'s warnings: policies that can never apply, tool rules that can never apply.

Each kind has its true positives and the near misses that must not warn; the glob
comparison under them is checked against fnmatch itself, with a witness either way.
"""

from __future__ import annotations

import fnmatch
import itertools
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.policy import check_file, parse_policy, parse_policy_checked
from proxy.policy.globs import Effort, TooComplex, common, covered, uncovered
from proxy.policy.lint import MAX_STEPS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml"))

JWT = """\
version: 1
identity:
  jwt: {issuers: [i], audiences: [a], jwks_url: "https://idp.example/jwks"}
"""


def warnings(text: str) -> list[str]:
    policy, found = parse_policy_checked(textwrap.dedent(text), "p.yaml")
    assert all(w.warning for w in found)
    assert parse_policy(textwrap.dedent(text), "p.yaml") == policy  # same policy either way
    return [str(w) for w in found]


def policies(*entries: str, head: str = "version: 1\n") -> str:
    """A file whose ``policies`` are ``entries``, each one line of flow YAML."""
    return head + "policies:\n" + "".join(f"  - {entry}\n" for entry in entries)


# --- unreachable policies -----------------------------------------------------------


def test_a_catch_all_shadows_every_later_policy() -> None:
    text = policies(
        '{name: everyone, match: {agents: ["*"]}}',
        '{name: billing, match: {agents: ["billing-*"]}}',
        '{name: ops, match: {agents: ["ops"]}}',
    )
    assert warnings(text) == [
        "p.yaml:4: warning: policies[1].match: policy 'billing' can never apply: "
        "policy 'everyone' (line 3) comes first and matches every caller 'billing' matches",
        "p.yaml:5: warning: policies[2].match: policy 'ops' can never apply: "
        "policy 'everyone' (line 3) comes first and matches every caller 'ops' matches",
    ]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        (["billing-*"], ["billing-eu-*"]),
        (["billing-*"], ["billing-1", "billing-[0-9]?"]),
        (["agent-[0-9]"], ["agent-[3-5]"]),
        (["a*", "b*"], ["[ab]x"]),  # one earlier policy, two globs
        (["*-eu"], ["billing-eu"]),
        (["?*"], ["x*"]),
        (["billing-*"], ["billing-*"]),  # the same match twice
    ],
)
def test_an_earlier_superset_of_agents_shadows(earlier: list[str], later: list[str]) -> None:
    text = policies(
        f"{{name: wide, match: {{agents: {earlier}}}}}",
        f"{{name: narrow, match: {{agents: {later}}}}}",
    )
    assert warnings(text) == [
        "p.yaml:4: warning: policies[1].match: policy 'narrow' can never apply: "
        "policy 'wide' (line 3) comes first and matches every caller 'narrow' matches"
    ]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        (["billing-*"], ["billing-*", "ops"]),  # ops still reaches it
        (["billing-?"], ["billing-*"]),  # billing-10
        (["billing-*"], ["billing*"]),  # "billing" itself
        (["agent-[0-9]"], ["agent-[3-a]"]),  # the range [3-a] holds ':' and more
        (["Billing-*"], ["billing-*"]),  # globs are case-sensitive
        (["?*"], ["*"]),  # the empty agent id
        (["a*"], ["[!b]*"]),
    ],
)
def test_a_near_superset_does_not_shadow(earlier: list[str], later: list[str]) -> None:
    text = policies(
        f"{{name: wide, match: {{agents: {earlier}}}}}",
        f"{{name: narrow, match: {{agents: {later}}}}}",
    )
    assert warnings(text) == []


def test_a_later_policy_covered_by_several_earlier_ones_together() -> None:
    text = policies(
        '{name: a, match: {agents: ["a-*"]}}',
        '{name: unrelated, match: {agents: ["z"]}}',
        '{name: b, match: {agents: ["b-*"]}}',
        '{name: both, match: {agents: ["a-1", "b-[0-9]"]}}',
        '{name: more, match: {agents: ["a-1", "c-1"]}}',  # c-1 reaches it
    )
    assert warnings(text) == [
        "p.yaml:6: warning: policies[3].match: policy 'both' can never apply: "
        "policies 'a' (line 3) and 'b' (line 5) come first and together match every caller "
        "'both' matches"
    ]


def test_a_policy_earlier_in_the_file_is_never_shadowed_by_a_later_one() -> None:
    text = policies(
        '{name: billing, match: {agents: ["billing-*"]}}',
        '{name: everyone, match: {agents: ["*"]}}',
    )
    assert warnings(text) == []


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        # Scopes: what the earlier policy requires, the later one requires too.
        ('{agents: ["*"], scopes: [read]}', '{agents: ["x"], scopes: [read, write]}'),
        ("{scopes: [read]}", '{agents: ["x"], scopes: [read]}'),
        # No agents key: any agent.
        ("{scopes: [read]}", "{scopes: [write, read]}"),
        # Claims: the later policy tests each claim at least as strictly.
        ('{claims: {tenant: "acme-*"}}', '{claims: {tenant: "acme-eu", tier: gold}}'),
        ("{claims: {level: 1}}", "{claims: {level: 1.0}}"),  # one JSON number
        ("{claims: {admin: true}}", "{agents: [x], claims: {admin: true}, scopes: [s]}"),
        ('{agents: ["*"]}', "{claims: {admin: true}}"),  # no claims to test: every caller
    ],
)
def test_credential_conditions_that_the_later_policy_implies_shadow(
    earlier: str, later: str
) -> None:
    text = policies(
        f"{{name: wide, match: {earlier}}}", f"{{name: narrow, match: {later}}}", head=JWT
    )
    assert warnings(text) == [
        "p.yaml:6: warning: policies[1].match: policy 'narrow' can never apply: "
        "policy 'wide' (line 5) comes first and matches every caller 'narrow' matches"
    ]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ('{agents: ["*"], scopes: [read]}', '{agents: ["x"]}'),  # x without the scope
        ('{agents: ["*"], scopes: [read, write]}', '{agents: ["x"], scopes: [read]}'),
        ('{claims: {tenant: "acme-*"}}', '{agents: ["x"]}'),  # a token without the claim
        ('{claims: {tenant: "acme-*"}}', '{claims: {tenant: "acme*"}}'),  # "acme"
        ('{claims: {tenant: "acme-*"}}', "{claims: {tenant: 7}}"),  # a number, not a string
        ("{claims: {level: 1}}", "{claims: {level: true}}"),  # a boolean is not 1
        ("{claims: {level: 1}}", "{claims: {level: 2}}"),
        ('{claims: {tenant: "a", region: "eu"}}', '{claims: {tenant: "a"}}'),
    ],
)
def test_credential_conditions_the_later_policy_does_not_imply_do_not_shadow(
    earlier: str, later: str
) -> None:
    text = policies(
        f"{{name: wide, match: {earlier}}}", f"{{name: narrow, match: {later}}}", head=JWT
    )
    assert warnings(text) == []


def test_several_earlier_policies_share_agents_only_when_each_is_implied() -> None:
    text = policies(
        '{name: a, match: {agents: ["a-*"]}}',
        '{name: b, match: {agents: ["b-*"], scopes: [admin]}}',  # not implied: no shadow
        '{name: both, match: {agents: ["a-1", "b-1"]}}',
        head=JWT,
    )
    assert warnings(text) == []


# --- tool rules that can never apply ------------------------------------------------


def test_a_budget_for_a_tool_the_same_policy_denies() -> None:
    text = """\
        version: 1
        policies:
          - name: billing
            match: {agents: ["billing-*"]}
            budget:
              tools:
                refund_payment: 2
                delete_admin: 1
            tools: {allow: ["*"], deny: ["*_admin"]}
        """
    assert warnings(text) == [
        "p.yaml:8: warning: policies[0].budget.tools.delete_admin: policy 'billing' sets a "
        "budget for tool 'delete_admin', which it never lets through: "
        "tools.deny '*_admin' denies it"
    ]


def test_a_budget_for_a_tool_no_allow_glob_admits() -> None:
    text = """\
        version: 1
        policies:
          - name: billing
            match: {agents: ["billing-*"]}
            budget: {tools: {refund_paymnt: 2}}
            tools: {allow: ["lookup_*", "refund_payment"]}
        """
    assert warnings(text) == [
        "p.yaml:5: warning: policies[0].budget.tools.refund_paymnt: policy 'billing' sets a "
        "budget for tool 'refund_paymnt', which it never lets through: "
        "no tools.allow glob admits it"
    ]


def test_a_budget_for_a_tool_denied_by_inherited_rules() -> None:
    text = """\
        version: 1
        defaults:
          tools: {deny: ["*_admin"]}
        policies:
          - name: ops
            match: {agents: ["ops"]}
            budget: {tools: {delete_admin: 1}}
        """
    assert warnings(text) == [
        "p.yaml:7: warning: policies[0].budget.tools.delete_admin: policy 'ops' sets a budget "
        "for tool 'delete_admin', which it never lets through: tools.deny '*_admin' denies it"
    ]


def test_a_budget_where_methods_refuse_tools_call() -> None:
    text = """\
        version: 1
        defaults:
          methods: {allow: [initialize, "tools/list"]}
          budget: {tools: {search: 5}}
        """
    assert warnings(text) == [
        "p.yaml:4: warning: defaults.budget.tools.search: defaults set a budget for tool "
        "'search', which they never let through: its methods rules never allow tools/call; "
        "no policy inherits this budget"
    ]


@pytest.mark.parametrize(
    "rules",
    [
        # The example's billing policy: a deny glob that denies nothing allowed is fine.
        '{allow: ["lookup_*", "refund_payment"], deny: ["*_admin"]}',
        '{allow: ["refund_*"]}',
        '{allow: ["*"], deny: ["refund_payment_*"]}',  # denies longer names only
        '{allow: ["*"], deny: ["Refund_payment"]}',  # case-sensitive
        "{deny: []}",
    ],
)
def test_a_budget_for_a_tool_the_policy_lets_through_does_not_warn(rules: str) -> None:
    text = f"""\
        version: 1
        policies:
          - name: billing
            match: {{agents: ["billing-*"]}}
            budget: {{calls: 50, tools: {{refund_payment: 2}}}}
            tools: {rules}
        """
    assert warnings(text) == []


def test_a_defaults_budget_counts_where_some_inheriting_policy_allows_the_tool() -> None:
    text = """\
        version: 1
        defaults:
          budget: {tools: {refund_payment: 2}}
          tools: {allow: ["lookup_*"]}
        policies:
          - name: billing                      # inherits the budget, allows the tool
            match: {agents: ["billing-*"]}
            tools: {allow: ["lookup_*", "refund_payment"]}
          - name: readonly                     # inherits it too, never calls it: fine
            match: {agents: ["ro-*"]}
        """
    assert warnings(text) == []


def test_a_defaults_budget_no_inheriting_policy_allows_warns_once() -> None:
    text = """\
        version: 1
        defaults:
          budget: {tools: {refund_payment: 2}}
          tools: {allow: ["lookup_*"]}
        policies:
          - name: billing                      # writes its own budget: does not inherit
            match: {agents: ["billing-*"]}
            budget: {tools: {refund_payment: 1}}
            tools: {allow: ["refund_payment"]}
          - name: readonly
            match: {agents: ["ro-*"]}
        """
    assert warnings(text) == [
        "p.yaml:3: warning: defaults.budget.tools.refund_payment: defaults set a budget for "
        "tool 'refund_payment', which neither defaults (no tools.allow glob admits it) nor "
        "any policy that inherits this budget lets through"
    ]


def test_an_inherited_budget_is_not_the_policys_mistake() -> None:
    text = """\
        version: 1
        defaults:
          budget: {tools: {refund_payment: 2}}
        policies:
          - name: readonly
            match: {agents: ["ro-*"]}
            tools: {allow: ["lookup_*"]}
        """
    assert warnings(text) == []


def test_an_allow_glob_every_match_of_which_is_denied() -> None:
    text = """\
        version: 1
        policies:
          - name: ops
            match: {agents: ["ops"]}
            tools:
              allow:
                - "lookup_*"
                - delete_admin
                - "db_[a-c]"
              deny: ["*_admin", db_a, db_b, db_c]
            methods: {allow: ["tools/*", initialize], deny: ["tools/*"]}
        """
    assert warnings(text) == [
        "p.yaml:8: warning: policies[0].tools.allow[1]: policy 'ops' allows tools matching "
        "'delete_admin', but tools.deny '*_admin' denies every one of them",
        "p.yaml:9: warning: policies[0].tools.allow[2]: policy 'ops' allows tools matching "
        "'db_[a-c]', but tools.deny 'db_a', 'db_b' and 'db_c' denies every one of them",
        "p.yaml:11: warning: policies[0].methods.allow[0]: policy 'ops' allows methods "
        "matching 'tools/*', but methods.deny 'tools/*' denies every one of them",
    ]


@pytest.mark.parametrize(
    "rules",
    [
        '{allow: ["*"], deny: ["*_admin"]}',
        '{allow: ["db_*"], deny: ["db_[a-m]*", "db_[n-z]*"]}',  # "db_" and "db_A" remain
        '{allow: ["db_[a-d]"], deny: [db_a, db_b, db_c]}',
        '{allow: ["*_admin"], deny: ["?*_admin"]}',  # "_admin" remains
    ],
)
def test_an_allow_glob_with_something_left_does_not_warn(rules: str) -> None:
    text = f"""\
        version: 1
        policies:
          - name: ops
            match: {{agents: ["ops"]}}
            tools: {rules}
        """
    assert warnings(text) == []


def test_a_defaults_allow_glob_an_inheriting_policy_leaves_allowed_does_not_warn() -> None:
    text = """\
        version: 1
        defaults:
          tools: {allow: ["lookup_*", delete_admin], deny: ["*_admin"]}
        policies:
          - name: ops                          # inherits the allow list, denies nothing
            match: {agents: ["ops"]}
            tools: {deny: []}
        """
    assert warnings(text) == []
    without_ops = textwrap.dedent(text).split("policies:")[0]
    assert warnings(without_ops) == [
        "p.yaml:3: warning: defaults.tools.allow[1]: defaults allows tools matching "
        "'delete_admin', but tools.deny '*_admin' denies every one of them"
    ]


# --- the whole file -----------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_policies_have_no_warnings(path: Path) -> None:
    assert check_file(str(path)) == ((), ())


def test_check_file_gives_errors_or_warnings() -> None:
    assert warnings("") == []
    assert warnings("version: 1\n") == []


def test_errors_come_without_warnings(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        policies('{name: a, match: {agents: ["*"]}}', "{name: b, match: {agents: [x]}}")
    )
    errors, found = check_file(str(path))
    assert errors == ()
    assert [w.line for w in found] == [4]
    path.write_text(path.read_text() + "defaults: {budget: {calls: 0}}\n")
    errors, found = check_file(str(path))
    assert [str(e) for e in errors] == [
        f"{path}:5: defaults.budget.calls: must be at least 1, got 0"
    ]
    assert found == ()


def test_yaml_anchors_and_merges_keep_their_lines() -> None:
    text = """\
        version: 1
        x-billing: &billing
          match: {agents: ["billing-*"]}
          budget:
            tools: {delete_admin: 1}
          tools: {deny: ["*_admin"]}
        policies:
          - <<: *billing
            name: billing
          - <<: *billing
            name: billing-again
        """
    assert warnings(text) == [
        "p.yaml:3: warning: policies[1].match: policy 'billing-again' can never apply: "
        "policy 'billing' (line 9) comes first and matches every caller 'billing-again' "
        "matches",
        "p.yaml:5: warning: policies[0].budget.tools.delete_admin: policy 'billing' sets a "
        "budget for tool 'delete_admin', which it never lets through: "
        "tools.deny '*_admin' denies it",
        "p.yaml:5: warning: policies[1].budget.tools.delete_admin: policy 'billing-again' "
        "sets a budget for tool 'delete_admin', which it never lets through: "
        "tools.deny '*_admin' denies it",
    ]


def test_too_intricate_globs_stop_with_one_warning() -> None:
    # "Some 14th-last character is not b or c": the earlier globs' automaton explodes.
    twelve = "?" * 12
    text = policies(
        f'{{name: b, match: {{agents: ["*b?{twelve}"]}}}}',
        '{name: c, match: {agents: ["*c???"]}}',
        f'{{name: a, match: {{agents: ["*a?{twelve}"]}}}}',
    )
    assert warnings(text) == [
        "p.yaml:0: warning: the globs are too many or too intricate to finish looking for "
        f"rules that can never apply (limit: {MAX_STEPS} steps); some may be missed"
    ]


# --- the glob comparison ------------------------------------------------------------

_PIECES = ["a", "b", "-", "]", "!", "[", "*", "?", "[ab]", "[!a]", "[a-b]", "[-a]", "[b-a]"]
_PIECES += ["[]a]", "[!]", "[!b-]", "[[]"]
globs = st.lists(st.sampled_from(_PIECES), max_size=5).map("".join)
_SHORT = ["", *("".join(t) for n in range(1, 4) for t in itertools.product("ab-]![", repeat=n))]


def _matches(text: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(text, p) for p in patterns)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(globs, min_size=1, max_size=3), st.lists(globs, max_size=3))
def test_uncovered_and_common_agree_with_fnmatch(a: list[str], b: list[str]) -> None:
    missing = uncovered(a, b, Effort(MAX_STEPS))
    if missing is not None:  # a witness: matched by a, by nothing of b
        assert _matches(missing, a)
        assert not _matches(missing, b)
    else:
        assert not any(_matches(s, a) and not _matches(s, b) for s in _SHORT)
    shared = common(a, b, Effort(MAX_STEPS))
    if shared is not None:
        assert _matches(shared, a)
        assert _matches(shared, b)
    else:
        assert not any(_matches(s, a) and _matches(s, b) for s in _SHORT)


def test_glob_comparison_examples() -> None:
    effort = Effort(MAX_STEPS)
    assert covered(["billing-[0-9]"], ["billing-*"], effort)
    assert uncovered(["billing-*"], ["billing-?"], effort) == "billing-"
    assert uncovered(["x"], [], effort) == "x"
    assert covered([], [], effort)
    assert common(["*_admin"], ["delete_*"], effort) == "delete_admin"
    assert common(["a*"], ["b*"], effort) is None
    assert covered(["é*"], ["[à-ê]*"], effort)  # not only ASCII
    with pytest.raises(TooComplex):
        covered(["a*b*c*d*"], ["*a*b*c", "*d"], Effort(3))
