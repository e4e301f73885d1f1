"""helm/agent-warden rendered by the real Helm engine (helm_python), no cluster.

Every rendered object, the `helm test` pods included, is checked against the Kubernetes
1.30 OpenAPI schema (kubernetes-validate, strict). cert-manager's Issuer and Certificate
and the Prometheus Operator's PodMonitor and ServiceMonitor are custom resources the
Kubernetes schema does not know (kubernetes-validate cannot validate CRDs): they are
checked structurally here instead, field by field against what those CRDs accept.

values.schema.json embeds a copy of policies/schema.json (``$defs/policyFile``), with
the three patterns Go's RE2 cannot compile (Helm 4 validates values with it) rewritten
to equivalents; ``test_the_charts_policy_schema_is_policies_schema_json`` fails when the
copy drifts, and ``UPDATE_CHART_SCHEMA=1`` rewrites it.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.policy import parse_policy

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")
x509 = pytest.importorskip("cryptography.x509")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "agent-warden"
RELEASE = "warden"
NAMESPACE = "agent-warden-system"
FULLNAME = "warden-agent-warden"
KUBE_VERSION = "1.30"
SANS = {f"{FULLNAME}.{NAMESPACE}.svc", f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"}
NAMESPACE_WEBHOOK = "namespace.sidecar.agent-warden.dev"
POD_WEBHOOK = "pod.sidecar.agent-warden.dev"

# The keys the injector reads from its config file (the webhook's contract).
INJECTOR_KEYS = {
    "injectByDefault",
    "image",
    "tag",
    "imagePullPolicy",
    "nativeSidecar",
    "listenPort",
    "adminPort",
    "policyConfigMap",
    "policyKey",
    "protocol",
    "resources",
    "drainSeconds",
    "env",
    "adminTokenSecret",
    "adminTokenKey",
    "drainDelaySeconds",
    "preStopAction",
    "appPreStop",
    "missingObjects",
}
ADMIN_SECRET = "agent-warden-admin-token"
POLICY_SCHEMA_ID = "https://agent-warden.dev/schemas/policy-v1.json"
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

EVERYTHING: dict[str, Any] = {
    "replicas": 3,
    "imagePullSecrets": ["registry"],
    "image": {"repository": "registry.example/agent-warden", "tag": "1.0", "pullPolicy": "Always"},
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"example.com/tier": "control"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra"}],
    "affinity": {"nodeAffinity": {}},
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
        }
    ],
    "priorityClassName": "system-cluster-critical",
    "serviceAccount": {"create": True, "name": "warden-sa", "annotations": {"a": "b"}},
    "service": {"port": 9443},
    "webhook": {
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
        "reinvocationPolicy": "IfNeeded",
        "excludedNamespaces": ["monitoring"],
    },
    "injector": {
        "env": [
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4318"},
            {
                "name": "NODE",
                "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
            },
        ]
    },
    "test": {
        "image": {"repository": "registry.example/curl", "tag": "8", "pullPolicy": "Always"},
        "injection": {"namespace": "billing"},
    },
    "policy": {"namespaces": ["agents", "billing"]},
    "networkPolicy": {
        "enabled": True,
        "dataPlaneFrom": [{"namespaceSelector": {"matchLabels": {"team": "agents"}}}],
        "metricsFrom": [PROMETHEUS, {"ipBlock": {"cidr": "10.0.0.0/8"}}],
        "extraIngress": [{"ports": [{"port": 9100, "protocol": "TCP"}], "from": [PROMETHEUS]}],
    },
    "monitoring": {
        "podMonitor": {
            "enabled": True,
            "interval": "30s",
            "scrapeTimeout": "10s",
            "labels": {"release": "prometheus"},
            "namespaceSelector": {"matchNames": ["agents", "billing"]},
        },
        "serviceMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "prometheus"}},
    },
}

STRUCTURED_POLICY: dict[str, Any] = {
    "version": 1,
    "identity": {"header": "X-Caller", "required": False},
    "defaults": {
        "mode": "audit",
        "session": {"ttl": "2h", "idle_timeout": "10m", "max_per_agent": 5},
        "budget": {"calls": 250},
        "tools": {"allow": ["lookup_*"], "deny": ["*_admin"]},
    },
    "policies": [{"name": "triage", "match": {"agents": ["triage-*"]}, "tools": {"allow": ["*"]}}],
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "generated-tls": {"tls": {"mode": "generate", "generate": {"validityDays": 30}}},
    "cert-manager": {"tls": {"mode": "certManager"}},
    "cert-manager-issuer": {
        "tls": {
            "mode": "certManager",
            "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
        }
    },
    "existing-configmap": {"policy": {"existingConfigMap": "team-policy"}},
    "classic-sidecar": {"injector": {"nativeSidecar": False}},
    "annotation-required": {"injector": {"injectByDefault": False}},
    "policy-namespaces": {"policy": {"namespaces": ["agents", "billing"]}},
    "single-replica": {"replicas": 1},
    "no-service-account": {"serviceAccount": {"create": False}},
    "redis-store": {
        "store": {"url": "redis://redis.agents:6379/0?prefix=warden:"},
        "policy": {"namespaces": ["agents"]},
    },
    "redis-store-existing-secret": {"store": {"existingSecret": "team-redis", "secretKey": "u"}},
    "workers": {"injector": {"workers": 4}, "store": {"url": "redis://redis.agents:6379/0"}},
    "admin-token-existing": {"admin": {"tokenSecret": {"existing": "team-admin", "key": "bearer"}}},
    "admin-token-disabled": {"admin": {"token": {"enabled": False}}},
    "admin-token-renamed": {
        "admin": {"tokenSecret": {"name": "warden-admin", "key": "admin.token"}},
        "policy": {"namespaces": ["agents"]},
    },
    "structured-policy": {"policy": {"inline": STRUCTURED_POLICY, "namespaces": ["agents"]}},
    "string-policy": {"policy": {"inline": "version: 1\n", "namespaces": ["agents"]}},
    "existing-configmap-namespaces": {
        "policy": {"existingConfigMap": "team-policy", "namespaces": ["agents"]},
        "store": {"url": "redis://redis.agents:6379/0"},
    },
    "missing-objects-deny": {"injector": {"missingObjects": "deny"}},
    "missing-objects-inject": {"injector": {"missingObjects": "inject"}},
    "prestop-exec": {"injector": {"preStopAction": "exec", "drainDelaySeconds": 8}},
    "no-drain-delay": {"injector": {"drainDelaySeconds": 0, "appPreStop": False}},
    "network-policy": {"networkPolicy": {"enabled": True}, "policy": {"namespaces": ["agents"]}},
    "monitoring": {
        "monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}
    },
    "monitoring-cert-manager": {
        "tls": {"mode": "certManager"},
        "monitoring": {"serviceMonitor": {"enabled": True}},
    },
    "test-injection": {"policy": {"namespaces": ["agents"]}},
    "test-injection-off": {
        "policy": {"namespaces": ["agents"]},
        "test": {"injection": {"enabled": False}},
    },
    "everything": EVERYTHING,
}


@dataclass(frozen=True, slots=True)
class Rendered:
    objects: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    def webhooks(self) -> dict[str, dict[str, Any]]:
        config = self.one("MutatingWebhookConfiguration")
        return {w["name"]: w for w in config["webhooks"]}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None, release: str = RELEASE) -> Rendered:
    manifests: dict[str, str] = chart.render(values or {}, name=release, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects, notes)


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --- lint and schema validity -------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_is_clean(scenario: str) -> None:
    report = helm_python.lint(
        CHART_DIR,
        SCENARIOS[scenario],
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}.0",
    )
    messages = report["messages"]
    errors = [m for m in messages if m["severity"] >= 3] + report["errors"]
    warnings = [m for m in messages if m["severity"] == 2]
    assert not errors, f"lint errors: {errors}; warnings: {warnings}"
    assert not warnings, f"lint warnings: {warnings}"


PROMETHEUS_DURATION = re.compile(
    r"(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)"
)


def check_label_selector(selector: dict[str, Any]) -> None:
    assert set(selector) <= {"matchLabels", "matchExpressions"}
    for key, value in selector.get("matchLabels", {}).items():
        assert isinstance(key, str)
        assert isinstance(value, str)
        assert re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value), value


def check_monitoring(obj: dict[str, Any]) -> None:
    """What the Prometheus Operator's monitoring.coreos.com/v1 CRDs accept of the fields
    this chart uses (their OpenAPI schemas, written out: kubernetes-validate knows no CRD)."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] in {"PodMonitor", "ServiceMonitor"}
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj["metadata"]["name"])
    assert len(obj["metadata"]["name"]) <= 253
    assert obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    endpoints_key = "podMetricsEndpoints" if obj["kind"] == "PodMonitor" else "endpoints"
    assert set(spec) <= {"selector", "namespaceSelector", endpoints_key, "jobLabel"}
    check_label_selector(spec["selector"])  # required by both CRDs
    selector = spec.get("namespaceSelector", {})
    assert set(selector) <= {"any", "matchNames"}
    assert isinstance(selector.get("any", False), bool)
    assert all(isinstance(n, str) for n in selector.get("matchNames", []))
    endpoints = spec[endpoints_key]
    assert isinstance(endpoints, list)
    assert endpoints
    known = {"port", "path", "scheme", "interval", "scrapeTimeout", "tlsConfig"}
    for endpoint in endpoints:
        assert set(endpoint) <= known, set(endpoint) - known
        assert isinstance(endpoint["port"], str)  # a port *name*
        assert endpoint["path"].startswith("/")
        assert endpoint.get("scheme", "http") in {"http", "https"}
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                assert PROMETHEUS_DURATION.fullmatch(endpoint[key]), endpoint[key]
        tls = endpoint.get("tlsConfig")
        if tls is not None:
            assert obj["kind"] == "ServiceMonitor"
            assert set(tls) <= {"ca", "serverName", "insecureSkipVerify"}
            assert set(tls["ca"]) == {"secret"}
            assert set(tls["ca"]["secret"]) == {"name", "key"}


