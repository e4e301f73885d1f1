"""The injection webhook as a process over real TLS: AdmissionReview v1 in and out.

A test CA and serving certificates are made with ``cryptography``; every client verifies
the server against that CA. Certificate rotation is seen through the served serial.

``missingObjects`` lookups go to tests/kube_api.py, a real HTTPS server on loopback that
answers the two Kubernetes API paths the webhook reads, as the API server does (a
kube-apiserver cannot run here).
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Proxy
from tests.kube_api import FakeKubeAPI
from tests.upstreams.serve import LOOPBACK, REPO_ROOT, free_port

DATA = REPO_ROOT / "tests" / "data" / "inject"
START_TIMEOUT = 15.0
RELOAD_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


# --- a test CA --------------------------------------------------------------------------


@dataclass
class CertAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    @classmethod
    def create(cls, directory: Path) -> CertAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent-warden test CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        path = directory / "ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def issue(self, cert_path: Path, key_path: Path) -> int:
        """A serving certificate for 127.0.0.1 and localhost, written atomically; its serial."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Key first, then certificate: the server reloads once both are in place.
        for path, data in (
            (key_path, key_pem),
            (cert_path, cert.public_bytes(serialization.Encoding.PEM)),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return serial

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.path))


# --- the webhook process ----------------------------------------------------------------


@dataclass
class Webhook:
    port: int
    process: Proxy  # the same process handling as the proxy's tests: stop(), log_lines()
    ca: CertAuthority
    cert: Path
    key: Path
    serials: list[int] = field(default_factory=list)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = "application/json",
        host: str = LOOPBACK,
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            host, self.port, context=self.ca.client_context(), timeout=10
        )
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        finally:
            conn.close()

    def review(self, obj: dict[str, Any], path: str = "/mutate", **request: Any) -> dict[str, Any]:
        status, answer = self.request(
            "POST", path, json.dumps(admission_review(obj, **request)).encode()
        )
        assert status == 200, answer
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["allowed"] is True
        return dict(answer["response"])

    def metrics(self) -> dict[str, float]:
        """``GET /metrics``: every sample line, ``name{labels}`` -> value."""
        conn = http.client.HTTPSConnection(
            LOOPBACK, self.port, context=self.ca.client_context(), timeout=10
        )
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        finally:
            conn.close()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def served_serial(self) -> int:
        context = self.ca.client_context()
        with (
            socket.create_connection((LOOPBACK, self.port), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname=LOOPBACK) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return self.process.stop(sig, STOP_TIMEOUT)

    def log_lines(self) -> list[dict[str, Any]]:
        return self.process.log_lines()


def admission_review(obj: Any, **request: Any) -> dict[str, Any]:
    fields = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "agents",
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        **request,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": fields}


WEBHOOK = [sys.executable, "-m", "proxy", "webhook"]


def flags(cert: Path, key: Path, *extra: str, listen: str | None = None) -> list[str]:
    listen = listen or f"{LOOPBACK}:{free_port()}"
    return ["--listen", listen, "--cert", str(cert), "--key", str(key), *extra]


def start_webhook(directory: Path, *extra: str) -> Webhook:
    ca = CertAuthority.create(directory)
    cert, key = directory / "tls.crt", directory / "tls.key"
    serial = ca.issue(cert, key)
    port = free_port()
    listen = f"{LOOPBACK}:{port}"
    stderr_path = directory / "webhook.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [*WEBHOOK, *flags(cert, key, "--cert-poll-interval", "200ms", *extra, listen=listen)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"https://{listen}"
    hook = Webhook(port, Proxy(url, url, proc, stderr_path), ca, cert, key, [serial])
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"webhook exited with {proc.returncode}:\n{stderr_path.read_text()}")
        try:
            if hook.request("GET", "/healthz", content_type=None)[0] == 200:
                return hook
        except OSError:
            time.sleep(0.05)
    hook.stop(signal.SIGKILL)
    pytest.fail(f"webhook not up within {START_TIMEOUT}s:\n{stderr_path.read_text()}")


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    hook = start_webhook(tmp_path_factory.mktemp("webhook"))
    yield hook
    hook.stop()


@pytest.fixture
def own_webhook(tmp_path: Path) -> Iterator[Webhook]:
    """A webhook of the test's own, for tests that rotate its certificate or stop it."""
    hook = start_webhook(tmp_path)
    yield hook
    hook.stop()


