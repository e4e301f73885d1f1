"""Hot reload of the policy file: poll, compare content, hand each good version over.

Decisions:

- Polling, not inotify: portable, no dependency. A mounted ConfigMap changes by an
  atomic swap of its ``..data`` symlink, so each tick stats the *path* (following
  symlinks) and resolves it again instead of holding the inode first opened.
- The fingerprint (inode, device, mtime, ctime, size, resolved path) only says the
  file may have changed; a reload happens when its SHA-256 differs from the content
  in force. ``touch`` reads the file and does nothing more.
- A file missing on one tick is given one more tick (a swap in progress); missing on
  two ticks in a row, it is reported like an invalid file.
- A bad version is reported once, not on every tick while it stays; the last good
  policy stays in force. A forced ``reload`` always reports its outcome.
- ``start`` loads the file once before polling, so ``on_change`` (or ``on_error``)
  has seen the current file when it returns.
- Every failure (unreadable, not a regular file, too big, invalid, past a bound of the
  loader, even a loader bug) goes to ``on_error`` once per distinct content, never
  escapes a tick, and leaves the fingerprint recorded so that the next tick does not
  read the same file again. Reading never blocks: a FIFO or a device swapped in at the
  path is refused at once, so SIGHUP, later edits and ``stop`` keep working.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from collections.abc import Callable

from proxy.files import Fingerprint, fingerprint
from proxy.policy.load import PolicyError, Problem, parse_policy_bytes, read_policy_file
from proxy.policy.model import PolicyFile

__all__ = ["PolicyWatcher"]

log = logging.getLogger("agent_warden.policy")


def _read(path: str) -> tuple[str, PolicyFile | PolicyError]:
    """A key for the file's content and what it parses to; raises OSError if unreadable.

    The key is the SHA-256 of the bytes, or, for a file refused before reading (not a
    regular file, too big), the reason. Never blocks on a FIFO or a device, and never
    raises anything but OSError: every other failure is a PolicyError to report.
    """
    try:
        data = read_policy_file(path)
    except PolicyError as exc:
        return f"refused: {exc}", exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        return digest, parse_policy_bytes(data, path)
    except PolicyError as exc:
        return digest, exc
    except Exception as exc:  # a loader bug or MemoryError: reported, counted, never a crash
        log.error("policy file could not be checked", extra={"path": path}, exc_info=exc)
        problem = Problem(path, 0, f"cannot check policy file: {type(exc).__name__}: {exc}")
        return digest, PolicyError([problem])


class PolicyWatcher:
    """Watches the policy file at ``path``; calls ``on_change`` with each new good version.

    ``on_error`` gets each rejected version (invalid or unreadable) once. Callbacks run
    on the event loop; reading and parsing run in a worker thread.
    """

    def __init__(
        self,
        path: str,
        on_change: Callable[[PolicyFile], None],
        on_error: Callable[[PolicyError], None],
        interval: float = 0.5,
    ) -> None:
        self.path = path
        self.interval = interval
        self.sha256: str | None = None
        """SHA-256 (hex) of the content in force; None until a version has loaded."""
        self.last_error: PolicyError | None = None
        """Why the file's current version was rejected; None when it is in force."""
        self._on_change = on_change
        self._on_error = on_error
        self._seen: Fingerprint | None = None  # the fingerprint at the last read
        self._absent = False  # the previous tick found no file
        self._rejected: str | None = None  # key of the last reported bad version
        self._lock = asyncio.Lock()  # one read at a time: ticks and forced reloads
        self._task: asyncio.Task[None] | None = None
        self._signal_loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Task[bool]] = set()

    async def start(self) -> bool:
        """Load the file now, then poll it in a background task; True when the load succeeded."""
        if self._task is not None:
            raise RuntimeError("PolicyWatcher already started")
        ok = await self.reload("start")
        self._task = asyncio.create_task(self._poll(), name=f"policy-watch {self.path}")
        return ok

    async def stop(self) -> None:
        """Stop polling, remove the SIGHUP handler, and cancel reloads in flight."""
        if self._signal_loop is not None:
            self._signal_loop.remove_signal_handler(signal.SIGHUP)
            self._signal_loop = None
        tasks = [t for t in (self._task, *self._reloads) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reload(self, reason: str = "sighup") -> bool:
        """Read and apply the file now, whatever the fingerprint says; True on success."""
        async with self._lock:
            return await self._load(fingerprint(self.path), reason, forced=True)

    async def check(self) -> None:
        """One polling tick: reload if the file's content changed (what the task runs)."""
        async with self._lock:
            fp = fingerprint(self.path)
            if fp is None and not self._absent:
                self._absent = True  # perhaps mid-swap: look again next tick
                return
            self._absent = fp is None
            if fp != self._seen:
                await self._load(fp, "change", forced=False)

    def install_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make SIGHUP force a reload; ``stop`` removes the handler."""
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        self._signal_loop = loop

    def _sighup(self) -> None:
        assert self._signal_loop is not None
        task = self._signal_loop.create_task(self.reload("sighup"))
        self._reloads.add(task)
        task.add_done_callback(self._reloaded)

    def _reloaded(self, task: asyncio.Task[bool]) -> None:
        self._reloads.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("policy reload failed", extra={"path": self.path}, exc_info=exc)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a failing callback must not end the watch
                log.exception("policy watch tick failed", extra={"path": self.path})

    async def _load(self, fp: Fingerprint | None, reason: str, *, forced: bool) -> bool:
        try:
            key, result = await asyncio.to_thread(_read, self.path)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not forced and not self._absent:
                self._absent = True  # vanished since the stat: same grace as a missing tick
                return False
            message = f"cannot read policy file: {exc.strerror or exc}"
            key, result = f"unreadable: {message}", PolicyError([Problem(self.path, 0, message)])
        self._seen = fp
        if isinstance(result, PolicyError):
            if forced or key != self._rejected:
                self._rejected, self.last_error = key, result
                problems = [str(p) for p in result.problems]
                log.warning(
                    "policy reload rejected",
                    extra={"path": self.path, "problems": problems, "reason": reason},
                )
                self._on_error(result)
            return False
        self._rejected, self.last_error = None, None
        if key == self.sha256 and not forced:
            return True  # same content as in force (a touch, or a bad edit reverted)
        self.sha256 = key
        log.info("policy reloaded", extra={"path": self.path, "sha256": key, "reason": reason})
        self._on_change(result)
        return True
