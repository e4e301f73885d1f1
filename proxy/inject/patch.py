"""Pod in, JSON patch out: whether to inject the sidecar, and the RFC 6902 patch that does.

Pure: no I/O, no aiohttp. The patch is minimal (only what changes, whole arrays and
objects added where the pod has none) and deterministic (the same pod and configuration
give the same bytes), and injecting the patched pod again gives no patch. A decision to
inject also names the objects the sidecar reads from the pod's namespace (``references``):
the server may look them up before it answers (``proxy.inject.kube``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config import PROTOCOLS
from proxy.inject.config import DNS_SUBDOMAIN_RE, InjectConfig

__all__ = [
    "ADMIN_PORT_NAME",
    "ADMIN_TOKEN_DIR",
    "ADMIN_TOKEN_ENV",
    "ADMIN_TOKEN_FILE",
    "ADMIN_TOKEN_VOLUME",
    "ANNOTATION_PREFIX",
    "INJECT",
    "INJECTED_LABEL",
    "POLICY_CONFIGMAP",
    "POLICY_DIR",
    "POLICY_VOLUME",
    "PROTOCOL",
    "PROXY_PORT_NAME",
    "SIDECAR_NAME",
    "STATUS",
    "UPSTREAM_PORT",
    "Decision",
    "PodError",
    "Reference",
    "decide",
    "pointer",
    "port_name_ok",
]

ANNOTATION_PREFIX = "agent-warden.dev/"
INJECT = ANNOTATION_PREFIX + "inject"
UPSTREAM_PORT = ANNOTATION_PREFIX + "upstream-port"
POLICY_CONFIGMAP = ANNOTATION_PREFIX + "policy-configmap"
PROTOCOL = ANNOTATION_PREFIX + "protocol"
STATUS = ANNOTATION_PREFIX + "status"
# A label on every injected pod, for selectors: the chart's NetworkPolicy and PodMonitor.
INJECTED_LABEL = ANNOTATION_PREFIX + "injected"

SIDECAR_NAME = "agent-warden"
POLICY_VOLUME = "agent-warden-policy"
POLICY_DIR = "/etc/agent-warden"
# The admin API's bearer token: one key of a Secret, mounted as a file the sidecar re-reads
# when the Secret changes (a directory, never a subPath, so updates reach it).
ADMIN_TOKEN_VOLUME = "agent-warden-admin-token"
ADMIN_TOKEN_DIR = "/var/run/agent-warden/admin-token"
ADMIN_TOKEN_FILE = f"{ADMIN_TOKEN_DIR}/token"
ADMIN_TOKEN_ENV = "AGENT_WARDEN_ADMIN_TOKEN_FILE"
ADMIN_PORT_NAME = "aw-admin"
PROXY_PORT_NAME = "aw-proxy"  # the sidecar's listen port when the app's port has no name
DEFAULT_GRACE_SECONDS = 30  # what Kubernetes applies when the pod sets none
GRACE_MARGIN_SECONDS = 5  # between the end of the drain and the kill
RUN_AS_USER = 65532

# IANA_SVC_NAME: at most 15 lowercase letters, digits and single inner hyphens, a letter.
_PORT_NAME_RE = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-)){0,13}[a-z0-9]|[a-z]")


class PodError(ValueError):
    """The object is not a pod this webhook can read; its text says why."""


@dataclass(frozen=True, slots=True)
class Reference:
    """An object the sidecar reads from the pod's namespace; the pod waits until it exists.

    ``keys`` must be in it (a ConfigMap's ``data``/``binaryData``, a Secret's ``data``);
    ``uses`` say what reads it, e.g. ``("policy",)`` or ``("env AGENT_WARDEN_STORE",)``.
    """

    kind: str  # "ConfigMap" or "Secret"
    name: str
    keys: tuple[str, ...]
    uses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one pod: a patch (empty: leave it alone), why, and user warnings."""

    patch: tuple[Mapping[str, Any], ...]
    reason: str
    warnings: tuple[str, ...] = ()
    references: tuple[Reference, ...] = ()

    @property
    def injected(self) -> bool:
        return bool(self.patch)

    def patch_json(self) -> bytes:
        return json.dumps(list(self.patch), separators=(",", ":")).encode()


