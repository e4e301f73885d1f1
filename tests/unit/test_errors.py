"""proxy.errors: the table checked against docs/spec/errors.md, and both envelopes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from proxy.errors import (
    A2A_BY_JSONRPC_CODE,
    A2A_DOMAIN,
    DECISIONS,
    ERROR_INFO_TYPE,
    MCP_SESSION_GONE_CODE,
    METADATA_KEYS,
    RETRY_INFO_TYPE,
    SESSION_GONE,
    Code,
    Domain,
    E,
    JsonRpcId,
    WardenError,
    code_for_upstream_status,
    error_details,
    jsonrpc_error_object,
    render_aip193,
    render_jsonrpc,
    render_sse_aip193,
    render_sse_jsonrpc,
    retry_delay,
)
from proxy.errors.render import jsonrpc_code
from proxy.errors.table import KEEPS_STATUS

DOC = Path(__file__).parents[2] / "docs/spec/errors.md"
DOMAIN = "warden.example"
SPECS = ("1.0.1", "1.0.0")
REASON_RE = re.compile(r"[A-Z][A-Z0-9_]+[A-Z0-9]")
METADATA_KEY_RE = re.compile(r"[a-z][a-zA-Z0-9-_]+")
SECTION_2 = (
    E.SESSION_NOT_FOUND,
    E.SESSION_EXPIRED,
    E.SESSION_CLOSED,
    E.SESSION_BUDGET_EXCEEDED,
    E.TOOL_NOT_AUTHORIZED,
    E.SESSION_RATE_LIMITED,
    E.TOO_MANY_SESSIONS,
    E.AGENT_MISMATCH,
    E.UNAUTHENTICATED,
    E.METHOD_NOT_AUTHORIZED,
    E.POLICY_STORE_UNAVAILABLE,
    E.ORIGIN_NOT_ALLOWED,
    E.INSUFFICIENT_SCOPE,
    E.OVERLOADED,
    E.HEADER_MISMATCH,
)
# JSON-RPC 2.0's reserved range; MCP 2026-07-28 keeps -32020..-32099 of it for itself.
JSONRPC_RESERVED = range(-32768, -32000 + 1)
MCP_RESERVED = range(-32099, -32020 + 1)
# A JSON-RPC cell of section 2: the code, then an optional note, "-32020 (MCP's own code)".
JSONRPC_CELL = re.compile(r"(-\d+)(?: \(([^()]+)\))?")
# Cells errors.md leaves without a JSON-RPC code (section 3, stream interrupted): the
# final SSE event's JSON-RPC error is an internal error.
UNNUMBERED_JSONRPC = {"UPSTREAM_STREAM_INTERRUPTED": -32603}


def _name(member: E) -> str:
    return member.name


GONE: list[E] = sorted(SESSION_GONE, key=_name)
KEPT: list[E] = sorted(KEEPS_STATUS, key=_name)


# --- reading errors.md ------------------------------------------------------------------


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(number: int) -> str:
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", _doc(), re.M | re.S)
    assert match, f"errors.md has no section {number}"
    return match.group(0)


def _table(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    assert len(cells) > 2, "table expected"
    assert set("".join(cells[1])) <= set("-: "), "second table line must be the separator"
    return cells[2:]


def _bullet(section: str, start: str) -> str:
    """One bullet's text, whitespace collapsed."""
    match = re.search(rf"^- [^\n]*?{re.escape(start)}.*?(?=^- |^\S|\Z)", section, re.M | re.S)
    assert match, f"no bullet containing {start!r}"
    return " ".join(match.group(0).split())


def _by_reason(reason: str) -> list[E]:
    return [e for e in E if e.value.reason == reason]


def _one(reason: str) -> E:
    members = _by_reason(reason)
    assert len(members) == 1, f"{reason}: {members}"
    return members[0]


def _section2_rows() -> list[tuple[str, E, int, str | None]]:
    """(variant, member, JSON-RPC code, note of the code cell) for each section 2 row."""
    rows = []
    for variant, reason, message, code, http, jsonrpc in _table(_section(2)):
        cell = JSONRPC_CELL.fullmatch(jsonrpc)
        assert cell, f"{reason}: JSON-RPC cell {jsonrpc!r}"
        number = int(cell[1])
        member = _one(reason)
        row = member.value
        assert (row.message, row.code.name, row.http_status, row.jsonrpc_code) == (
            message,
            code,
            int(http),
            number,
        ), reason
        assert row.domain is Domain.PROXY
        assert row.http_for("1.0.0") == row.http_for("1.0.1") == (Code[code], int(http))
        rows.append((variant, member, number, cell[2]))
    return rows


def _section2_members() -> set[E]:
    return {member for _variant, member, _code, _note in _section2_rows()}


_REASON_TOKEN = re.compile(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])\b(?:\s*\((MCP|A2A)\))?")


