"""The injector's decision and JSON patch: golden pods, validity, idempotence, the config file.

Golden files in tests/data/inject: ``<case>.pod.yaml`` in, ``<case>.patched.yaml`` out
(the pod after the patch, applied with jsonpatch), ``<case>.config.yaml`` when the case
needs a configuration. ``UPDATE_GOLDEN=1`` rewrites the ``.patched.yaml`` files.
"""

from __future__ import annotations

import copy
import json
import os
import re
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from proxy import __version__
from proxy.config import ConfigError
from proxy.inject.config import InjectConfig, load_config, parse_config
from proxy.inject.patch import (
    ADMIN_PORT_NAME,
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE,
    INJECT,
    INJECTED_LABEL,
    SIDECAR_NAME,
    STATUS,
    UPSTREAM_PORT,
    Decision,
    PodError,
    Reference,
    decide,
    pointer,
    port_name_ok,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "inject"
CASES = sorted(p.name.removesuffix(".pod.yaml") for p in DATA.glob("*.pod.yaml"))
K8S_VERSION = "1.30"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
GOLDEN_TAG = "1.0.0"

# Which cases inject; the others must leave the pod alone.
NOT_INJECTED = {"already-injected", "host-network", "opt-out"}


def config_for(case: str) -> InjectConfig:
    """The case's configuration; the image tag pinned so a version bump changes no golden file."""
    path = DATA / f"{case}.config.yaml"
    config = load_config(path) if path.exists() else InjectConfig()
    return replace(config, tag=GOLDEN_TAG) if config.tag == __version__ else config


def read_yaml(path: Path) -> dict[str, Any]:
    value = yaml.safe_load(path.read_text())
    assert isinstance(value, dict)
    return value


def apply(pod: dict[str, Any], decision: Decision) -> dict[str, Any]:
    patch = jsonpatch.JsonPatch(json.loads(decision.patch_json()))
    result = patch.apply(copy.deepcopy(pod))
    assert isinstance(result, dict)
    return result


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    [sidecar] = [
        c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == SIDECAR_NAME
    ]
    return sidecar


def pod(**spec: Any) -> dict[str, Any]:
    """A minimal pod opted in by annotation, with ``spec`` fields replaced."""
    base: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {INJECT: "true"}},
        "spec": {"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 80}]}]},
    }
    base["spec"].update(spec)
    return base


# --- golden files ------------------------------------------------------------------


def test_every_case_is_present() -> None:
    expected = {
        "plain",
        "named-port",
        "several-containers",
        "already-injected",
        "opt-out",
        "host-network",
        "namespace-default",
        "classic",
        "init-containers",
        "grace-period",
        "no-admin-token",
        "operator-admin-token",
        "drain-exec",
        "app-own-prestop",
        "app-poststart",
        "no-drain-delay",
    }
    assert expected <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    original = read_yaml(DATA / f"{case}.pod.yaml")
    decision = decide(original, config_for(case))
    assert decision.injected == (case not in NOT_INJECTED), decision.reason
    patched = apply(original, decision)
    golden = DATA / f"{case}.patched.yaml"
    if UPDATE:
        header = f"# {case}: the pod after the injector's patch. Regenerate: UPDATE_GOLDEN=1.\n"
        golden.write_text(header + yaml.safe_dump(patched, sort_keys=False, width=100))
    assert patched == read_yaml(golden), f"{case}: differs from {golden.name}"


@pytest.mark.parametrize("case", CASES)
def test_golden_pods_are_valid(case: str) -> None:
    for suffix in ("pod", "patched"):
        kubernetes_validate.validate(
            read_yaml(DATA / f"{case}.{suffix}.yaml"), K8S_VERSION, strict=True
        )


@pytest.mark.parametrize("case", CASES)
def test_injecting_the_patched_pod_again_gives_no_patch(case: str) -> None:
    config = config_for(case)
    once = apply(
        read_yaml(DATA / f"{case}.pod.yaml"), decide(read_yaml(DATA / f"{case}.pod.yaml"), config)
    )
    again = decide(once, config)
    assert again.patch == ()
    if case not in NOT_INJECTED:
        assert again.reason == "already injected"
        assert not again.warnings