def pointer(*parts: str | int) -> str:
    """An RFC 6901 JSON pointer: ``~`` and ``/`` in a part are escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# --- reading the pod ---------------------------------------------------------------


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PodError(f"{where}: expected an object")
    return value


def _objects(value: object, where: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise PodError(f"{where}: expected a list of objects")
    return value


@dataclass(frozen=True, slots=True)
class _Pod:
    raw: Mapping[str, Any]
    metadata: Mapping[str, Any]
    annotations: Mapping[str, str]
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    containers: list[Mapping[str, Any]]
    init_containers: list[Mapping[str, Any]]
    volumes: list[Mapping[str, Any]]

    @classmethod
    def read(cls, pod: object) -> _Pod:
        if not isinstance(pod, Mapping):
            raise PodError("the pod is not a JSON object")
        metadata = _mapping(pod.get("metadata"), "metadata")
        annotations = _mapping(metadata.get("annotations"), "metadata.annotations")
        labels = _mapping(metadata.get("labels"), "metadata.labels")
        for where, strings in (("annotations", annotations), ("labels", labels)):
            if not all(isinstance(v, str) for v in strings.values()):
                raise PodError(f"metadata.{where}: values must be strings")
        spec = _mapping(pod.get("spec"), "spec")
        containers = _objects(spec.get("containers"), "spec.containers")
        if not containers:
            raise PodError("spec.containers: a pod needs at least one container")
        init_containers = _objects(spec.get("initContainers"), "spec.initContainers")
        for i, container in enumerate(containers + init_containers):
            if not isinstance(container.get("name"), str):
                raise PodError(f"container {i}: no name")
            for j, port in enumerate(_objects(container.get("ports"), "ports")):
                if type(port.get("containerPort")) is not int:
                    raise PodError(f"container {container['name']!r}: port {j}: no containerPort")
        return cls(
            raw=pod,
            metadata=metadata,
            annotations=annotations,
            labels=labels,
            spec=spec,
            containers=containers,
            init_containers=init_containers,
            volumes=_objects(spec.get("volumes"), "spec.volumes"),
        )

    def ports(self) -> Iterator[tuple[int, int, Mapping[str, Any]]]:
        """(container index, port index, port) of the app containers' TCP ports."""
        for i, container in enumerate(self.containers):
            for j, port in enumerate(container.get("ports") or ()):
                if port.get("protocol", "TCP") == "TCP":
                    yield i, j, port

    def port_names(self) -> set[str]:
        return {
            str(port["name"])
            for container in self.containers + self.init_containers
            for port in container.get("ports") or ()
            if port.get("name")
        }

    def has_sidecar(self) -> bool:
        return any(c.get("name") == SIDECAR_NAME for c in self.containers + self.init_containers)

    def service_name(self) -> str | None:
        """OTEL_SERVICE_NAME: the app label, else the name the pod's controller gave it."""
        for label in ("app.kubernetes.io/name", "app"):
            if self.labels.get(label):
                return self.labels[label]
        stem = str(self.metadata.get("generateName") or "").rstrip("-")
        template_hash = self.labels.get("pod-template-hash")
        if stem and template_hash and stem.endswith("-" + template_hash):
            stem = stem[: -len(template_hash) - 1]  # a Deployment's pod: the Deployment's name
        return stem or self.metadata.get("name") or None


# --- the decision ------------------------------------------------------------------