def golden_pod(case: str) -> dict[str, Any]:
    value = yaml.safe_load((DATA / f"{case}.pod.yaml").read_text())
    assert isinstance(value, dict)
    return value


# --- admission ----------------------------------------------------------------------------


def test_injects_a_pod(webhook: Webhook) -> None:
    pod = golden_pod("named-port")
    review = admission_review(pod)
    status, answer = webhook.request("POST", "/mutate", json.dumps(review).encode())
    assert status == 200
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert "warnings" not in response
    patch = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(pod, patch)
    kubernetes_validate.validate(patched, "1.30", strict=True)
    sidecar = patched["spec"]["initContainers"][0]
    assert sidecar["name"] == "agent-warden"
    assert sidecar["restartPolicy"] == "Always"
    assert {"name": "http", "containerPort": 15080, "protocol": "TCP"} in sidecar["ports"]
    assert_admin_token(patched, "agent-warden-admin-token", "token")
    # Fed back (a reinvocation), the patched pod gets no second sidecar.
    again = webhook.review(patched)
    assert "patch" not in again


def test_unannotated_pods_are_left_alone_by_default(webhook: Webhook) -> None:
    assert "patch" not in webhook.review(golden_pod("namespace-default"))


def test_config_file_inject_by_default(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((DATA / "namespace-default.config.yaml").read_text() + "tag: '9.9.9'\n")
    hook = start_webhook(tmp_path, "--config", str(config))
    try:
        pod = golden_pod("namespace-default")
        response = hook.review(pod)
        patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
        assert patched["spec"]["initContainers"][0]["image"] == "agent-warden:9.9.9"
        # Opted out: nothing to inject, so no patch fields at all.
        assert set(hook.review(golden_pod("opt-out"))) == {"uid", "allowed"}
    finally:
        assert hook.stop() == 0


def test_a_pod_that_cannot_be_injected_gets_a_warning(webhook: Webhook) -> None:
    response = webhook.review(golden_pod("host-network"))
    assert "patch" not in response
    assert any("hostNetwork" in w for w in response["warnings"])


def test_verified_by_name_too(webhook: Webhook) -> None:
    status, body = webhook.request("GET", "/readyz", content_type=None, host="localhost")
    assert (status, body) == (200, {"status": "ok"})


def envelope(**fields: Any) -> bytes:
    """An AdmissionReview envelope with ``fields`` replaced, as JSON."""
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", **fields}
    return json.dumps(review).encode()


@pytest.mark.parametrize(
    ("body", "content_type", "needle"),
    [
        (None, "application/json", "empty body"),
        (b"", "application/json", "empty body"),
        (b"{not json", "application/json", "not JSON"),
        (b"{}", "text/plain", "Content-Type"),
        (b"{}", None, "Content-Type"),
        (b"[1, 2]", "application/json", "AdmissionReview"),
        (envelope(), "application/json", "uid"),
        (envelope(request={"uid": 7}), "application/json", "uid"),
        (envelope(request={"uid": ""}), "application/json", "uid"),
        (
            envelope(apiVersion="admission.k8s.io/v1beta1", request={"uid": "u"}),
            "application/json",
            "admission.k8s.io/v1",
        ),
    ],
)
def test_bad_requests_get_400_with_a_json_error(
    webhook: Webhook, body: bytes | None, content_type: str | None, needle: str
) -> None:
    status, answer = webhook.request("POST", "/mutate", body, content_type)
    assert status == 400
    assert needle in answer["error"]


def test_not_a_pod_is_allowed_with_a_message(webhook: Webhook) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}}
    response = webhook.review(service, kind={"group": "", "version": "v1", "kind": "Service"})
    assert "patch" not in response
    assert "pods only" in response["status"]["message"]


@pytest.mark.parametrize(
    "obj",
    [None, "a string", {"spec": {"containers": "nope"}}, {"metadata": {"annotations": ["x"]}}],
)
def test_a_malformed_pod_is_allowed_with_a_message(webhook: Webhook, obj: Any) -> None:
    response = webhook.review(obj)
    assert "patch" not in response
    assert "malformed pod" in response["status"]["message"]
    assert webhook.process.proc.poll() is None


def test_only_create_is_injected(webhook: Webhook) -> None:
    response = webhook.review(golden_pod("plain"), operation="UPDATE")
    assert "patch" not in response
    assert "CREATE" in response["status"]["message"]


