"""The injector's configuration file: YAML, every key optional, problems as ``file:line``.

A key given replaces its default whole (``resources`` included: give ``limits`` again
if you set ``requests``). Unknown keys are errors, with a did-you-mean.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy import __version__
from proxy.config import PROTOCOLS, ConfigError

__all__ = [
    "DNS_SUBDOMAIN_RE",
    "MISSING_OBJECTS",
    "PRE_STOP_ACTIONS",
    "InjectConfig",
    "load_config",
    "parse_config",
]

# RFC 1123 subdomain: the name of a ConfigMap.
DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_CONFIGMAP_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
# The pattern of resource.Quantity in the Kubernetes API.
_QUANTITY_RE = re.compile(
    r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"([KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?"
)
_ENV_SOURCES = ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
# What the webhook does when an object the sidecar needs is missing from the pod's namespace:
# inject: do not look (the pod waits for it); skip: no sidecar, a warning; deny: refuse the pod.
MISSING_OBJECTS = ("inject", "skip", "deny")
# How the preStop hook waits: the kubelet's sleep action (Kubernetes 1.30+), or an exec of
# the sidecar image's own Python (no shell needed; any version).
PRE_STOP_ACTIONS = ("sleep", "exec")


def _default_resources() -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}


@dataclass(frozen=True, slots=True)
class InjectConfig:
    inject_by_default: bool = False
    image: str = "agent-warden"
    tag: str = __version__
    image_pull_policy: str = "IfNotPresent"
    native_sidecar: bool = True
    listen_port: int = 15080
    admin_port: int = 15021
    policy_config_map: str = "agent-warden-policy"
    policy_key: str = "policy.yaml"
    protocol: str = "auto"
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=_default_resources)
    drain_seconds: int = 20
    env: tuple[Mapping[str, Any], ...] = ()
    # The Secret (in the pod's namespace) holding the sidecar's admin API token; "": none.
    admin_token_secret: str = "agent-warden-admin-token"
    admin_token_key: str = "token"
    # Seconds the sidecar (and the app, see app_pre_stop) keep serving after the pod starts
    # terminating, before SIGTERM: the time endpoints take to drop the pod. 0: no preStop.
    drain_delay_seconds: int = 5
    pre_stop_action: str = "sleep"
    # The app's container, when it has no preStop of its own, gets the same sleep (sleep only).
    app_pre_stop: bool = True
    missing_objects: str = "inject"

    @property
    def image_ref(self) -> str:
        """``image:tag``; the image alone when it carries a digest or the tag is empty."""
        return self.image if "@" in self.image or not self.tag else f"{self.image}:{self.tag}"


class _Problems(list[str]):
    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def add(self, node: Node, key: str, message: str) -> None:
        self.append(f"{self.file}:{node.start_mark.line + 1}: {key}: {message}")


# A check takes the YAML node and returns (value, problem); exactly one is not None.
_Check = Callable[[Node], tuple[Any, str | None]]


def _plain(node: Node) -> Any:
    return SafeConstructor().construct_object(node, deep=True)


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _scalar(kind: type, what: str, extra: Callable[[Any], str | None] | None = None) -> _Check:
    def check(node: Node) -> tuple[Any, str | None]:
        if not isinstance(node, ScalarNode):
            return (
                None,
                f"expected {what}, got a {'list' if isinstance(node, SequenceNode) else 'mapping'}",
            )
        value = _plain(node)
        if type(value) is not kind:  # exact: a boolean is not an integer
            hint = "; quote it" if kind is str and value is not None else ""
            return None, f"expected {what}, got {_kind(value)} {node.value!r}{hint}"
        return value, extra(value) if extra else None

    return check


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _one_of(*options: str) -> Callable[[str], str | None]:
    return lambda v: None if v in options else f"expected one of {', '.join(options)}, got {v!r}"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"expected a port 1-65535, got {value}"


def _configmap_name(value: str) -> str | None:
    if len(value) <= 253 and DNS_SUBDOMAIN_RE.fullmatch(value):
        return None
    return f"invalid ConfigMap name {value!r}; expected lowercase letters, digits, '-' and '.'"


def _configmap_key(value: str) -> str | None:
    if len(value) <= 253 and _CONFIGMAP_KEY_RE.fullmatch(value) and value not in (".", ".."):
        return None
    return f"invalid ConfigMap key {value!r}; expected letters, digits, '-', '_' and '.'"


def _secret_name_or_empty(value: str) -> str | None:
    if value == "" or (len(value) <= 253 and DNS_SUBDOMAIN_RE.fullmatch(value)):
        return None
    return (
        f"invalid Secret name {value!r}; expected lowercase letters, digits, '-' and '.' "
        '(or "" for no admin token)'
    )


def _secret_key(value: str) -> str | None:
    if len(value) <= 253 and _CONFIGMAP_KEY_RE.fullmatch(value) and value not in (".", ".."):
        return None
    return f"invalid Secret key {value!r}; expected letters, digits, '-', '_' and '.'"


def _resources(node: Node) -> tuple[Any, str | None]:
    value = _plain(node)
    if not isinstance(value, dict) or not set(value) <= {"requests", "limits"}:
        return None, "expected a mapping with requests and/or limits"
    out: dict[str, dict[str, str]] = {}
    for section, amounts in value.items():
        if not isinstance(amounts, dict):
            return None, f"{section}: expected a mapping of resource names to quantities"
        out[section] = {}
        for name, amount in amounts.items():
            text = str(amount) if type(amount) in (int, float, str) else ""
            if not isinstance(name, str) or not _QUANTITY_RE.fullmatch(text):
                return None, f"{section}.{name}: invalid quantity {amount!r}; e.g. 50m, 1, 64Mi"
            out[section][name] = text
    return out, None


def _env(node: Node) -> tuple[Any, str | None]:
    value = _plain(node)
    if not isinstance(value, list):
        return None, "expected a list of environment variables ({name, value} or {name, valueFrom})"
    seen: set[str] = set()
    for i, var in enumerate(value):
        where = f"[{i}]"
        if not isinstance(var, dict) or not isinstance(var.get("name"), str) or not var["name"]:
            return None, f"{where}: expected a mapping with a non-empty string 'name'"
        if var["name"] in seen:
            return None, f"{where}: duplicate name {var['name']!r}"
        seen.add(var["name"])
        extra = set(var) - {"name", "value", "valueFrom"}
        if extra:
            return (
                None,
                f"{where}: unknown key {sorted(extra)[0]!r}; expected name, value, valueFrom",
            )
        if ("value" in var) == ("valueFrom" in var):
            return None, f"{where}: give exactly one of value and valueFrom"
        if "value" in var and not isinstance(var["value"], str):
            return None, f"{where}.value: expected a string, got {_kind(var['value'])}; quote it"
        source = var.get("valueFrom")
        if "valueFrom" in var and (
            not isinstance(source, dict)
            or len(source) != 1
            or next(iter(source)) not in _ENV_SOURCES
            or not isinstance(next(iter(source.values())), dict)
        ):
            return None, f"{where}.valueFrom: expected one of {', '.join(_ENV_SOURCES)}"
    return tuple(value), None


_KEYS: dict[str, tuple[str, _Check]] = {
    "injectByDefault": ("inject_by_default", _scalar(bool, "a boolean")),
    "image": ("image", _scalar(str, "a string", _non_empty)),
    "tag": ("tag", _scalar(str, "a string")),
    "imagePullPolicy": (
        "image_pull_policy",
        _scalar(str, "a string", _one_of("Always", "IfNotPresent", "Never")),
    ),
    "nativeSidecar": ("native_sidecar", _scalar(bool, "a boolean")),
    "listenPort": ("listen_port", _scalar(int, "an integer", _port)),
    "adminPort": ("admin_port", _scalar(int, "an integer", _port)),
    "policyConfigMap": ("policy_config_map", _scalar(str, "a string", _configmap_name)),
    "policyKey": ("policy_key", _scalar(str, "a string", _configmap_key)),
    "protocol": ("protocol", _scalar(str, "a string", _one_of(*PROTOCOLS))),
    "resources": ("resources", _resources),
    "drainSeconds": (
        "drain_seconds",
        _scalar(int, "an integer", lambda v: None if v >= 1 else f"must be at least 1, got {v}"),
    ),
    "env": ("env", _env),
    "adminTokenSecret": (
        "admin_token_secret",
        _scalar(str, "a string", _secret_name_or_empty),
    ),
    "adminTokenKey": ("admin_token_key", _scalar(str, "a string", _secret_key)),
    "drainDelaySeconds": (
        "drain_delay_seconds",
        _scalar(int, "an integer", lambda v: None if v >= 0 else f"must be at least 0, got {v}"),
    ),
    "preStopAction": (
        "pre_stop_action",
        _scalar(str, "a string", _one_of(*PRE_STOP_ACTIONS)),
    ),
    "appPreStop": ("app_pre_stop", _scalar(bool, "a boolean")),
    "missingObjects": ("missing_objects", _scalar(str, "a string", _one_of(*MISSING_OBJECTS))),
}


def parse_config(text: str, filename: str) -> InjectConfig:
    """The configuration in ``text``; raises ConfigError naming every problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError(f"{filename}:{line}: invalid YAML: {reason}") from None
    if root is None or (isinstance(root, ScalarNode) and root.tag.endswith(":null")):
        return InjectConfig()
    problems = _Problems(filename)
    if not isinstance(root, MappingNode):
        problems.add(root, "(top level)", "expected a mapping")
        raise ConfigError("; ".join(problems))
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for key_node, value_node in root.value:
        key = str(key_node.value)
        if key in seen:
            problems.add(key_node, key, "duplicate key")
            continue
        seen.add(key)
        if key not in _KEYS:
            close = difflib.get_close_matches(key, list(_KEYS), n=1)
            hint = (
                f", did you mean '{close[0]}'?"
                if close
                else f"; expected one of: {', '.join(_KEYS)}"
            )
            problems.add(key_node, key, f"unknown key{hint}")
            continue
        attr, check = _KEYS[key]
        try:
            value, problem = check(value_node)
        except (yaml.YAMLError, ValueError) as exc:
            value, problem = None, f"cannot read value: {getattr(exc, 'problem', None) or exc}"
        if problem is not None:
            problems.add(value_node, key, problem)
        else:
            values[attr] = value
    config = InjectConfig(**values)
    if config.listen_port == config.admin_port and not problems:
        problems.add(root, "adminPort", f"must differ from listenPort ({config.listen_port})")
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def load_config(path: str | Path) -> InjectConfig:
    """The configuration in the file at ``path``; raises ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read injector config: {reason}") from None
    return parse_config(text, str(path))