def decide(pod: object, config: InjectConfig) -> Decision:
    """Whether and how to inject the sidecar into ``pod``; raises PodError if unreadable."""
    p = _Pod.read(pod)
    # The annotation, or the label of the same name (which the chart's objectSelector sees).
    asked = p.annotations.get(INJECT, p.labels.get(INJECT, ""))
    wanted = asked.strip().lower()
    if wanted not in ("", "true", "false"):
        return _skip(f'{INJECT}: expected "true" or "false", got {asked!r}')
    if wanted == "false":
        return Decision((), "opted out")
    if wanted != "true" and not config.inject_by_default:
        return Decision((), "not requested")
    if STATUS in p.annotations or p.has_sidecar():
        return Decision((), "already injected")
    if p.spec.get("hostNetwork") is True:
        # The sidecar would take the node's ports; asked for explicitly, say so.
        message = "hostNetwork pods are not injected"
        return _skip(message) if wanted == "true" else Decision((), message)
    return _Injection(p, config).decide()


def _skip(message: str) -> Decision:
    return Decision((), message, (f"agent-warden sidecar not injected: {message}",))


class _Injection:
    def __init__(self, pod: _Pod, config: InjectConfig) -> None:
        self.pod, self.config = pod, config

    def decide(self) -> Decision:
        problem = self._annotation_problem()
        if problem:
            return _skip(problem)
        upstream = self._upstream_port()
        if isinstance(upstream, str):
            return _skip(upstream)
        problem = self._port_conflict(upstream)
        if problem:
            return _skip(problem)
        return self._patch(upstream)

    def _annotation_problem(self) -> str | None:
        protocol = self.pod.annotations.get(PROTOCOL)
        if protocol is not None and protocol not in PROTOCOLS:
            return f"{PROTOCOL}: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        name = self.pod.annotations.get(POLICY_CONFIGMAP)
        if name is not None and not (len(name) <= 253 and DNS_SUBDOMAIN_RE.fullmatch(name)):
            return f"{POLICY_CONFIGMAP}: invalid ConfigMap name {name!r}"
        return None

    def _upstream_port(self) -> int | str:
        """The app's port, or why it cannot be known."""
        text = self.pod.annotations.get(UPSTREAM_PORT)
        ports = list(self.pod.ports())
        if text is None:
            declaring = {i for i, _, _ in ports}
            if len(ports) == 1 and len(declaring) == 1:
                return int(ports[0][2]["containerPort"])
            return (
                f"set the {UPSTREAM_PORT} annotation: the app's port cannot be inferred "
                f"({len(ports)} TCP container ports declared; exactly one is needed)"
            )
        text = text.strip()
        if text.isdigit() and 1 <= int(text) <= 65535:
            return int(text)
        named = [port for _, _, port in ports if port.get("name") == text]
        if len(named) == 1:
            return int(named[0]["containerPort"])
        return f"{UPSTREAM_PORT}: expected a port number or the name of one TCP container port"

    def _port_conflict(self, upstream: int) -> str | None:
        mine = {self.config.listen_port: "listenPort", self.config.admin_port: "adminPort"}
        if upstream in mine:
            return f"the app's port {upstream} is the sidecar's {mine[upstream]}"
        for container in self.pod.containers + self.pod.init_containers:
            for port in container.get("ports") or ():
                if port["containerPort"] in mine:
                    return (
                        f"container {container['name']!r} declares port {port['containerPort']}, "
                        f"the sidecar's {mine[port['containerPort']]}"
                    )
        return None

    # --- the patch ---

    def _patch(self, upstream: int) -> Decision:
        ops, renamed, port_names = self._take_over_ports(upstream)
        spec = self.pod.spec
        taken = {str(v.get("name")) for v in self.pod.volumes}
        volume = _free_name(POLICY_VOLUME, taken)
        token_secret = self.config.admin_token_secret
        token_volume = _free_name(ADMIN_TOKEN_VOLUME, taken | {volume}) if token_secret else None
        sidecar = self._sidecar(upstream, volume, token_volume, *port_names)
        if not self.config.native_sidecar:
            ops.append({"op": "add", "path": "/spec/containers/-", "value": sidecar})
        elif spec.get("initContainers") is not None:  # first, so it is up before the others
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})
        policy_map = self.pod.annotations.get(POLICY_CONFIGMAP) or self.config.policy_config_map
        sources: list[dict[str, Any]] = [
            {"name": volume, "configMap": {"name": policy_map, "optional": False}}
        ]
        if token_volume is not None:
            # Not optional, like the policy: the pod waits for the Secret rather than start a
            # sidecar that would refuse to run without its token file.
            secret = {
                "secretName": token_secret,
                "items": [{"key": self.config.admin_token_key, "path": "token"}],
                "optional": False,
            }
            sources.append({"name": token_volume, "secret": secret})
        if spec.get("volumes") is not None:
            ops.extend({"op": "add", "path": "/spec/volumes/-", "value": s} for s in sources)
        else:
            ops.append({"op": "add", "path": "/spec/volumes", "value": sources})
        app_ops, app_names = self._app_pre_stop_ops(upstream)
        ops.extend(app_ops)
        ops.extend(self._grace_ops())
        status: dict[str, Any] = {
            "sidecar": SIDECAR_NAME,
            "image": self.config.image_ref,
            "native": self.config.native_sidecar,
            "upstreamPort": upstream,
            "renamedPorts": renamed,
            "volumes": [str(s["name"]) for s in sources],
            "configMap": policy_map,
            "drainDelaySeconds": self.config.drain_delay_seconds,
        }
        if token_volume is not None:
            status["adminTokenSecret"] = token_secret
        if app_names:
            status["appPreStop"] = app_names
        text = json.dumps(status, sort_keys=True, separators=(",", ":"))
        ops.extend(_metadata_ops(self.pod, text))
        return Decision(tuple(ops), "injected", references=self._references(policy_map))

    def _references(self, policy_map: str) -> tuple[Reference, ...]:
        """What the sidecar reads from the pod's namespace: policy, token, env sources."""
        config = self.config
        found: dict[tuple[str, str], tuple[list[str], list[str]]] = {}

        def need(kind: str, name: str, key: str, use: str) -> None:
            keys, uses = found.setdefault((kind, name), ([], []))
            if key not in keys:
                keys.append(key)
            if use not in uses:
                uses.append(use)

        need("ConfigMap", policy_map, config.policy_key, "policy")
        if config.admin_token_secret:
            need("Secret", config.admin_token_secret, config.admin_token_key, "admin token")
        for var in config.env:
            source = var.get("valueFrom")
            if not isinstance(source, Mapping):
                continue
            for field_name, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = source.get(field_name)
                # An optional reference does not hold the pod: nothing to check.
                if isinstance(ref, Mapping) and ref.get("optional") is not True:
                    name, key = ref.get("name"), ref.get("key")
                    if isinstance(name, str) and name and isinstance(key, str) and key:
                        need(kind, name, key, f"env {var['name']}")
        return tuple(
            Reference(kind, name, tuple(keys), tuple(uses))
            for (kind, name), (keys, uses) in found.items()
        )

    def _pre_stop(self) -> dict[str, Any] | None:
        """The preStop handler that waits drainDelaySeconds, or None without a delay."""
        seconds = self.config.drain_delay_seconds
        if seconds <= 0:
            return None
        if self.config.pre_stop_action == "sleep":
            return {"sleep": {"seconds": seconds}}
        # No shell needed: the image's own interpreter (the entrypoint is a Python program).
        return {"exec": {"command": ["python3", "-c", f"import time; time.sleep({seconds})"]}}

    def _app_pre_stop_ops(self, upstream: int) -> tuple[list[dict[str, Any]], list[str]]:
        """The app's container waits like the sidecar, so what reaches the proxy while the
        endpoints converge still finds the app. Only with the sleep action (an exec would
        need a program in the app's image), and never over a preStop the app has."""
        config = self.config
        handler = self._pre_stop()
        if handler is None or not config.app_pre_stop or config.pre_stop_action != "sleep":
            return [], []
        serving = sorted(
            {i for i, _, port in self.pod.ports() if port["containerPort"] == upstream}
        )
        if not serving and len(self.pod.containers) == 1:
            serving = [0]  # the only container: the app, whether or not it declares the port
        ops: list[dict[str, Any]] = []
        names: list[str] = []
        for i in serving:
            container = self.pod.containers[i]
            lifecycle = container.get("lifecycle")
            if lifecycle is None:
                path, value = pointer("spec", "containers", i, "lifecycle"), {"preStop": handler}
            elif isinstance(lifecycle, Mapping) and lifecycle.get("preStop") is None:
                path, value = pointer("spec", "containers", i, "lifecycle", "preStop"), handler
            else:
                continue  # the app's own preStop decides
            ops.append({"op": "add", "path": path, "value": value})
            names.append(str(container["name"]))
        return ops, names

    def _take_over_ports(
        self, upstream: int
    ) -> tuple[list[dict[str, Any]], dict[str, str], tuple[str | None, str | None]]:
        """Renames of the app's named upstream port, old -> new names, the sidecar's names.

        A Service whose targetPort names the app's port then reaches the sidecar.
        """
        ops: list[dict[str, Any]] = []
        taken = self.pod.port_names()
        renamed: dict[str, str] = {}
        for i, j, port in self.pod.ports():
            name = port.get("name")
            if port["containerPort"] == upstream and name and name not in renamed:
                renamed[name] = _rename(name, taken | {ADMIN_PORT_NAME})
                taken.add(renamed[name])
                path = pointer("spec", "containers", i, "ports", j, "name")
                ops.append({"op": "replace", "path": path, "value": renamed[name]})
        if renamed:
            proxy_name: str | None = next(iter(renamed))
        else:  # on a clash with the app's own names, the sidecar's port stays unnamed
            proxy_name = None if PROXY_PORT_NAME in taken else PROXY_PORT_NAME
        admin_name = None if ADMIN_PORT_NAME in taken else ADMIN_PORT_NAME
        return ops, renamed, (proxy_name, admin_name)

    def _grace_ops(self) -> list[dict[str, Any]]:
        """Room for the delay and the drain: only when the pod's (or Kubernetes' default)
        grace is shorter. It counts from the start of termination, preStop included."""
        config = self.config
        needed = config.drain_delay_seconds + config.drain_seconds + GRACE_MARGIN_SECONDS
        path = "/spec/terminationGracePeriodSeconds"
        grace = self.pod.spec.get("terminationGracePeriodSeconds")
        if grace is None and needed > DEFAULT_GRACE_SECONDS:
            return [{"op": "add", "path": path, "value": needed}]
        if isinstance(grace, int) and grace < needed:
            return [{"op": "replace", "path": path, "value": needed}]
        return []

    def _sidecar(
        self,
        upstream: int,
        volume: str,
        token_volume: str | None,
        proxy_port_name: str | None,
        admin_port_name: str | None,
    ) -> dict[str, Any]:
        config = self.config
        protocol = self.pod.annotations.get(PROTOCOL) or config.protocol
        policy_file = f"{POLICY_DIR}/{config.policy_key}"

        def probe(path: str, period: int, failures: int) -> dict[str, Any]:
            return {
                "httpGet": {"path": path, "port": config.admin_port},
                "periodSeconds": period,
                "failureThreshold": failures,
            }

        mounts = [{"name": volume, "mountPath": POLICY_DIR, "readOnly": True}]
        if token_volume is not None:
            mounts.append({"name": token_volume, "mountPath": ADMIN_TOKEN_DIR, "readOnly": True})
        container: dict[str, Any] = {
            "name": SIDECAR_NAME,
            "image": config.image_ref,
            "imagePullPolicy": config.image_pull_policy,
            "args": [
                "run",
                "--upstream",
                f"http://127.0.0.1:{upstream}",
                "--listen",
                f"0.0.0.0:{config.listen_port}",
                "--admin",
                f"0.0.0.0:{config.admin_port}",
                "--policy",
                policy_file,
                "--protocol",
                protocol,
                "--grace-period",
                f"{config.drain_seconds}s",
            ],
            "ports": [
                _port(proxy_port_name, config.listen_port),
                _port(admin_port_name, config.admin_port),
            ],
            "env": self._env(with_token=token_volume is not None),
            "resources": {k: dict(v) for k, v in config.resources.items()},
            "volumeMounts": mounts,
            # The probes' paths need no token (contract: Admin listener).
            # Native sidecar: the app starts once this has passed, so the proxy is up first.
            "startupProbe": probe("/readyz", 1, 30),
            "readinessProbe": probe("/readyz", 5, 3),
            "livenessProbe": probe("/livez", 10, 3),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        }
        handler = self._pre_stop()
        if handler is not None:
            # Keeps the listener open while the endpoints drop the pod; SIGTERM (the drain)
            # comes after it, and for a native sidecar only once the app has stopped.
            container["lifecycle"] = {"preStop": handler}
        if config.native_sidecar:
            container["restartPolicy"] = "Always"
        return container

    def _env(self, *, with_token: bool) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ]
        service = self.pod.service_name()
        if service:
            env.append({"name": "OTEL_SERVICE_NAME", "value": service})
        env.append(
            {
                "name": "OTEL_RESOURCE_ATTRIBUTES",
                "value": "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)",
            }
        )
        if with_token:
            env.append({"name": ADMIN_TOKEN_ENV, "value": ADMIN_TOKEN_FILE})
        # The configuration's variables win over ours of the same name, in our place.
        extra = {str(var["name"]): _plain_copy(var) for var in self.config.env}
        env = [extra.pop(var["name"], var) for var in env]
        return env + list(extra.values())