def _section3_members() -> set[E]:
    seen = set()
    for _condition, reason_cell, status_cell, mcp_cell, a2a_cell in _table(_section(3)):
        reasons = _REASON_TOKEN.findall(reason_cell)
        assert reasons, reason_cell
        canonical = re.fullmatch(
            r"canonical code for the upstream status; (\d{3}) and other unmapped 5xx "
            r"become ([A-Z_]+) (\d{3})",
            status_cell,
        )
        if canonical:
            bad, answer = int(canonical[1]), (Code[canonical[2]], int(canonical[3]))
            assert code_for_upstream_status(bad) == answer
            for status in range(500, 600):
                if status not in (500, 501, 503, 504):
                    assert code_for_upstream_status(status) == answer, status
            expected: tuple[Code, int | None] | None = None
        else:
            head = re.match(r"([A-Z_]+)(?: (\d{3}))?", status_cell)
            assert head, status_cell
            expected = (Code[head[1]], int(head[2]) if head[2] else None)
        v100 = re.search(r"\(A2A spec 1\.0\.0: (\d{3})\)", status_cell)
        for reason, binding in reasons:
            member = _one(reason)
            row = member.value
            if expected is not None:
                code, maybe_http = expected
                assert row.code is code, reason
                assert row.http_status == (code.http if maybe_http is None else maybe_http), reason
            else:  # UPSTREAM_ERROR's own row, used when the status override is absent
                assert (row.code, row.http_status) == (Code.INTERNAL, 500)
            old = row.http_for("1.0.0")
            if v100 and binding != "MCP":
                assert old == (row.code, int(v100[1])), reason
            else:
                assert old == (row.code, row.http_status), reason
            cells = {"MCP": [mcp_cell], "A2A": [a2a_cell], "": [mcp_cell, a2a_cell]}[binding]
            for cell in cells:
                number = re.fullmatch(r"-\d+", cell)
                want = int(cell) if number else UNNUMBERED_JSONRPC[reason]
                assert row.jsonrpc_code == want, reason
            seen.add(member)
    return seen


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _section4_members() -> set[E]:
    section = _section(4)
    unimplemented = _bullet(section, "Spec 1.0.0's gRPC column")
    grpc = re.search(r"\(([A-Z_]+) for (-\d+(?:, -\d+)*)\)", unimplemented)
    assert grpc, unimplemented
    v100_grpc = {int(code): Code[grpc[1]] for code in grpc[2].split(", ")}
    renamed = re.search(
        r"1\.0\.0 used (\d{3})/(\d{3})/(\d{3}).*?use ([A-Z_]+), ([A-Z_]+) and ([A-Z_]+)",
        unimplemented,
    )
    assert renamed, unimplemented
    v100_status = {int(renamed[i]): Code[renamed[i + 3]] for i in (1, 2, 3)}

    seen = set()
    for name, jsonrpc, http101, http100, code101, reason in _table(section):
        assert _upper_snake(name) == reason, "reason is the error name in UPPER_SNAKE_CASE"
        member = _one(reason)
        row = member.value
        assert row.domain is Domain.A2A
        assert row.jsonrpc_code == int(jsonrpc), reason
        assert row.http_for("1.0.1") == (Code[code101], int(http101)), reason
        old_code = v100_grpc.get(int(jsonrpc)) or v100_status.get(int(http100)) or Code[code101]
        assert row.http_for("1.0.0") == (old_code, int(http100)), reason
        seen.add(member)

    standard = _bullet(section, "Standard JSON-RPC errors")
    groups = re.findall(
        r"((?:-\d+)(?: and -\d+)*) (?:are|is) (\d{3}) ([A-Z_]+) \((?:reasons? )?([A-Z_ /]+)\)",
        standard,
    )
    assert len(groups) == 3, standard
    for codes, http, code, reason_list in groups:
        reasons = set(reason_list.split(" / "))
        members = {m for r in reasons for m in _by_reason(r)}
        used = set()
        for number in (int(c) for c in codes.split(" and ")):
            [member] = [m for m in members if m.value.jsonrpc_code == number]
            assert member.value.http_for("1.0.1") == (Code[code], int(http))
            assert member.value.http_for("1.0.0") == (Code[code], int(http))
            used.add(member.value.reason)
            seen.add(member)
        assert used == reasons, standard
    return seen


def test_section_2_table_matches() -> None:
    assert _section2_members() == set(SECTION_2)


def test_jsonrpc_cell_parser() -> None:
    cell = JSONRPC_CELL.fullmatch("-32020 (MCP's own code)")
    assert cell
    assert (int(cell[1]), cell[2]) == (-32020, "MCP's own code")
    plain = JSONRPC_CELL.fullmatch("-31060")
    assert plain
    assert (int(plain[1]), plain[2]) == (-31060, None)
    for bad in ("31060", "-31060 ", "-31060 (a) (b)", "(MCP's own code)", ""):
        assert not JSONRPC_CELL.fullmatch(bad), bad


