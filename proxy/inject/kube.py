"""Does the pod's namespace hold what the sidecar needs? Two GETs of the Kubernetes API.

A ConfigMap or Secret volume, or a ``secretKeyRef``, that names a missing object (or key)
holds the pod in ``ContainerCreating`` until it appears. The webhook asks the API server
before it injects (``missingObjects`` in the injector config), so such a pod is created
without the sidecar, or refused, with the reason, instead of waiting unseen.

Only ``GET /api/v1/namespaces/{ns}/configmaps/{name}`` and ``.../secrets/{name}``: the
chart's ClusterRole grants ``get`` on the few names the injector config mentions, nothing
else (no list, no watch, no other Secret). A lookup that cannot say (a timeout, a 5xx,
403 for a name outside the role) leaves the pod to be injected as before, and is logged
and counted: the check never makes the webhook less available than it was without it.

Positive answers are cached briefly (``cache_seconds``): a ReplicaSet's burst of pods
costs one GET per object. A missing object is never cached, so creating it is seen at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.config import ConfigError
from proxy.inject.patch import Reference

__all__ = [
    "IN_CLUSTER_CA",
    "IN_CLUSTER_TOKEN",
    "Checked",
    "KubeAPI",
    "LookupFailed",
    "Missing",
    "ObjectCheck",
    "Unverified",
]

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
_RESOURCES = {"ConfigMap": "configmaps", "Secret": "secrets"}
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_TOKEN_BYTES = 64 * 1024
_MAX_OBJECT_BYTES = 4 * 1024 * 1024  # a ConfigMap or Secret is at most 1 MiB of data


class LookupFailed(Exception):
    """The API server gave no answer about the object; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class KubeAPI:
    """GET one ConfigMap or Secret; None when the API server says 404.

    The bearer token is re-read when its file changes (the kubelet rotates projected
    service-account tokens); the CA file is read once.
    """

    def __init__(
        self,
        url: str,
        *,
        token_file: str | None = None,
        ca_file: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"--kube-api: expected an http(s) URL, got {url!r}")
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        self._ssl: ssl.SSLContext | bool = True
        if ca_file:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise ConfigError(f"--kube-ca-file: cannot load {ca_file}: {reason}") from None
        self._token: tuple[tuple[int, int], str] | None = None
        self._session: aiohttp.ClientSession | None = None
        if token_file:
            self._read_token()  # at start-up: a missing token file is a config error

    @classmethod
    def in_cluster(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        token_file: str = IN_CLUSTER_TOKEN,
        ca_file: str = IN_CLUSTER_CA,
        timeout: float = 2.0,
    ) -> KubeAPI | None:
        """The API server a pod reaches (KUBERNETES_SERVICE_HOST/PORT), or None outside one."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            return None
        host = f"[{host}]" if ":" in host else host  # an IPv6 service address
        return cls(
            f"https://{host}:{port}", token_file=token_file, ca_file=ca_file, timeout=timeout
        )

    def _read_token(self) -> str:
        assert self.token_file is not None
        try:
            st = os.stat(self.token_file)
            signature = (st.st_mtime_ns, st.st_ino)
            if self._token is not None and self._token[0] == signature:
                return self._token[1]
            with open(self.token_file, "rb") as handle:
                text = handle.read(_MAX_TOKEN_BYTES + 1).decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(
                f"--kube-token-file: cannot read {self.token_file}: {reason}"
            ) from None
        if not text or len(text) > _MAX_TOKEN_BYTES:
            raise ConfigError(f"--kube-token-file: {self.token_file} holds no token")
        self._token = (signature, text)
        return text

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                raise_for_status=False,
            )
        return self._session

    async def get(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The object as JSON, None on 404; raises LookupFailed on anything else."""
        resource = _RESOURCES[kind]
        if not _DNS_LABEL.fullmatch(namespace) or not _DNS_SUBDOMAIN.fullmatch(name):
            raise LookupFailed("invalid", f"cannot look up {kind} {name!r} in {namespace!r}")
        headers = {"Accept": "application/json"}
        if self.token_file:
            try:
                headers["Authorization"] = f"Bearer {self._read_token()}"
            except ConfigError as exc:
                raise LookupFailed("token", str(exc)) from None
        url = f"{self.url}/api/v1/namespaces/{namespace}/{resource}/{name}"
        try:
            async with self._client().get(url, headers=headers, allow_redirects=False) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    reason = {401: "unauthorized", 403: "forbidden"}.get(resp.status, "status")
                    raise LookupFailed(reason, f"{kind} {namespace}/{name}: HTTP {resp.status}")
                body = await resp.content.read(_MAX_OBJECT_BYTES + 1)
        except TimeoutError:
            raise LookupFailed("timeout", f"{kind} {namespace}/{name}: no answer") from None
        except aiohttp.ClientError as exc:
            raise LookupFailed("unreachable", f"{kind} {namespace}/{name}: {exc}") from None
        try:
            if len(body) > _MAX_OBJECT_BYTES:
                raise ValueError("too large")
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise LookupFailed("invalid", f"{kind} {namespace}/{name}: not a JSON object") from None
        if not isinstance(value, Mapping):
            raise LookupFailed("invalid", f"{kind} {namespace}/{name}: not a JSON object")
        return value


