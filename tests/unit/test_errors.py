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
)
# Cells errors.md leaves without a JSON-RPC code (section 3, stream interrupted): the
# final SSE event's JSON-RPC error is an internal error.
UNNUMBERED_JSONRPC = {"UPSTREAM_STREAM_INTERRUPTED": -32603}


def _name(member: E) -> str:
    return member.name


GONE: list[E] = sorted(SESSION_GONE, key=_name)


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


def _section2_members() -> set[E]:
    seen = set()
    for _variant, reason, message, code, http, jsonrpc in _table(_section(2)):
        member = _one(reason)
        row = member.value
        assert (row.message, row.code.name, row.http_status, row.jsonrpc_code) == (
            message,
            code,
            int(http),
            int(jsonrpc),
        ), reason
        assert row.domain is Domain.PROXY
        assert row.http_for("1.0.0") == row.http_for("1.0.1") == (Code[code], int(http))
        seen.add(member)
    return seen


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
        for jsonrpc_code in (int(c) for c in codes.split(" and ")):
            [member] = [m for m in members if m.value.jsonrpc_code == jsonrpc_code]
            assert member.value.http_for("1.0.1") == (Code[code], int(http))
            assert member.value.http_for("1.0.0") == (Code[code], int(http))
            used.add(member.value.reason)
            seen.add(member)
        assert used == reasons, standard
    return seen


def test_section_2_table_matches() -> None:
    assert _section2_members() == set(SECTION_2)


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
    assert out.status == 200
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


@pytest.mark.parametrize("mcp", [False, True])
@pytest.mark.parametrize("member", list(E), ids=_name)
def test_fast_path_equals_dict_path(member: E, mcp: bool) -> None:
    err = WardenError(member, {"tool": 'we"ird\u00e9'}, retry_after=1.25)
    body = render_jsonrpc(err, "x", domain=DOMAIN, mcp=mcp).body
    assert body == _compact(jsonrpc_error_object(err, "x", domain=DOMAIN, mcp=mcp))
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


def test_retry_info_and_retry_after() -> None:
    err = WardenError(E.SESSION_RATE_LIMITED, {"sessionId": "abc"}, retry_after=0.2)
    for out in (render_aip193(err, domain=DOMAIN), render_jsonrpc(err, 1, domain=DOMAIN)):
        assert dict(out.headers) == {"Content-Type": "application/json", "Retry-After": "1"}
    details = json.loads(render_aip193(err, domain=DOMAIN).body)["error"]["details"]
    assert details == [
        _expected_info(E.SESSION_RATE_LIMITED, DOMAIN, {"sessionId": "abc"}),
        {"@type": RETRY_INFO_TYPE, "retryDelay": "0.200s"},
    ]
    data = json.loads(render_jsonrpc(err, 1, domain=DOMAIN).body)["error"]["data"]
    assert data == details


@pytest.mark.parametrize(
    ("seconds", "header", "delay"),
    [
        (0.2, "1", "0.200s"),
        (12, "12", "12s"),
        (12.0, "12", "12s"),
        (0, "0", "0s"),
        (59.5, "60", "59.500s"),
    ],
)
def test_retry_after_rounds_up(seconds: float, header: str, delay: str) -> None:
    out = render_aip193(WardenError(E.SESSION_RATE_LIMITED, retry_after=seconds), domain=DOMAIN)
    assert dict(out.headers)["Retry-After"] == header
    assert json.loads(out.body)["error"]["details"][1]["retryDelay"] == delay


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


@pytest.mark.parametrize("member", GONE, ids=_name)
def test_mcp_session_gone(member: E) -> None:
    err = WardenError(member, {"sessionId": "gone"})
    out = render_jsonrpc(err, 3, domain=DOMAIN, mcp=True)
    assert out.status == 404
    body = json.loads(out.body)
    assert body["id"] == 3
    assert body["error"]["code"] == MCP_SESSION_GONE_CODE
    assert body["error"]["data"][0]["reason"] == member.value.reason
    sse = render_sse_jsonrpc(err, 3, domain=DOMAIN, mcp=True)
    assert json.loads(sse.split(b"data: ", 1)[1])["error"]["code"] == MCP_SESSION_GONE_CODE
    # Outside MCP the row's own code and HTTP 200.
    plain = render_jsonrpc(err, 3, domain=DOMAIN)
    assert plain.status == 200
    assert json.loads(plain.body)["error"]["code"] == member.value.jsonrpc_code


@pytest.mark.parametrize("member", [e for e in E if e not in SESSION_GONE], ids=_name)
def test_no_other_mcp_error_uses_404(member: E) -> None:
    out = render_jsonrpc(WardenError(member), 1, domain=DOMAIN, mcp=True)
    assert out.status == 200
    assert json.loads(out.body)["error"]["code"] == member.value.jsonrpc_code


@pytest.mark.parametrize(
    ("member", "mcp", "a2a_spec", "status", "code"),
    [
        (E.TOOL_NOT_AUTHORIZED, True, "1.0.1", 403, -32064),
        (E.SESSION_RATE_LIMITED, True, "1.0.1", 429, -32065),
        (E.SESSION_EXPIRED, True, "1.0.1", 404, -32005),
        (E.SESSION_EXPIRED, False, "1.0.1", 404, -32061),
        (E.UNAUTHENTICATED, False, "1.0.1", 401, -32068),
        (E.TASK_NOT_CANCELABLE, False, "1.0.1", 400, -32002),
        (E.TASK_NOT_CANCELABLE, False, "1.0.0", 409, -32002),
    ],
)
def test_notification(member: E, mcp: bool, a2a_spec: str, status: int, code: int) -> None:
    err = WardenError(member)
    out = render_jsonrpc(err, 99, domain=DOMAIN, a2a_spec=a2a_spec, mcp=mcp, notification=True)
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
    )
    assert err.message is not None
    assert len(err.message) == 200
    assert err.message.startswith("Method Not Allowed at line 3 xx")
    aip = render_aip193(err, domain=DOMAIN)
    assert aip.status == 405
    error = json.loads(aip.body)["error"]
    assert (error["code"], error["status"], error["message"]) == (405, "UNIMPLEMENTED", err.message)
    rpc = render_jsonrpc(err, 1, domain=DOMAIN, mcp=True)
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
