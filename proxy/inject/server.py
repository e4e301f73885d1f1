"""The webhook over TLS: AdmissionReview v1 in, AdmissionReview v1 out, certificates reloaded.

The injector never blocks a pod by accident: whatever it cannot read or decide is
answered with ``allowed: true`` and a message; only a request that is not an
AdmissionReview at all (no body, not JSON, no ``request.uid``) gets a 400. The one
refusal is chosen: ``missingObjects: deny``, for a pod whose namespace lacks an object
the sidecar needs (``proxy.inject.kube``). ``GET /metrics`` counts the answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.config import Address, ConfigError
from proxy.inject.config import InjectConfig
from proxy.inject.kube import KubeAPI, ObjectCheck
from proxy.inject.patch import Decision, PodError, decide
from proxy.metrics import CONTENT_TYPE, Counter, Registry

__all__ = [
    "ADMISSION_API_VERSION",
    "OUTCOMES",
    "Admission",
    "CertificateReloader",
    "WebhookMetrics",
    "WebhookSettings",
    "admit",
    "build_app",
    "serve",
    "verify",
]

log = logging.getLogger("agent_warden.inject")

ADMISSION_API_VERSION = "admission.k8s.io/v1"
MAX_REVIEW_BYTES = 8 * 1024 * 1024  # a pod is at most ~1.5 MiB in etcd; room for the envelope


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    listen: Address
    cert: str
    key: str
    config: InjectConfig
    cert_poll_seconds: float = 2.0
    shutdown_seconds: float = 5.0
    # The API server, for missingObjects skip or deny; None: no lookups.
    kube: KubeAPI | None = None


class BadReview(ValueError):
    """A request that is not an AdmissionReview: answered 400 with this text."""


# The ``outcome`` label of agent_warden_webhook_reviews_total.
OUTCOMES = ("injected", "skipped", "warned", "missing", "denied", "invalid", "error")


class WebhookMetrics:
    """What the webhook answered, and what it could not verify: served at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.reviews = self.registry.register(
            Counter(
                "agent_warden_webhook_reviews_total",
                "Admission reviews answered, by outcome: injected; skipped (nothing to do); "
                "warned (not injected, with a warning); missing (not injected: an object the "
                "sidecar needs is missing); denied (refused for the same reason, "
                "missingObjects deny); invalid (not an AdmissionReview, 400); error.",
                ["outcome"],
            )
        )
        for outcome in OUTCOMES:
            self.reviews.touch(outcome)
        self.missing = self.registry.register(
            Counter(
                "agent_warden_webhook_missing_objects_total",
                "Pods not injected, or refused, because their namespace lacks an object "
                "(or a key of it) the sidecar needs.",
                ["namespace", "kind", "name"],
            )
        )
        self.lookup_errors = self.registry.register(
            Counter(
                "agent_warden_webhook_lookup_errors_total",
                "Lookups of the sidecar's objects that got no answer; the pod was injected "
                "unverified. Reasons: forbidden (a name outside the webhook's role), "
                "unauthorized, timeout, unreachable, status, invalid, token.",
                ["kind", "reason"],
            )
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """The AdmissionReview to send back, and what it was decided from."""

    answer: dict[str, Any]
    outcome: str
    decision: Decision | None = None
    namespace: str | None = None


# --- the admission decision (no aiohttp) --------------------------------------------


def _response(uid: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True, **fields},
    }


def _status(message: str) -> dict[str, Any]:
    return {"status": {"status": "Success", "code": 200, "message": message}}


