"""The admin API's lock (contract, Admin listener): a bearer token from a file, or loopback.

The file is read at start-up (a missing or empty file stops start-up) and re-read when it
changes, so a rotated Kubernetes Secret takes effect without a restart.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from dataclasses import dataclass

log = logging.getLogger("agent_warden.admin")

_MAX_TOKEN_FILE = 4096


class TokenFileError(Exception):
    """The token file cannot be used; the message names the file and why."""


def read_token(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise TokenFileError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_TOKEN_FILE:
        raise TokenFileError(f"{path}: larger than {_MAX_TOKEN_FILE} bytes")
    token = data.strip()
    if not token:
        raise TokenFileError(f"{path}: empty")
    return token


@dataclass(slots=True)
class AdminLock:
    """Who may read, mint and close sessions."""

    path: str | None
    _token: bytes = b""
    _stamp: tuple[int, int] | None = None

    def load(self) -> None:
        """Read the token now (start-up): raises TokenFileError."""
        if self.path is not None:
            self._token = read_token(self.path)
            self._stamp = _stamp(self.path)

    def _current(self) -> bytes:
        assert self.path is not None
        stamp = _stamp(self.path)
        if stamp is not None and stamp != self._stamp:
            try:
                self._token = read_token(self.path)
                self._stamp = stamp
                log.info("admin token file re-read")
            except TokenFileError as exc:
                log.error(
                    "admin token file unusable; the last token stays", extra={"error": str(exc)}
                )
        return self._token

    def allows(self, authorization: str | None, peer: str | None) -> bool | None:
        """True: let in. False: no or a wrong token (401). None: not loopback and no token
        file (403)."""
        if self.path is None:
            return True if _loopback(peer) else None
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return False
        return hmac.compare_digest(
            presented.strip().encode("utf-8", "surrogateescape"), self._current()
        )


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _loopback(peer: str | None) -> bool:
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
