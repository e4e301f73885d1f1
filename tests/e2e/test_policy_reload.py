"""Hot reload of the policy file: valid edits apply, invalid ones are refused, SIGHUP forces.

Each test owns its proxy and its policy file (in tmp_path), since each rewrites it.
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunProxy
from tests.e2e.test_policies import Reply, Target, admin_sessions, eventually, fresh, scrape
from tests.upstreams.serve import HeaderRecorder

pytestmark = pytest.mark.timeout(60)

RELOADS = "agent_warden_policy_reloads_total"


def policy_text(*, calls: int = 1000, deny: tuple[str, ...] = ()) -> str:
    denied = ", ".join(f'"{glob}"' for glob in deny)
    return textwrap.dedent(
        f"""\
        version: 1
        defaults:
          budget: {{calls: {calls}}}
          tools: {{deny: [{denied}]}}
        """
    )


# Wrong type and an unknown key: `check` and the loader must both refuse it.
INVALID = "version: 1\ndefaults:\n  budget: {calls: many}\n  tols: {deny: []}\n"


def write_policy(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or a ConfigMap swap does."""
    staging = path.with_name(path.name + ".next")
    staging.write_text(text)
    os.replace(staging, path)


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        yield client


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy" / "warden.yaml"
    path.parent.mkdir()
    path.write_text(policy_text())
    return path


@pytest.fixture
def target(
    run_proxy: RunProxy,
    mcp_upstream: str,
    mcp_upstream_seen: HeaderRecorder,
    policy_path: Path,
) -> Target:
    return Target(run_proxy(mcp_upstream, "--policy", str(policy_path)), mcp_upstream_seen)


async def reloads(target: Target, result: str) -> float:
    return (await scrape(target.proxy)).value(RELOADS, result=result)


def is_denial(reply: Reply) -> bool:
    return "error" in reply.message


async def test_valid_change_applies_to_new_requests(
    target: Target, policy_path: Path, web: httpx.AsyncClient
) -> None:
    assert await reloads(target, "success") == 0
    raw = target.raw(web, fresh("reload"))
    session = await raw.initialize()
    assert (await raw.call_tool(session, "delete_admin", user="a")).tool_text() == "deleted admin a"

    write_policy(policy_path, policy_text(deny=("delete_*",)))

    async def denied_now() -> Reply | None:
        reply = await raw.call_tool(session, "delete_admin", user="b")
        return reply if is_denial(reply) else None

    (await eventually(denied_now)).denied("TOOL_NOT_AUTHORIZED")
    # A session born after the change gets the new policy too; other tools still run.
    other = await raw.initialize()
    (await raw.call_tool(other, "delete_admin", user="c")).denied("TOOL_NOT_AUTHORIZED")
    assert (await raw.echo(other, "fine")).tool_text() == "fine"
    assert await reloads(target, "success") == 1
    assert await reloads(target, "failure") == 0


async def test_invalid_change_keeps_the_last_good_policy(
    target: Target, policy_path: Path, web: httpx.AsyncClient
) -> None:
    write_policy(policy_path, policy_text(deny=("delete_*",)))
    await eventually(lambda: reloads(target, "success"))
    raw = target.raw(web, fresh("reload"))
    session = await raw.initialize()
    (await raw.call_tool(session, "delete_admin", user="a")).denied("TOOL_NOT_AUTHORIZED")

    write_policy(policy_path, INVALID)
    await eventually(lambda: reloads(target, "failure"))
    rejected = [
        line for line in target.proxy.log_lines() if line.get("msg") == "policy reload rejected"
    ]
    assert rejected, target.proxy.stderr()
    assert target.proxy.proc.poll() is None

    # Still serving, still under the last good policy: old and new sessions alike.
    (await raw.call_tool(session, "delete_admin", user="b")).denied("TOOL_NOT_AUTHORIZED")
    assert (await raw.echo(session, "alive")).tool_text() == "alive"
    fresh_session = await raw.initialize()
    (await raw.call_tool(fresh_session, "delete_admin", user="c")).denied("TOOL_NOT_AUTHORIZED")
    async with httpx.AsyncClient(timeout=10.0) as admin:
        assert (await admin.get(target.proxy.admin_url + "/readyz")).status_code == 200
    assert await reloads(target, "failure") == 1  # reported once, not on every poll
    assert await reloads(target, "success") == 1

    # Fixing the file applies the fix.
    write_policy(policy_path, policy_text())

    async def allowed_now() -> bool:
        reply = await raw.call_tool(session, "delete_admin", user="d")
        return not is_denial(reply)

    await eventually(allowed_now)
    assert await reloads(target, "success") == 2


