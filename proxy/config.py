"""Run-time settings: flags, their environment variables, and validation (no I/O beyond env)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from yarl import URL

from proxy.durations import parse_flag_duration

Protocol = Literal["auto", "mcp", "a2a"]
PROTOCOLS: tuple[Protocol, ...] = ("auto", "mcp", "a2a")

ENV_PREFIX = "AGENT_WARDEN_"
MAX_WORKERS = 64  # data-plane processes; past a few per core they only add contention


class ConfigError(ValueError):
    """A setting that stops start-up; its text is the one line the operator sees."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    upstream: URL
    listen: Address = Address("0.0.0.0", 8080)
    admin: Address = Address("127.0.0.1", 9901)
    policy: str | None = None
    protocol: Protocol = "auto"
    public_url: str | None = None  # the proxy's address as A2A clients reach it
    store: str = "memory"  # or redis://host:port/db (rediss:// for TLS)
    connect_timeout: float = 5.0
    response_timeout: float = 120.0  # time to the upstream's response headers
    stream_idle_timeout: float = 300.0  # silence allowed inside a streamed body
    upstream_keepalive: float = 4.0  # below the 5 s keep-alive of uvicorn and Node
    max_body_size: int = 10 * 1024 * 1024
    max_connections: int = 1000
    grace_period: float = 20.0
    log_level: str = "info"
    # Proxy-wide safety limits (docs/hardening.md): each has a flag and a metric.
    max_client_connections: int = 4096  # open client connections (lowered to fit the fd limit)
    keepalive_timeout: float = 30.0  # an idle client connection is closed after this
    header_timeout: float = 10.0  # from a request's first byte to its complete head
    max_inflight_body_bytes: int = 64 * 1024 * 1024  # request bodies buffered at once
    max_batch: int = 256  # elements of one JSON-RPC batch
    max_inflight_per_agent: int = 64  # one agent's request/response calls in flight
    max_streams_per_agent: int = 256  # one agent's open event streams
    max_sessions: int = 100_000  # live sessions in the store, all agents together
    max_event_size: int = 8 * 1024 * 1024  # one upstream SSE event
    admin_token_file: str | None = None  # /sessions needs its token; else loopback only
    workers: int = 1  # data-plane processes on one --listen port (SO_REUSEPORT); >1 needs Redis
    decision_log: str | None = None  # FILE or "-": one JSON line per counted call (replay)
    decision_log_max_bytes: int = 64 * 1024 * 1024  # rotated past this (FILE.1 .. FILE.3)

    def summary(self) -> dict[str, object]:
        """What the start-up log line says of the settings."""
        return {
            "listen": str(self.listen),
            "admin": str(self.admin),
            "upstream": str(self.upstream),
            "policy": self.policy or "(built-in default)",
            "protocol": self.protocol,
        }