def _own_and_reserved_codes() -> tuple[range, set[int]]:
    """errors.md section 2, "Codes": the proxy's own range, and the codes it may emit
    inside JSON-RPC's reserved range (MCP's and A2A's own, and the standard ones)."""
    codes = _bullet(_section(2), "**Codes (decision")
    own = re.search(
        r"own codes live outside the JSON-RPC reserved range, in (-\d+)\.\.(-\d+)", codes
    )
    assert own, codes
    own_range = range(int(own[2]), int(own[1]) + 1)
    allowed: set[int] = set()
    for first, last in re.findall(r"(-\d+)(?:\.\.(-\d+))?", codes.split("with their meanings:")[1]):
        allowed.update(range(int(last), int(first) + 1) if last else {int(first)})
    return own_range, allowed


def test_jsonrpc_codes_stay_outside_the_reserved_range() -> None:
    own, allowed = _own_and_reserved_codes()
    assert own == range(-31099, -31060 + 1)
    assert allowed == {
        -32005,
        -32020,
        *range(-32009, -32000),
        -32700,
        -32600,
        -32601,
        -32602,
        -32603,
    }
    assert all(code not in JSONRPC_RESERVED for code in own)
    emitted = {e.value.jsonrpc_code for e in E} | {MCP_SESSION_GONE_CODE}
    for code in emitted:
        assert code in (allowed if code in JSONRPC_RESERVED else own), code
    # Section 2: the proxy's own codes, except a cell marked as MCP's own code.
    for _variant, member, code, note in _section2_rows():
        if note is None:
            assert code in own, member
        else:
            assert note == "MCP's own code", member
            assert code in MCP_RESERVED, member
            assert code in allowed, member
    assert E.HEADER_MISMATCH.value.jsonrpc_code == -32020


def test_section_3_table_matches() -> None:
    assert _section3_members() == {
        E.UPSTREAM_UNAVAILABLE,
        E.UPSTREAM_TIMEOUT,
        E.UPSTREAM_ERROR,
        E.UPSTREAM_INVALID_RESPONSE,
        E.INVALID_AGENT_RESPONSE,
        E.UPSTREAM_STREAM_INTERRUPTED,
    }


def test_section_4_table_and_standard_errors_match() -> None:
    members = _section4_members()
    assert len(members) == 9 + 5


def test_every_member_is_documented_or_a_decision() -> None:
    documented = _section2_members() | _section3_members() | _section4_members()
    assert set(E) - documented == DECISIONS
    assert not DECISIONS & documented, "a documented row is no longer a decision"


def test_canonical_http_mapping_matches() -> None:
    bullet = _bullet(_section(1), "Canonical HTTP mapping")
    mapping = bullet.split("):", 1)[1].rstrip(".")
    seen = set()
    for part in mapping.split(";"):
        names, http = part.strip().rsplit(" ", 1)
        for name in re.split(r",\s*", names):
            assert Code[name].http == int(http), name
            seen.add(Code[name])
    assert seen == set(Code) - {Code.OK}


def test_decisions() -> None:
    too_large = E.REQUEST_TOO_LARGE.value
    assert (too_large.reason, too_large.code, too_large.http_status) == (
        "REQUEST_TOO_LARGE",
        Code.INVALID_ARGUMENT,
        400,
    )
    assert (too_large.jsonrpc_code, too_large.domain) == (-32600, Domain.PROXY)
    # The proxy raises these two itself, so they carry its own domain.
    assert E.PARSE_ERROR.value.domain is E.INVALID_REQUEST.value.domain is Domain.PROXY
    assert E.PARSE_ERROR.value.reason == "INVALID_REQUEST"
    assert E.PARSE_ERROR.value.jsonrpc_code == -32700


# --- the table's own invariants ---------------------------------------------------------


def test_no_aliases_and_distinct_rows() -> None:
    assert len(E.__members__) == len(E)
    assert len({(e.value.reason, e.value.jsonrpc_code, e.value.message) for e in E}) == len(E)


@pytest.mark.parametrize("member", list(E), ids=_name)
def test_row_is_well_formed(member: E) -> None:
    row = member.value
    assert REASON_RE.fullmatch(row.reason)
    assert len(row.reason) <= 63
    assert row.message
    assert row.message == row.message.strip().lower()
    assert not re.search(r"\d", row.message), "messages are opaque: no numbers"
    assert row.http_status == row.code.http
    if row.http_status_v100 is not None or row.code_v100 is not None:
        assert row.domain is Domain.A2A


@pytest.mark.parametrize("member", SECTION_2, ids=_name)
def test_section_2_messages_have_no_digits(member: E) -> None:
    assert not any(ch.isdigit() for ch in member.value.message)


def test_session_gone_and_a2a_lookup() -> None:
    assert MCP_SESSION_GONE_CODE == -32005
    assert {E.SESSION_NOT_FOUND, E.SESSION_EXPIRED, E.SESSION_CLOSED} == SESSION_GONE
    assert sorted(A2A_BY_JSONRPC_CODE) == list(range(-32009, -32000))
    assert all(e.value.domain is Domain.A2A for e in A2A_BY_JSONRPC_CODE.values())
    assert A2A_BY_JSONRPC_CODE[-32001] is E.TASK_NOT_FOUND


