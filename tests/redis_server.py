"""A real ``redis-server`` on a free loopback port, persistence off, for the tests.

``RedisServer`` starts the Debian ``redis-server`` binary as a child process and waits for
PING. ``stop()`` and ``start()`` stop and restart it on the same port, so fault tests can
take the store away and bring it back while a client keeps its URL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from tests.upstreams.serve import LOOPBACK, free_port

BINARY = "redis-server"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class RedisServerMissing(RuntimeError):
    """No ``redis-server`` on PATH."""


class RedisServer:
    """One ``redis-server --port <port>`` child; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    def __init__(self, port: int | None = None, binary: str = BINARY) -> None:
        found = shutil.which(binary)
        if found is None:
            raise RedisServerMissing(
                f"{binary} not found on PATH: `make test` installs it (Debian package redis-server)"
            )
        self.binary = found
        self.port = port if port is not None else free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        fd, log = tempfile.mkstemp(prefix="redis-", suffix=".log")
        os.close(fd)
        self._log = Path(log)

    def __str__(self) -> str:
        return self.url

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode} on port {self.port}:\n"
                    + self.log_text()
                )
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data is gone (persistence is off)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def ping(self, timeout: float = 0.5) -> bool:
        """True when the server answers PING (a raw RESP exchange, no client library)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many there were."""
        if not self.running:
            return 0
        client = redis.Redis.from_url(self.url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            return int(client.delete(*keys)) if keys else 0
        finally:
            client.close()

    def log_text(self) -> str:
        return self._log.read_text(errors="replace")

    def close(self) -> None:
        self.stop()
        self._log.unlink(missing_ok=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
