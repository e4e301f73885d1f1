"""Hot reload: real files, real symlink swaps, a real SIGHUP; bounded waits, no timings."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.policy import PolicyError, PolicyFile
from proxy.policy import watch as watch_module
from proxy.policy.watch import PolicyWatcher

WAIT = 10.0  # the bound of every wait; never a measured timing
FAST = 0.02  # polling interval for the background tests
NEVER = 3600.0  # polling interval when the test drives check() itself


def text(calls: int) -> str:
    return f"version: 1\ndefaults:\n  budget:\n    calls: {calls}\n"


BAD = "version: 1\ndefaults:\n  budget:\n    calls: -1\n"
OTHER_BAD = "version: 1\nidentity: {header: 12}\n"


def write(path: Path, content: str) -> None:
    """Replace the file atomically, as editors and config tools do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.005)


@dataclass
class Seen:
    changes: list[PolicyFile] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)

    @property
    def calls(self) -> list[int]:
        return [p.defaults.budget.calls for p in self.changes]

    def problems(self) -> list[list[str]]:
        return [[str(p) for p in e.problems] for e in self.errors]


@dataclass
class Watch:
    watcher: PolicyWatcher
    seen: Seen
    path: Path


@pytest.fixture
async def watch(tmp_path: Path) -> AsyncIterator[Callable[..., Watch]]:
    """``watch(path=..., interval=...)``: a watcher on ``path`` (default: a file of calls 1)."""
    made: list[PolicyWatcher] = []

    def make(path: Path | None = None, interval: float = FAST) -> Watch:
        if path is None:
            path = tmp_path / "policy.yaml"
            path.write_text(text(1))
        seen = Seen()
        watcher = PolicyWatcher(str(path), seen.changes.append, seen.errors.append, interval)
        made.append(watcher)
        return Watch(watcher, seen, path)

    yield make
    for watcher in made:
        await watcher.stop()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file read by the watcher (a spy on the real reader)."""
    done: list[str] = []
    real = watch_module._read

    def spy(path: str) -> tuple[str, PolicyFile | PolicyError]:
        done.append(path)
        return real(path)

    monkeypatch.setattr(watch_module, "_read", spy)
    return done


async def test_start_loads_the_file_and_a_valid_edit_applies(
    watch: Callable[..., Watch], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_warden.policy")
    w = watch()
    assert await w.watcher.start() is True
    assert w.seen.calls == [1]
    first = w.watcher.sha256
    assert first is not None

    write(w.path, text(2))
    await until(lambda: w.seen.calls == [1, 2], "the edit applied")
    assert w.watcher.sha256 not in (None, first)
    assert w.watcher.last_error is None
    assert w.seen.changes[-1].source == str(w.path)
    reloaded = [r for r in caplog.records if r.getMessage() == "policy reloaded"]
    assert [(r.path, r.reason) for r in reloaded] == [  # type: ignore[attr-defined]
        (str(w.path), "start"),
        (str(w.path), "change"),
    ]
    assert reloaded[-1].sha256 == w.watcher.sha256  # type: ignore[attr-defined]


async def test_an_edit_in_place_applies(watch: Callable[..., Watch]) -> None:
    w = watch()
    await w.watcher.start()
    w.path.write_text(text(22))  # truncate and write: a tick may see it half-written
    await until(lambda: w.seen.calls[-1] == 22, "the in-place edit applied")


async def test_an_invalid_edit_is_reported_once_and_the_last_good_policy_stays(
    watch: Callable[..., Watch], reads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    w = watch()
    await w.watcher.start()
    good = w.watcher.sha256

    write(w.path, BAD)
    await until(lambda: len(w.seen.errors) == 1, "the invalid edit reported")
    assert w.seen.problems() == [[f"{w.path}:4: defaults.budget.calls: must be at least 1, got -1"]]
    assert w.watcher.last_error is w.seen.errors[0]
    assert w.watcher.sha256 == good
    assert w.seen.calls == [1]
    (rejected,) = [r for r in caplog.records if r.getMessage() == "policy reload rejected"]
    assert rejected.levelno == logging.WARNING
    assert rejected.problems == w.seen.problems()[0]  # type: ignore[attr-defined]

    # The same bad content written again is read, and not reported again.
    before = len(reads)
    write(w.path, BAD)
    await until(lambda: len(reads) > before, "the rewritten file read")
    # Another bad version is a new problem.
    write(w.path, OTHER_BAD)
    await until(lambda: len(w.seen.errors) == 2, "the second invalid edit reported")
    assert "identity.header" in w.seen.problems()[1][0]

    write(w.path, text(3))
    await until(lambda: w.seen.calls == [1, 3], "the later valid edit applied")
    assert len(w.seen.errors) == 2
    assert w.watcher.last_error is None


async def test_a_bad_edit_reverted_clears_last_error_without_a_reload(
    watch: Callable[..., Watch], reads: list[str]
) -> None:
    """What ``agent_warden_policy_file_valid`` reads: the content in force written back is
    no reload (no callback), yet the file is valid again."""
    w = watch(interval=NEVER)
    await w.watcher.start()
    good = w.watcher.sha256

    write(w.path, BAD)
    await w.watcher.check()
    assert w.watcher.last_error is w.seen.errors[0]

    write(w.path, text(1))  # the very content in force
    before = len(reads)
    await w.watcher.check()
    assert len(reads) == before + 1
    assert w.watcher.last_error is None
    assert w.watcher.sha256 == good
    assert w.seen.calls == [1]  # no on_change: nothing to apply
    assert len(w.seen.errors) == 1


async def test_a_configmap_symlink_swap_is_detected(
    watch: Callable[..., Watch], tmp_path: Path
) -> None:
    mount = tmp_path / "config"
    mount.mkdir()

    def publish(stamp: str, content: str) -> None:
        """What the kubelet does: a new timestamped dir, then an atomic swap of ``..data``."""
        data = mount / f"..{stamp}"
        data.mkdir()
        (data / "policy.yaml").write_text(content)
        old = (mount / "..data").resolve() if (mount / "..data").exists() else None
        os.symlink(data.name, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        if old is not None:
            shutil.rmtree(old)

    publish("2026_11_21_data", text(1))
    os.symlink("..data/policy.yaml", mount / "policy.yaml")
    w = watch(path=mount / "policy.yaml")
    await w.watcher.start()
    assert w.seen.calls == [1]

    publish("2026_11_22_data", text(2))
    await until(lambda: w.seen.calls == [1, 2], "the swapped ConfigMap applied")
    publish("2026_11_23_data", BAD)
    await until(lambda: len(w.seen.errors) == 1, "the bad ConfigMap reported")
    publish("2026_11_24_data", text(4))
    await until(lambda: w.seen.calls == [1, 2, 4], "the next ConfigMap applied")


async def test_touching_the_file_reads_it_but_does_not_reload(
    watch: Callable[..., Watch], reads: list[str]
) -> None:
    w = watch(interval=NEVER)
    await w.watcher.start()
    st = w.path.stat()
    os.utime(w.path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    before = len(reads)

    await w.watcher.check()
    assert len(reads) == before + 1  # the new mtime was noticed
    assert w.seen.calls == [1]
    await w.watcher.check()
    assert len(reads) == before + 1  # and not read again while it stays


async def test_a_file_missing_for_one_tick_is_not_an_error(watch: Callable[..., Watch]) -> None:
    w = watch(interval=NEVER)
    await w.watcher.start()

    w.path.unlink()
    await w.watcher.check()
    assert w.seen.errors == []
    w.path.write_text(text(5))
    await w.watcher.check()
    assert w.seen.errors == []
    assert w.seen.calls == [1, 5]


async def test_a_file_missing_for_two_ticks_is_reported_once(watch: Callable[..., Watch]) -> None:
    w = watch(interval=NEVER)
    await w.watcher.start()
    good = w.watcher.sha256

    w.path.unlink()
    await w.watcher.check()
    await w.watcher.check()
    await w.watcher.check()
    assert w.seen.problems() == [
        [f"{w.path}:0: cannot read policy file: No such file or directory"]
    ]
    assert w.watcher.sha256 == good
    assert w.watcher.last_error is w.seen.errors[0]


async def test_a_file_deleted_then_recreated_applies(watch: Callable[..., Watch]) -> None:
    w = watch()
    await w.watcher.start()

    w.path.unlink()
    await until(lambda: len(w.seen.errors) == 1, "the missing file reported")
    assert "cannot read policy file" in w.seen.problems()[0][0]
    assert w.seen.calls == [1]

    write(w.path, text(6))
    await until(lambda: w.seen.calls == [1, 6], "the recreated file applied")
    assert w.watcher.last_error is None
    assert len(w.seen.errors) == 1


async def test_start_on_an_invalid_file_reports_it_and_waits_for_a_good_one(
    watch: Callable[..., Watch], tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BAD)
    w = watch(path=path)
    assert await w.watcher.start() is False
    assert len(w.seen.errors) == 1
    assert w.watcher.sha256 is None

    write(path, text(7))
    await until(lambda: w.seen.calls == [7], "the fixed file applied")


async def test_reload_forces_a_reload_and_returns_success(
    watch: Callable[..., Watch], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_warden.policy")
    w = watch(interval=NEVER)
    await w.watcher.start()

    assert await w.watcher.reload("sighup") is True  # unchanged content: applied again
    assert w.seen.calls == [1, 1]
    assert caplog.records[-1].reason == "sighup"  # type: ignore[attr-defined]

    w.path.write_text(BAD)
    assert await w.watcher.reload() is False
    assert await w.watcher.reload() is False  # a forced reload always reports
    assert len(w.seen.errors) == 2
    assert w.seen.calls == [1, 1]

    w.path.write_text(text(8))
    assert await w.watcher.reload() is True
    assert w.seen.calls == [1, 1, 8]


async def test_sighup_forces_a_reload(watch: Callable[..., Watch]) -> None:
    loop = asyncio.get_running_loop()
    w = watch(interval=NEVER)
    await w.watcher.start()
    w.watcher.install_sighup(loop)
    try:
        w.path.write_text(text(9))  # polling would not see it before the bound
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: w.seen.calls == [1, 9], "the SIGHUP reload")
    finally:
        await w.watcher.stop()
    assert loop.remove_signal_handler(signal.SIGHUP) is False  # stop() removed it