def admit(review: object, config: InjectConfig) -> Admission:
    """The answer to ``review`` before any lookup; raises BadReview when it has no uid."""
    if not isinstance(review, Mapping):
        raise BadReview("expected an AdmissionReview JSON object")
    request = review.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise BadReview("expected an AdmissionReview with request.uid")
    uid: str = request["uid"]
    if not uid:
        raise BadReview("request.uid is empty")
    if review.get("apiVersion") != ADMISSION_API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadReview(f"expected kind AdmissionReview of apiVersion {ADMISSION_API_VERSION}")
    where = {"uid": uid, "namespace": request.get("namespace")}
    kind = request.get("kind")
    if (
        not isinstance(kind, Mapping)
        or kind.get("kind") != "Pod"
        or kind.get("group") not in ("", None)
    ):
        log.info("not a pod", extra={**where, "kind": kind})
        message = "agent-warden injects pods only; nothing to do"
        return Admission(_response(uid, **_status(message)), "skipped")
    operation = request.get("operation", "CREATE")
    if operation != "CREATE" or request.get("subResource"):
        message = f"agent-warden injects on pod CREATE only; got {operation}"
        return Admission(_response(uid, **_status(message)), "skipped")
    try:
        decision = decide(request.get("object"), config)
    except PodError as exc:
        log.warning("malformed pod", extra={**where, "problem": str(exc)})
        message = f"agent-warden sidecar not injected: malformed pod: {exc}"
        return Admission(_response(uid, warnings=[message], **_status(message)), "warned")
    metadata = request["object"].get("metadata") or {}  # decide() has read the pod
    # A pod that asked for the sidecar and did not get it is worth the operator's attention.
    log.log(
        logging.WARNING if decision.warnings else logging.INFO,
        "admission review",
        extra={
            **where,
            "pod": metadata.get("name") or metadata.get("generateName"),
            "decision": decision.reason,
            "injected": decision.injected,
            "dry_run": bool(request.get("dryRun")),
        },
    )
    fields: dict[str, Any] = {}
    if decision.patch:
        fields["patchType"] = "JSONPatch"
        fields["patch"] = base64.b64encode(decision.patch_json()).decode("ascii")
    if decision.warnings:
        fields["warnings"] = list(decision.warnings)
    outcome = "injected" if decision.injected else "warned" if decision.warnings else "skipped"
    namespace = request.get("namespace")
    return Admission(
        _response(uid, **fields),
        outcome,
        decision,
        namespace if isinstance(namespace, str) and namespace else None,
    )


_MISSING_HINT = (
    "create it there (the chart creates its objects in the namespaces of policy.namespaces), "
    "then re-create the pod"
)


async def verify(
    admission: Admission, config: InjectConfig, check: ObjectCheck, metrics: WebhookMetrics
) -> Admission:
    """An injecting answer, checked against the pod's namespace (``missingObjects``)."""
    decision, namespace = admission.decision, admission.namespace
    if decision is None or not decision.injected or config.missing_objects == "inject":
        return admission
    uid = admission.answer["response"]["uid"]
    if namespace is None:  # a pod is namespaced: an API server always says where
        log.warning("cannot verify: no namespace in the review", extra={"uid": uid})
        return admission
    checked = await check.check(namespace, decision.references)
    for unverified in checked.unverified:
        ref = unverified.reference
        metrics.lookup_errors.inc(ref.kind, unverified.reason)
        # A name outside the webhook's role (a pod's own policy-configmap) is expected.
        level = logging.INFO if unverified.reason == "forbidden" else logging.WARNING
        log.log(
            level,
            "cannot verify an object the sidecar needs; injecting",
            extra={
                "uid": uid,
                "namespace": namespace,
                "kind": ref.kind,
                "object": ref.name,
                "reason": unverified.reason,
                "problem": unverified.detail,
            },
        )
    if not checked.missing:
        return admission
    problems = [m.describe(namespace) for m in checked.missing]
    for missing in checked.missing:
        metrics.missing.inc(namespace, missing.reference.kind, missing.reference.name)
    extra = {"uid": uid, "namespace": namespace, "missing": problems}
    if config.missing_objects == "deny":
        log.warning("pod refused: objects the sidecar needs are missing", extra=extra)
        message = f"agent-warden: pod refused: {'; '.join(problems)}; {_MISSING_HINT}"
        status = {"status": "Failure", "code": 403, "reason": "Forbidden", "message": message}
        answer = {
            "apiVersion": ADMISSION_API_VERSION,
            "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": False, "status": status},
        }
        return Admission(answer, "denied", decision, namespace)
    log.warning("sidecar not injected: objects it needs are missing", extra=extra)
    warnings = [f"agent-warden sidecar not injected: {p}" for p in problems]
    message = f"agent-warden sidecar not injected: {'; '.join(problems)}; {_MISSING_HINT}"
    return Admission(
        _response(uid, warnings=warnings, **_status(message)), "missing", decision, namespace
    )


# --- HTTP ---------------------------------------------------------------------------