@pytest.mark.parametrize("case", CASES)
def test_port_names_are_valid_and_unique(case: str) -> None:
    patched = read_yaml(DATA / f"{case}.patched.yaml")
    spec = patched["spec"]
    names = [
        port["name"]
        for container in spec["containers"] + spec.get("initContainers", [])
        for port in container.get("ports", [])
        if "name" in port
    ]
    assert all(port_name_ok(n) for n in names), names
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("case", sorted(set(CASES) - NOT_INJECTED))
def test_the_patch_is_deterministic(case: str) -> None:
    original = read_yaml(DATA / f"{case}.pod.yaml")
    config = config_for(case)
    assert (
        decide(original, config).patch_json()
        == decide(copy.deepcopy(original), config).patch_json()
    )


# --- what the golden files show, said plainly ----------------------------------------------


def test_named_port_takeover() -> None:
    patched = read_yaml(DATA / "named-port.patched.yaml")
    [app] = patched["spec"]["containers"]
    assert app["ports"] == [{"name": "app-http", "containerPort": 8000, "protocol": "TCP"}]
    sidecar = sidecar_of(patched)
    assert {"name": "http", "containerPort": 15080, "protocol": "TCP"} in sidecar["ports"]
    assert {"name": ADMIN_PORT_NAME, "containerPort": 15021, "protocol": "TCP"} in sidecar["ports"]
    status = json.loads(patched["metadata"]["annotations"][STATUS])
    assert status["renamedPorts"] == {"http": "app-http"}
    assert "--protocol" in sidecar["args"]
    assert sidecar["args"][sidecar["args"].index("--protocol") + 1] == "mcp"
    [volume] = [v for v in patched["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"] == {"name": "billing-policy", "optional": False}


def test_native_sidecar_comes_first_among_init_containers() -> None:
    patched = read_yaml(DATA / "init-containers.patched.yaml")
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == [SIDECAR_NAME, "migrate"]
    assert patched["spec"]["initContainers"][0]["restartPolicy"] == "Always"


def test_the_sidecar_as_specified() -> None:
    patched = read_yaml(DATA / "plain.patched.yaml")
    sidecar = sidecar_of(patched)
    assert sidecar["image"] == f"agent-warden:{GOLDEN_TAG}"
    assert InjectConfig().image_ref == f"agent-warden:{__version__}"
    assert sidecar["args"] == [
        "run",
        "--upstream",
        "http://127.0.0.1:8080",
        "--listen",
        "0.0.0.0:15080",
        "--admin",
        "0.0.0.0:15021",
        "--policy",
        "/etc/agent-warden/policy.yaml",
        "--protocol",
        "auto",
        "--grace-period",
        "20s",
    ]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 15021}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 15021}
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert sidecar["volumeMounts"] == [
        {"name": "agent-warden-policy", "mountPath": "/etc/agent-warden", "readOnly": True},
        {
            "name": "agent-warden-admin-token",
            "mountPath": "/var/run/agent-warden/admin-token",
            "readOnly": True,
        },
    ]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env[ADMIN_TOKEN_ENV] == {
        "name": "AGENT_WARDEN_ADMIN_TOKEN_FILE",
        "value": "/var/run/agent-warden/admin-token/token",
    }
    assert env["OTEL_SERVICE_NAME"]["value"] == "echo-agent"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == (
        "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
    )
    # Referenced variables must come before the one that references them.
    order = [e["name"] for e in sidecar["env"]]
    assert order.index("POD_NAME") < order.index("OTEL_RESOURCE_ATTRIBUTES")
    # Kubernetes' default 30 s already covers 20 s of drain plus the margin.
    assert "terminationGracePeriodSeconds" not in patched["spec"]


def test_classic_sidecar_is_appended_with_config_env() -> None:
    patched = read_yaml(DATA / "classic.patched.yaml")
    assert [c["name"] for c in patched["spec"]["containers"]] == ["server", SIDECAR_NAME]
    sidecar = patched["spec"]["containers"][-1]
    assert "restartPolicy" not in sidecar
    assert sidecar["image"] == "registry.example.com/agent-warden:2.0.0"
    assert sidecar["env"][-1] == {
        "name": "OTEL_EXPORTER_OTLP_ENDPOINT",
        "value": "http://otel-collector.observability:4318",
    }
    # drainDelaySeconds 5 + drainSeconds 40 + 5 of margin
    assert patched["spec"]["terminationGracePeriodSeconds"] == 50


def test_grace_period_raised() -> None:
    # 10 s is less than drainDelaySeconds 5 + drainSeconds 20 + 5 of margin.
    assert (
        read_yaml(DATA / "grace-period.patched.yaml")["spec"]["terminationGracePeriodSeconds"] == 30
    )