def parse_address(value: str, what: str) -> Address:
    """``HOST:PORT``, ``:PORT`` or ``[v6]:PORT``."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not _digits(port_text):
        raise ConfigError(f"{what}: expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{what}: bad IPv6 address in {value!r}") from None
    host = host or "0.0.0.0"
    return Address(host, port)


def parse_upstream(value: str, what: str = "--upstream") -> URL:
    try:
        url = URL(value.strip())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what}: bad URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ConfigError(f"{what}: URL must start with http:// or https://, got {value!r}")
    if not url.host:
        raise ConfigError(f"{what}: URL has no host: {value!r}")
    try:
        _ = url.port
    except ValueError:
        raise ConfigError(f"{what}: bad port in {value!r}") from None
    if url.query_string or url.fragment:
        raise ConfigError(f"{what}: URL must not carry a query or fragment: {value!r}")
    return url


def parse_size(value: str, what: str) -> int:
    text = value.strip().lower()
    factor = 1
    for suffix, mult in (
        ("kib", 1024),
        ("mib", 1024**2),
        ("gib", 1024**3),
        ("k", 1024),
        ("m", 1024**2),
    ):
        if text.endswith(suffix):
            text, factor = text[: -len(suffix)], mult
            break
    if not _digits(text) or int(text) <= 0:
        raise ConfigError(f"{what}: expected a positive size such as 10MiB, got {value!r}")
    return int(text) * factor


def seconds(value: str, what: str) -> float:
    try:
        return parse_flag_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _digits(text: str) -> bool:
    """ASCII digits only, and few enough for ``int``: ``str.isdigit`` also takes "²"."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def from_options(options: Mapping[str, str | None]) -> Settings:
    """Settings from flag values already merged with their environment variables."""
    upstream = options.get("upstream")
    if not upstream:
        raise ConfigError(f"--upstream is required (or set {env_name('upstream')})")
    protocol = (options.get("protocol") or "auto").strip().lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol: expected auto, mcp or a2a, got {protocol!r}")
    defaults = Settings(upstream=URL("http://127.0.0.1"))

    def opt(name: str) -> str | None:
        value = options.get(name)
        return value if value not in (None, "") else None

    listen, admin = opt("listen"), opt("admin")
    level = (opt("log_level") or defaults.log_level).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: expected debug, info, warning or error, got {level!r}")
    max_conn = opt("max_connections")
    if max_conn is not None and (not _digits(max_conn) or int(max_conn) < 1):
        raise ConfigError(f"--max-connections: expected a positive integer, got {max_conn!r}")

    def dur(name: str, default: float) -> float:
        value = opt(name)
        return default if value is None else seconds(value, "--" + name.replace("_", "-"))

    def count(name: str, default: int) -> int:
        value = opt(name)
        if value is None:
            return default
        if not _digits(value) or int(value) < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: expected a positive integer, got {value!r}")
        return int(value)

    def size(name: str, default: int) -> int:
        value = opt(name)
        return default if value is None else parse_size(value, "--" + name.replace("_", "-"))

    max_body = opt("max_body_size")
    store = opt("store") or "memory"
    if store != "memory" and not store.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"--store: expected memory, redis://host:port/db or rediss://..., got {store!r}"
        )
    public = opt("public_url")
    if public is not None:
        public = str(parse_upstream(public, "--public-url")).rstrip("/")
    listen_at = parse_address(listen, "--listen") if listen else defaults.listen
    workers = _workers(opt("workers"), store, listen_at)
    return Settings(
        upstream=parse_upstream(upstream),
        listen=listen_at,
        admin=parse_address(admin, "--admin") if admin else defaults.admin,
        policy=opt("policy"),
        protocol=protocol,
        public_url=public,
        store=store,
        connect_timeout=dur("connect_timeout", defaults.connect_timeout),
        response_timeout=dur("response_timeout", defaults.response_timeout),
        stream_idle_timeout=dur("stream_idle_timeout", defaults.stream_idle_timeout),
        upstream_keepalive=dur("upstream_keepalive", defaults.upstream_keepalive),
        max_body_size=(
            parse_size(max_body, "--max-body-size") if max_body else defaults.max_body_size
        ),
        max_connections=int(max_conn) if max_conn else defaults.max_connections,
        grace_period=dur("grace_period", defaults.grace_period),
        log_level=level,
        max_client_connections=count("max_client_connections", defaults.max_client_connections),
        keepalive_timeout=dur("keepalive_timeout", defaults.keepalive_timeout),
        header_timeout=dur("header_timeout", defaults.header_timeout),
        max_inflight_body_bytes=size("max_inflight_body_bytes", defaults.max_inflight_body_bytes),
        max_batch=count("max_batch", defaults.max_batch),
        max_inflight_per_agent=count("max_inflight_per_agent", defaults.max_inflight_per_agent),
        max_streams_per_agent=count("max_streams_per_agent", defaults.max_streams_per_agent),
        max_sessions=count("max_sessions", defaults.max_sessions),
        max_event_size=size("max_event_size", defaults.max_event_size),
        admin_token_file=opt("admin_token_file"),
        workers=workers,
        decision_log=opt("decision_log") or None,
        decision_log_max_bytes=size("decision_log_max_bytes", defaults.decision_log_max_bytes),
    )


def _workers(value: str | None, store: str, listen: Address) -> int:
    """``--workers``: 1 to MAX_WORKERS; more than one only on a shared store and a fixed
    port, where the kernel can spread connections (SO_REUSEPORT)."""
    if value is None:
        return 1
    text = value.strip()
    if not _digits(text) or not 1 <= int(text) <= MAX_WORKERS:
        raise ConfigError(f"--workers: expected an integer from 1 to {MAX_WORKERS}, got {value!r}")
    workers = int(text)
    if workers == 1:
        return 1
    if store == "memory":
        raise ConfigError(
            f"--workers {workers} needs a shared session store (--store redis://...): "
            "with the memory store each worker would keep its own sessions and counts"
        )
    if listen.port == 0:
        raise ConfigError(f"--workers {workers} needs a fixed --listen port, not port 0")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(f"--workers {workers} needs SO_REUSEPORT, which this system lacks")
    return workers