def test_every_review_is_logged_as_json(webhook: Webhook) -> None:
    review = admission_review(golden_pod("plain"))
    uid = review["request"]["uid"]
    assert webhook.request("POST", "/mutate", json.dumps(review).encode())[0] == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in webhook.log_lines() if line.get("uid") == uid]
        if lines:
            assert lines[0]["decision"] == "injected"
            assert lines[0]["injected"] is True
            return
        time.sleep(0.05)
    pytest.fail("no log line for the review")


# --- certificates and lifecycle -------------------------------------------------------------


def test_certificate_rotation_is_served_without_restart(own_webhook: Webhook) -> None:
    assert own_webhook.served_serial() == own_webhook.serials[0]
    new = own_webhook.ca.issue(own_webhook.cert, own_webhook.key)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while own_webhook.served_serial() != new:
        if time.monotonic() > deadline:
            pytest.fail(f"still serving the old certificate after {RELOAD_TIMEOUT}s")
        time.sleep(0.1)
    assert own_webhook.review(golden_pod("plain"))["patchType"] == "JSONPatch"
    assert any(line["msg"] == "certificate reloaded" for line in own_webhook.log_lines())


def test_a_broken_certificate_keeps_the_old_one(own_webhook: Webhook) -> None:
    own_webhook.cert.write_text("not a certificate\n")
    time.sleep(1.0)  # several polls
    assert own_webhook.served_serial() == own_webhook.serials[0]
    assert any("reload failed" in line["msg"] for line in own_webhook.log_lines())