def test_service_name_of_a_deployment_pod_is_the_deployment() -> None:
    patched = read_yaml(DATA / "namespace-default.patched.yaml")
    env = {e["name"]: e.get("value") for e in sidecar_of(patched)["env"]}
    assert env["OTEL_SERVICE_NAME"] == "planner"


# --- the decision --------------------------------------------------------------------------


def test_not_requested_without_annotation_or_default() -> None:
    unannotated = pod()
    del unannotated["metadata"]["annotations"]
    assert decide(unannotated, InjectConfig()) == Decision((), "not requested")
    assert decide(unannotated, InjectConfig(inject_by_default=True)).injected


def test_a_container_named_like_the_sidecar_means_already_injected() -> None:
    p = pod(initContainers=[{"name": SIDECAR_NAME, "image": "x", "restartPolicy": "Always"}])
    assert decide(p, InjectConfig()).reason == "already injected"


@pytest.mark.parametrize(
    ("annotations", "needle"),
    [
        ({INJECT: "yes"}, 'expected "true" or "false"'),
        ({INJECT: "true", "agent-warden.dev/protocol": "grpc"}, "protocol"),
        ({INJECT: "true", "agent-warden.dev/policy-configmap": "Bad_Name"}, "policy-configmap"),
        ({INJECT: "true", UPSTREAM_PORT: "http"}, UPSTREAM_PORT),
        ({INJECT: "true", UPSTREAM_PORT: "70000"}, UPSTREAM_PORT),
        ({INJECT: "true", UPSTREAM_PORT: "15080"}, "listenPort"),
    ],
)
def test_bad_annotations_are_not_injected_and_say_why(
    annotations: dict[str, str], needle: str
) -> None:
    p = pod()
    p["metadata"]["annotations"] = annotations
    decision = decide(p, InjectConfig())
    assert not decision.injected
    [warning] = decision.warnings
    assert needle in warning


def test_host_network_warns_only_when_asked_explicitly() -> None:
    asked = decide(pod(hostNetwork=True), InjectConfig())
    assert not asked.injected
    assert asked.warnings
    by_default = pod(hostNetwork=True)
    del by_default["metadata"]["annotations"]
    quiet = decide(by_default, InjectConfig(inject_by_default=True))
    assert not quiet.injected
    assert not quiet.warnings


@pytest.mark.parametrize(
    "containers",
    [
        [{"name": "a", "image": "a"}],
        [{"name": "a", "image": "a", "ports": [{"containerPort": 80}, {"containerPort": 81}]}],
        [
            {"name": "a", "image": "a", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b", "ports": [{"containerPort": 81}]},
        ],
    ],
)
def test_upstream_port_required_unless_one_port_is_declared(containers: list[Any]) -> None:
    decision = decide(pod(containers=containers), InjectConfig())
    assert not decision.injected
    assert UPSTREAM_PORT in decision.warnings[0]


def test_a_declared_port_clashing_with_the_sidecar_is_not_injected() -> None:
    p = pod(
        containers=[
            {"name": "a", "image": "a", "ports": [{"containerPort": 80}]},
            {
                "name": "b",
                "image": "b",
                "ports": [{"name": "x", "containerPort": 15021, "protocol": "UDP"}],
            },
        ]
    )
    p["metadata"]["annotations"][UPSTREAM_PORT] = "80"
    decision = decide(p, InjectConfig())
    assert not decision.injected
    assert "adminPort" in decision.warnings[0]


def test_renamed_port_avoids_every_name_in_the_pod() -> None:
    p = pod(
        containers=[
            {
                "name": "a",
                "image": "a",
                "ports": [
                    {"name": "http", "containerPort": 80},
                    {"name": "app-http", "containerPort": 81},
                ],
            }
        ],
        initContainers=[
            {
                "name": "s",
                "image": "s",
                "restartPolicy": "Always",
                "ports": [{"name": "app2-http", "containerPort": 82}],
            }
        ],
    )
    p["metadata"]["annotations"][UPSTREAM_PORT] = "80"
    patched = apply(p, decide(p, InjectConfig()))
    assert patched["spec"]["containers"][0]["ports"][0]["name"] == "app3-http"


def test_long_port_names_are_truncated_to_fifteen() -> None:
    p = pod(
        containers=[
            {"name": "a", "image": "a", "ports": [{"name": "very-long-name1", "containerPort": 80}]}
        ]
    )
    patched = apply(p, decide(p, InjectConfig()))
    new = patched["spec"]["containers"][0]["ports"][0]["name"]
    assert new == "app-very-long-n"
    assert port_name_ok(new)
    assert {"name": "very-long-name1", "containerPort": 15080, "protocol": "TCP"} in sidecar_of(
        patched
    )["ports"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("http", True),
        ("a", True),
        ("web-1", True),
        ("123", False),
        ("-http", False),
        ("http-", False),
        ("we--b", False),
        ("Http", False),
        ("abcdefghijklmnop", False),
        ("abcdefghijklmno", True),
    ],
)
def test_port_name_rule(name: str, ok: bool) -> None:
    assert port_name_ok(name) is ok