@dataclass(frozen=True, slots=True)
class Missing:
    """An object (or a key of it) the sidecar needs is not there."""

    reference: Reference
    key: str | None = None  # None: the object itself is missing

    def describe(self, namespace: str) -> str:
        ref = self.reference
        uses = ", ".join(ref.uses)
        if self.key is None:
            return f"{ref.kind} {ref.name!r} ({uses}) not found in namespace {namespace!r}"
        return (
            f"{ref.kind} {ref.name!r} ({uses}) in namespace {namespace!r} has no key {self.key!r}"
        )


@dataclass(frozen=True, slots=True)
class Unverified:
    """No answer about one object: the pod is injected as if it were there."""

    reference: Reference
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Checked:
    missing: tuple[Missing, ...] = ()
    unverified: tuple[Unverified, ...] = ()


@dataclass
class ObjectCheck:
    """The references of one pod, looked up in its namespace (positive answers cached)."""

    api: KubeAPI
    cache_seconds: float = 10.0
    max_cached: int = 4096
    _cache: dict[tuple[str, str, str], tuple[float, frozenset[str]]] = field(default_factory=dict)

    async def check(self, namespace: str, references: Iterable[Reference]) -> Checked:
        refs = list(references)
        results = await asyncio.gather(*(self._one(namespace, ref) for ref in refs))
        missing = tuple(m for r in results for m in r if isinstance(m, Missing))
        unverified = tuple(u for r in results for u in r if isinstance(u, Unverified))
        return Checked(missing, unverified)

    async def _one(self, namespace: str, ref: Reference) -> list[Missing | Unverified]:
        keys = await self._keys(namespace, ref)
        if isinstance(keys, Unverified):
            return [keys]
        if keys is None:
            return [Missing(ref)]
        return [Missing(ref, key) for key in ref.keys if key not in keys]

    async def _keys(self, namespace: str, ref: Reference) -> frozenset[str] | Unverified | None:
        """The object's keys; None when it does not exist."""
        entry = (ref.kind, namespace, ref.name)
        now = time.monotonic()
        cached = self._cache.get(entry)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            obj = await self.api.get(ref.kind, namespace, ref.name)
        except LookupFailed as exc:
            return Unverified(ref, exc.reason, str(exc))
        if obj is None:
            self._cache.pop(entry, None)
            return None
        keys: set[str] = set()
        for section in ("data", "binaryData"):
            values = obj.get(section)
            if isinstance(values, Mapping):
                keys.update(str(k) for k in values)
        found = frozenset(keys)
        if len(self._cache) >= self.max_cached:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
        self._cache[entry] = (now + self.cache_seconds, found)
        return found