async def test_sighup_forces_a_reload(
    target: Target, policy_path: Path, web: httpx.AsyncClient
) -> None:
    # The file has not changed, so polling alone would never reload it.
    target.proxy.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: reloads(target, "success"))
    assert await reloads(target, "success") == 1
    raw = target.raw(web, fresh("reload"))
    session = await raw.initialize()
    assert (await raw.echo(session, "after hup")).tool_text() == "after hup"

    # An invalid file is reported once by polling; SIGHUP reports it again.
    write_policy(policy_path, INVALID)
    await eventually(lambda: reloads(target, "failure"))
    target.proxy.proc.send_signal(signal.SIGHUP)

    async def failed_twice() -> bool:
        return await reloads(target, "failure") >= 2

    await eventually(failed_twice)
    assert await reloads(target, "failure") == 2
    assert target.proxy.proc.poll() is None
    assert (await raw.echo(session, "still here")).tool_text() == "still here"


async def test_live_sessions_keep_their_counters_across_a_reload(
    target: Target, policy_path: Path, web: httpx.AsyncClient
) -> None:
    write_policy(policy_path, policy_text(calls=3))
    await eventually(lambda: reloads(target, "success"))
    raw = target.raw(web, fresh("reload"))
    session = await raw.initialize()
    for n in range(2):
        assert (await raw.echo(session, str(n))).tool_text() == str(n)

    write_policy(policy_path, policy_text(calls=4))

    async def reloaded_twice() -> bool:
        return await reloads(target, "success") >= 2

    await eventually(reloaded_twice)
    # Two calls were spent under the old policy: two more fit the new budget of four.
    for n in range(2, 4):
        assert (await raw.echo(session, str(n))).tool_text() == str(n)
    (await raw.echo(session, "five")).denied("SESSION_BUDGET_EXCEEDED")
    assert (await admin_sessions(target.proxy))[session]["calls_used"] == 4
    [record] = [
        line
        for line in target.proxy.log_lines()
        if line.get("msg") == "request denied" and line.get("session") == session
    ]
    assert (record["limit_value"], record["used"]) == (4, 4)


VALID = "agent_warden_policy_file_valid"


async def file_valid(target: Target) -> float:
    """The gauge's one sample (it must be there: the proxy runs with a policy file)."""
    [(labels, value)] = (await scrape(target.proxy)).series(VALID)
    assert labels == {}
    return value


async def test_file_valid_gauge_follows_a_bad_edit_and_its_revert(
    target: Target, policy_path: Path, web: httpx.AsyncClient
) -> None:
    assert await file_valid(target) == 1
    good = policy_text()  # what the fixture wrote, in force

    write_policy(policy_path, INVALID)
    await eventually(lambda: reloads(target, "failure"))
    assert await file_valid(target) == 0
    # The last good policy still serves.
    raw = target.raw(web, fresh("reload"))
    session = await raw.initialize()
    assert (await raw.echo(session, "still")).tool_text() == "still"

    # Reverted to the very content in force: no reload happens, yet the file is valid again.
    write_policy(policy_path, good)

    async def valid_again() -> bool:
        return await file_valid(target) == 1

    await eventually(valid_again)
    assert await reloads(target, "success") == 0
    assert await reloads(target, "failure") == 1

    # A forced reload of a bad file is a failed attempt too; a new valid version is 1 again.
    write_policy(policy_path, INVALID)
    target.proxy.proc.send_signal(signal.SIGHUP)

    async def invalid_again() -> bool:
        return await file_valid(target) == 0

    await eventually(invalid_again)
    write_policy(policy_path, policy_text(calls=7))
    await eventually(lambda: reloads(target, "success"))
    assert await file_valid(target) == 1


async def test_file_valid_gauge_is_absent_without_a_policy_file(
    run_proxy: RunProxy, mcp_upstream: str
) -> None:
    proxy = run_proxy(mcp_upstream)
    exposition = await scrape(proxy)
    assert exposition.series(VALID) == []
    assert VALID in exposition.types