def test_annotation_keys_are_escaped_and_absent_objects_added_whole() -> None:
    assert pointer("metadata", "annotations", "agent-warden.dev/status") == (
        "/metadata/annotations/agent-warden.dev~1status"
    )
    assert pointer("a~b/c") == "/a~0b~1c"
    p = pod()
    del p["metadata"]["annotations"]
    ops = {op["path"]: op for op in decide(p, InjectConfig(inject_by_default=True)).patch}
    assert ops["/metadata/annotations"]["op"] == "add"
    assert set(ops["/metadata/annotations"]["value"]) == {STATUS}
    assert ops["/spec/initContainers"]["value"][0]["name"] == SIDECAR_NAME
    assert ops["/spec/volumes"]["value"][0]["name"] == "agent-warden-policy"
    with_annotations = decide(pod(), InjectConfig()).patch
    assert with_annotations[-1]["path"] == "/metadata/annotations/agent-warden.dev~1status"


def test_the_patch_is_minimal() -> None:
    ops = decide(pod(), InjectConfig()).patch
    assert [(op["op"], op["path"]) for op in ops] == [
        ("add", "/spec/initContainers"),
        ("add", "/spec/volumes"),
        ("add", "/spec/containers/0/lifecycle"),
        ("add", "/metadata/labels"),
        ("add", "/metadata/annotations/agent-warden.dev~1status"),
    ]


def test_existing_volume_name_is_not_reused() -> None:
    p = pod(volumes=[{"name": "agent-warden-policy", "emptyDir": {}}])
    patched = apply(p, decide(p, InjectConfig()))
    assert patched["spec"]["volumes"][1]["name"] == "agent-warden-policy-2"
    assert sidecar_of(patched)["volumeMounts"][0]["name"] == "agent-warden-policy-2"
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)


def test_config_env_overrides_ours_in_place() -> None:
    config = parse_config(
        "env:\n  - {name: OTEL_SERVICE_NAME, value: fixed}\n  - {name: EXTRA, value: x}\n", "c.yaml"
    )
    env = sidecar_of(apply(pod(), decide(pod(), config)))["env"]
    names = [e["name"] for e in env]
    assert names == [
        "POD_NAME",
        "POD_NAMESPACE",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        ADMIN_TOKEN_ENV,
        "EXTRA",
    ]
    assert env[2]["value"] == "fixed"


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"spec": {}},
        {"spec": {"containers": "x"}},
        {"spec": {"containers": [{"image": "x"}]}},
        {"metadata": {"annotations": {INJECT: True}}, "spec": {"containers": [{"name": "a"}]}},
        {"spec": {"containers": [{"name": "a", "ports": [{"name": "x"}]}]}},
    ],
)
def test_malformed_pods_raise_pod_error(bad: Any) -> None:
    with pytest.raises(PodError):
        decide(bad, InjectConfig(inject_by_default=True))


# --- the configuration file ----------------------------------------------------------------


def test_empty_config_is_the_defaults() -> None:
    assert parse_config("", "c.yaml") == InjectConfig()
    assert parse_config("# nothing\n", "c.yaml") == InjectConfig()
    config = InjectConfig()
    assert config.tag == __version__
    assert config.resources == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    }