def test_metadata_keys_are_lower_camel_case() -> None:
    assert all(METADATA_KEY_RE.fullmatch(key) for key in METADATA_KEYS)


@pytest.mark.parametrize(
    ("status", "code", "http"),
    [
        (400, Code.INVALID_ARGUMENT, 400),
        (401, Code.UNAUTHENTICATED, 401),
        (403, Code.PERMISSION_DENIED, 403),
        (404, Code.NOT_FOUND, 404),
        (409, Code.ABORTED, 409),
        (429, Code.RESOURCE_EXHAUSTED, 429),
        (499, Code.CANCELLED, 499),
        (500, Code.INTERNAL, 500),
        (501, Code.UNIMPLEMENTED, 501),
        (503, Code.UNAVAILABLE, 503),
        (504, Code.DEADLINE_EXCEEDED, 504),
        (502, Code.INTERNAL, 500),
        (505, Code.INTERNAL, 500),
        (507, Code.INTERNAL, 500),
        (599, Code.INTERNAL, 500),
        (405, Code.UNIMPLEMENTED, 405),
        (406, Code.INVALID_ARGUMENT, 406),
        (408, Code.DEADLINE_EXCEEDED, 408),
        (410, Code.NOT_FOUND, 410),
        (412, Code.FAILED_PRECONDITION, 412),
        (413, Code.INVALID_ARGUMENT, 413),
        (415, Code.INVALID_ARGUMENT, 415),
        (416, Code.OUT_OF_RANGE, 416),
        (422, Code.INVALID_ARGUMENT, 422),
        (451, Code.PERMISSION_DENIED, 451),
        (418, Code.FAILED_PRECONDITION, 418),
        (200, Code.INTERNAL, 500),
        (302, Code.INTERNAL, 500),
        (600, Code.INTERNAL, 500),
    ],
)
def test_code_for_upstream_status(status: int, code: Code, http: int) -> None:
    assert code_for_upstream_status(status) == (code, http)


def test_code_for_upstream_status_keeps_every_4xx() -> None:
    for status in range(400, 500):
        _, http = code_for_upstream_status(status)
        assert http == status


# --- rendering --------------------------------------------------------------------------


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _expected_info(member: E, domain: str, metadata: dict[str, str]) -> dict[str, object]:
    return {
        "@type": ERROR_INFO_TYPE,
        "reason": member.value.reason,
        "domain": A2A_DOMAIN if member.value.domain is Domain.A2A else domain,
        "metadata": metadata,
    }


@pytest.mark.parametrize("a2a_spec", SPECS)
@pytest.mark.parametrize("member", list(E), ids=_name)
def test_render_aip193_every_member(member: E, a2a_spec: str) -> None:
    code, http = member.value.http_for(a2a_spec)
    out = render_aip193(WardenError(member), domain=DOMAIN, a2a_spec=a2a_spec)
    assert out.status == http
    assert out.headers == (("Content-Type", "application/json"),)
    body = json.loads(out.body)
    assert list(body) == ["error"]
    error = body["error"]
    assert list(error) == ["code", "status", "message", "details"]
    assert error["code"] == http
    assert error["status"] == code.name
    assert error["message"] == member.value.message
    assert error["details"] == [_expected_info(member, DOMAIN, {})]
    assert out.body == _compact(body)


@pytest.mark.parametrize("a2a_spec", SPECS)
@pytest.mark.parametrize("member", list(E), ids=_name)
def test_render_jsonrpc_every_member(member: E, a2a_spec: str) -> None:
    err = WardenError(member, {"sessionId": "s-1", "method": "tools/call"})
    out = render_jsonrpc(err, 7, domain=DOMAIN, a2a_spec=a2a_spec)
    # HTTP 200, but for the rows whose status a specification requires (errors.md section 1).
    assert out.status == (member.value.http_for(a2a_spec)[1] if member in KEEPS_STATUS else 200)
    assert out.headers == (("Content-Type", "application/json"),)
    body = json.loads(out.body)
    assert list(body) == ["jsonrpc", "id", "error"]
    assert (body["jsonrpc"], body["id"]) == ("2.0", 7)
    assert list(body["error"]) == ["code", "message", "data"]
    assert body["error"]["code"] == member.value.jsonrpc_code
    assert body["error"]["message"] == member.value.message
    info = _expected_info(member, DOMAIN, {"sessionId": "s-1", "method": "tools/call"})
    assert body["error"]["data"] == [info]
    assert out.body == _compact(jsonrpc_error_object(err, 7, domain=DOMAIN, a2a_spec=a2a_spec))