def check_cert_manager(obj: dict[str, Any]) -> None:
    """What cert-manager's v1 CRDs require of the fields this chart uses."""
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert obj["kind"] in {"Issuer", "Certificate"}
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj["metadata"]["name"])
    assert obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    if obj["kind"] == "Issuer":
        assert len(spec) == 1, "an Issuer has exactly one issuer type"
        assert set(spec) <= {"selfSigned", "ca"}
        if "ca" in spec:
            assert spec["ca"]["secretName"]
        return
    known = {
        "secretName",
        "secretTemplate",
        "commonName",
        "dnsNames",
        "duration",
        "renewBefore",
        "usages",
        "privateKey",
        "issuerRef",
        "isCA",
    }
    assert set(spec) <= known, set(spec) - known
    assert spec["secretName"]
    assert spec["issuerRef"]["name"]
    assert spec["issuerRef"].get("kind", "Issuer") in {"Issuer", "ClusterIssuer"}
    assert spec.get("commonName") or spec.get("dnsNames")
    assert len(spec.get("commonName", "")) <= 64
    for key in ("duration", "renewBefore"):
        if key in spec:
            assert re.fullmatch(r"([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+", spec[key]), spec[key]
    usages = {"server auth", "client auth", "digital signature", "key encipherment"}
    assert set(spec.get("usages", [])) <= usages
    assert spec["privateKey"]["algorithm"] in {"RSA", "ECDSA", "Ed25519"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_is_valid_for_kubernetes_1_30(chart: Any, scenario: str) -> None:
    rendered = render(chart, SCENARIOS[scenario])
    assert rendered.objects
    for obj in rendered.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("cert-manager.io/"):
            check_cert_manager(obj)  # a CRD: not in the Kubernetes schema
            continue
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            check_monitoring(obj)  # a CRD too
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: {path}: {exc.message}")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_carries_the_standard_labels(chart: Any, scenario: str) -> None:
    expected = {
        "helm.sh/chart": "agent-warden-0.1.0",
        "app.kubernetes.io/name": "agent-warden",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": "0.1.0",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/part-of": "agent-warden",
    }
    rendered = render(chart, SCENARIOS[scenario])
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert expected.items() <= labels.items(), where
        components = {"webhook", "policy", "store", "admin", "test", "sidecar"}
        assert labels["app.kubernetes.io/component"] in components, where
        if obj["kind"] == "Deployment":
            pod_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert expected.items() <= pod_labels.items()
            assert obj["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_default_values_render_the_expected_objects(chart: Any) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render(chart).objects)
    assert kinds == [
        ("ClusterRole", FULLNAME),
        ("ClusterRoleBinding", FULLNAME),
        ("ConfigMap", "agent-warden-policy"),
        ("ConfigMap", f"{FULLNAME}-injector"),
        ("Deployment", FULLNAME),
        ("MutatingWebhookConfiguration", FULLNAME),
        ("Pod", f"{FULLNAME}-test-healthz"),
        ("PodDisruptionBudget", FULLNAME),
        ("Secret", ADMIN_SECRET),
        ("Secret", f"{FULLNAME}-tls"),
        ("Service", FULLNAME),
        ("ServiceAccount", FULLNAME),
    ]


# --- values.schema.json -------------------------------------------------------------


def test_values_schema_is_strict_and_accepts_the_defaults(chart: Any) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(chart.values)

    def objects(node: object, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if path == "/$defs/policyFile":
            return  # the policy schema's own test keeps its objects closed
        if isinstance(node, dict):
            # if/then/else only add conditions to an object that is closed itself
            if "properties" in node and not path.endswith(("/if", "/then", "/else")):
                yield path, node
            for key, child in node.items():
                yield from objects(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                yield from objects(child, f"{path}/{i}")

    open_objects = [p for p, n in objects(schema, "") if n.get("additionalProperties") is not False]
    assert not open_objects


BAD_VALUES = [
    ({"replicas": "two"}, "/replicas"),
    ({"replicas": 0}, "/replicas"),
    ({"bogus": 1}, "bogus"),
    ({"webhook": {"failurePolicy": "Maybe"}}, "/webhook/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    ({"webhook": {"namespaceSelector": {}}}, "namespaceSelector"),
    ({"webhook": {"reinvocationPolicy": "Always"}}, "/webhook/reinvocationPolicy"),
    ({"webhook": {"excludedNamespaces": ["Not_A_Namespace"]}}, "/webhook/excludedNamespaces"),
    ({"tls": {"mode": "selfSigned"}}, "/tls/mode"),
    ({"tls": {"certManager": {"issuerRef": {"kind": "Issuer"}}}}, "name"),
    ({"tls": {"certManager": {"duration": "1 year"}}}, "/tls/certManager/duration"),
    ({"injector": {"protocol": "grpc"}}, "/injector/protocol"),
    ({"injector": {"listenPort": 70000}}, "/injector/listenPort"),
    ({"injector": {"nativeSidecar": "yes"}}, "/injector/nativeSidecar"),
    ({"injector": {"env": [{"value": "x"}]}}, "name"),
    ({"injector": {"env": [{"name": "A"}]}}, "/injector/env/0"),
    ({"injector": {"env": [{"name": "A", "value": "x", "valueFrom": {}}]}}, "/injector/env/0"),
    ({"injector": {"resources": {"limits": {"memory": "lots"}}}}, "/injector/resources"),
    ({"injector": {"resources": {"claims": []}}}, "claims"),
    ({"injector": {"drainSeconds": 0}}, "/injector/drainSeconds"),
    ({"injector": {"workers": 0}}, "/injector/workers"),
    ({"injector": {"workers": 65}}, "/injector/workers"),
    ({"injector": {"workers": "2"}}, "/injector/workers"),
    ({"injector": {"image": {"pullPolicy": "Sometimes"}}}, "/injector/image/pullPolicy"),
    ({"policy": {"inline": ""}}, "/policy/inline"),
    ({"policy": {"namespaces": ["agents", "agents"]}}, "/policy/namespaces"),
    ({"policy": {"existingConfigMap": "Team Policy"}}, "/policy/existingConfigMap"),
    ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
    ({"resources": {"limits": {"memory": ["1Gi"]}}}, "/resources/limits/memory"),
    ({"test": {"image": {"tag": ""}}}, "/test/image/tag"),
    ({"admin": {"token": {"enabled": "yes"}}}, "/admin/token/enabled"),
    ({"admin": {"token": {"secret": "x"}}}, "secret"),
    ({"admin": {"tokenSecret": {"name": "Admin_Token"}}}, "/admin/tokenSecret/name"),
    ({"admin": {"tokenSecret": {"name": ""}}}, "/admin/tokenSecret/name"),
    ({"admin": {"tokenSecret": {"existing": "team admin"}}}, "/admin/tokenSecret/existing"),
    ({"admin": {"tokenSecret": {"key": ""}}}, "/admin/tokenSecret/key"),
    ({"admin": {"tokenSecret": {"key": "a/b"}}}, "/admin/tokenSecret/key"),
    ({"admin": {"tokenSecret": {"key": ".."}}}, "/admin/tokenSecret/key"),
    ({"injector": {"drainDelaySeconds": -1}}, "/injector/drainDelaySeconds"),
    ({"injector": {"drainDelaySeconds": "5s"}}, "/injector/drainDelaySeconds"),
    ({"injector": {"preStopAction": "shell"}}, "/injector/preStopAction"),
    ({"injector": {"appPreStop": "yes"}}, "/injector/appPreStop"),
    ({"injector": {"missingObjects": "wait"}}, "/injector/missingObjects"),
    ({"policy": {"inline": 1}}, "/policy/inline"),
    ({"policy": {"inline": ["version: 1"]}}, "/policy/inline"),
    ({"networkPolicy": {"enabled": "true"}}, "/networkPolicy/enabled"),
    ({"networkPolicy": {"dataPlaneFrom": [{}]}}, "/networkPolicy/dataPlaneFrom/0"),
    ({"networkPolicy": {"metricsFrom": [{"podSelectr": {}}]}}, "podSelectr"),
    (
        {
            "networkPolicy": {
                "metricsFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]
            }
        },
        "/networkPolicy/metricsFrom/0",
    ),
    (
        {"networkPolicy": {"extraIngress": [{"ports": [{"port": 0}]}]}},
        "/networkPolicy/extraIngress",
    ),
    ({"monitoring": {"podMonitor": {"interval": "30 seconds"}}}, "/monitoring/podMonitor/interval"),
    ({"monitoring": {"serviceMonitor": {"namespaceSelector": {}}}}, "namespaceSelector"),
    ({"monitoring": {"podMonitor": {"namespaceSelector": {"all": True}}}}, "all"),
    ({"test": {"injection": {"namespace": "Agents"}}}, "/test/injection/namespace"),
    ({"test": {"injection": {"enabled": 1}}}, "/test/injection/enabled"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_values_schema_rejects_bad_values(chart: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policy": {"inline": "version: [1"}}, "policy.inline is not valid YAML"),
        ({"policy": {"inline": "identity: {}"}}, "version: 1"),
        ({"injector": {"listenPort": 15021}}, "must differ"),
        (
            {"injector": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
            "A is given twice",
        ),
        ({"networkPolicy": {"enabled": True}}, "networkPolicy.enabled: list the injected"),
        (
            {"test": {"injection": {"namespace": NAMESPACE}}},
            f"test.injection.namespace: {NAMESPACE} is never injected",
        ),
        (
            {"test": {"injection": {"namespace": "kube-system"}}},
            "test.injection.namespace: kube-system is never injected",
        ),
        (
            {"injector": {"env": [{"name": "AGENT_WARDEN_ADMIN_TOKEN_FILE", "value": "/t"}]}},
            "AGENT_WARDEN_ADMIN_TOKEN_FILE is set by the injector",
        ),
        ({"injector": {"workers": 2}}, "injector.workers > 1 needs the shared store"),
        (
            {"injector": {"env": [{"name": "AGENT_WARDEN_WORKERS", "value": "2"}]}},
            "AGENT_WARDEN_WORKERS comes from injector.workers",
        ),
    ],
)
def test_templates_refuse_inconsistent_values(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- the webhook configuration --------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND every matchExpression)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        match op:
            case "In":
                ok = key in labels and labels[key] in values
            case "NotIn":
                ok = key not in labels or labels[key] not in values
            case "Exists":
                ok = key in labels
            case "DoesNotExist":
                ok = key not in labels
            case _:
                raise AssertionError(f"unknown operator {op}")
        if not ok:
            return False
    return True


def called_for(
    rendered: Rendered, namespace: str, ns_labels: dict[str, str], pod_labels: dict[str, str]
) -> list[str]:
    """The webhooks the API server calls for a pod created in ``namespace``."""
    # The API server labels every namespace with its name.
    ns_labels = {**ns_labels, "kubernetes.io/metadata.name": namespace}
    return [
        name
        for name, hook in rendered.webhooks().items()
        if selects(hook["namespaceSelector"], ns_labels)
        and selects(hook["objectSelector"], pod_labels)
    ]


OPTED_IN = {"agent-warden.dev/injection": "enabled"}
INJECT = {"agent-warden.dev/inject": "true"}


@pytest.mark.parametrize(
    ("namespace", "ns_labels", "pod_labels", "expected"),
    [
        ("agents", OPTED_IN, {}, [NAMESPACE_WEBHOOK]),
        ("agents", OPTED_IN, {"app": "x"}, [NAMESPACE_WEBHOOK]),
        ("agents", OPTED_IN, INJECT, [NAMESPACE_WEBHOOK]),  # once, not twice
        ("agents", OPTED_IN, {"agent-warden.dev/inject": "false"}, []),
        ("plain", {}, INJECT, [POD_WEBHOOK]),
        ("plain", {}, {}, []),
        ("plain", {}, {"agent-warden.dev/inject": "false"}, []),
        ("plain", {"agent-warden.dev/injection": "disabled"}, INJECT, []),
        (NAMESPACE, OPTED_IN, INJECT, []),
        (NAMESPACE, {}, INJECT, []),
        ("kube-system", OPTED_IN, INJECT, []),
        ("kube-system", {}, INJECT, []),
    ],
)
def test_selectors_pick_opted_in_pods_and_never_the_webhooks_namespace(
    chart: Any,
    namespace: str,
    ns_labels: dict[str, str],
    pod_labels: dict[str, str],
    expected: list[str],
) -> None:
    assert called_for(render(chart), namespace, ns_labels, pod_labels) == expected


def test_every_webhook_excludes_the_release_namespace_and_kube_system(chart: Any) -> None:
    rendered = render(chart, EVERYTHING)
    for hook in rendered.webhooks().values():
        names = [
            e["values"]
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
        ]
        assert names == [[NAMESPACE, "kube-system", "monitoring"]]
    assert called_for(rendered, "monitoring", OPTED_IN, INJECT) == []


def test_webhook_configuration_follows_the_values(chart: Any) -> None:
    default = render(chart)
    service = default.one("Service")
    for hook in default.webhooks().values():
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == "Ignore"  # no sidecar beats no pod
        assert hook["timeoutSeconds"] == 10
        assert hook["reinvocationPolicy"] == "Never"
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"],
            "namespace": NAMESPACE,
            "path": "/mutate",
            "port": 443,
        }
    assert service["spec"]["ports"][0]["port"] == 443
    assert service["spec"]["ports"][0]["targetPort"] == "https"

    custom = render(chart, EVERYTHING)
    for hook in custom.webhooks().values():
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] == 5
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["clientConfig"]["service"]["port"] == 9443
    assert custom.one("Service")["spec"]["ports"][0]["port"] == 9443


# --- TLS ------------------------------------------------------------------------------


def test_generated_tls_ca_signed_the_serving_certificate(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["generated-tls"])
    secret = rendered.one("Secret", f"{FULLNAME}-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca_pem = b64(secret["data"]["ca.crt"])
    bundles = {hook["clientConfig"]["caBundle"] for hook in rendered.webhooks().values()}
    assert len(bundles) == 1
    assert b64(bundles.pop()) == ca_pem
    config = rendered.one("MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in config["metadata"].get("annotations", {})

    ca = x509.load_pem_x509_certificate(ca_pem)
    leaf = x509.load_pem_x509_certificate(b64(secret["data"]["tls.crt"]))
    key = serialization.load_pem_private_key(b64(secret["data"]["tls.key"]), password=None)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(ca)
    assert leaf.issuer == ca.subject
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == SANS
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    now = dt.datetime.now(dt.UTC)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - now <= dt.timedelta(days=31)  # validityDays: 30


def test_cert_manager_issues_the_certificate_and_injects_the_ca(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["cert-manager"])
    # cert-manager writes the serving Secret; the chart's only Secret is the admin token.
    assert [s["metadata"]["name"] for s in rendered.all("Secret")] == [ADMIN_SECRET]
    config = rendered.one("MutatingWebhookConfiguration")
    serving = rendered.one("Certificate", f"{FULLNAME}-serving")
    annotation = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{NAMESPACE}/{serving['metadata']['name']}"
    for hook in config["webhooks"]:
        assert "caBundle" not in hook["clientConfig"]

    deployment = rendered.one("Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert serving["spec"]["secretName"] == volumes["tls"]["secret"]["secretName"]
    assert set(serving["spec"]["dnsNames"]) == SANS
    assert "server auth" in serving["spec"]["usages"]

    # The chart's own CA: self-signed Issuer -> CA Certificate -> CA Issuer -> serving.
    ca_issuer = rendered.one("Issuer", serving["spec"]["issuerRef"]["name"])
    ca_cert = rendered.one("Certificate", f"{FULLNAME}-ca")
    assert ca_cert["spec"]["isCA"] is True
    assert ca_issuer["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
    root = rendered.one("Issuer", ca_cert["spec"]["issuerRef"]["name"])
    assert root["spec"] == {"selfSigned": {}}


def test_cert_manager_with_an_existing_issuer_creates_no_ca(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["cert-manager-issuer"])
    assert not rendered.all("Issuer")
    certificate = rendered.one("Certificate")
    assert certificate["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


# --- the webhook Deployment and the test pod -----------------------------------------

RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_deployment_runs_the_webhook_restricted_and_spread(chart: Any) -> None:
    rendered = render(chart)
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The token of missingObjects' lookups (get on a few names: the ClusterRole).
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == rendered.one("ServiceAccount")["metadata"]["name"]
    [container] = pod["containers"]
    assert container["image"] == "agent-warden:0.1.0"
    assert container["args"] == [
        "webhook",
        "--listen",
        "0.0.0.0:8443",
        "--cert",
        "/etc/agent-warden/tls/tls.crt",
        "--key",
        "/etc/agent-warden/tls/tls.key",
        "--config",
        "/etc/agent-warden/injector/config.yaml",
    ]
    assert container["securityContext"] == RESTRICTED
    assert container["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert container["resources"] == chart.values["resources"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls = volumes[mounts["/etc/agent-warden/tls"]]["secret"]["secretName"]
    assert tls == f"{FULLNAME}-tls"
    injector = volumes[mounts["/etc/agent-warden/injector"]]["configMap"]["name"]
    assert injector == f"{FULLNAME}-injector"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"

    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_deployment_follows_the_values(chart: Any) -> None:
    rendered = render(chart, EVERYTHING)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert pod["nodeSelector"] == EVERYTHING["nodeSelector"]
    assert pod["tolerations"] == EVERYTHING["tolerations"]
    assert pod["topologySpreadConstraints"] == EVERYTHING["topologySpreadConstraints"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["serviceAccountName"] == "warden-sa"
    assert pod["containers"][0]["image"] == "registry.example/agent-warden:1.0"

    assert not render(chart, {"replicas": 1}).all("PodDisruptionBudget")
    no_sa = render(chart, {"serviceAccount": {"create": False}})
    assert not no_sa.all("ServiceAccount")
    assert no_sa.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_a_new_injector_config_rolls_the_webhook_pods(chart: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        template = render(chart, values).one("Deployment")["spec"]["template"]
        return str(template["metadata"]["annotations"]["checksum/injector-config"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"injector": {"drainSeconds": 30}})


def test_helm_test_pod_calls_healthz_over_tls(chart: Any) -> None:
    rendered = render(chart, EVERYTHING)
    pod = rendered.one("Pod", f"{FULLNAME}-test-healthz")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "registry.example/curl:8"
    assert container["imagePullPolicy"] == "Always"
    assert container["securityContext"] == RESTRICTED
    args = container["args"]
    assert args[-1] == f"https://{FULLNAME}.{NAMESPACE}.svc:9443/healthz"
    assert not {"--insecure", "-k"} & set(args)
    cacert = Path(args[args.index("--cacert") + 1])
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == cacert.parent]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == f"{FULLNAME}-tls"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": cacert.name}]


# --- what the injector and the sidecars read -----------------------------------------


def injector_config(rendered: Rendered) -> dict[str, Any]:
    configmap = rendered.one("ConfigMap", f"{FULLNAME}-injector")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    assert set(config) <= INJECTOR_KEYS
    return config


def test_injector_config_defaults(chart: Any) -> None:
    assert injector_config(render(chart)) == {
        "injectByDefault": True,
        "image": "agent-warden",
        "tag": "0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "nativeSidecar": True,
        "listenPort": 15080,
        "adminPort": 15021,
        "policyConfigMap": "agent-warden-policy",
        "policyKey": "policy.yaml",
        "protocol": "auto",
        "resources": chart.values["injector"]["resources"],
        "drainSeconds": 20,
        "env": [],
        "adminTokenSecret": ADMIN_SECRET,
        "adminTokenKey": "token",
        "drainDelaySeconds": 5,
        "preStopAction": "sleep",
        "appPreStop": True,
        "missingObjects": "skip",
    }


def test_injector_config_has_the_values_given(chart: Any) -> None:
    resources = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "1Gi"}}
    env = [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4318"}]
    values = {
        "image": {"repository": "registry.example/agent-warden", "tag": "0.2.0"},
        "injector": {
            "injectByDefault": False,
            "image": {"tag": "0.1.9", "pullPolicy": "Always"},
            "nativeSidecar": False,
            "listenPort": 18080,
            "adminPort": 19901,
            "protocol": "a2a",
            "drainSeconds": 45,
            "resources": resources,
            "env": env,
            "drainDelaySeconds": 12,
            "preStopAction": "exec",
            "appPreStop": False,
            "missingObjects": "deny",
        },
        "policy": {"configMapName": "warden-policy", "key": "rules.yaml"},
    }
    assert injector_config(render(chart, values)) == {
        "injectByDefault": False,
        "image": "registry.example/agent-warden",  # the webhook's image
        "tag": "0.1.9",
        "imagePullPolicy": "Always",
        "nativeSidecar": False,
        "listenPort": 18080,
        "adminPort": 19901,
        "policyConfigMap": "warden-policy",
        "policyKey": "rules.yaml",
        "protocol": "a2a",
        "resources": resources,
        "drainSeconds": 45,
        "env": env,
        "adminTokenSecret": ADMIN_SECRET,
        "adminTokenKey": "token",
        "drainDelaySeconds": 12,
        "preStopAction": "exec",
        "appPreStop": False,
        "missingObjects": "deny",
    }


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_injector_accepts_the_rendered_config(chart: Any, scenario: str) -> None:
    inject_config = pytest.importorskip("proxy.inject.config")
    rendered = render(chart, SCENARIOS[scenario])
    text = rendered.one("ConfigMap", f"{FULLNAME}-injector")["data"]["config.yaml"]
    parsed = inject_config.parse_config(text, "config.yaml")
    given = yaml.safe_load(text)
    assert parsed.inject_by_default is given["injectByDefault"]
    assert parsed.image_ref == f"{given['image']}:{given['tag']}"
    assert parsed.policy_config_map == given["policyConfigMap"]
    assert list(parsed.env) == given["env"]
    assert parsed.admin_token_secret == given["adminTokenSecret"]
    assert parsed.admin_token_key == given["adminTokenKey"]


def policy_configmaps(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        o
        for o in rendered.all("ConfigMap")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "policy"
    ]


def test_default_policy_passes_the_policy_loader(chart: Any) -> None:
    [configmap] = policy_configmaps(render(chart))
    assert configmap["metadata"]["namespace"] == NAMESPACE
    policy = parse_policy(configmap["data"]["policy.yaml"], "policy.yaml")
    assert policy.defaults.tools.allows("lookup_order")
    assert not policy.defaults.tools.allows("reset_admin")


def test_inline_policy_reaches_the_configmap_byte_for_byte(chart: Any) -> None:
    text = (ROOT / "policies" / "strict.yaml").read_text()  # comments and all
    rendered = render(chart, {"policy": {"inline": text, "namespaces": ["agents", "billing"]}})
    configmaps = policy_configmaps(rendered)
    assert sorted(c["metadata"]["namespace"] for c in configmaps) == sorted(
        [NAMESPACE, "agents", "billing"]
    )
    for configmap in configmaps:
        assert configmap["metadata"]["name"] == "agent-warden-policy"
        assert configmap["data"] == {"policy.yaml": text}
        parse_policy(configmap["data"]["policy.yaml"], "policy.yaml")


def test_existing_configmap_is_used_not_created(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["existing-configmap"])
    assert not policy_configmaps(rendered)
    assert injector_config(rendered)["policyConfigMap"] == "team-policy"
    assert "team-policy" in rendered.notes


# --- names, NOTES, README -------------------------------------------------------------


def test_names_fit_kubernetes_limits(chart: Any) -> None:
    assert render(chart, release="agent-warden").one("Deployment")["metadata"]["name"] == (
        "agent-warden"
    )
    long_release = "a" * 53  # the longest release name Helm allows
    for scenario in ("cert-manager", "generated-tls"):
        rendered = render(chart, SCENARIOS[scenario], release=long_release)
        for obj in rendered.objects:
            assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    [secret] = [s for s in rendered.all("Secret") if s["type"] == "kubernetes.io/tls"]
    leaf = x509.load_pem_x509_certificate(b64(secret["data"]["tls.crt"]))
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{rendered.one('Service')['metadata']['name']}.{NAMESPACE}.svc" in (
        sans.get_values_for_type(x509.DNSName)
    )


def test_notes_explain_opt_in_policy_and_sessions(chart: Any) -> None:
    notes = render(chart).notes
    for needle in (
        "kubectl label namespace <ns> agent-warden.dev/injection=enabled",
        'agent-warden.dev/inject: "true"',
        "agent-warden.dev/upstream-port",
        "--set-file policy.inline=",
        "localhost:15021/sessions",
        "kubectl get secret agent-warden-admin-token -n <ns> -o jsonpath='{.data.token}'",
        "Authorization: Bearer $TOKEN",
        f"helm test {RELEASE} -n {NAMESPACE}",
        "failurePolicy Ignore",
    ):
        assert needle in notes, needle
    strict = render(chart, SCENARIOS["annotation-required"]).notes
    assert "required: injectByDefault is false" in strict


def value_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every documented key: nested down to leaves, maps of Kubernetes types excepted."""
    for key, child in node.items():
        path = f"{prefix}{key}"
        if isinstance(child, dict) and child and key != "resources":
            yield from value_paths(child, f"{path}.")
        else:
            yield path


def test_readme_documents_every_value(chart: Any) -> None:
    readme = (CHART_DIR / "README.md").read_text()
    missing = [p for p in value_paths(chart.values) if f"`{p}`" not in readme]
    assert not missing


# --- the shared session store ----------------------------------------------------------


def _sidecar_env(rendered: Rendered) -> list[dict[str, Any]]:
    config = yaml.safe_load(
        rendered.one("ConfigMap", f"{RELEASE}-agent-warden-injector")["data"]["config.yaml"]
    )
    env: list[dict[str, Any]] = config["env"]
    return env


def test_store_url_reaches_the_sidecars_from_a_secret_in_each_namespace(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["redis-store"])
    secrets = {
        s["metadata"]["namespace"]: s
        for s in rendered.all("Secret")
        if s["metadata"]["name"] == "agent-warden-store"
    }
    assert set(secrets) == {NAMESPACE, "agents"}
    assert secrets["agents"]["stringData"] == {"url": "redis://redis.agents:6379/0?prefix=warden:"}
    [store] = [e for e in _sidecar_env(rendered) if e["name"] == "AGENT_WARDEN_STORE"]
    assert store["valueFrom"] == {"secretKeyRef": {"name": "agent-warden-store", "key": "url"}}
    assert "value" not in store  # the URL (and its password) stays out of the ConfigMap


def test_an_existing_store_secret_is_referenced_not_created(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["redis-store-existing-secret"])
    assert not [s for s in rendered.all("Secret") if "store" in s["metadata"]["name"]]
    [store] = [e for e in _sidecar_env(rendered) if e["name"] == "AGENT_WARDEN_STORE"]
    assert store["valueFrom"]["secretKeyRef"] == {"name": "team-redis", "key": "u"}


def test_without_a_store_the_sidecars_keep_sessions_in_memory(chart: Any) -> None:
    rendered = render(chart)
    assert not [e for e in _sidecar_env(rendered) if e["name"] == "AGENT_WARDEN_STORE"]


def test_workers_reach_the_sidecars_with_the_store(chart: Any) -> None:
    [workers] = [
        e for e in _sidecar_env(render(chart, SCENARIOS["workers"])) if "WORKERS" in e["name"]
    ]
    assert workers == {"name": "AGENT_WARDEN_WORKERS", "value": "4"}  # as run --workers reads it
    # One worker is the sidecar's own default: nothing to say.
    assert not [e for e in _sidecar_env(render(chart)) if "WORKERS" in e["name"]]
    # A store named in injector.env (no chart Secret) is a store too.
    env = [{"name": "AGENT_WARDEN_STORE", "value": "redis://redis.agents:6379/0"}]
    names = [
        e["name"] for e in _sidecar_env(render(chart, {"injector": {"workers": 2, "env": env}}))
    ]
    assert names == ["AGENT_WARDEN_STORE", "AGENT_WARDEN_WORKERS"]


# --- the sidecars' admin token ---------------------------------------------------------


def admin_secrets(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """The chart's admin-token Secrets by namespace."""
    found = [
        o
        for o in rendered.all("Secret")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "admin"
    ]
    by_namespace = {o["metadata"]["namespace"]: o for o in found}
    assert len(by_namespace) == len(found), "one admin Secret per namespace"
    return by_namespace


def test_admin_token_secret_in_each_injected_namespace(chart: Any) -> None:
    """Like the store Secret: the release namespace and policy.namespaces, one token each."""
    rendered = render(chart, {"policy": {"namespaces": ["agents", "billing"]}})
    secrets = admin_secrets(rendered)
    assert set(secrets) == {NAMESPACE, "agents", "billing"}
    tokens = set()
    for secret in secrets.values():
        assert secret["metadata"]["name"] == ADMIN_SECRET
        assert secret["type"] == "Opaque"
        assert set(secret["data"]) == {"token"}
        token = b64(secret["data"]["token"]).decode()
        assert re.fullmatch(r"[A-Za-z0-9]{48}", token), token
        tokens.add(token)
    assert len(tokens) == 3  # a namespace's token opens no other namespace's sidecars
    config = injector_config(rendered)
    assert (config["adminTokenSecret"], config["adminTokenKey"]) == (ADMIN_SECRET, "token")


def test_admin_token_secret_with_another_name_and_key(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["admin-token-renamed"])
    secrets = admin_secrets(rendered)
    assert set(secrets) == {NAMESPACE, "agents"}
    for secret in secrets.values():
        assert secret["metadata"]["name"] == "warden-admin"
        assert set(secret["data"]) == {"admin.token"}
    config = injector_config(rendered)
    assert (config["adminTokenSecret"], config["adminTokenKey"]) == ("warden-admin", "admin.token")
    assert "-o jsonpath='{.data.admin\\.token}'" in rendered.notes


def test_an_existing_admin_token_secret_is_mounted_not_created(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["admin-token-existing"])
    assert not admin_secrets(rendered)
    config = injector_config(rendered)
    assert (config["adminTokenSecret"], config["adminTokenKey"]) == ("team-admin", "bearer")
    assert "kubectl get secret team-admin -n <ns> -o jsonpath='{.data.bearer}'" in rendered.notes


def test_admin_token_disabled(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["admin-token-disabled"])
    assert not admin_secrets(rendered)
    assert injector_config(rendered)["adminTokenSecret"] == ""
    assert "loopback" in rendered.notes
    assert "Authorization" not in rendered.notes
    assert ADMIN_SECRET not in rendered.notes
    # Disabled, the variable is the operator's to set.
    env = [{"name": "AGENT_WARDEN_ADMIN_TOKEN_FILE", "value": "/t"}]
    render(chart, {**SCENARIOS["admin-token-disabled"], "injector": {"env": env}})


@pytest.mark.parametrize(
    "scenario", ["default", "admin-token-existing", "admin-token-disabled", "admin-token-renamed"]
)
def test_the_injected_pod_mounts_the_secret_the_chart_names(chart: Any, scenario: str) -> None:
    """Chart to injector to pod: the volume reads the Secret (and key) the chart provides."""
    inject_config = pytest.importorskip("proxy.inject.config")
    patch = pytest.importorskip("proxy.inject.patch")
    jsonpatch = pytest.importorskip("jsonpatch")
    values = SCENARIOS[scenario]
    rendered = render(chart, values)
    text = rendered.one("ConfigMap", f"{FULLNAME}-injector")["data"]["config.yaml"]
    config = inject_config.parse_config(text, "config.yaml")
    pod = yaml.safe_load((ROOT / "tests" / "data" / "inject" / "plain.pod.yaml").read_text())
    pod["metadata"]["namespace"] = NAMESPACE  # where the chart surely created its Secret
    patched = jsonpatch.apply_patch(pod, json.loads(patch.decide(pod, config).patch_json()))
    kubernetes_validate.validate(patched, KUBE_VERSION, strict=True)
    [sidecar] = patched["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    secrets = [v["secret"] for v in patched["spec"]["volumes"] if "secret" in v]
    if scenario == "admin-token-disabled":
        assert not secrets
        assert "AGENT_WARDEN_ADMIN_TOKEN_FILE" not in env
        return
    [secret] = secrets
    assert secret["optional"] is False
    [item] = secret["items"]
    assert (
        env["AGENT_WARDEN_ADMIN_TOKEN_FILE"] == "/var/run/agent-warden/admin-token/" + item["path"]
    )
    if scenario == "admin-token-existing":
        assert (secret["secretName"], item["key"]) == ("team-admin", "bearer")
    else:
        created = admin_secrets(rendered)[NAMESPACE]
        assert secret["secretName"] == created["metadata"]["name"]
        assert item["key"] in created["data"]


def test_the_admin_token_template_looks_up_the_secret_it_writes() -> None:
    """Upgrades keep the token: the Secret's own name and namespace are looked up."""
    template = (CHART_DIR / "templates" / "admin-token-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" $namespace $.Values.admin.tokenSecret.name' in template
    assert '(dict "found" $found "key" $.Values.admin.tokenSecret.key)' in template


PROBE = """\
{{- $kept := dict "data" (dict "token" ("kept-token-from-the-cluster" | b64enc)) }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: token-probe
data:
  kept: {{ include "agent-warden.adminToken" (dict "found" $kept "key" "token") | quote }}
  otherKey: {{ include "agent-warden.adminToken" (dict "found" $kept "key" "other") | quote }}
  absent: {{ include "agent-warden.adminToken" (dict "found" (dict) "key" "token") | quote }}
{{- $noData := dict "data" nil }}
  noData: {{ include "agent-warden.adminToken" (dict "found" $noData "key" "token") | quote }}
"""


def test_an_existing_token_survives_an_upgrade(tmp_path: Path) -> None:
    """The helper under the real engine, fed what lookup returns for an existing Secret
    (offline rendering cannot reach a cluster, so a probe template stands in for it)."""
    copy = tmp_path / "agent-warden"
    shutil.copytree(CHART_DIR, copy)
    (copy / "templates" / "zz-token-probe.yaml").write_text(PROBE)
    with helm_python.Chart.load(copy) as probe_chart:
        data = render(probe_chart).one("ConfigMap", "token-probe")["data"]
    assert b64(data["kept"]) == b"kept-token-from-the-cluster"
    for fresh in ("otherKey", "absent", "noData"):
        assert re.fullmatch(rb"[A-Za-z0-9]{48}", b64(data[fresh])), fresh
    assert len({data["otherKey"], data["absent"], data["noData"]}) == 3


# --- the policy as a structured value, checked at install --------------------------------

VALUES_SCHEMA = CHART_DIR / "values.schema.json"
POLICY_SCHEMA = ROOT / "policies" / "schema.json"
_UNITS = "(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?(?:[0-9]+ms)?"
# The ECMA-262 patterns of policies/schema.json that Go's RE2 (Helm's schema engine, which
# refuses a schema it cannot compile) has no syntax for, and keywords that say the same in
# RE2. Nothing else of the copy differs from policies/schema.json.
RE2_TRANSLATIONS: dict[str, dict[str, Any]] = {
    # a lookahead: some digit other than 0, i.e. a duration greater than zero
    f"^(?=.*[1-9]){_UNITS}$": {"pattern": f"^{_UNITS}$", "allOf": [{"pattern": "[1-9]"}]},
    # a lookahead: not empty
    f"^(?=.){_UNITS}$": {"pattern": f"^{_UNITS}$", "minLength": 1},
    # RE2 has no \u escapes: NUL is \x00
    "^[^\\u0000]*$": {"pattern": "^[^\\x00]*$"},
}
# ECMA syntax RE2 lacks: lookaround, \u escapes, backreferences, \c, \p{...}.
NOT_RE2 = re.compile(r"\(\?<?[=!]|\\u[0-9A-Fa-f]{4}|\\[1-9]|\\k<|\\c[A-Za-z]|\\[pP]\{")


def chart_policy_schema(node: Any) -> Any:
    """policies/schema.json as the chart embeds it: the patterns RE2 lacks rewritten."""
    if isinstance(node, list):
        return [chart_policy_schema(child) for child in node]
    if not isinstance(node, dict):
        return node
    out = {key: chart_policy_schema(child) for key, child in node.items()}
    pattern = node.get("pattern")
    if isinstance(pattern, str) and pattern in RE2_TRANSLATIONS:
        for key, value in RE2_TRANSLATIONS[pattern].items():
            out[key] = [*out.get(key, []), *value] if key == "allOf" else value
    return out


def schema_patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        yield from (key for key in node.get("patternProperties", {}) if isinstance(key, str))
        for child in node.values():
            yield from schema_patterns(child)
    elif isinstance(node, list):
        for child in node:
            yield from schema_patterns(child)


def test_the_charts_policy_schema_is_policies_schema_json() -> None:
    """The copy in values.schema.json is policies/schema.json, but for RE2_TRANSLATIONS.

    After a change to policies/schema.json: UPDATE_CHART_SCHEMA=1 pytest -k policy_schema
    """
    expected = chart_policy_schema(json.loads(POLICY_SCHEMA.read_text()))
    values_schema = json.loads(VALUES_SCHEMA.read_text())
    if os.environ.get("UPDATE_CHART_SCHEMA") == "1":
        values_schema["$defs"]["policyFile"] = expected
        VALUES_SCHEMA.write_text(json.dumps(values_schema, indent=2) + "\n")
    assert values_schema["$defs"]["policyFile"] == expected, (
        "helm/agent-warden/values.schema.json $defs/policyFile has drifted from "
        "policies/schema.json; regenerate it: UPDATE_CHART_SCHEMA=1 pytest "
        "tests/unit/test_helm_chart.py -k policy_schema"
    )
    assert expected["$id"] == POLICY_SCHEMA_ID
    inline = values_schema["properties"]["policy"]["properties"]["inline"]
    assert inline["type"] == ["null", "string", "object"]
    assert inline["if"] == {"type": "object"}
    assert inline["then"] == {"$ref": POLICY_SCHEMA_ID}


def test_every_pattern_is_re2_or_translated() -> None:
    source = list(schema_patterns(json.loads(POLICY_SCHEMA.read_text())))
    untranslated = [p for p in source if NOT_RE2.search(p) and p not in RE2_TRANSLATIONS]
    assert not untranslated, f"add an RE2 equivalent to RE2_TRANSLATIONS: {untranslated}"
    assert set(RE2_TRANSLATIONS) <= set(source), "a translation of a pattern that is gone"
    embedded = json.loads(VALUES_SCHEMA.read_text())
    assert not [p for p in schema_patterns(embedded) if NOT_RE2.search(p)]


def test_helm_compiles_the_values_schema(chart: Any) -> None:
    """Helm refuses a schema with a pattern RE2 cannot compile, for every install."""
    chart.validate_schema({})
    chart.validate_schema({"policy": {"inline": {"version": 1}}})


def _samples() -> list[str]:
    alphabet = "019hms\x00x"
    strings = ["".join(t) for n in range(6) for t in itertools.product(alphabet, repeat=n)]
    return [*strings, "1h30m", "500ms", "10m0s", "1h0m0s0ms", "90s", "0ms", "00", "a\x00b"]


@pytest.mark.parametrize("pattern", sorted(RE2_TRANSLATIONS))
def test_the_translations_accept_exactly_what_the_originals_accept(pattern: str) -> None:
    """Python's re reads the ECMA originals alike (no newline in the samples: Python's $
    also matches before a final newline)."""
    original = re.compile(pattern)
    translated = jsonschema.Draft202012Validator({"type": "string", **RE2_TRANSLATIONS[pattern]})
    differing = [
        s for s in _samples() if (original.search(s) is not None) != translated.is_valid(s)
    ]
    assert not differing


def _policy_documents() -> list[tuple[str, Any]]:
    """Every policy file the project has, valid and invalid, as documents."""
    paths = sorted((ROOT / "policies").glob("*.yaml")) + sorted(
        (ROOT / "tests" / "data" / "policies").glob("*.yaml")
    )
    docs = []
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict):
            docs.append((path.name, doc))
    return docs


def test_the_chart_and_policies_schema_json_agree_on_every_policy_file() -> None:
    values_validator = jsonschema.Draft202012Validator(json.loads(VALUES_SCHEMA.read_text()))
    policy_validator = jsonschema.Draft202012Validator(json.loads(POLICY_SCHEMA.read_text()))
    docs = _policy_documents()
    assert len(docs) >= 8
    verdicts = set()
    for name, doc in docs:
        expected = policy_validator.is_valid(doc)
        verdicts.add(expected)
        assert values_validator.is_valid({"policy": {"inline": doc}}) == expected, name
    assert verdicts == {True, False}  # both kinds were tried


@pytest.mark.parametrize("name", ["example.yaml", "strict.yaml", "audit.yaml"])
def test_the_projects_policies_install_as_mappings(chart: Any, name: str) -> None:
    """Through the real Helm engine: the schema accepts them, the sidecar reads the same."""
    text = (ROOT / "policies" / name).read_text()
    doc = yaml.safe_load(text)
    rendered = render(chart, {"policy": {"inline": doc}})
    [configmap] = policy_configmaps(rendered)
    written = configmap["data"]["policy.yaml"]
    assert json.loads(written) == doc  # JSON, which is YAML the sidecar reads as meant
    assert yaml.safe_load(written) == doc
    assert parse_policy(written, "policy.yaml") == parse_policy(text, name)


POLICY_TYPOS = [
    (
        {"version": 1, "defaults": {"budgett": {"calls": 10}}},
        "at '/policy/inline/defaults': additional properties 'budgett' not allowed",
    ),
    ({"version": 1, "defualts": {}}, "additional properties 'defualts' not allowed"),
    ({"version": 1, "defaults": {"session": {"ttl": "0s"}}}, "/policy/inline/defaults/session/ttl"),
    (
        {"version": 1, "defaults": {"session": {"ttl": "1 hour"}}},
        "/policy/inline/defaults/session/ttl",
    ),
    ({"version": 1, "defaults": {"mode": "block"}}, "/policy/inline/defaults/mode"),
    ({"version": 2}, "/policy/inline/version"),
    ({"defaults": {"mode": "audit"}}, "at '/policy/inline': missing property 'version'"),
    (
        {"version": 1, "policies": [{"name": "default", "match": {"agents": ["x"]}}]},
        "/policy/inline/policies/0/name",
    ),
    (
        {"version": 1, "identity": {"jwt": {"issuers": ["i"], "audiences": ["a"]}}},
        "/policy/inline/identity/jwt",
    ),
    ({"version": 1, "identity": {"header": "X Agent"}}, "/policy/inline/identity/header"),
]


@pytest.mark.parametrize(
    ("policy", "message"), POLICY_TYPOS, ids=[str(i) for i in range(len(POLICY_TYPOS))]
)
def test_a_policy_mistake_fails_helm_with_the_schema_error(
    chart: Any, policy: dict[str, Any], message: str
) -> None:
    """helm install/upgrade/template stop before anything reaches the cluster."""
    with pytest.raises(helm_python.HelmValuesError) as info:
        chart.render({"policy": {"inline": policy}}, name=RELEASE, namespace=NAMESPACE)
    assert message in str(info.value)


def test_helm_lint_reports_a_policy_typo() -> None:
    values = {"policy": {"inline": {"version": 1, "defaults": {"budgett": {"calls": 10}}}}}
    report = helm_python.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    text = json.dumps(report)
    assert "additional properties 'budgett' not allowed" in text


def test_a_string_policy_is_still_accepted_byte_for_byte(chart: Any) -> None:
    """The compatible form: not checked by the schema (a string), kept with its comments."""
    text = "# ours\nversion: 1\ndefaults: {budgett: {calls: 1}}  # a typo only the sidecar sees\n"
    [configmap] = policy_configmaps(render(chart, {"policy": {"inline": text}}))
    assert configmap["data"]["policy.yaml"] == text


def test_a_structured_policy_reaches_every_configmap_as_json(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["structured-policy"])
    configmaps = policy_configmaps(rendered)
    assert {c["metadata"]["namespace"] for c in configmaps} == {NAMESPACE, "agents"}
    for configmap in configmaps:
        text = configmap["data"]["policy.yaml"]
        assert json.loads(text) == STRUCTURED_POLICY
        policy = parse_policy(text, "policy.yaml")
        assert policy.defaults.tools.allows("lookup_order")
        assert not policy.defaults.tools.allows("reset_admin")


def test_strings_in_a_structured_policy_keep_their_meaning(chart: Any) -> None:
    """Why JSON: Go's YAML writer leaves some strings plain that PyYAML (YAML 1.1, the
    sidecar's reader) takes for something else, `=` for one. x- keys are ignored by the
    sidecar, so they carry any value through the schema."""
    tricky = ["yes", "no", "on", "off", "y", "Y", "n", "null", "~", "", "1.0", "1e3", "0755"]
    tricky += ["0x1F", ".inf", ".nan", "12:30", "2024-01-01", "1.0.1", " lead", "trail "]
    tricky += ["a: b", "- x", "#c", "*a", "&a", "!t", "%x", "@x", "{x}", "[x]", "a\nb", "="]
    tricky += ["<<", "+1", "<a>&", "tab\there", 'quote"s', "back\\slash", "\u2028", "é 😀"]
    numbers = {"big": 10**15, "half": 0.5, "negative": -3, "zero": 0, "flags": [True, False]}
    doc = {"version": 1, "x-strings": tricky, "x-numbers": numbers, "x-none": None}
    [configmap] = policy_configmaps(render(chart, {"policy": {"inline": doc}}))
    assert yaml.safe_load(configmap["data"]["policy.yaml"]) == doc


def builtin_policy_in_values_yaml() -> str:
    """The policy values.yaml shows in its comment for policy.inline: null."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    start = lines.index("  # null: the built-in policy,") + 1
    shown = []
    for line in lines[start:]:
        if not line.startswith("  #   "):
            break
        shown.append(line.removeprefix("  #   "))
    return "\n".join(shown) + "\n"


def test_the_builtin_policy_is_the_one_values_yaml_shows(chart: Any) -> None:
    assert chart.values["policy"]["inline"] is None
    [configmap] = policy_configmaps(render(chart))
    assert configmap["data"]["policy.yaml"] == builtin_policy_in_values_yaml()
    policy_validator = jsonschema.Draft202012Validator(json.loads(POLICY_SCHEMA.read_text()))
    policy_validator.validate(yaml.safe_load(configmap["data"]["policy.yaml"]))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_admin_token_secret_is_wherever_the_policy_configmap_is(
    chart: Any, scenario: str
) -> None:
    """Every object a sidecar reads from its namespace, in the same namespaces."""
    values = SCENARIOS[scenario]
    rendered = render(chart, values)
    expected = {NAMESPACE, *values.get("policy", {}).get("namespaces", [])}
    policy_values = values.get("policy", {})
    configmaps = {c["metadata"]["namespace"] for c in policy_configmaps(rendered)}
    assert configmaps == (set() if policy_values.get("existingConfigMap") else expected)
    admin = values.get("admin", {})
    token_made = admin.get("token", {}).get("enabled", True) and not admin.get(
        "tokenSecret", {}
    ).get("existing")
    assert set(admin_secrets(rendered)) == (expected if token_made else set())
    store = values.get("store", {})
    stores = {
        s["metadata"]["namespace"]
        for s in rendered.all("Secret")
        if s["metadata"]["labels"]["app.kubernetes.io/component"] == "store"
    }
    store_made = bool(store.get("url")) and not store.get("existingSecret")
    assert stores == (expected if store_made else set())


def test_with_an_existing_configmap_the_secrets_still_reach_policy_namespaces(chart: Any) -> None:
    """policy.namespaces names the injected namespaces even when the ConfigMap is yours."""
    rendered = render(chart, SCENARIOS["existing-configmap-namespaces"])
    assert not policy_configmaps(rendered)
    assert set(admin_secrets(rendered)) == {NAMESPACE, "agents"}
    assert injector_config(rendered)["policyConfigMap"] == "team-policy"


# --- missing objects: the webhook's lookups and its role ---------------------------------


def cluster_role_names(rendered: Rendered) -> dict[str, list[str]]:
    role = rendered.one("ClusterRole")
    names: dict[str, list[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        assert rule["verbs"] == ["get"]  # never list, watch or anything that writes
        [resource] = rule["resources"]
        names[resource] = rule["resourceNames"]
    return names


def test_the_webhook_may_get_only_the_objects_it_checks(chart: Any) -> None:
    env = [
        {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "region"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
    ]
    values = {
        "store": {"url": "redis://redis.agents:6379/0"},
        "policy": {"namespaces": ["agents"]},
        "injector": {"env": env},
    }
    rendered = render(chart, values)
    assert cluster_role_names(rendered) == {
        "configmaps": ["agent-warden-policy", "site"],
        "secrets": ["agent-warden-admin-token", "agent-warden-store", "db"],
    }
    binding = rendered.one("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": rendered.one("ClusterRole")["metadata"]["name"],
    }
    deployment = rendered.one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}
    ]
    assert pod["automountServiceAccountToken"] is True  # the token the lookups send
    assert rendered.one("ServiceAccount")["automountServiceAccountToken"] is False


def test_without_lookups_no_role_and_no_token(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["missing-objects-inject"])
    assert not rendered.all("ClusterRole")
    assert not rendered.all("ClusterRoleBinding")
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert injector_config(rendered)["missingObjects"] == "inject"


@pytest.mark.parametrize(
    "scenario",
    [
        s
        for s in sorted(SCENARIOS)
        if SCENARIOS[s].get("injector", {}).get("missingObjects") != "inject"
    ],
)
def test_the_role_covers_what_the_injector_looks_up(chart: Any, scenario: str) -> None:
    """Chart -> injector config -> a pod's references: each is a name the role grants."""
    inject_config = pytest.importorskip("proxy.inject.config")
    patch = pytest.importorskip("proxy.inject.patch")
    rendered = render(chart, SCENARIOS[scenario])
    text = rendered.one("ConfigMap", f"{FULLNAME}-injector")["data"]["config.yaml"]
    config = inject_config.parse_config(text, "config.yaml")
    assert config.missing_objects in {"skip", "deny"}
    pod = yaml.safe_load((ROOT / "tests" / "data" / "inject" / "plain.pod.yaml").read_text())
    decision = patch.decide(pod, config)
    granted = cluster_role_names(rendered)
    for reference in decision.references:
        resource = {"ConfigMap": "configmaps", "Secret": "secrets"}[reference.kind]
        assert reference.name in granted[resource], (scenario, reference)


# --- the drain ---------------------------------------------------------------------------


def test_the_drain_reaches_the_injector(chart: Any) -> None:
    config = injector_config(render(chart))
    # The chart renders for the Kubernetes version Helm reports (offline: its own, 1.30+).
    assert (config["drainDelaySeconds"], config["preStopAction"], config["appPreStop"]) == (
        5,
        "sleep",
        True,
    )
    config = injector_config(render(chart, SCENARIOS["prestop-exec"]))
    assert (config["drainDelaySeconds"], config["preStopAction"]) == (8, "exec")
    config = injector_config(render(chart, SCENARIOS["no-drain-delay"]))
    assert (config["drainDelaySeconds"], config["appPreStop"]) == (0, False)


PRESTOP_CASES = {
    "v1.29": ("auto", "v1.29.4", "exec"),
    "v1.30": ("auto", "v1.30.0", "sleep"),
    "eks": ("auto", "v1.30.2-eks-1552ad0", "sleep"),
    "gke": ("auto", "v1.29.6-gke.1038001", "exec"),
    "forcedSleep": ("sleep", "v1.28.0", "sleep"),
    "forcedExec": ("exec", "v1.33.0", "exec"),
}
PRESTOP_PROBE = (
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: prestop-probe\ndata:\n"
    + "".join(
        f'  {key}: {{{{ include "agent-warden.preStopAction" '
        f'(dict "action" "{action}" "kubeVersion" "{version}") }}}}\n'
        for key, (action, version, _) in PRESTOP_CASES.items()
    )
)


def test_auto_picks_the_sleep_action_from_1_30(tmp_path: Path) -> None:
    """The helper under the real engine with the versions a cluster may report (offline
    rendering reports Helm's own, so a probe template asks for the others)."""
    copy = tmp_path / "agent-warden"
    shutil.copytree(CHART_DIR, copy)
    (copy / "templates" / "zz-prestop-probe.yaml").write_text(PRESTOP_PROBE)
    with helm_python.Chart.load(copy) as probe_chart:
        data = render(probe_chart).one("ConfigMap", "prestop-probe")["data"]
    assert data == {key: expected for key, (_, _, expected) in PRESTOP_CASES.items()}


@pytest.mark.parametrize(("scenario", "version"), [("default", "1.30"), ("prestop-exec", "1.29")])
def test_the_injected_pod_drains(chart: Any, scenario: str, version: str) -> None:
    """Chart -> injector -> pod: the preStop, the app's wait, the grace period; valid for
    the Kubernetes version the action is meant for."""
    inject_config = pytest.importorskip("proxy.inject.config")
    patch = pytest.importorskip("proxy.inject.patch")
    jsonpatch = pytest.importorskip("jsonpatch")
    rendered = render(chart, SCENARIOS[scenario])
    text = rendered.one("ConfigMap", f"{FULLNAME}-injector")["data"]["config.yaml"]
    config = inject_config.parse_config(text, "config.yaml")
    pod = yaml.safe_load((ROOT / "tests" / "data" / "inject" / "plain.pod.yaml").read_text())
    patched = jsonpatch.apply_patch(pod, json.loads(patch.decide(pod, config).patch_json()))
    kubernetes_validate.validate(patched, version, strict=True)
    [sidecar] = patched["spec"]["initContainers"]
    [app] = patched["spec"]["containers"]
    hook = sidecar["lifecycle"]["preStop"]
    if config.pre_stop_action == "sleep":
        assert hook == {"sleep": {"seconds": 5}}
        assert app["lifecycle"]["preStop"] == hook
        assert "terminationGracePeriodSeconds" not in patched["spec"]  # 30 s suffice
    else:
        assert hook["exec"]["command"][:2] == ["python3", "-c"]
        assert "lifecycle" not in app
        assert patched["spec"]["terminationGracePeriodSeconds"] == 8 + 20 + 5


# --- NetworkPolicy -----------------------------------------------------------------------


def injected_pod(rendered: Rendered, case: str = "named-port") -> dict[str, Any]:
    """A golden pod as the chart-configured injector patches it."""
    inject_config = pytest.importorskip("proxy.inject.config")
    patch = pytest.importorskip("proxy.inject.patch")
    jsonpatch = pytest.importorskip("jsonpatch")
    text = rendered.one("ConfigMap", f"{FULLNAME}-injector")["data"]["config.yaml"]
    config = inject_config.parse_config(text, "config.yaml")
    pod = yaml.safe_load((ROOT / "tests" / "data" / "inject" / f"{case}.pod.yaml").read_text())
    patched: dict[str, Any] = jsonpatch.apply_patch(
        pod, json.loads(patch.decide(pod, config).patch_json())
    )
    return patched


def test_network_policy_opens_only_the_sidecars_ports(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["network-policy"])
    [policy] = rendered.all("NetworkPolicy")
    assert policy["metadata"]["namespace"] == "agents"
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    # The default: the data plane from anywhere; the admin port from nobody (no rule).
    assert spec["ingress"] == [{"ports": [{"port": 15080, "protocol": "TCP"}]}]
    # It selects what the injector patches, and only that: the sidecar's port is open,
    # the app's own is not.
    pod = injected_pod(rendered)
    assert selects(spec["podSelector"], pod["metadata"]["labels"])
    uninjected = yaml.safe_load(
        (ROOT / "tests" / "data" / "inject" / "named-port.pod.yaml").read_text()
    )
    assert not selects(spec["podSelector"], uninjected["metadata"]["labels"])
    [sidecar] = pod["spec"]["initContainers"]
    assert 15080 in {p["containerPort"] for p in sidecar["ports"]}
    app_ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert app_ports == {8000}
    assert not app_ports & {p["port"] for rule in spec["ingress"] for p in rule["ports"]}


def test_network_policy_peers_and_extra_rules(chart: Any) -> None:
    rendered = render(chart, EVERYTHING)
    policies = {p["metadata"]["namespace"]: p for p in rendered.all("NetworkPolicy")}
    assert set(policies) == {"agents", "billing"}
    network = EVERYTHING["networkPolicy"]
    for policy in policies.values():
        data_plane, admin, extra = policy["spec"]["ingress"]
        assert data_plane == {
            "ports": [{"port": 15080, "protocol": "TCP"}],
            "from": network["dataPlaneFrom"],
        }
        assert admin == {
            "ports": [{"port": 15021, "protocol": "TCP"}],
            "from": network["metricsFrom"],
        }
        assert extra == network["extraIngress"][0]


def test_network_policy_follows_the_ports(chart: Any) -> None:
    values = {
        **SCENARIOS["network-policy"],
        "injector": {"listenPort": 18080, "adminPort": 19901},
    }
    values["networkPolicy"] = {"enabled": True, "metricsFrom": [PROMETHEUS]}
    [policy] = render(chart, values).all("NetworkPolicy")
    ports = [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]]
    assert ports == [18080, 19901]


# --- PodMonitor and ServiceMonitor ---------------------------------------------------------


def test_the_pod_monitor_scrapes_every_injected_sidecar(chart: Any) -> None:
    patch = pytest.importorskip("proxy.inject.patch")
    rendered = render(chart, SCENARIOS["monitoring"])
    monitor = rendered.one("PodMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    pod = injected_pod(rendered)
    assert selects(spec["selector"], pod["metadata"]["labels"])
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint == {"port": patch.ADMIN_PORT_NAME, "path": "/metrics", "scheme": "http"}
    [sidecar] = pod["spec"]["initContainers"]
    named = {p.get("name"): p["containerPort"] for p in sidecar["ports"]}
    assert named[endpoint["port"]] == 15021  # the admin listener, no token for /metrics


def test_the_service_monitor_scrapes_the_webhook_over_tls(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["monitoring"])
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert selects(spec["selector"], service["metadata"]["labels"])
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "https"
    assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "https")
    tls = endpoint["tlsConfig"]
    assert tls["ca"]["secret"] == {"name": f"{FULLNAME}-tls", "key": "ca.crt"}
    assert tls["serverName"] in SANS
    # The same Secret the webhook serves from, whoever writes it.
    for scenario in ("monitoring", "monitoring-cert-manager"):
        r = render(chart, SCENARIOS[scenario])
        volumes = r.one("Deployment")["spec"]["template"]["spec"]["volumes"]
        [tls_volume] = [v for v in volumes if v["name"] == "tls"]
        secret = r.one("ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]
        assert secret["name"] == tls_volume["secret"]["secretName"]


def test_monitors_follow_the_values(chart: Any) -> None:
    rendered = render(chart, EVERYTHING)
    pod_monitor = rendered.one("PodMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "prometheus"
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["agents", "billing"]}
    [endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")
    service_monitor = rendered.one("ServiceMonitor")
    assert service_monitor["metadata"]["labels"]["release"] == "prometheus"
    assert service_monitor["spec"]["endpoints"][0]["interval"] == "1m"
    assert not render(chart).all("PodMonitor")
    assert not render(chart).all("ServiceMonitor")


# --- helm test: a request through an injected sidecar --------------------------------------


def injection_test_pod(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("Pod", f"{FULLNAME}-test-injection")


def test_the_injection_test_pod(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["test-injection"])
    pod = injection_test_pod(rendered)
    assert pod["metadata"]["namespace"] == "agents"  # the first of policy.namespaces
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # Selected by the pod webhook where the namespace is not labelled, by the namespace
    # webhook where it is: once either way.
    labels = pod["metadata"]["labels"]
    assert called_for(rendered, "agents", {}, labels) == [POD_WEBHOOK]
    assert called_for(rendered, "agents", OPTED_IN, labels) == [NAMESPACE_WEBHOOK]
    upstream, client = pod["spec"]["containers"]
    assert upstream["image"] == "agent-warden:0.1.0"  # python3 of the image, no shell
    assert upstream["command"] == ["python3", "-c"]
    env = {e["name"]: e["value"] for e in upstream["env"]}
    assert env == {"IDENTITY_HEADER": "X-Agent-Id", "PORT": "8080"}
    assert client["command"] == ["curl"]
    assert client["args"][-1] == "http://127.0.0.1:15080/agent-warden-helm-test"
    for container in (upstream, client):
        assert container["securityContext"] == RESTRICTED
    # The webhook, configured by this chart, injects it: the curl reaches the sidecar.
    patched = injected_pod_from(rendered, pod)
    kubernetes_validate.validate(patched, KUBE_VERSION, strict=True)
    [sidecar] = patched["spec"]["initContainers"]
    assert sidecar["args"][sidecar["args"].index("--upstream") + 1] == "http://127.0.0.1:8080"
    assert 15080 in {p["containerPort"] for p in sidecar["ports"]}
    assert patched["spec"]["volumes"][0]["configMap"]["name"] == "agent-warden-policy"


def injected_pod_from(rendered: Rendered, pod: dict[str, Any]) -> dict[str, Any]:
    inject_config = pytest.importorskip("proxy.inject.config")
    patch = pytest.importorskip("proxy.inject.patch")
    jsonpatch = pytest.importorskip("jsonpatch")
    text = rendered.one("ConfigMap", f"{FULLNAME}-injector")["data"]["config.yaml"]
    decision = patch.decide(pod, inject_config.parse_config(text, "config.yaml"))
    assert decision.injected, decision.reason
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, json.loads(decision.patch_json()))
    return patched


def test_the_injection_test_reads_the_policys_identity_header(chart: Any) -> None:
    rendered = render(chart, SCENARIOS["structured-policy"])
    [upstream, _] = injection_test_pod(rendered)["spec"]["containers"]
    assert {"name": "IDENTITY_HEADER", "value": "X-Caller"} in upstream["env"]
    text = "version: 1\nidentity: {header: X-From-Mesh}\n"
    rendered = render(chart, {"policy": {"inline": text, "namespaces": ["agents"]}})
    [upstream, _] = injection_test_pod(rendered)["spec"]["containers"]
    assert {"name": "IDENTITY_HEADER", "value": "X-From-Mesh"} in upstream["env"]


def test_the_injection_test_follows_the_values(chart: Any) -> None:
    rendered = render(chart, EVERYTHING)
    pod = injection_test_pod(rendered)
    assert pod["metadata"]["namespace"] == "billing"
    upstream, client = pod["spec"]["containers"]
    assert upstream["image"] == "registry.example/agent-warden:1.0"
    assert client["image"] == "registry.example/curl:8"
    # Needs an injected namespace, native sidecars, and may be turned off.
    for values in (
        {},
        {**SCENARIOS["test-injection"], "injector": {"nativeSidecar": False}},
        SCENARIOS["test-injection-off"],
    ):
        names = [p["metadata"]["name"] for p in render(chart, values).all("Pod")]
        assert names == [f"{FULLNAME}-test-healthz"]
    notes = render(chart, SCENARIOS["test-injection"]).notes
    assert "through a sidecar injected into a test pod in agents" in notes