def test_full_config() -> None:
    text = textwrap.dedent(
        """\
        injectByDefault: true
        image: r.example.com/aw
        tag: "1.2"
        imagePullPolicy: Never
        nativeSidecar: false
        listenPort: 8081
        adminPort: 8082
        policyConfigMap: my-policy
        policyKey: p.yaml
        protocol: mcp
        resources: {requests: {cpu: 10m}, limits: {cpu: 2}}
        drainSeconds: 5
        env: [{name: A, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
        adminTokenSecret: warden-admin
        adminTokenKey: bearer
        drainDelaySeconds: 7
        preStopAction: exec
        appPreStop: false
        missingObjects: deny
        """
    )
    config = parse_config(text, "c.yaml")
    assert config == InjectConfig(
        inject_by_default=True,
        image="r.example.com/aw",
        tag="1.2",
        image_pull_policy="Never",
        native_sidecar=False,
        listen_port=8081,
        admin_port=8082,
        policy_config_map="my-policy",
        policy_key="p.yaml",
        protocol="mcp",
        resources={"requests": {"cpu": "10m"}, "limits": {"cpu": "2"}},
        drain_seconds=5,
        env=({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},),
        admin_token_secret="warden-admin",
        admin_token_key="bearer",
        drain_delay_seconds=7,
        pre_stop_action="exec",
        app_pre_stop=False,
        missing_objects="deny",
    )
    assert config.image_ref == "r.example.com/aw:1.2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "image: x\nimagePullPolice: Always\n",
            "c.yaml:2: imagePullPolice: unknown key, did you mean 'imagePullPolicy'?",
        ),
        ("bogus: 1\n", "c.yaml:1: bogus: unknown key; expected one of: injectByDefault"),
        ("tag: 1.10\n", "c.yaml:1: tag: expected a string, got a float '1.10'; quote it"),
        ("listenPort: 0\n", "c.yaml:1: listenPort: expected a port 1-65535, got 0"),
        ("listenPort: 'x'\n", "c.yaml:1: listenPort: expected an integer"),
        ("nativeSidecar: yes please\n", "c.yaml:1: nativeSidecar: expected a boolean"),
        ("protocol: grpc\n", "c.yaml:1: protocol: expected one of auto, mcp, a2a"),
        ("policyConfigMap: Bad_Name\n", "c.yaml:1: policyConfigMap: invalid ConfigMap name"),
        ("drainSeconds: 0\n", "c.yaml:1: drainSeconds: must be at least 1"),
        (
            "resources: {requests: {cpu: lots}}\n",
            "c.yaml:1: resources: requests.cpu: invalid quantity",
        ),
        ("resources: {request: {}}\n", "c.yaml:1: resources: expected a mapping with requests"),
        ("env: [{name: A, value: 1}]\n", "c.yaml:1: env: [0].value: expected a string"),
        ("env: [{name: A}]\n", "c.yaml:1: env: [0]: give exactly one of value and valueFrom"),
        (
            "env:\n  - {name: A, value: x}\n  - {name: A, value: y}\n",
            "c.yaml:2: env: [1]: duplicate name",
        ),
        ("adminPort: 15080\n", "c.yaml:1: adminPort: must differ from listenPort (15080)"),
        ("drainDelaySeconds: -1\n", "c.yaml:1: drainDelaySeconds: must be at least 0, got -1"),
        ("drainDelaySeconds: 5s\n", "c.yaml:1: drainDelaySeconds: expected an integer"),
        ("preStopAction: shell\n", "c.yaml:1: preStopAction: expected one of sleep, exec"),
        ("appPreStop: 'yes'\n", "c.yaml:1: appPreStop: expected a boolean"),
        ("missingObjects: wait\n", "c.yaml:1: missingObjects: expected one of inject, skip, deny"),
        ("missingObject: skip\n", "c.yaml:1: missingObject: unknown key, did you mean"),
        ("image: x\nimage: y\n", "c.yaml:2: image: duplicate key"),
        ("- a\n", "c.yaml:1: (top level): expected a mapping"),
        ("image: [\n", "c.yaml:2: invalid YAML"),
    ],
)
def test_config_problems_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_every_problem_is_reported_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("bogus: 1\nlistenPort: -1\n", "c.yaml")
    assert re.fullmatch(r"c\.yaml:1: bogus: .*; c\.yaml:2: listenPort: .*", str(info.value))


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read injector config"):
        load_config(tmp_path / "missing.yaml")


def test_the_inject_label_asks_like_the_annotation() -> None:
    """The chart's objectSelector opts pods in by label; the injector honours it too."""
    from proxy.inject.config import InjectConfig
    from proxy.inject.patch import decide

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"agent-warden.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8000}]}]},
    }
    assert decide(pod, InjectConfig(inject_by_default=False)).patch
    pod["metadata"]["labels"]["agent-warden.dev/inject"] = "false"  # type: ignore[index]
    assert not decide(pod, InjectConfig(inject_by_default=True)).patch