CONFIG_KEY = web.AppKey("config", InjectConfig)
DRAINING_KEY = web.AppKey("draining", asyncio.Event)
METRICS_KEY = web.AppKey("metrics", WebhookMetrics)
CHECK_KEY = web.AppKey("check", ObjectCheck)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read_review(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise BadReview(f"expected Content-Type application/json, got {request.content_type!r}")
    body = await request.read()
    if not body:
        raise BadReview("empty body; expected an AdmissionReview")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadReview(f"body is not JSON: {type(exc).__name__}") from None


async def _mutate(request: web.Request) -> web.Response:
    review: object = None
    metrics = request.app[METRICS_KEY]
    try:
        review = await _read_review(request)
        config = request.app[CONFIG_KEY]
        admission = admit(review, config)
        check = request.app.get(CHECK_KEY)
        if check is not None:
            admission = await verify(admission, config, check, metrics)
    except web.HTTPRequestEntityTooLarge:
        metrics.reviews.inc("invalid")
        return _error(413, f"body larger than {MAX_REVIEW_BYTES} bytes")
    except BadReview as exc:
        metrics.reviews.inc("invalid")
        log.info("bad request", extra={"problem": str(exc), "remote": request.remote})
        return _error(400, str(exc))
    except Exception:  # never crash, never block a pod because of the injector
        metrics.reviews.inc("error")
        log.exception("injector failure")
        uid = _uid(review)
        if uid is None:
            return _error(500, "internal error")
        return web.json_response(
            _response(uid, **_status("agent-warden internal error; pod not injected"))
        )
    metrics.reviews.inc(admission.outcome)
    return web.json_response(admission.answer)


def _uid(review: object) -> str | None:
    request = review.get("request") if isinstance(review, Mapping) else None
    uid = request.get("uid") if isinstance(request, Mapping) else None
    return uid if isinstance(uid, str) and uid else None


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[DRAINING_KEY].is_set():
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].registry.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def build_app(config: InjectConfig, check: ObjectCheck | None = None) -> web.Application:
    """``POST /mutate``, ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.

    With ``check``, an injecting answer is first checked against the pod's namespace
    (``missingObjects`` skip or deny).
    """
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[CONFIG_KEY] = config
    app[DRAINING_KEY] = asyncio.Event()
    app[METRICS_KEY] = WebhookMetrics()
    if check is not None and config.missing_objects != "inject":
        app[CHECK_KEY] = check
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


# --- TLS ----------------------------------------------------------------------------


class CertificateReloader:
    """One server SSLContext whose certificate follows its files.

    aiohttp keeps the context it started with, so a change is loaded into that same
    object: new handshakes get the new certificate, open connections keep theirs.
    """

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._seen = self._signature()
        try:
            self.context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--cert/--key: cannot load {cert} and {key}: {_reason(exc)}"
            ) from None

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        # stat follows symlinks: a Secret volume's ..data swap changes the inode.
        out = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_ino, st.st_size))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)

    def check(self) -> bool:
        """Reload when the files changed; True when a new certificate was loaded."""
        signature = self._signature()
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            # Tried on a scratch context first: a half-written pair must not touch the live one.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "certificate reload failed; keeping the previous one",
                extra={"problem": _reason(exc)},
            )
            return False
        log.info("certificate reloaded", extra={"cert": self.cert})
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc)


# --- serving ------------------------------------------------------------------------


async def _cert_watch(reloader: CertificateReloader, interval: float) -> AsyncIterator[None]:
    task = asyncio.create_task(reloader.watch(interval))
    yield
    task.cancel()


async def serve(settings: WebhookSettings) -> None:
    """Serve until SIGTERM or SIGINT; raises ConfigError when it cannot start."""
    reloader = CertificateReloader(settings.cert, settings.key)
    check = ObjectCheck(settings.kube) if settings.kube is not None else None
    app = build_app(settings.config, check)
    app.cleanup_ctx.append(lambda _: _cert_watch(reloader, settings.cert_poll_seconds))
    if settings.kube is not None:
        kube = settings.kube

        async def _close_kube(_: web.Application) -> None:
            await kube.close()

        app.on_cleanup.append(_close_kube)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_seconds)
    await runner.setup()
    try:
        await web.TCPSite(
            runner,
            settings.listen.host,
            settings.listen.port,
            ssl_context=reloader.context,
            reuse_address=True,
        ).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "agent-warden webhook started",
        extra={
            "version": __version__,
            "listen": str(settings.listen),
            "image": settings.config.image_ref,
            "inject_by_default": settings.config.inject_by_default,
            "missing_objects": settings.config.missing_objects,
            "kube_api": settings.kube.url if settings.kube is not None else None,
        },
    )
    await stop.wait()
    app[DRAINING_KEY].set()
    log.info("stopping")
    await runner.cleanup()
    log.info("stopped")