def test_sigterm_stops_with_exit_0(own_webhook: Webhook) -> None:
    assert own_webhook.stop(signal.SIGTERM) == 0
    assert own_webhook.log_lines()[-1]["msg"] == "stopped"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # Outside a pod, whatever the machine running the tests is.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    return subprocess.run(
        [*WEBHOOK, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_bad_start_up_is_one_line_and_non_zero(tmp_path: Path) -> None:
    ca = CertAuthority.create(tmp_path)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    ca.issue(cert, key)
    config = tmp_path / "config.yaml"
    config.write_text("image: x\nlistenPrt: 8080\n")
    lookups = tmp_path / "lookups.yaml"
    lookups.write_text("missingObjects: skip\n")
    cases = [
        (flags(tmp_path / "none.crt", key), "--cert"),
        (flags(key, cert), "--cert"),
        (flags(cert, key, "--config", str(config)), f"{config}:2: listenPrt"),
        (flags(cert, key, "--config", str(lookups)), "give --kube-api"),
        (
            flags(
                cert,
                key,
                "--config",
                str(lookups),
                "--kube-api",
                "https://127.0.0.1:1",
                "--kube-token-file",
                str(tmp_path / "none"),
            ),
            "--kube-token-file",
        ),
        (flags(cert, key, "--config", str(lookups), "--kube-api", "nowhere"), "--kube-api"),
        (flags(cert, key, listen="nowhere"), "--listen"),
        (["--cert", str(cert)], "--key"),
        (flags(cert, key, "--cert-poll-interval", "soon"), "--cert-poll-interval"),
    ]
    for args, needle in cases:
        result = run_cli(*args)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert needle in lines[0]
        assert "Traceback" not in result.stderr


# --- the admin API token ---------------------------------------------------------------------

TOKEN_DIR = "/var/run/agent-warden/admin-token"


def assert_admin_token(patched: dict[str, Any], secret: str | None, key: str | None) -> None:
    """The sidecar reads its token from ``secret``'s ``key`` (None: no token at all)."""
    [sidecar] = [
        c
        for c in patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
        if c["name"] == "agent-warden"
    ]
    env = {e["name"]: e for e in sidecar["env"]}
    volumes = [v for v in patched["spec"]["volumes"] if "secret" in v]
    status = json.loads(patched["metadata"]["annotations"]["agent-warden.dev/status"])
    if secret is None:
        assert not volumes
        assert "AGENT_WARDEN_ADMIN_TOKEN_FILE" not in env
        assert TOKEN_DIR not in {m["mountPath"] for m in sidecar["volumeMounts"]}
        assert "adminTokenSecret" not in status
        return
    [volume] = volumes
    assert volume["secret"] == {
        "secretName": secret,
        "items": [{"key": key, "path": "token"}],
        "optional": False,
    }
    [mount] = [m for m in sidecar["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": TOKEN_DIR, "readOnly": True}
    assert env["AGENT_WARDEN_ADMIN_TOKEN_FILE"] == {
        "name": "AGENT_WARDEN_ADMIN_TOKEN_FILE",
        "value": f"{TOKEN_DIR}/token",
    }
    assert status["adminTokenSecret"] == secret
    assert volume["name"] in status["volumes"]
    # The kubelet's probes stay tokenless: plain httpGet on the admin port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(sidecar[probe]["httpGet"]) == {"path", "port"}


CHART_VALUES: dict[str, tuple[dict[str, Any], str | None, str | None]] = {
    "enabled": ({}, "agent-warden-admin-token", "token"),
    "existing-secret": (
        {"admin": {"tokenSecret": {"existing": "team-admin", "key": "bearer"}}},
        "team-admin",
        "bearer",
    ),
    "disabled": ({"admin": {"token": {"enabled": False}}}, None, None),
}


def chart_injector_config(values: dict[str, Any]) -> str:
    """The injector config file the Helm chart renders for ``values``."""
    helm_python = pytest.importorskip("helm_python")
    with helm_python.Chart.load(REPO_ROOT / "helm" / "agent-warden") as chart:
        manifests = chart.render(values, name="warden", namespace="agent-warden-system")
    configmap = yaml.safe_load(manifests["agent-warden/templates/injector-configmap.yaml"])
    text: str = configmap["data"]["config.yaml"]
    return text


@pytest.mark.parametrize("case", sorted(CHART_VALUES))
def test_the_chart_configured_webhook_injects_the_admin_token(tmp_path: Path, case: str) -> None:
    """Chart values -> injector config -> the webhook over TLS -> the pod's volume and env."""
    values, secret, key = CHART_VALUES[case]
    config = tmp_path / "config.yaml"
    text = chart_injector_config(values)
    assert yaml.safe_load(text)["missingObjects"] == "skip"  # the chart's default
    config.write_text(text)
    # The namespace holds what the chart creates in it (and the operator's Secret).
    api, kube_flags = start_kube_api(tmp_path)
    api.put("ConfigMap", "agents", "agent-warden-policy", {"policy.yaml": "version: 1\n"})
    if secret is not None and key is not None:
        api.put("Secret", "agents", secret, {key: "x" * 48})
    hook = start_webhook(tmp_path, "--config", str(config), *kube_flags)
    try:
        pod = golden_pod("operator-admin-token")  # has volumes: ours are appended
        response = hook.review(pod)
        assert response["patchType"] == "JSONPatch"
        patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
        kubernetes_validate.validate(patched, "1.30", strict=True)
        assert_admin_token(patched, secret, key)
        assert patched["spec"]["volumes"][0]["name"] == "scratch"
        # Injection stays idempotent: the patched pod, reviewed again, gets no patch.
        assert "patch" not in hook.review(patched)
        looked_up = {
            path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] for path in api.paths()
        }
        expected = {"configmaps/agent-warden-policy"} | ({f"secrets/{secret}"} if secret else set())
        assert looked_up == expected
    finally:
        assert hook.stop() == 0
        api.stop()


# --- missingObjects: what the sidecar needs, looked up in the pod's namespace ------------------

POLICY_PATH = "/api/v1/namespaces/agents/configmaps/agent-warden-policy"


def start_kube_api(directory: Path) -> tuple[FakeKubeAPI, list[str]]:
    """A stand-in API server over TLS (its own CA) and the webhook flags that reach it."""
    home = directory / "kube"
    home.mkdir(exist_ok=True)
    ca = CertAuthority.create(home)
    cert, key = home / "apiserver.crt", home / "apiserver.key"
    ca.issue(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    token = home / "token"
    token.write_text("webhook-sa-token\n")
    api = FakeKubeAPI(token="webhook-sa-token", tls=context).start()
    flags = [
        "--kube-api",
        api.url,
        "--kube-ca-file",
        str(ca.path),
        "--kube-token-file",
        str(token),
        "--kube-timeout",
        "1s",
    ]
    return api, flags


@dataclass
class CheckingWebhook:
    hook: Webhook
    api: FakeKubeAPI

    def put_everything(self, namespace: str = "agents") -> None:
        """What the chart creates in a namespace of policy.namespaces."""
        self.api.put("ConfigMap", namespace, "agent-warden-policy", {"policy.yaml": "version: 1"})
        self.api.put("Secret", namespace, "agent-warden-admin-token", {"token": "t" * 48})


def start_checking_webhook(directory: Path, mode: str) -> CheckingWebhook:
    config = directory / "config.yaml"
    config.write_text(f"injectByDefault: true\nmissingObjects: {mode}\n")
    api, kube_flags = start_kube_api(directory)
    return CheckingWebhook(start_webhook(directory, "--config", str(config), *kube_flags), api)


@pytest.fixture
def skipping(tmp_path: Path) -> Iterator[CheckingWebhook]:
    checking = start_checking_webhook(tmp_path, "skip")
    yield checking
    checking.hook.stop()
    checking.api.stop()


def wait_for_log(hook: Webhook, msg: str, uid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in hook.log_lines():
            if line.get("msg") == msg and line.get("uid") == uid:
                return line
        time.sleep(0.05)
    pytest.fail(f"no log line {msg!r} for {uid}")


def test_a_namespace_without_the_policy_gets_pods_without_the_sidecar(
    skipping: CheckingWebhook,
) -> None:
    """Never stuck in ContainerCreating: no sidecar, a warning, a log line, a metric."""
    review = admission_review(golden_pod("plain"))
    status, answer = skipping.hook.request("POST", "/mutate", json.dumps(review).encode())
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert response["warnings"] == [
        "agent-warden sidecar not injected: ConfigMap 'agent-warden-policy' (policy) not found "
        "in namespace 'agents'",
        "agent-warden sidecar not injected: Secret 'agent-warden-admin-token' (admin token) not "
        "found in namespace 'agents'",
    ]
    assert "policy.namespaces" in response["status"]["message"]
    line = wait_for_log(
        skipping.hook,
        "sidecar not injected: objects it needs are missing",
        review["request"]["uid"],
    )
    assert line["level"] == "warning"
    assert line["namespace"] == "agents"
    assert len(line["missing"]) == 2
    metrics = skipping.hook.metrics()
    assert metrics['agent_warden_webhook_reviews_total{outcome="missing"}'] == 1
    for kind, name in (
        ("ConfigMap", "agent-warden-policy"),
        ("Secret", "agent-warden-admin-token"),
    ):
        series = f'{{namespace="agents",kind="{kind}",name="{name}"}}'
        assert metrics[f"agent_warden_webhook_missing_objects_total{series}"] == 1
    # The lookups carried the service account's token, over TLS to the API server.
    assert {auth for _, auth in skipping.api.requests} == {"Bearer webhook-sa-token"}

    # Once the objects exist, the next pod is injected (a missing object is never cached).
    skipping.put_everything()
    injected = skipping.hook.review(golden_pod("plain"))
    assert injected["patchType"] == "JSONPatch"
    assert "warnings" not in injected
    metrics = skipping.hook.metrics()
    assert metrics['agent_warden_webhook_reviews_total{outcome="injected"}'] == 1


def test_a_missing_key_is_missing_too(skipping: CheckingWebhook) -> None:
    skipping.put_everything()
    skipping.api.put("Secret", "agents", "agent-warden-admin-token", {"bearer": "x"})
    response = skipping.hook.review(golden_pod("plain"))
    assert "patch" not in response
    assert response["warnings"] == [
        "agent-warden sidecar not injected: Secret 'agent-warden-admin-token' (admin token) in "
        "namespace 'agents' has no key 'token'"
    ]


def test_only_the_pods_namespace_counts(skipping: CheckingWebhook) -> None:
    skipping.put_everything("billing")
    assert "patch" not in skipping.hook.review(golden_pod("plain"), namespace="agents")
    assert (
        skipping.hook.review(golden_pod("plain"), namespace="billing")["patchType"] == "JSONPatch"
    )


def test_pods_left_alone_cost_no_lookup(skipping: CheckingWebhook) -> None:
    for case in ("opt-out", "already-injected", "host-network"):
        skipping.hook.review(golden_pod(case))
    assert skipping.api.requests == []


def test_an_api_server_in_trouble_leaves_injection_as_it_was(skipping: CheckingWebhook) -> None:
    """No answer is no reason to withhold the sidecar: injected, logged, counted."""
    skipping.api.fail = 503
    review = admission_review(golden_pod("plain"))
    status, answer = skipping.hook.request("POST", "/mutate", json.dumps(review).encode())
    assert status == 200
    assert answer["response"]["patchType"] == "JSONPatch"
    line = wait_for_log(
        skipping.hook,
        "cannot verify an object the sidecar needs; injecting",
        review["request"]["uid"],
    )
    assert (line["level"], line["reason"]) == ("warning", "status")
    metrics = skipping.hook.metrics()
    assert (
        metrics['agent_warden_webhook_lookup_errors_total{kind="ConfigMap",reason="status"}'] == 1
    )
    assert metrics['agent_warden_webhook_lookup_errors_total{kind="Secret",reason="status"}'] == 1


def test_a_slow_api_server_cannot_hold_the_review(skipping: CheckingWebhook) -> None:
    skipping.api.delay = 3.0  # longer than --kube-timeout 1s
    started = time.monotonic()
    response = skipping.hook.review(golden_pod("plain"))
    assert time.monotonic() - started < 2.5
    assert response["patchType"] == "JSONPatch"
    assert (
        skipping.hook.metrics()[
            'agent_warden_webhook_lookup_errors_total{kind="ConfigMap",reason="timeout"}'
        ]
        == 1
    )


def test_a_configmap_outside_the_webhooks_role_is_injected_unverified(
    skipping: CheckingWebhook,
) -> None:
    """A pod may name its own policy ConfigMap; the chart's role cannot know that name."""
    skipping.put_everything()
    skipping.api.allowed_names = {
        "configmaps": {"agent-warden-policy"},
        "secrets": {"agent-warden-admin-token"},
    }
    pod = golden_pod("plain")
    pod["metadata"]["annotations"]["agent-warden.dev/policy-configmap"] = "team-policy"
    review = admission_review(pod)
    status, answer = skipping.hook.request("POST", "/mutate", json.dumps(review).encode())
    assert status == 200
    assert answer["response"]["patchType"] == "JSONPatch"
    line = wait_for_log(
        skipping.hook,
        "cannot verify an object the sidecar needs; injecting",
        review["request"]["uid"],
    )
    assert (line["level"], line["reason"], line["object"]) == ("info", "forbidden", "team-policy")


def test_deny_refuses_the_pod_with_the_reason(tmp_path: Path) -> None:
    """missingObjects deny: for clusters where no agent may run without its proxy."""
    checking = start_checking_webhook(tmp_path, "deny")
    try:
        review = admission_review(golden_pod("plain"))
        status, answer = checking.hook.request("POST", "/mutate", json.dumps(review).encode())
        assert status == 200
        response = answer["response"]
        assert response["uid"] == review["request"]["uid"]
        assert response["allowed"] is False
        assert "patch" not in response
        assert response["status"]["code"] == 403
        assert response["status"]["message"].startswith(
            "agent-warden: pod refused: ConfigMap 'agent-warden-policy' (policy) not found"
        )
        metrics = checking.hook.metrics()
        assert metrics['agent_warden_webhook_reviews_total{outcome="denied"}'] == 1
        # Pods the injector leaves alone are never refused.
        assert checking.hook.review(golden_pod("opt-out"))["allowed"] is True
        checking.put_everything()
        assert checking.hook.review(golden_pod("plain"))["patchType"] == "JSONPatch"
    finally:
        assert checking.hook.stop() == 0
        checking.api.stop()


def test_inject_mode_never_asks(tmp_path: Path) -> None:
    """missingObjects inject (the injector's own default): no API server needed at all."""
    api, kube_flags = start_kube_api(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("missingObjects: inject\n")
    hook = start_webhook(tmp_path, "--config", str(config), *kube_flags)
    try:
        assert hook.review(golden_pod("plain"))["patchType"] == "JSONPatch"
        assert api.requests == []
    finally:
        assert hook.stop() == 0
        api.stop()


def test_metrics_count_every_outcome(webhook: Webhook) -> None:
    before = webhook.metrics()
    for outcome in ("injected", "skipped", "warned", "missing", "denied", "invalid", "error"):
        assert f'agent_warden_webhook_reviews_total{{outcome="{outcome}"}}' in before
    webhook.review(golden_pod("plain"))
    webhook.review(golden_pod("opt-out"))
    webhook.review(golden_pod("host-network"))
    webhook.request("POST", "/mutate", b"{}")
    after = webhook.metrics()

    def grew(outcome: str) -> float:
        key = f'agent_warden_webhook_reviews_total{{outcome="{outcome}"}}'
        return after[key] - before[key]

    assert (grew("injected"), grew("skipped"), grew("warned"), grew("invalid")) == (1, 1, 1, 1)


# --- `helm test`'s request through an injected sidecar, without a cluster ----------------------


def rendered_chart(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The chart's objects by kind, rendered by the real Helm engine."""
    helm_python = pytest.importorskip("helm_python")
    with helm_python.Chart.load(REPO_ROOT / "helm" / "agent-warden") as chart:
        manifests = chart.render(values, name="warden", namespace="agent-warden-system")
    objects: dict[str, list[dict[str, Any]]] = {}
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    objects.setdefault(doc["kind"], []).append(doc)
    return objects


def _moved(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def test_the_helm_test_pods_request_crosses_a_real_sidecar(tmp_path: Path) -> None:
    """In a cluster `helm test` runs this pod; here its parts run on loopback: the chart's
    test pod as the chart-configured injector patches it, its upstream script, the proxy
    started with the injected sidecar's own arguments (this machine's ports and files),
    and its curl arguments."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    from proxy.inject.config import parse_config
    from proxy.inject.patch import decide

    objects = rendered_chart({"policy": {"namespaces": ["agents"]}})
    [test_pod] = [p for p in objects["Pod"] if p["metadata"]["name"].endswith("test-injection")]
    [injector] = [c for c in objects["ConfigMap"] if c["metadata"]["name"].endswith("-injector")]
    [policy] = [
        c
        for c in objects["ConfigMap"]
        if c["metadata"]["name"] == "agent-warden-policy"
        and c["metadata"]["namespace"] == test_pod["metadata"]["namespace"]
    ]
    config = parse_config(injector["data"]["config.yaml"], "config.yaml")
    decision = decide(test_pod, config)
    assert decision.injected, decision.reason
    patched = jsonpatch.apply_patch(test_pod, json.loads(decision.patch_json()))
    [sidecar] = patched["spec"]["initContainers"]
    upstream, client = patched["spec"]["containers"]

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy["data"]["policy.yaml"])
    token_file = tmp_path / "token"
    token_file.write_text("t" * 48 + "\n")
    upstream_port, listen_port, admin_port = free_port(), free_port(), free_port()
    script = upstream["args"][0]
    upstream_env = {e["name"]: e["value"] for e in upstream["env"]}
    assert upstream_env["PORT"] == "8080"
    sidecar_env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    sidecar_env["AGENT_WARDEN_ADMIN_TOKEN_FILE"] = str(token_file)
    args = _moved(sidecar["args"], "--upstream", f"http://127.0.0.1:{upstream_port}")
    args = _moved(args, "--listen", f"127.0.0.1:{listen_port}")
    args = _moved(args, "--admin", f"127.0.0.1:{admin_port}")
    args = _moved(args, "--policy", str(policy_file))
    url = client["args"][-1]
    assert url == "http://127.0.0.1:15080/agent-warden-helm-test"  # the sidecar's listenPort
    client_args = [*client["args"][:-1], url.replace(":15080/", f":{listen_port}/")]

    def start_upstream() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", script],
            env={**os.environ, **upstream_env, "PORT": str(upstream_port)},
            stdout=subprocess.PIPE,
            text=True,
        )

    server = start_upstream()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **sidecar_env},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "sidecar.stderr").open("wb"),
    )
    try:
        result = subprocess.run([curl, *client_args], capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr + (tmp_path / "sidecar.stderr").read_text()
        assert result.stdout == "through agent-warden, as anonymous\n"
        assert server.wait(10) == 0  # the upstream container succeeds: the pod passes

        # A request around the proxy (no identity header) fails the upstream, and the pod.
        server = start_upstream()
        direct = f"http://127.0.0.1:{upstream_port}/agent-warden-helm-test"
        for _ in range(50):
            bypass = subprocess.run(
                [curl, "--fail", "--silent", "--show-error", direct],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if bypass.returncode != 7:  # 7: could not connect, not listening yet
                break
            time.sleep(0.1)
        assert bypass.returncode != 0
        assert "421" in bypass.stderr
        assert server.wait(10) == 1
    finally:
        for process in (server, proxy):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