# --- the admin API token ---------------------------------------------------------------


def token_volume(patched: dict[str, Any]) -> dict[str, Any]:
    [volume] = [v for v in patched["spec"]["volumes"] if "secret" in v]
    return volume


def test_the_admin_token_comes_from_a_secret_the_pod_waits_for() -> None:
    """Like the policy ConfigMap: a missing Secret holds the pod, never a tokenless sidecar."""
    patched = read_yaml(DATA / "plain.patched.yaml")
    volume = token_volume(patched)
    assert volume == {
        "name": "agent-warden-admin-token",
        "secret": {
            "secretName": "agent-warden-admin-token",
            "items": [{"key": "token", "path": "token"}],
            "optional": False,
        },
    }
    sidecar = sidecar_of(patched)
    [mount] = [m for m in sidecar["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a rotated Secret reaches the file
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env[ADMIN_TOKEN_ENV] == f"{mount['mountPath']}/token" == ADMIN_TOKEN_FILE
    status = json.loads(patched["metadata"]["annotations"][STATUS])
    assert status["adminTokenSecret"] == "agent-warden-admin-token"
    assert status["volumes"] == ["agent-warden-policy", "agent-warden-admin-token"]


def test_the_probes_need_no_token() -> None:
    sidecar = sidecar_of(read_yaml(DATA / "plain.patched.yaml"))
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": 15021}


def test_an_operators_secret_and_key() -> None:
    patched = read_yaml(DATA / "operator-admin-token.patched.yaml")
    assert token_volume(patched)["secret"] == {
        "secretName": "team-admin-token",
        "items": [{"key": "bearer", "path": "token"}],  # the file is always .../token
        "optional": False,
    }
    env = {e["name"]: e.get("value") for e in sidecar_of(patched)["env"]}
    assert env[ADMIN_TOKEN_ENV] == ADMIN_TOKEN_FILE


def test_no_admin_token_leaves_no_trace() -> None:
    patched = read_yaml(DATA / "no-admin-token.patched.yaml")
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["agent-warden-policy"]
    sidecar = sidecar_of(patched)
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["agent-warden-policy"]
    assert ADMIN_TOKEN_ENV not in {e["name"] for e in sidecar["env"]}
    status = json.loads(patched["metadata"]["annotations"][STATUS])
    assert "adminTokenSecret" not in status
    assert status["volumes"] == ["agent-warden-policy"]


def test_existing_volumes_get_each_of_ours_appended() -> None:
    p = pod(volumes=[{"name": "data", "emptyDir": {}}])
    ops = [(op["op"], op["path"]) for op in decide(p, InjectConfig()).patch]
    assert ops == [
        ("add", "/spec/initContainers"),
        ("add", "/spec/volumes/-"),
        ("add", "/spec/volumes/-"),
        ("add", "/spec/containers/0/lifecycle"),
        ("add", "/metadata/labels"),
        ("add", "/metadata/annotations/agent-warden.dev~1status"),
    ]


def test_the_token_volume_name_avoids_the_pods_own() -> None:
    p = pod(
        volumes=[
            {"name": "agent-warden-policy", "emptyDir": {}},
            {"name": "agent-warden-admin-token", "emptyDir": {}},
            {"name": "agent-warden-policy-2", "emptyDir": {}},
        ]
    )
    patched = apply(p, decide(p, InjectConfig()))
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert names[3:] == ["agent-warden-policy-3", "agent-warden-admin-token-2"]
    assert [m["name"] for m in sidecar_of(patched)["volumeMounts"]] == names[3:]
    assert token_volume(patched)["name"] == "agent-warden-admin-token-2"
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)


def test_config_env_may_replace_the_token_file_variable_in_place() -> None:
    config = parse_config(f"env: [{{name: {ADMIN_TOKEN_ENV}, value: /elsewhere}}]\n", "c.yaml")
    env = sidecar_of(apply(pod(), decide(pod(), config)))["env"]
    assert [e["name"] for e in env][-1] == ADMIN_TOKEN_ENV
    assert env[-1]["value"] == "/elsewhere"
    assert [e["name"] for e in env].count(ADMIN_TOKEN_ENV) == 1


def test_a_pod_injected_before_the_admin_token_is_still_already_injected() -> None:
    """Idempotence across an upgrade of the webhook: the old status annotation suffices."""
    old = read_yaml(DATA / "no-admin-token.patched.yaml")
    decision = decide(old, InjectConfig())
    assert decision == Decision((), "already injected")


def test_admin_token_config_keys() -> None:
    assert InjectConfig().admin_token_secret == "agent-warden-admin-token"
    assert InjectConfig().admin_token_key == "token"
    config = parse_config("adminTokenSecret: team.token\nadminTokenKey: my_key.txt\n", "c.yaml")
    assert (config.admin_token_secret, config.admin_token_key) == ("team.token", "my_key.txt")
    assert parse_config("adminTokenSecret: ''\n", "c.yaml").admin_token_secret == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("adminTokenSecret: Team_Token\n", "c.yaml:1: adminTokenSecret: invalid Secret name"),
        ("adminTokenSecret: null\n", "c.yaml:1: adminTokenSecret: expected a string"),
        ("adminTokenKey: ''\n", "c.yaml:1: adminTokenKey: invalid Secret key"),
        ("adminTokenKey: a/b\n", "c.yaml:1: adminTokenKey: invalid Secret key"),
        ("adminTokenSecrets: x\n", "c.yaml:1: adminTokenSecrets: unknown key, did you mean"),
    ],
)
def test_admin_token_config_problems(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert str(info.value).startswith(expected), str(info.value)


# --- the drain: preStop hooks and the grace period ---------------------------------------


def test_defaults_of_the_drain_and_the_lookup() -> None:
    config = InjectConfig()
    assert config.drain_delay_seconds == 5
    assert config.pre_stop_action == "sleep"
    assert config.app_pre_stop is True
    # The injector alone (no config) needs no Kubernetes API; the chart sets skip.
    assert config.missing_objects == "inject"


def test_the_sidecar_waits_before_sigterm_with_the_sleep_action() -> None:
    """No shell in the image needed: the kubelet sleeps (Kubernetes 1.30+)."""
    patched = read_yaml(DATA / "plain.patched.yaml")
    sidecar = sidecar_of(patched)
    assert sidecar["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    # The app waits as long, so what reaches the proxy meanwhile still finds it.
    [app] = patched["spec"]["containers"]
    assert app["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    status = json.loads(patched["metadata"]["annotations"][STATUS])
    assert status["drainDelaySeconds"] == 5
    assert status["appPreStop"] == ["server"]


def test_the_exec_action_runs_the_images_own_python() -> None:
    patched = read_yaml(DATA / "drain-exec.patched.yaml")
    command = sidecar_of(patched)["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["python3", "-c", "import time; time.sleep(8)"]
    assert "sh" not in command[0]  # an argv, never a shell
    # The app's image may have no program to run: the app is left alone with exec.
    assert "lifecycle" not in patched["spec"]["containers"][0]
    assert "appPreStop" not in json.loads(patched["metadata"]["annotations"][STATUS])
    assert patched["spec"]["terminationGracePeriodSeconds"] == 8 + 20 + 5
    # Valid for a cluster that predates the sleep action (classic sidecars on 1.28).
    classic = replace(config_for("drain-exec"), native_sidecar=False)
    original = read_yaml(DATA / "drain-exec.pod.yaml")
    kubernetes_validate.validate(apply(original, decide(original, classic)), "1.28", strict=True)


def test_the_apps_own_prestop_is_left_alone() -> None:
    original = read_yaml(DATA / "app-own-prestop.pod.yaml")
    patched = read_yaml(DATA / "app-own-prestop.patched.yaml")
    assert (
        patched["spec"]["containers"][0]["lifecycle"]
        == (original["spec"]["containers"][0]["lifecycle"])
    )
    assert not [op for op in decide(original, InjectConfig()).patch if "lifecycle" in op["path"]]
    # Its own grace period (60 s) is longer than what the drain needs: kept.
    assert patched["spec"]["terminationGracePeriodSeconds"] == 60


def test_the_prestop_joins_a_lifecycle_without_one() -> None:
    patched = read_yaml(DATA / "app-poststart.patched.yaml")
    server, shipper = patched["spec"]["containers"]
    assert server["lifecycle"]["postStart"] == {"httpGet": {"path": "/warm", "port": 8000}}
    assert server["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert "lifecycle" not in shipper  # only the container serving the upstream port


def test_no_drain_delay_adds_no_lifecycle() -> None:
    patched = read_yaml(DATA / "no-drain-delay.patched.yaml")
    assert "lifecycle" not in sidecar_of(patched)
    assert "lifecycle" not in patched["spec"]["containers"][0]
    assert patched["spec"]["terminationGracePeriodSeconds"] == 30 + 5


def test_app_prestop_can_be_turned_off() -> None:
    config = InjectConfig(app_pre_stop=False)
    patched = apply(pod(), decide(pod(), config))
    assert "lifecycle" not in patched["spec"]["containers"][0]
    assert sidecar_of(patched)["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}


def test_only_containers_declaring_the_upstream_port_wait() -> None:
    p = pod(
        containers=[
            {"name": "a", "image": "a", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b", "ports": [{"containerPort": 81}]},
        ]
    )
    p["metadata"]["annotations"][UPSTREAM_PORT] = "81"
    patched = apply(p, decide(p, InjectConfig()))
    assert [c.get("lifecycle") for c in patched["spec"]["containers"]] == [
        None,
        {"preStop": {"sleep": {"seconds": 5}}},
    ]
    # A number no container declares, several containers: no way to tell the app.
    p["metadata"]["annotations"][UPSTREAM_PORT] = "8000"
    patched = apply(p, decide(p, InjectConfig()))
    assert all("lifecycle" not in c for c in patched["spec"]["containers"])


def test_the_grace_period_counts_the_delay_and_the_drain() -> None:
    for delay, drain, grace in ((5, 20, None), (10, 20, 35), (0, 40, 45), (30, 1, 36)):
        config = InjectConfig(drain_delay_seconds=delay, drain_seconds=drain)
        patched = apply(pod(), decide(pod(), config))
        assert patched["spec"].get("terminationGracePeriodSeconds") == grace, (delay, drain)


@pytest.mark.parametrize("case", sorted(set(CASES) - NOT_INJECTED))
def test_every_injected_pod_is_labelled(case: str) -> None:
    """The label the chart's NetworkPolicy and PodMonitor select injected pods by."""
    patched = read_yaml(DATA / f"{case}.patched.yaml")
    assert patched["metadata"]["labels"][INJECTED_LABEL] == "true"
    original = read_yaml(DATA / f"{case}.pod.yaml")
    for key, value in (original["metadata"].get("labels") or {}).items():
        assert patched["metadata"]["labels"][key] == value  # the pod's own labels kept


def test_a_pod_without_metadata_gets_label_and_status_in_one_object() -> None:
    p = pod()
    del p["metadata"]
    ops = decide(p, InjectConfig(inject_by_default=True)).patch
    [meta] = [op for op in ops if op["path"] == "/metadata"]
    assert meta["value"]["labels"] == {INJECTED_LABEL: "true"}
    assert set(meta["value"]["annotations"]) == {STATUS}


# --- what the sidecar reads from the pod's namespace --------------------------------------


def test_references_of_a_default_injection() -> None:
    decision = decide(pod(), InjectConfig())
    assert decision.references == (
        Reference("ConfigMap", "agent-warden-policy", ("policy.yaml",), ("policy",)),
        Reference("Secret", "agent-warden-admin-token", ("token",), ("admin token",)),
    )


def test_references_follow_the_annotation_and_the_env() -> None:
    config = parse_config(
        textwrap.dedent(
            """            adminTokenSecret: ""
            policyKey: rules.yaml
            env:
              - {name: AGENT_WARDEN_STORE, valueFrom: {secretKeyRef: {name: store, key: url}}}
              - {name: PASSWORD, valueFrom: {secretKeyRef: {name: store, key: password}}}
              - {name: OPTIONAL, valueFrom: {secretKeyRef: {name: x, key: y, optional: true}}}
              - {name: REGION, valueFrom: {configMapKeyRef: {name: site, key: region}}}
              - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
              - {name: PLAIN, value: "1"}
            """
        ),
        "c.yaml",
    )
    p = pod()
    p["metadata"]["annotations"]["agent-warden.dev/policy-configmap"] = "team-policy"
    assert decide(p, config).references == (
        Reference("ConfigMap", "team-policy", ("rules.yaml",), ("policy",)),
        Reference(
            "Secret",
            "store",
            ("url", "password"),
            ("env AGENT_WARDEN_STORE", "env PASSWORD"),
        ),
        Reference("ConfigMap", "site", ("region",), ("env REGION",)),
    )


def test_a_pod_left_alone_references_nothing() -> None:
    for case in sorted(NOT_INJECTED):
        original = read_yaml(DATA / f"{case}.pod.yaml")
        assert decide(original, config_for(case)).references == ()