def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_copy(v) for v in value]
    return value


def _port(name: str | None, number: int) -> dict[str, Any]:
    port: dict[str, Any] = {"containerPort": number, "protocol": "TCP"}
    return {"name": name, **port} if name else port


def _rename(name: str, taken: set[str]) -> str:
    """A free IANA_SVC_NAME for the app's port formerly called ``name``: ``app-<name>``."""
    for prefix in ("app-", *(f"app{n}-" for n in range(2, 100))):
        candidate = (prefix + name)[:15].rstrip("-")
        if candidate != name and candidate not in taken and _PORT_NAME_RE.fullmatch(candidate):
            return candidate
    raise PodError(f"no free port name to rename {name!r} to")  # 98 clashing names: not real


def _free_name(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)


def _metadata_ops(pod: _Pod, status: str) -> list[dict[str, Any]]:
    """The injected label and the status annotation, objects added whole where absent."""
    if "metadata" not in pod.raw or pod.raw["metadata"] is None:
        value = {"labels": {INJECTED_LABEL: "true"}, "annotations": {STATUS: status}}
        return [{"op": "add", "path": "/metadata", "value": value}]
    ops: list[dict[str, Any]] = []
    for field_name, key, text in (
        ("labels", INJECTED_LABEL, "true"),
        ("annotations", STATUS, status),
    ):
        if pod.metadata.get(field_name) is None:
            ops.append({"op": "add", "path": f"/metadata/{field_name}", "value": {key: text}})
        else:
            ops.append({"op": "add", "path": pointer("metadata", field_name, key), "value": text})
    return ops


def port_name_ok(name: str) -> bool:
    """Whether ``name`` is a valid IANA_SVC_NAME (a container port's name)."""
    return _PORT_NAME_RE.fullmatch(name) is not None
