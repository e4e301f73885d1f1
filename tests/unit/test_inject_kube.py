"""The webhook's lookup of the sidecar's objects, against a real HTTP(S) server on loopback.

A kube-apiserver cannot run here: tests/kube_api.py answers the two GET paths the lookup
uses as the API server does (objects, 404/401/403 Status bodies). Everything else (the
client, TLS, bearer tokens, timeouts, the cache) is the real thing.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.config import ConfigError
from proxy.inject.kube import Checked, KubeAPI, LookupFailed, Missing, ObjectCheck, Unverified
from proxy.inject.patch import Reference
from tests.kube_api import FakeKubeAPI

POLICY = Reference("ConfigMap", "agent-warden-policy", ("policy.yaml",), ("policy",))
TOKEN = Reference("Secret", "agent-warden-admin-token", ("token",), ("admin token",))
STORE = Reference("Secret", "agent-warden-store", ("url",), ("env AGENT_WARDEN_STORE",))


@pytest.fixture
def api_server() -> Iterator[FakeKubeAPI]:
    server = FakeKubeAPI().start()
    yield server
    server.stop()


def token_file(tmp_path: Path, token: str = "test-token") -> str:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    return str(path)


async def test_present_objects_and_keys(api_server: FakeKubeAPI, tmp_path: Path) -> None:
    api_server.put("ConfigMap", "agents", "agent-warden-policy", {"policy.yaml": "version: 1"})
    api_server.put("Secret", "agents", "agent-warden-admin-token", {"token": "x" * 48})
    api = KubeAPI(api_server.url, token_file=token_file(tmp_path))
    try:
        assert await ObjectCheck(api).check("agents", [POLICY, TOKEN]) == Checked()
    finally:
        await api.close()
    # The bearer token was sent with every lookup.
    assert {auth for _, auth in api_server.requests} == {"Bearer test-token"}
    assert sorted(api_server.paths()) == [
        "/api/v1/namespaces/agents/configmaps/agent-warden-policy",
        "/api/v1/namespaces/agents/secrets/agent-warden-admin-token",
    ]


async def test_a_missing_object_and_a_missing_key(api_server: FakeKubeAPI, tmp_path: Path) -> None:
    api_server.put("Secret", "agents", "agent-warden-admin-token", {"bearer": "x"})
    api = KubeAPI(api_server.url, token_file=token_file(tmp_path))
    try:
        checked = await ObjectCheck(api).check("agents", [POLICY, TOKEN])
    finally:
        await api.close()
    assert checked.missing == (Missing(POLICY), Missing(TOKEN, "token"))
    assert not checked.unverified
    assert checked.missing[0].describe("agents") == (
        "ConfigMap 'agent-warden-policy' (policy) not found in namespace 'agents'"
    )
    assert checked.missing[1].describe("agents") == (
        "Secret 'agent-warden-admin-token' (admin token) in namespace 'agents' has no key 'token'"
    )


async def test_binary_data_keys_count(api_server: FakeKubeAPI) -> None:
    api_server.token = None
    api_server.put("ConfigMap", "agents", "agent-warden-policy", {})
    obj = api_server.objects[("configmaps", "agents", "agent-warden-policy")]
    obj["binaryData"] = {"policy.yaml": "dmVyc2lvbjogMQ=="}
    api = KubeAPI(api_server.url)
    try:
        assert await ObjectCheck(api).check("agents", [POLICY]) == Checked()
    finally:
        await api.close()


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"fail": 500}, "status"),
        ({"fail": 503}, "status"),
        ({"token": "another-token"}, "unauthorized"),
        ({"allowed_names": {"secrets": {"agent-warden-admin-token"}}}, "forbidden"),
    ],
)
async def test_no_answer_is_unverified_never_missing(
    api_server: FakeKubeAPI, tmp_path: Path, setup: dict[str, object], reason: str
) -> None:
    for name, value in setup.items():
        setattr(api_server, name, value)
    api = KubeAPI(api_server.url, token_file=token_file(tmp_path))
    try:
        checked = await ObjectCheck(api).check("agents", [POLICY])
    finally:
        await api.close()
    assert checked.missing == ()
    [unverified] = checked.unverified
    assert unverified.reference == POLICY
    assert unverified.reason == reason


async def test_a_slow_api_server_is_a_timeout(api_server: FakeKubeAPI, tmp_path: Path) -> None:
    api_server.delay = 1.0
    api = KubeAPI(api_server.url, token_file=token_file(tmp_path), timeout=0.2)
    try:
        started = asyncio.get_running_loop().time()
        checked = await ObjectCheck(api).check("agents", [POLICY, TOKEN])
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await api.close()
    assert [u.reason for u in checked.unverified] == ["timeout", "timeout"]
    assert elapsed < 0.9  # the lookups run side by side, each within its timeout


async def test_an_unreachable_api_server(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nobody listens
    api = KubeAPI(f"http://127.0.0.1:{port}", token_file=token_file(tmp_path))
    try:
        with pytest.raises(LookupFailed) as info:
            await api.get("ConfigMap", "agents", "agent-warden-policy")
    finally:
        await api.close()
    assert info.value.reason == "unreachable"


async def test_names_are_checked_before_any_request(api_server: FakeKubeAPI) -> None:
    api = KubeAPI(api_server.url)
    try:
        for namespace, name in (("Agents", "x"), ("agents", "../secrets/x"), ("", "x")):
            with pytest.raises(LookupFailed) as info:
                await api.get("ConfigMap", namespace, name)
            assert info.value.reason == "invalid"
    finally:
        await api.close()
    assert api_server.requests == []


async def test_found_objects_are_cached_missing_ones_never(
    api_server: FakeKubeAPI, tmp_path: Path
) -> None:
    api = KubeAPI(api_server.url, token_file=token_file(tmp_path))
    check = ObjectCheck(api, cache_seconds=60)
    try:
        assert (await check.check("agents", [POLICY])).missing == (Missing(POLICY),)
        api_server.put("ConfigMap", "agents", "agent-warden-policy", {"policy.yaml": "v"})
        # Created: seen at once, since a missing object is not cached.
        assert await check.check("agents", [POLICY]) == Checked()
        assert len(api_server.requests) == 2
        for _ in range(5):  # a ReplicaSet's burst: no more requests
            assert await check.check("agents", [POLICY]) == Checked()
        assert len(api_server.requests) == 2
        # Another namespace is another object.
        assert (await check.check("billing", [POLICY])).missing == (Missing(POLICY),)
    finally:
        await api.close()


async def test_the_cache_expires(api_server: FakeKubeAPI, tmp_path: Path) -> None:
    api_server.put("ConfigMap", "agents", "agent-warden-policy", {"policy.yaml": "v"})
    api = KubeAPI(api_server.url, token_file=token_file(tmp_path))
    check = ObjectCheck(api, cache_seconds=0.05)
    try:
        await check.check("agents", [POLICY])
        api_server.delete("ConfigMap", "agents", "agent-warden-policy")
        await asyncio.sleep(0.1)
        assert (await check.check("agents", [POLICY])).missing == (Missing(POLICY),)
    finally:
        await api.close()


async def test_the_cache_is_bounded(api_server: FakeKubeAPI) -> None:
    api_server.token = None
    api = KubeAPI(api_server.url)
    check = ObjectCheck(api, max_cached=3)
    try:
        for n in range(10):
            api_server.put("ConfigMap", f"ns{n}", "agent-warden-policy", {"policy.yaml": "v"})
            await check.check(f"ns{n}", [POLICY])
    finally:
        await api.close()
    assert len(check._cache) <= 3


async def test_a_rotated_token_is_read_again(api_server: FakeKubeAPI, tmp_path: Path) -> None:
    """The kubelet rewrites projected service-account tokens; the next lookup sends the new one."""
    api_server.put("ConfigMap", "agents", "agent-warden-policy", {"policy.yaml": "v"})
    path = token_file(tmp_path, "first")
    api_server.token = "first"
    api = KubeAPI(api_server.url, token_file=path)
    try:
        assert await api.get("ConfigMap", "agents", "agent-warden-policy") is not None
        new = tmp_path / "token.new"
        new.write_text("second\n")
        os.replace(new, path)  # as the kubelet's atomic writer swaps it
        api_server.token = "second"
        assert await api.get("ConfigMap", "agents", "agent-warden-policy") is not None
    finally:
        await api.close()
    assert [auth for _, auth in api_server.requests] == ["Bearer first", "Bearer second"]


# --- TLS, as in a cluster ---------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA file and a server context for 127.0.0.1 it signed."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return ca_path, context


async def test_over_tls_trusting_only_the_clusters_ca(tmp_path: Path) -> None:
    ca_path, context = _certificates(tmp_path)
    server = FakeKubeAPI(tls=context).start()
    try:
        server.put("ConfigMap", "agents", "agent-warden-policy", {"policy.yaml": "v"})
        api = KubeAPI(server.url, token_file=token_file(tmp_path), ca_file=str(ca_path))
        try:
            assert await ObjectCheck(api).check("agents", [POLICY]) == Checked()
        finally:
            await api.close()
        # Without that CA the server is not trusted: no answer, never "missing".
        untrusting = KubeAPI(server.url, token_file=token_file(tmp_path))
        try:
            checked = await ObjectCheck(untrusting).check("agents", [POLICY])
        finally:
            await untrusting.close()
        assert [u.reason for u in checked.unverified] == ["unreachable"]
    finally:
        server.stop()


# --- configuration ------------------------------------------------------------------------


def test_in_cluster_reads_the_service_environment(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    api = KubeAPI.in_cluster(env, token_file=path, ca_file="")
    assert api is not None
    assert api.url == "https://10.96.0.1:443"
    v6 = KubeAPI.in_cluster(
        {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"},
        token_file=path,
        ca_file="",
    )
    assert v6 is not None
    assert v6.url == "https://[fd00::1]:443"
    assert KubeAPI.in_cluster({}, token_file=path) is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"url": "ftp://x"}, "--kube-api"),
        ({"url": "https://x", "token_file": "/nonexistent/token"}, "--kube-token-file"),
        ({"url": "https://x", "ca_file": "/nonexistent/ca.crt"}, "--kube-ca-file"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, str], needle: str) -> None:
    url = kwargs.pop("url")
    with pytest.raises(ConfigError, match=needle):
        KubeAPI(url, **kwargs)  # type: ignore[arg-type]


def test_an_empty_token_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(ConfigError, match="holds no token"):
        KubeAPI("https://x", token_file=str(path))


def test_unverified_and_missing_are_plain_values() -> None:
    assert Unverified(POLICY, "timeout", "d") == Unverified(POLICY, "timeout", "d")
    assert Missing(STORE, "url").describe("ns") == (
        "Secret 'agent-warden-store' (env AGENT_WARDEN_STORE) in namespace 'ns' has no key 'url'"
    )