@pytest.mark.parametrize("mcp_session", [False, True])
@pytest.mark.parametrize("member", list(E), ids=_name)
def test_fast_path_equals_dict_path(member: E, mcp_session: bool) -> None:
    err = WardenError(member, {"tool": 'we"ird\u00e9'}, retry_after=1.25, mcp_session=mcp_session)
    body = render_jsonrpc(err, "x", domain=DOMAIN).body
    obj = jsonrpc_error_object(err, "x", domain=DOMAIN)
    assert body == _compact(obj)
    assert json.loads(body)["error"]["code"] == jsonrpc_code(err)
    sse = render_sse_jsonrpc(err, "x", domain=DOMAIN)
    assert sse == b"event: message\ndata: " + body + b"\n\n"
    code, http = err.http_for()
    aip = {
        "error": {
            "code": http,
            "status": code.name,
            "message": member.value.message,
            "details": error_details(err, domain=DOMAIN),
        }
    }
    assert render_aip193(err, domain=DOMAIN).body == _compact(aip)


def _retry_bullet_members() -> list[E]:
    """errors.md section 2: the rows that carry RetryInfo and Retry-After."""
    bullet = _bullet(_section(2), "carry RetryInfo")
    names = re.match(r"- (\w+) and (\w+) carry RetryInfo", bullet)
    assert names, bullet
    variants = {variant: member for variant, member, _code, _note in _section2_rows()}
    return [variants.get(name) or _one(name) for name in (names[1], names[2])]


def test_retry_bullet_says_whole_seconds_rounded_up() -> None:
    bullet = _bullet(_section(2), "carry RetryInfo")
    assert "whole seconds, rounded up" in bullet
    assert "`retryDelay` is rounded up to whole seconds" in bullet
    assert _retry_bullet_members() == [E.SESSION_RATE_LIMITED, E.OVERLOADED]


@pytest.mark.parametrize("member", [E.SESSION_RATE_LIMITED, E.OVERLOADED], ids=_name)
def test_retry_info_and_retry_after(member: E) -> None:
    err = WardenError(member, {"sessionId": "abc"}, retry_after=1.2)
    outs = (
        render_aip193(err, domain=DOMAIN),
        render_jsonrpc(err, 1, domain=DOMAIN),
        render_jsonrpc(err, 1, domain=DOMAIN, notification=True),
    )
    for out in outs:
        assert dict(out.headers) == {"Content-Type": "application/json", "Retry-After": "2"}
    details = json.loads(render_aip193(err, domain=DOMAIN).body)["error"]["details"]
    assert details == [
        _expected_info(member, DOMAIN, {"sessionId": "abc"}),
        {"@type": RETRY_INFO_TYPE, "retryDelay": "2s"},
    ]
    data = json.loads(render_jsonrpc(err, 1, domain=DOMAIN).body)["error"]["data"]
    assert data == details
    assert error_details(err, domain=DOMAIN) == details
    assert jsonrpc_error_object(err, 1, domain=DOMAIN)["error"]["data"] == details  # type: ignore[index]
    sse = render_sse_aip193(err, domain=DOMAIN)
    assert json.loads(sse.split(b"data: ", 1)[1])["error"]["details"] == details


@pytest.mark.parametrize(
    ("seconds", "whole"),
    [
        (0.2, 1),
        (1.2, 2),
        (1.000001, 2),
        (12, 12),
        (12.0, 12),
        (0, 0),
        (0.0, 0),
        (59.5, 60),
        (59.999, 60),
    ],
)
def test_retry_after_and_retry_delay_round_up(seconds: float, whole: int) -> None:
    """Whole seconds on both: a fractional retryDelay would let a rate be computed."""
    err = WardenError(E.SESSION_RATE_LIMITED, retry_after=seconds)
    for out in (render_aip193(err, domain=DOMAIN), render_jsonrpc(err, 1, domain=DOMAIN)):
        assert dict(out.headers)["Retry-After"] == str(whole)
    aip = json.loads(render_aip193(err, domain=DOMAIN).body)["error"]["details"][1]
    rpc = json.loads(render_jsonrpc(err, 1, domain=DOMAIN).body)["error"]["data"][1]
    assert aip["retryDelay"] == rpc["retryDelay"] == f"{whole}s"
    assert error_details(err, domain=DOMAIN)[1]["retryDelay"] == f"{whole}s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (12, "12s"),
        (0.5, "0.500s"),
        (0.2, "0.200s"),
        (1.000001, "1.000001s"),
        (0.000000001, "0.000000001s"),
        (3.25, "3.250s"),
        (0, "0s"),
    ],
)
def test_retry_delay(seconds: float, text: str) -> None:
    assert retry_delay(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan])
