"""``--workers N``: one supervisor process, N data-plane worker processes on one port.

The process started (the supervisor) runs no data plane. It starts N workers, each
``python -P -m proxy _worker <index> <fd>``, a process group of its own (a terminal's
Ctrl-C reaches the supervisor alone, which stops them in order). Each worker listens on
the same ``--listen`` address with SO_REUSEPORT (the kernel spreads new connections over
the workers), with its own session-store client, policy watcher, upstream pool and
sweeper; the store is Redis (``--store redis://``), so budgets, caps and rate limits are
one for all of them. The supervisor runs the admin listener: ``/sessions`` on the shared
store, ``/readyz`` ready only while every worker is, ``/metrics`` merged.

The control channel. Each worker is given one end of a Unix socket pair (``pass_fds``):
no path, no port, nothing another process can reach. Messages are JSON objects, one a
line, at most ``MAX_MESSAGE`` bytes; anything else ends the channel. The supervisor
sends ``start`` (the merged options and the bytes of the policy in force) first, then
``collect`` (answered by ``metrics``, the worker's ``Registry.collect()``) and a ``ping``
every ``HEARTBEAT`` seconds (answered by ``pong``). A worker sends ``ready`` once it
listens and ``error`` when it cannot start. End of file on the channel means the
supervisor is gone, however it died (SIGKILL included): the worker drains and exits.

Metrics. ``/metrics`` is ``metrics.merge`` of the supervisor's own registry (live
sessions read from the store, the worker instruments below) and each worker's, by
``metrics.MERGE_RULES``: counters, histograms and in-flight gauges summed, live sessions
the supervisor's reading, policy reloads and info gauges taken once. A worker that does
not answer within ``SCRAPE_TIMEOUT`` is reported by its last answer. The counters of a
worker that exited are kept (from its last answer) and added to its successor's, so
the sums never go down while the supervisor lives. Per worker: ``worker_up``,
``worker_restarts_total`` and ``worker_requests_total``.

Lifecycle. SIGTERM or SIGINT: ``/readyz`` turns 503, every worker gets SIGTERM and drains
within ``--grace-period``; a worker still running ``STOP_MARGIN`` seconds later is
killed. SIGHUP reloads the supervisor's policy and is passed to every ready worker. A
worker that exits on its own, or stops answering for ``KILL_SILENCE`` seconds (then it
is killed), is restarted after a back-off (``BACKOFF_FIRST`` doubling to
``BACKOFF_MAX``; back to the first after ``STABLE_AFTER`` seconds of service), logged
and counted. A worker that exits before the first start-up is complete stops it: its
reason is the one line the operator sees, exit code 2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import __version__, logs
from proxy.admin_token import AdminLock
from proxy.app import ProxyListener, Runtime, build_admin_app, services
from proxy.config import ConfigError, Settings, from_options
from proxy.metrics import (
    MERGE_RULES,
    Counter,
    Family,
    GaugeFunc,
    HistogramSample,
    Kind,
    Merge,
    ReloadResult,
    Sample,
    merge,
    render,
)
from proxy.policy import DEFAULT_POLICY, PolicyError, PolicyFile, load_policy
from proxy.policy.load import parse_policy_bytes, read_policy_file
from proxy.policy.watch import PolicyWatcher
from proxy.sessions import SessionStore
from proxy.telemetry import Telemetry

__all__ = [
    "WORKER_COMMAND",
    "Supervisor",
    "families_from_wire",
    "families_to_wire",
    "supervise",
    "worker_main",
]

log = logging.getLogger("agent_warden.workers")
lifecycle = logging.getLogger("agent_warden")  # started, draining, stopped: as one process logs

WORKER_COMMAND = "_worker"  # python -m proxy _worker <index> <fd>: never typed by hand
MAX_MESSAGE = 8 * 1024 * 1024  # one line on a control channel
HEARTBEAT = 1.0  # the supervisor pings every worker this often
READY_SILENCE = 5.0  # a worker silent this long is not ready
KILL_SILENCE = 20.0  # ... and this long, it is killed and restarted
SCRAPE_TIMEOUT = 2.0  # a worker's answer to collect
BACKOFF_FIRST = 0.25  # before the first restart of a worker
BACKOFF_MAX = 30.0  # the back-off doubles up to this
STABLE_AFTER = 30.0  # a worker ready this long restarts after BACKOFF_FIRST again
STOP_MARGIN = 5.0  # after the grace period, before stragglers are killed
KILL_WAIT = 5.0  # for a killed worker to be reaped


class ChannelError(Exception):
    """The other end sent something that is not a message."""


class _Channel:
    """JSON objects, one a line, over one end of a socket pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, sock: socket.socket) -> _Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer)

    async def send(self, message: Mapping[str, Any]) -> None:
        """Raises ConnectionError (or OSError) when the other end is gone."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            self._writer.write(line)
            await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None at end of file; ChannelError for anything else."""
        try:
            line = await self._reader.readline()
        except ValueError:  # longer than MAX_MESSAGE
            raise ChannelError("message too long") from None
        except OSError:
            return None
        if not line.endswith(b"\n"):
            return None  # end of file, perhaps in the middle of a line
        try:
            message = json.loads(line)
        except ValueError:
            raise ChannelError("not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ChannelError("not a message")
        return message

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


# --- metric families over the channel ---------------------------------------------------


def families_to_wire(families: Iterable[Family]) -> list[dict[str, Any]]:
    """``Registry.collect()`` as JSON values (NaN and infinities as JSON's extensions)."""
    return [
        {
            "name": f.name,
            "kind": str(f.kind),
            "help": f.help,
            "labels": list(f.label_names),
            "samples": [[list(s.labels), s.value] for s in f.samples],
            "histograms": [[list(h.labels), list(h.bucket_counts), h.sum] for h in f.histograms],
            "bounds": list(f.bounds),
            "unit": f.unit,
        }
        for f in families
    ]


def families_from_wire(data: Any) -> tuple[Family, ...]:
    """What ``families_to_wire`` made; ValueError for anything else."""
    if not isinstance(data, list):
        raise ValueError("families: expected a list")
    return tuple(_family(item) for item in data)


def _family(item: Any) -> Family:
    if not isinstance(item, dict):
        raise ValueError("family: expected an object")
    name, help_text, unit = item.get("name"), item.get("help"), item.get("unit")
    if not (isinstance(name, str) and isinstance(help_text, str) and isinstance(unit, str)):
        raise ValueError("family: name, help and unit must be strings")
    kind = Kind(str(item.get("kind")))  # ValueError for an unknown kind
    names = _strings(item.get("labels"))
    samples = tuple(
        Sample(_labels(entry, 0, len(names)), _number(entry, 1))
        for entry in _list(item.get("samples"), 2)
    )
    bounds = tuple(_number([b], 0) for b in _list(item.get("bounds")))
    histograms = []
    for entry in _list(item.get("histograms"), 3):
        counts = entry[1]
        if not isinstance(counts, list) or len(counts) != len(bounds) + 1:
            raise ValueError(f"{name}: histogram buckets do not match its bounds")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError(f"{name}: bucket counts must be non-negative integers")
        histograms.append(
            HistogramSample(_labels(entry, 0, len(names)), tuple(counts), _number(entry, 2))
        )
    return Family(name, kind, help_text, names, samples, tuple(histograms), bounds, unit)


def _list(value: Any, width: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    if width is not None and not all(isinstance(v, list) and len(v) == width for v in value):
        raise ValueError(f"expected lists of {width}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _labels(entry: list[Any], at: int, width: int) -> tuple[str, ...]:
    labels = _strings(entry[at])
    if len(labels) != width:
        raise ValueError("label values do not match the label names")
    return labels


def _number(entry: list[Any], at: int) -> float:
    value = entry[at]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    return value


# --- the worker -------------------------------------------------------------------------


class _WorkerTag(logging.Filter):
    """Every log line of a worker carries ``worker``: its index."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def worker_main(args: Sequence[str]) -> int:
    """``python -m proxy _worker <index> <fd>``, started by a supervisor only."""
    # SIGHUP is the policy watcher's once it runs; before, or without a policy, no-op.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        index, fd = int(args[0]), int(args[1])
        sock = socket.socket(fileno=fd)
    except (IndexError, ValueError, OSError):
        print("agent-warden: error: _worker is started by `run --workers N`", file=sys.stderr)
        return 2
    try:
        return _loop_run(_worker(index, sock))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # before logging is set up: one line, never a traceback
        print(f"agent-warden: error: worker {index}: {type(exc).__name__}", file=sys.stderr)
        return 1


async def _worker(index: int, sock: socket.socket) -> int:
    channel = await _Channel.open(sock)
    try:
        return await _work(index, channel)
    finally:
        channel.close()


async def _work(index: int, channel: _Channel) -> int:
    try:
        hello = await channel.receive()
    except ChannelError:
        hello = None
    if hello is None or hello.get("op") != "start" or not isinstance(hello.get("options"), dict):
        return 2  # no supervisor to serve
    options = {str(k): v if isinstance(v, str) else None for k, v in hello["options"].items()}
    try:
        settings = from_options(options)
        if settings.decision_log not in (None, "-"):
            # One file per worker: rotation renames files, which processes cannot share.
            settings = replace(settings, decision_log=f"{settings.decision_log}.w{index}")
        logs.setup(settings.log_level)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_WorkerTag(index))
        policy = _worker_policy(settings, hello.get("policy"))
        return await _serve(settings, policy, channel)
    except ConfigError as exc:
        problem = str(exc)
    except PolicyError as exc:
        problem = "; ".join(str(p) for p in exc.problems) or str(exc)
    except Exception as exc:  # a bug: one log line, the supervisor restarts the worker
        log.exception("worker failed")
        problem = f"worker failed: {type(exc).__name__}"
    with contextlib.suppress(OSError):
        await channel.send({"op": "error", "message": problem})
    return 2


def _worker_policy(settings: Settings, sent: Any) -> PolicyFile:
    """The supervisor's policy in force (so a worker started while the file is being
    edited badly still runs the last good one); the file itself when none was sent."""
    if settings.policy is None:
        return DEFAULT_POLICY
    if isinstance(sent, str):
        try:
            return parse_policy_bytes(base64.b64decode(sent, validate=True), settings.policy)
        except (ValueError, PolicyError):
            pass
    return load_policy(settings.policy)


async def _serve(settings: Settings, policy: PolicyFile, channel: _Channel) -> int:
    runtime = Runtime(settings=settings, policy=policy, store=_open_store(settings))
    runtime.telemetry = Telemetry.from_env(runtime.metrics)
    runtime.set_policy(policy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with services(runtime):
        proxy = ProxyListener(runtime)
        try:
            await proxy.start(settings.listen.host, settings.listen.port, reuse_port=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
        runtime.ready = True
        gc.freeze()
        try:
            await channel.send({"op": "ready", "pid": os.getpid()})
        except OSError:
            stop.set()
        lifecycle.info("worker started", extra={"pid": os.getpid(), "listen": str(settings.listen)})
        answering = asyncio.create_task(_answer(channel, runtime, stop))
        await stop.wait()
        runtime.draining = True
        lifecycle.info("draining", extra={"grace_period_s": settings.grace_period})
        await proxy.drain(settings.grace_period)  # the supervisor still scrapes meanwhile
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
    lifecycle.info("stopped")
    return 0


async def _answer(channel: _Channel, runtime: Runtime, stop: asyncio.Event) -> None:
    """Answer the supervisor until it goes; then drain (whatever killed it)."""
    try:
        while True:
            message = await channel.receive()
            if message is None:
                if not stop.is_set():
                    log.warning("supervisor gone; draining")
                break
            op = message["op"]
            if op == "collect":
                families = families_to_wire(runtime.metrics.registry.collect())
                await channel.send({"op": "metrics", "id": message.get("id"), "families": families})
            elif op == "ping":
                await channel.send({"op": "pong"})
    except (ChannelError, OSError) as exc:
        log.error("control channel broken; draining", extra={"error": str(exc)[:200]})
    stop.set()


# --- the supervisor ---------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """One worker place: the process in it now, and what the supervisor knows of it."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: _Channel | None = None
    generation: int = 0  # one per process started in this place
    ready: bool = False
    ready_at: float = 0.0
    heard: float = 0.0  # monotonic time of the worker's last message
    last: tuple[Family, ...] | None = None  # its last answer to collect
    error: str | None = None  # why it could not start, as it said
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.index)


class Supervisor:
    """Starts, watches, restarts and stops the workers; the admin app's ``Workers``."""

    def __init__(self, settings: Settings, options: Mapping[str, str | None], runtime: Runtime):
        self._settings = settings
        self._options = dict(options)
        self._runtime = runtime
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._ids = itertools.count(1)
        self._retired: tuple[Family, ...] = ()  # counters of workers that exited
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._started = False  # every worker of the first start has been ready
        self._all_ready = asyncio.Event()
        self._failure: str | None = None
        self._failed = asyncio.Event()
        self._unclean = False  # a worker exited with an error while stopping
        self._signals: set[asyncio.Task[Any]] = set()
        self.policy_bytes: bytes | None = None
        registry = runtime.metrics.registry
        self.restarts = registry.register(
            Counter(
                "agent_warden_worker_restarts_total",
                "Workers restarted after they exited or stopped answering, by worker.",
                ("worker",),
            )
        )
        registry.register(
            GaugeFunc(
                "agent_warden_worker_up",
                "1 while the worker is ready and answers its supervisor, by worker.",
                self._up,
                ("worker",),
            )
        )
        for slot in self._slots:
            self.restarts.touch(slot.label)

    # -- what the admin listener asks -------------------------------------------------------

    def unready(self) -> str | None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.proc is None:
                return f"worker {slot.index} restarting"
            if not slot.ready:
                return f"worker {slot.index} starting"
            if now - slot.heard > READY_SILENCE:
                return f"worker {slot.index} not answering"
        return None

    def _up(self) -> dict[tuple[str, ...], float]:
        now = time.monotonic()
        return {
            (s.label,): float(s.ready and s.proc is not None and now - s.heard <= READY_SILENCE)
            for s in self._slots
        }

    async def exposition(self) -> bytes:
        answers = await asyncio.gather(*(self._collect(slot) for slot in self._slots))
        own = self._runtime.metrics.registry.collect()
        per_worker = Family(
            "agent_warden_worker_requests_total",
            Kind.COUNTER,
            "Requests seen by each worker process; a restarted worker starts again from 0.",
            ("worker",),
            samples=tuple(
                Sample((slot.label,), _requests(answer))
                for slot, answer in zip(self._slots, answers, strict=True)
            ),
        )
        live = [answer for answer in answers if answer is not None]
        return render(merge([own, self._retired, [per_worker], *live]))

    async def _collect(self, slot: _Slot) -> tuple[Family, ...] | None:
        """The worker's families now; its last ones when it does not answer in time."""
        channel, generation = slot.channel, slot.generation
        if channel is None or not slot.ready:
            return slot.last
        key = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        slot.pending[key] = answer
        try:
            await asyncio.wait_for(channel.send({"op": "collect", "id": key}), SCRAPE_TIMEOUT)
            families = families_from_wire(await asyncio.wait_for(answer, SCRAPE_TIMEOUT))
        except (TimeoutError, OSError, ValueError) as exc:
            log.warning(
                "worker metrics unavailable; its last ones are reported",
                extra={"worker": slot.index, "error": f"{type(exc).__name__}: {exc}"[:200]},
            )
            return slot.last if slot.generation == generation else None
        finally:
            slot.pending.pop(key, None)
        if slot.generation != generation:
            return None  # it exited meanwhile: what it counted is retired already
        slot.last = families
        return families

    # -- starting and keeping the workers ---------------------------------------------------

    def start(self) -> None:
        self._keepers = [asyncio.create_task(self._keep(slot)) for slot in self._slots]

    async def wait_started(self, stop: asyncio.Event) -> bool:
        """True once every worker is ready; False when ``stop`` is set first. Raises
        ConfigError with the reason when a worker fails to start."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._all_ready, self._failed, stop)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self._failure is not None:
            raise ConfigError(self._failure)
        if self._all_ready.is_set():
            self._started = True
            return True
        return False

    async def _keep(self, slot: _Slot) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                pid, code = await self._incarnation(slot)
            except Exception:  # a slot must never lose its keeper
                log.exception("worker could not be run", extra={"worker": slot.index})
                pid, code = None, None
            if self._stopping.is_set():
                if code not in (None, 0, -signal.SIGTERM):
                    self._unclean = True
                return
            if not self._started:
                reason = slot.error or f"worker {slot.index} exited with {_status(code)}"
                self._failure = reason
                self._failed.set()
                return
            served = time.monotonic() - slot.ready_at if slot.ready_at else 0.0
            failures = 1 if served >= STABLE_AFTER else failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
            self.restarts.inc(slot.label)
            log.error(
                "worker exited; restarting",
                extra={
                    "worker": slot.index,
                    "pid": pid,
                    "exit": _status(code),
                    "problem": slot.error,
                    "restart_in_s": delay,
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _incarnation(self, slot: _Slot) -> tuple[int | None, int | None]:
        """Start a worker in ``slot`` and serve it until it exits: (pid, exit code)."""
        slot.error, slot.ready, slot.ready_at, slot.last = None, False, 0.0, None
        ours, theirs = socket.socketpair()
        channel = await _Channel.open(ours)
        try:
            proc = await asyncio.create_subprocess_exec(
                *_worker_argv(slot.index, theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=_worker_env(slot.index),
                start_new_session=True,
            )
        except OSError as exc:
            channel.close()
            slot.error = f"cannot start worker {slot.index}: {exc.strerror or exc}"
            return None, None
        finally:
            theirs.close()
        slot.proc, slot.channel, slot.heard = proc, channel, time.monotonic()
        tasks = [
            asyncio.create_task(self._hello(slot, channel)),
            asyncio.create_task(self._listen(slot, channel)),
            asyncio.create_task(self._heartbeat(slot, channel)),
        ]
        try:
            code = await proc.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            channel.close()
            self._retire(slot)
            slot.proc = slot.channel = None
            slot.ready = False
            slot.generation += 1
            for answer in slot.pending.values():
                if not answer.done():
                    answer.set_exception(ConnectionResetError("worker exited"))
            slot.pending.clear()
        return proc.pid, code

    async def _hello(self, slot: _Slot, channel: _Channel) -> None:
        policy = self.policy_bytes
        hello = {
            "op": "start",
            "index": slot.index,
            "options": self._options,
            "policy": base64.b64encode(policy).decode() if policy is not None else None,
        }
        with contextlib.suppress(OSError):
            await channel.send(hello)

    async def _listen(self, slot: _Slot, channel: _Channel) -> None:
        try:
            while (message := await channel.receive()) is not None:
                slot.heard = time.monotonic()
                op = message["op"]
                if op == "ready" and not slot.ready:
                    slot.ready, slot.ready_at = True, slot.heard
                    log.info(
                        "worker ready",
                        extra={"worker": slot.index, "pid": message.get("pid")},
                    )
                    if all(s.ready for s in self._slots):
                        self._all_ready.set()
                elif op == "metrics":
                    key = message.get("id")
                    answer = slot.pending.get(key) if isinstance(key, int) else None
                    if answer is not None and not answer.done():
                        answer.set_result(message.get("families"))
                elif op == "error":
                    slot.error = str(message.get("message"))[:1000]
        except ChannelError as exc:
            log.error(
                "worker sent garbage; killing it", extra={"worker": slot.index, "error": str(exc)}
            )
            _signal(slot.proc, signal.SIGKILL)

    async def _heartbeat(self, slot: _Slot, channel: _Channel) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            silent = time.monotonic() - slot.heard
            if slot.ready and silent > KILL_SILENCE and not self._stopping.is_set():
                log.error(
                    "worker unresponsive; killing it",
                    extra={"worker": slot.index, "silent_s": round(silent, 1)},
                )
                _signal(slot.proc, signal.SIGKILL)
                return
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(channel.send({"op": "ping"}), HEARTBEAT)

    def _retire(self, slot: _Slot) -> None:
        """Keep the counts of a worker that exited, so that no sum ever goes down."""
        if slot.last:
            kept = [
                f
                for f in slot.last
                if f.kind is not Kind.GAUGE and MERGE_RULES.get(f.name, Merge.SUM) is Merge.SUM
            ]
            self._retired = merge([self._retired, kept])
        slot.last = None

    # -- signals and stopping ----------------------------------------------------------------

    def hangup(self) -> None:
        """SIGHUP: every ready worker reloads its policy (one still starting reads the
        file anyway, and might not handle SIGHUP yet). Without a policy file, nothing."""
        if self._settings.policy is None:
            return
        for slot in self._slots:
            if slot.ready:
                _signal(slot.proc, signal.SIGHUP)

    async def stop(self, grace: float) -> bool:
        """SIGTERM every worker, wait ``grace`` plus ``STOP_MARGIN`` seconds for them,
        kill what is left; True when every worker exited cleanly (or was not running)."""
        self._stopping.set()
        for slot in self._slots:
            _signal(slot.proc, signal.SIGTERM)
        clean = True
        if self._keepers:
            _, late = await asyncio.wait(self._keepers, timeout=grace + STOP_MARGIN)
            if late:
                clean = False
                for slot in self._slots:
                    if slot.proc is not None:
                        log.error(
                            "worker did not stop in time; killing it",
                            extra={"worker": slot.index, "pid": slot.proc.pid},
                        )
                        _signal(slot.proc, signal.SIGKILL)
                await asyncio.wait(late, timeout=KILL_WAIT)
        return clean and not self._unclean

    # -- the policy, in the supervisor too (mint, errors, store_failure) ---------------------

    @contextlib.asynccontextmanager
    async def policy_watch(self) -> AsyncIterator[None]:
        """Watch the policy file; SIGHUP reloads it here and in every worker."""
        runtime, path = self._runtime, self._settings.policy
        loop = asyncio.get_running_loop()
        watcher: PolicyWatcher | None = None
        if path is not None:
            started = False

            def changed(policy: PolicyFile) -> None:
                sha = watcher.sha256 or "" if watcher else ""
                runtime.set_policy(policy, sha)
                if started:
                    runtime.metrics.policy_reloads.inc(ReloadResult.SUCCESS)
                self._spawn(self._keep_bytes(path, sha))

            def failed(_: PolicyError) -> None:
                runtime.metrics.policy_reloads.inc(ReloadResult.FAILURE)

            watcher = PolicyWatcher(path, changed, failed)
            await watcher.start()
            started = True
            await asyncio.gather(*self._signals, return_exceptions=True)

        def hangup() -> None:
            if watcher is not None:
                self._spawn(watcher.reload("sighup"))
            self.hangup()

        loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            if watcher is not None:
                await watcher.stop()
            for task in list(self._signals):
                task.cancel()

    async def _keep_bytes(self, path: str, sha: str) -> None:
        """The bytes of the policy now in force, for workers started later."""
        try:
            data = await asyncio.to_thread(read_policy_file, path)
        except (OSError, PolicyError):
            return
        if hashlib.sha256(data).hexdigest() == sha:
            self.policy_bytes = data

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._signals.add(task)
        task.add_done_callback(self._signals.discard)


def _requests(families: tuple[Family, ...] | None) -> float:
    for family in families or ():
        if family.name == "agent_warden_requests_total":
            return sum(s.value for s in family.samples)
    return 0


def _status(code: int | None) -> str:
    if code is None:
        return "no process"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"code {code}"


def _signal(proc: asyncio.subprocess.Process | None, sig: int) -> None:
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _worker_argv(index: int, fd: int) -> list[str]:
    # -P: the working directory is not put on sys.path (a ./proxy there is not imported).
    return [sys.executable, "-P", "-m", "proxy", WORKER_COMMAND, str(index), str(fd)]


def _worker_env(index: int) -> dict[str, str]:
    env = dict(os.environ)
    # The package the supervisor runs, first: -P left the working directory out.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # Each worker exports its own OTLP series: a resource attribute keeps them apart.
    attrs = env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip().strip(",")
    tag = f"agent_warden.worker={index}"
    env["OTEL_RESOURCE_ATTRIBUTES"] = f"{attrs},{tag}" if attrs else tag
    return env


async def _probe(settings: Settings) -> None:
    """Bind the listen address once without SO_REUSEPORT: a port some process listens on
    (another proxy's workers too, which SO_REUSEPORT would let the workers join) is a
    start-up error, as it is for one process."""
    host, port = settings.listen.host, settings.listen.port

    def bind() -> None:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)

    try:
        await asyncio.to_thread(bind)
    except OSError as exc:
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None


def _open_store(settings: Settings) -> SessionStore:
    from proxy.sessions import open_store

    try:
        return open_store(settings.store, max_sessions=settings.max_sessions)
    except ValueError as exc:
        raise ConfigError(f"--store: {exc}") from None


def _loop_run(main: Any) -> int:
    try:
        import uvloop  # the faster loop (a dependency; asyncio's own without it)
    except ImportError:
        return int(asyncio.run(main))
    return int(uvloop.run(main))


# --- the supervisor's program -------------------------------------------------------------


def supervise(
    settings: Settings, options: Mapping[str, str | None], policy: PolicyFile, lock: AdminLock
) -> int:
    """``run --workers N`` with N > 1; returns the exit code (ConfigError: start-up failed)."""
    runtime = Runtime(
        settings=settings, policy=policy, store=_open_store(settings), admin_lock=lock
    )
    runtime.set_policy(policy)
    return _loop_run(_supervise(settings, options, runtime))


async def _supervise(
    settings: Settings, options: Mapping[str, str | None], runtime: Runtime
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(settings, options, runtime)
    admin = web.AppRunner(
        build_admin_app(runtime, workers=supervisor), access_log=None, shutdown_timeout=1.0
    )
    await admin.setup()
    clean = True
    try:
        async with supervisor.policy_watch():
            try:
                await web.TCPSite(
                    admin, settings.admin.host, settings.admin.port, reuse_address=True
                ).start()
            except OSError as exc:
                raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
            await _probe(settings)
            supervisor.start()
            try:
                started = await supervisor.wait_started(stop)
            except ConfigError:
                await supervisor.stop(0.0)
                raise
            if started:
                runtime.ready = True
                lifecycle.info(
                    "agent-warden started",
                    extra={
                        "version": __version__,
                        "workers": settings.workers,
                        **settings.summary(),
                    },
                )
                await stop.wait()
            runtime.draining = True
            lifecycle.info("draining", extra={"grace_period_s": settings.grace_period})
            clean = await supervisor.stop(settings.grace_period)
    finally:
        await supervisor.stop(0.0)  # nothing left to stop, unless start-up failed
        await admin.cleanup()
        await runtime.store.aclose()
    lifecycle.info("stopped")
    return 0 if clean else 1
