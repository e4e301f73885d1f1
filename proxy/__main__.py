"""Command line: ``agent-warden run`` and ``agent-warden check``; nothing else."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from aiohttp import web

from proxy import __version__, logs, tools_cli, workers
from proxy.admin_token import AdminLock, TokenFileError
from proxy.app import ProxyListener, Runtime, build_admin_app, services
from proxy.config import ConfigError, Settings, env_name, from_options
from proxy.inject import cli as inject_cli
from proxy.policy import DEFAULT_POLICY, PolicyError, PolicyFile, check_file, load_policy_checked
from proxy.sessions import SessionStore, open_store
from proxy.telemetry import Telemetry

log = logging.getLogger("agent_warden")

# flag -> help; every flag also reads AGENT_WARDEN_<FLAG>.
_RUN_FLAGS: tuple[tuple[str, str], ...] = (
    ("--upstream", "base URL of the agent server (required)"),
    ("--listen", "HOST:PORT the proxy listens on (default 0.0.0.0:8080)"),
    ("--admin", "HOST:PORT of the admin listener (default 127.0.0.1:9901)"),
    ("--policy", "policy file (YAML); without it the built-in default policy applies"),
    ("--protocol", "auto, mcp or a2a (default auto)"),
    ("--store", "session store: memory (default) or redis://[user:pass@]host:port/db[?prefix=p]"),
    ("--public-url", "the proxy's URL as agents reach it; A2A agent cards are rewritten to it"),
    ("--connect-timeout", "upstream connect timeout (default 5s)"),
    ("--response-timeout", "time allowed until the upstream's response headers (default 120s)"),
    ("--stream-idle-timeout", "silence allowed inside a streamed response (default 300s)"),
    (
        "--upstream-keepalive",
        "idle time before a pooled upstream connection is closed (default 4s)",
    ),
    ("--max-body-size", "request body limit, e.g. 10MiB (default 10MiB)"),
    ("--max-connections", "upstream connection pool size (default 1000)"),
    ("--grace-period", "drain time on SIGTERM (default 20s)"),
    ("--log-level", "debug, info, warning or error (default info)"),
    (
        "--max-client-connections",
        "open client connections; the oldest idle one is closed past it (default 4096, "
        "lowered to fit the open-file limit)",
    ),
    ("--keepalive-timeout", "an idle client connection is closed after (default 30s)"),
    ("--header-timeout", "time from a request's first byte to its whole head (default 10s)"),
    (
        "--max-inflight-body-bytes",
        "request bodies buffered at once, all clients together (default 64MiB)",
    ),
    ("--max-batch", "elements of one JSON-RPC batch (default 256)"),
    ("--max-inflight-per-agent", "one agent's request/response calls in flight (default 64)"),
    ("--max-streams-per-agent", "one agent's open event streams (default 256)"),
    ("--max-sessions", "live sessions, all agents together (default 100000)"),
    ("--max-event-size", "one upstream server-sent event (default 8MiB)"),
    (
        "--admin-token-file",
        "file holding the admin API's bearer token; without it /sessions answers loopback only",
    ),
    (
        "--workers",
        "data-plane processes sharing the --listen port (SO_REUSEPORT), 1 to 64; more than "
        "1 needs --store redis://... (default 1)",
    ),
    (
        "--decision-log",
        "FILE (or - for stdout): one JSON line per counted call, allowed or denied; the "
        "input of `agent-warden replay` (default: off)",
    ),
    ("--decision-log-max-bytes", "rotate the decision log past this size (default 64MiB)"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, never a usage dump or a traceback.
        self.exit(2, f"agent-warden: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agent-warden", description="Session-policy sidecar for MCP and A2A.")
    parser.add_argument("--version", action="version", version=f"agent-warden {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the proxy")
    for flag, text in _RUN_FLAGS:
        run.add_argument(
            flag,
            metavar=flag.lstrip("-").split("-")[-1].upper(),
            help=f"{text} [env {env_name(flag)}]",
        )
    check = sub.add_parser("check", help="validate policy files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 1) on warnings too: rules that never apply",
    )
    tools_cli.add_explain(sub)
    tools_cli.add_replay(sub)
    webhook = sub.add_parser("webhook", help="serve the Kubernetes sidecar-injection webhook")
    inject_cli.add_arguments(webhook)
    return parser


def _options(args: argparse.Namespace) -> dict[str, str | None]:
    merged: dict[str, str | None] = {}
    for flag, _ in _RUN_FLAGS:
        key = flag.lstrip("-").replace("-", "_")
        value = getattr(args, key)
        merged[key] = value if value is not None else os.environ.get(env_name(flag))
    return merged


def _check(files: Sequence[str], *, strict: bool = False) -> int:
    """Per file, its problems and its warnings, or ``FILE: ok``; 1 when a file has a
    problem (or, ``strict``, a warning)."""
    failed = False
    for name in files:
        problems, warnings = check_file(name)
        for problem in (*problems, *warnings):
            print(problem)
        if not (problems or warnings):
            print(f"{name}: ok")
        failed = failed or bool(problems) or (strict and bool(warnings))
    return 1 if failed else 0


async def _serve(settings: Settings, runtime: Runtime) -> None:
    async with services(runtime):
        await _listen(settings, runtime)


async def _listen(settings: Settings, runtime: Runtime) -> None:
    proxy = ProxyListener(runtime)
    admin_runner = web.AppRunner(build_admin_app(runtime), access_log=None, shutdown_timeout=1.0)
    await admin_runner.setup()
    try:
        await web.TCPSite(
            admin_runner, settings.admin.host, settings.admin.port, reuse_address=True
        ).start()
        await proxy.start(settings.listen.host, settings.listen.port)
    except OSError as exc:
        await admin_runner.cleanup()
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime.ready = True
    # What start-up built lives as long as the process: out of the collector's sight.
    gc.freeze()
    log.info(
        "agent-warden started",
        extra={"version": __version__, **settings.summary()},
    )
    await stop.wait()
    runtime.draining = True
    log.info("draining", extra={"grace_period_s": settings.grace_period})
    # Closes the listener, lets in-flight requests and streams finish within the grace period.
    await proxy.drain(settings.grace_period)
    await admin_runner.cleanup()
    log.info("stopped")


def _store(settings: Settings) -> SessionStore:
    try:
        return open_store(settings.store, max_sessions=settings.max_sessions)
    except ValueError as exc:  # a store URL the client library refuses
        raise ConfigError(f"--store: {exc}") from None


def _load_policy(path: str) -> PolicyFile:
    """The policy file; its warnings (what `check` warns of) logged, one line each."""
    policy, warnings = load_policy_checked(path)
    for warning in warnings:
        log.warning(
            "policy warning",
            extra={"path": warning.file, "line": warning.line, "warning": str(warning)},
        )
    return policy


def _run(args: argparse.Namespace) -> int:
    options = _options(args)
    settings = from_options(options)
    logs.setup(settings.log_level)
    policy = _load_policy(settings.policy) if settings.policy else DEFAULT_POLICY
    lock = AdminLock(settings.admin_token_file)
    try:
        lock.load()
    except TokenFileError as exc:
        raise ConfigError(f"--admin-token-file: {exc}") from None
    if settings.workers > 1:
        # A supervisor: the admin listener here, the data plane in N worker processes.
        return workers.supervise(settings, options, policy, lock)
    runtime = Runtime(settings=settings, policy=policy, store=_store(settings), admin_lock=lock)
    runtime.telemetry = Telemetry.from_env(runtime.metrics)
    runtime.set_policy(policy)
    try:
        import uvloop  # the faster loop (a dependency; asyncio's own without it)
    except ImportError:
        asyncio.run(_serve(settings, runtime))
    else:
        uvloop.run(_serve(settings, runtime))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [workers.WORKER_COMMAND]:
        return workers.worker_main(argv[1:])  # one of `run --workers N`'s processes
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.files, strict=args.strict)
        if args.command == "webhook":
            return inject_cli.run(args)
        if args.command == "explain":
            return tools_cli.run_explain(args)
        if args.command == "replay":
            return tools_cli.run_replay(args)
        return _run(args)
    except ConfigError as exc:
        print(f"agent-warden: error: {exc}", file=sys.stderr)
        return 2
    except PolicyError as exc:
        # Every problem, one line each, as `check` reports them (contract, Command line).
        for problem in exc.problems or (str(exc),):
            print(f"agent-warden: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