def test_retry_delay_rejects(seconds: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        retry_delay(seconds)
    with pytest.raises(ValueError, match="retry_after"):
        WardenError(E.SESSION_RATE_LIMITED, retry_after=seconds)


def test_mcp_session_gone_matches_errors_md() -> None:
    bullet = _bullet(_section(2), "**MCP session-gone")
    gone = re.search(r"for (\w+), (\w+) and (\w+) of a 2025-era MCP protocol session", bullet)
    wire = re.search(r"\*\*HTTP (\d{3})\*\* with a JSON-RPC body of code \*\*(-\d+)\*\*", bullet)
    assert gone, bullet
    assert wire, bullet
    variants = {variant: member for variant, member, _code, _note in _section2_rows()}
    assert {variants[gone[i]] for i in (1, 2, 3)} == SESSION_GONE
    assert (int(wire[1]), int(wire[2])) == (404, MCP_SESSION_GONE_CODE)
    exceptions = _bullet(_section(1), "**decision**: on the JSON-RPC bindings")
    assert "MCP session-gone for a 2025-era protocol session: 404 (section 2)" in exceptions


@pytest.mark.parametrize("notification", [False, True])
@pytest.mark.parametrize("member", GONE, ids=_name)
def test_mcp_session_gone(member: E, notification: bool) -> None:
    err = WardenError(member, {"sessionId": "gone"}, mcp_session=True)
    assert jsonrpc_code(err) == MCP_SESSION_GONE_CODE
    out = render_jsonrpc(err, 3, domain=DOMAIN, notification=notification)
    assert out.status == 404
    body = json.loads(out.body)
    assert body["id"] == (None if notification else 3)
    assert body["error"]["code"] == MCP_SESSION_GONE_CODE
    assert body["error"]["message"] == member.value.message
    assert body["error"]["data"][0]["reason"] == member.value.reason
    sse = render_sse_jsonrpc(err, 3, domain=DOMAIN)
    assert json.loads(sse.split(b"data: ", 1)[1])["error"]["code"] == MCP_SESSION_GONE_CODE
    batch = jsonrpc_error_object(err, 3, domain=DOMAIN)
    assert batch["error"]["code"] == MCP_SESSION_GONE_CODE  # type: ignore[index]
    # A minted session or an agent window that is gone: the row's own code, HTTP 200.
    plain = WardenError(member, {"sessionId": "gone"})
    assert jsonrpc_code(plain) == member.value.jsonrpc_code
    if not notification:
        out = render_jsonrpc(plain, 3, domain=DOMAIN)
        assert out.status == 200
        assert json.loads(out.body)["error"]["code"] == member.value.jsonrpc_code


@pytest.mark.parametrize("a2a_spec", SPECS)
@pytest.mark.parametrize("member", list(E), ids=_name)
def test_mcp_session_changes_only_session_gone(member: E, a2a_spec: str) -> None:
    """mcp_session=True turns SESSION_NOT_FOUND/EXPIRED/CLOSED into 404 and -32005 on
    JSON-RPC, and changes nothing else: no other row, and no AIP-193 answer."""
    meta = {"sessionId": "s"}
    new, old = WardenError(member, meta, mcp_session=True), WardenError(member, meta)
    gone = member in SESSION_GONE

    assert render_aip193(new, domain=DOMAIN, a2a_spec=a2a_spec) == render_aip193(
        old, domain=DOMAIN, a2a_spec=a2a_spec
    )
    assert render_sse_aip193(new, domain=DOMAIN, a2a_spec=a2a_spec) == render_sse_aip193(
        old, domain=DOMAIN, a2a_spec=a2a_spec
    )
    assert error_details(new, domain=DOMAIN) == error_details(old, domain=DOMAIN)

    for notification in (False, True):
        a = render_jsonrpc(new, 5, domain=DOMAIN, a2a_spec=a2a_spec, notification=notification)
        b = render_jsonrpc(old, 5, domain=DOMAIN, a2a_spec=a2a_spec, notification=notification)
        assert a.headers == b.headers
        if not gone:
            assert a == b
            continue
        assert a.status == 404
        assert b.status == 200  # only a 2025-era MCP session's end is a 404
        body_a, body_b = json.loads(a.body), json.loads(b.body)
        assert (body_a["error"]["code"], body_b["error"]["code"]) == (
            MCP_SESSION_GONE_CODE,
            member.value.jsonrpc_code,
        )
        body_a["error"]["code"] = body_b["error"]["code"]
        assert body_a == body_b, "only the code differs"
    want = MCP_SESSION_GONE_CODE if gone else member.value.jsonrpc_code
    assert jsonrpc_code(new) == want
    assert jsonrpc_code(old) == member.value.jsonrpc_code
    sse = render_sse_jsonrpc(new, 5, domain=DOMAIN, a2a_spec=a2a_spec)
    assert json.loads(sse.split(b"data: ", 1)[1])["error"]["code"] == want
    obj = jsonrpc_error_object(new, 5, domain=DOMAIN, a2a_spec=a2a_spec)
    assert obj["error"]["code"] == want  # type: ignore[index]


@pytest.mark.parametrize("member", [e for e in E if e not in SESSION_GONE], ids=_name)
def test_no_other_mcp_error_uses_404(member: E) -> None:
    out = render_jsonrpc(WardenError(member, mcp_session=True), 1, domain=DOMAIN)
    assert out.status != 404
    assert out.status == (member.value.http_status if member in KEEPS_STATUS else 200)
    assert json.loads(out.body)["error"]["code"] == member.value.jsonrpc_code


def test_keeps_status_matches_errors_md() -> None:
    """errors.md section 1: the exceptions to HTTP 200 on JSON-RPC, each with its status."""
    exceptions = _bullet(_section(1), "**decision**: on the JSON-RPC bindings")
    kept = dict(re.findall(r"\b([A-Z][A-Z_]*[A-Z]): (\d{3})\b", exceptions))
    assert kept == {
        "UNAUTHENTICATED": "401",
        "INSUFFICIENT_SCOPE": "403",
        "ORIGIN_NOT_ALLOWED": "403",
        "HEADER_MISMATCH": "400",
    }
    assert {_one(reason) for reason in kept} == KEEPS_STATUS
    for reason, status in kept.items():
        assert _one(reason).value.http_for("1.0.1") == (_one(reason).value.code, int(status))
    assert not KEEPS_STATUS & SESSION_GONE


@pytest.mark.parametrize("mcp_session", [False, True])
@pytest.mark.parametrize("a2a_spec", SPECS)
@pytest.mark.parametrize("member", KEPT, ids=_name)
def test_keeps_status_on_jsonrpc(member: E, a2a_spec: str, mcp_session: bool) -> None:
    err = WardenError(member, {"method": "tools/call"}, mcp_session=mcp_session)
    _, http = member.value.http_for(a2a_spec)
    assert http in (400, 401, 403)
    out = render_jsonrpc(err, "req-1", domain=DOMAIN, a2a_spec=a2a_spec)
    assert out.status == http
    assert out.headers == (("Content-Type", "application/json"),)
    body = json.loads(out.body)
    assert body["id"] == "req-1", "a kept status still echoes the id"
    assert body["error"]["code"] == member.value.jsonrpc_code
    assert body["error"]["data"] == [_expected_info(member, DOMAIN, {"method": "tools/call"})]
    assert out.body == _compact(jsonrpc_error_object(err, "req-1", domain=DOMAIN))
    note = render_jsonrpc(err, "req-1", domain=DOMAIN, a2a_spec=a2a_spec, notification=True)
    assert note.status == http
    assert json.loads(note.body)["id"] is None
    assert render_aip193(err, domain=DOMAIN, a2a_spec=a2a_spec).status == http


@pytest.mark.parametrize(
    "member", [e for e in E if e not in KEEPS_STATUS and e not in SESSION_GONE], ids=_name
)
def test_other_denials_are_200_on_jsonrpc(member: E) -> None:
    for mcp_session in (False, True):
        err = WardenError(member, mcp_session=mcp_session)
        assert render_jsonrpc(err, 1, domain=DOMAIN).status == 200


@pytest.mark.parametrize(
    ("member", "mcp_session", "a2a_spec", "status", "code"),
    [
        (E.TOOL_NOT_AUTHORIZED, True, "1.0.1", 403, -31064),
        (E.SESSION_RATE_LIMITED, True, "1.0.1", 429, -31065),
        (E.OVERLOADED, False, "1.0.1", 429, -31073),
        (E.SESSION_EXPIRED, True, "1.0.1", 404, -32005),
        # Section 2 over section 1's notification rule: no MCP denial but the 2025-era
        # session-gone answer may use 404.
        (E.SESSION_EXPIRED, False, "1.0.1", 200, -31061),
        (E.UNAUTHENTICATED, False, "1.0.1", 401, -31068),
        (E.ORIGIN_NOT_ALLOWED, True, "1.0.1", 403, -31071),
        (E.HEADER_MISMATCH, True, "1.0.1", 400, -32020),
        (E.TASK_NOT_CANCELABLE, False, "1.0.1", 400, -32002),
        (E.TASK_NOT_CANCELABLE, False, "1.0.0", 409, -32002),
    ],
)
def test_notification(member: E, mcp_session: bool, a2a_spec: str, status: int, code: int) -> None:
    err = WardenError(member, mcp_session=mcp_session)
    out = render_jsonrpc(err, 99, domain=DOMAIN, a2a_spec=a2a_spec, notification=True)
    assert out.status == status
    body = json.loads(out.body)
    assert body["id"] is None
    assert body["error"]["code"] == code


@pytest.mark.parametrize("request_id", [7, 0, -3, "abc", "", 'é"x', None, 1.5, 10**20])
def test_id_echo(request_id: JsonRpcId) -> None:
    err = WardenError(E.METHOD_NOT_AUTHORIZED, {"method": "tasks/cancel"})
    body = json.loads(render_jsonrpc(err, request_id, domain=DOMAIN).body)
    assert body["id"] == request_id
    assert type(body["id"]) is type(request_id)
    assert jsonrpc_error_object(err, request_id, domain=DOMAIN)["id"] == request_id


@pytest.mark.parametrize("request_id", [math.nan, math.inf])
def test_non_finite_id_becomes_null(request_id: float) -> None:
    err = WardenError(E.INVALID_REQUEST)
    assert json.loads(render_jsonrpc(err, request_id, domain=DOMAIN).body)["id"] is None
    assert jsonrpc_error_object(err, request_id, domain=DOMAIN)["id"] is None


@pytest.mark.parametrize(
    ("member", "old"),
    [
        (E.TASK_NOT_FOUND, (Code.NOT_FOUND, 404)),
        (E.TASK_NOT_CANCELABLE, (Code.ABORTED, 409)),
        (E.PUSH_NOTIFICATION_NOT_SUPPORTED, (Code.UNIMPLEMENTED, 400)),
        (E.UNSUPPORTED_OPERATION, (Code.UNIMPLEMENTED, 400)),
        (E.CONTENT_TYPE_NOT_SUPPORTED, (Code.INVALID_ARGUMENT, 415)),
        (E.INVALID_AGENT_RESPONSE, (Code.INTERNAL, 502)),
        (E.EXTENDED_AGENT_CARD_NOT_CONFIGURED, (Code.FAILED_PRECONDITION, 400)),
        (E.EXTENSION_SUPPORT_REQUIRED, (Code.FAILED_PRECONDITION, 400)),
        (E.VERSION_NOT_SUPPORTED, (Code.UNIMPLEMENTED, 400)),
        (E.UPSTREAM_INVALID_RESPONSE, (Code.INTERNAL, 500)),
        (E.SESSION_NOT_FOUND, (Code.NOT_FOUND, 404)),
    ],
)
def test_a2a_spec_1_0_0_column(member: E, old: tuple[Code, int]) -> None:
    out = render_aip193(
        WardenError(member), domain=DOMAIN, a2a_spec="1.0.0", content_type="application/a2a+json"
    )
    assert out.status == old[1]
    assert out.headers == (("Content-Type", "application/a2a+json"),)
    error = json.loads(out.body)["error"]
    assert (error["status"], error["code"]) == (old[0].name, old[1])
    # Any other revision, 1.0.1 and later, reads the default column.
    assert member.value.http_for("1.1.0") == member.value.http_for("1.0.1")


def test_domains() -> None:
    for domain in ("a.example", 'odd"domain\\'):
        proxy = json.loads(render_aip193(WardenError(E.AGENT_MISMATCH), domain=domain).body)
        assert proxy["error"]["details"][0]["domain"] == domain
        a2a = json.loads(render_jsonrpc(WardenError(E.TASK_NOT_FOUND), 1, domain=domain).body)
        assert a2a["error"]["data"][0]["domain"] == A2A_DOMAIN


def test_upstream_error_override() -> None:
    err = WardenError(
        E.UPSTREAM_ERROR,
        message="  Method Not Allowed\n\tat line 3 " + "x" * 500,
        status_override=code_for_upstream_status(405),
        mcp_session=True,
    )
    assert err.message is not None
    assert len(err.message) == 200
    assert err.message.startswith("Method Not Allowed at line 3 xx")
    aip = render_aip193(err, domain=DOMAIN)
    assert aip.status == 405
    error = json.loads(aip.body)["error"]
    assert (error["code"], error["status"], error["message"]) == (405, "UNIMPLEMENTED", err.message)
    rpc = render_jsonrpc(err, 1, domain=DOMAIN)
    assert rpc.status == 200
    assert json.loads(rpc.body)["error"]["code"] == -32603
    assert json.loads(rpc.body)["error"]["message"] == err.message
    assert render_jsonrpc(err, 1, domain=DOMAIN, notification=True).status == 405
    # Without an override: the row's fixed message and INTERNAL 500.
    plain = json.loads(render_aip193(WardenError(E.UPSTREAM_ERROR), domain=DOMAIN).body)
    assert (plain["error"]["code"], plain["error"]["message"]) == (500, "upstream error")
    assert WardenError(E.UPSTREAM_ERROR, message=" \n ").message is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"message": "nope"},
        {"status_override": (Code.INTERNAL, 500)},
        {"metadata": {"limit": "10"}},
        {"metadata": {"session_id": "x"}},
    ],
)
def test_invalid_occurrences(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        WardenError(E.TOOL_NOT_AUTHORIZED, **kwargs)  # type: ignore[arg-type]


def test_sse_variants() -> None:
    err = WardenError(E.UPSTREAM_STREAM_INTERRUPTED, {"sessionId": "s"})
    rpc = render_sse_jsonrpc(err, "r1", domain=DOMAIN)
    assert rpc.startswith(b"event: message\ndata: ")
    assert rpc.endswith(b"\n\n")
    assert rpc.count(b"\n") == 3
    assert rpc[len(b"event: message\ndata: ") : -2] == render_jsonrpc(err, "r1", domain=DOMAIN).body
    aip = render_sse_aip193(err, domain=DOMAIN, a2a_spec="1.0.0")
    assert aip.startswith(b"event: error\ndata: ")
    assert aip.endswith(b"\n\n")
    assert aip.count(b"\n") == 3
    assert aip[len(b"event: error\ndata: ") : -2] == render_aip193(err, domain=DOMAIN).body


def test_jsonrpc_error_object_is_fresh() -> None:
    err = WardenError(E.TOOL_NOT_AUTHORIZED, {"tool": "t"})
    first = jsonrpc_error_object(err, 1, domain=DOMAIN)
    second = jsonrpc_error_object(err, 1, domain=DOMAIN)
    assert first == second
    assert first is not second
    assert first["error"] is not second["error"]
    assert json.loads(_compact([first, second])) == [first, second]
