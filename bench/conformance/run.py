"""The official MCP conformance suite against an upstream, directly and through agent-warden.

    .venv/bin/python bench/conformance/run.py                 # whole suite, both paths
    .venv/bin/python bench/conformance/run.py --scenario ping --scenario tools-list
    .venv/bin/python bench/conformance/run.py --proxy-arg=--policy --proxy-arg=policies/x.yaml

A report tool: it exits 0 whatever the suite finds, and non-zero only when it cannot set
itself up (npm or node missing, the install fails, the upstream does not start). Every
process listens on 127.0.0.1 only. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SUITE_PKG = "@modelcontextprotocol/conformance"
SUITE_VERSION = "0.1.16"  # the suite's dist needs node >= 22 (fs.globSync)
NODE_VERSION = "22.23.5"  # npm's node-linux-<arch> package, used when the system node is older
NODE_MIN_MAJOR = 22
DEFAULT_CACHE = Path(os.environ.get("AW_CONFORMANCE_CACHE", "/tmp/agent-warden-conformance"))


class SetupError(Exception):
    pass


# --- installing -----------------------------------------------------------------


def _npm_install(prefix: Path, spec: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SetupError("npm not found on PATH (Debian: apt-get install npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    print(f"installing {spec} into {prefix} ...", flush=True)
    cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error"]
    proc = subprocess.run([*cmd, spec], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SetupError(f"npm install {spec} failed:\n{proc.stdout}{proc.stderr}")


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return 0
    match = re.match(r"v(\d+)", out.stdout.strip())
    return int(match.group(1)) if match else 0


def ensure_node(cache: Path) -> str:
    system = shutil.which("node")
    if system and _node_major(system) >= NODE_MIN_MAJOR:
        return system
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if sys.platform != "linux" or arch is None:
        raise SetupError(f"node >= {NODE_MIN_MAJOR} needed; install it (found {system})")
    pkg = f"node-linux-{arch}"
    prefix = cache / f"node-{NODE_VERSION}"
    node = prefix / "node_modules" / pkg / "bin" / "node"
    if not node.exists():
        _npm_install(prefix, f"{pkg}@{NODE_VERSION}")
    if _node_major(str(node)) < NODE_MIN_MAJOR:
        raise SetupError(f"{node} does not run")
    return str(node)


def ensure_suite(cache: Path) -> Path:
    prefix = cache / f"suite-{SUITE_VERSION}"
    entry = prefix / "node_modules" / SUITE_PKG / "dist" / "index.js"
    if not entry.exists():
        _npm_install(prefix, f"{SUITE_PKG}@{SUITE_VERSION}")
    if not entry.exists():
        raise SetupError(f"{entry} missing after npm install")
    return entry


# --- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(name: str, cmd: list[str], log: Path, cwd: Path = ROOT) -> Proc:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(name, popen, log)


def wait_tcp(proc: Proc, port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    return False


def wait_http_ok(proc: Proc, url: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.alive():
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return True
        time.sleep(0.1)
    return False


def start_upstream(tmp: Path, label: str) -> tuple[Proc, str]:
    port = free_port()
    cmd = [sys.executable, str(HERE / "upstream.py"), "--port", str(port)]
    proc = start("upstream", cmd, tmp / f"upstream-{label}.log")
    if not wait_tcp(proc, port):
        proc.stop()
        raise SetupError(f"upstream did not start:\n{proc.tail()}")
    return proc, f"http://127.0.0.1:{port}"


def export_proxy(ref: str, dest: Path) -> Path:
    """`git archive REF proxy` into dest; `python -m proxy` run there imports that copy."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "proxy"],
        capture_output=True,
        timeout=60,
    )
    if archive.returncode != 0:
        raise SetupError(f"git archive {ref} failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


# --- the suite ------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    passed: int = 0
    failed: int = 0
    warnings: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)

    def cell(self) -> str:
        total = self.passed + self.failed
        text = f"{'FAIL' if self.failed else 'ok'} {self.passed}/{total}"
        return text + (f" +{self.warnings}w" if self.warnings else "")

    def signature(self) -> tuple[int, int, int]:
        return (self.passed, self.failed, self.warnings)


@dataclass
class Run:
    label: str
    seconds: float = 0.0
    exit_code: int | None = None
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    note: str = ""

    def totals(self) -> tuple[int, int, int]:
        values = list(self.scenarios.values())
        return (
            sum(s.passed for s in values),
            sum(s.failed for s in values),
            sum(s.warnings for s in values),
        )


SUMMARY_LINE = re.compile(r"^[✓✗] (\S+): (\d+) passed, (\d+) failed$")
RESULT_DIR = re.compile(r"^server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


def run_suite(
    node: str, entry: Path, url: str, out: Path, label: str, selection: argparse.Namespace
) -> Run:
    results = out / label
    base = [node, str(entry), "server", "--url", url, "-o", str(results)]
    if selection.scenario:
        commands = [[*base, "--scenario", name] for name in selection.scenario]
    else:
        commands = [[*base, "--suite", selection.suite]]
    run = Run(label)
    began = time.monotonic()
    with (out / f"suite-{label}.log").open("w") as log:
        for cmd in commands:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            try:
                proc = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, timeout=selection.timeout
                )
                run.exit_code = max(run.exit_code or 0, proc.returncode)
            except subprocess.TimeoutExpired:
                run.note = f"suite timed out after {selection.timeout}s"
                run.exit_code = -1
    run.seconds = time.monotonic() - began
    text = (out / f"suite-{label}.log").read_text(errors="replace")
    for line in text.splitlines():
        if match := SUMMARY_LINE.match(line.strip()):
            name = match.group(1)
            run.scenarios[name] = Scenario(name, int(match.group(2)), int(match.group(3)))
    for path in sorted(results.glob("server-*/checks.json")):
        match = RESULT_DIR.match(path.parent.name)
        if not match:
            continue
        checks = json.loads(path.read_text())
        scenario = run.scenarios.setdefault(match.group(1), Scenario(match.group(1)))
        scenario.checks = checks
        scenario.passed = sum(c.get("status") == "SUCCESS" for c in checks)
        scenario.failed = sum(c.get("status") == "FAILURE" for c in checks)
        scenario.warnings = sum(c.get("status") == "WARNING" for c in checks)
    if not run.scenarios and not run.note:
        run.note = "the suite reported nothing; see " + str(out / f"suite-{label}.log")
    return run


# --- reporting ------------------------------------------------------------------


def _short(value: Any, limit: int = 700) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def problems(scenario: Scenario) -> list[dict[str, Any]]:
    return [c for c in scenario.checks if c.get("status") in ("FAILURE", "WARNING")]


def report(direct: Run, proxied: Run | None, proxy: Proc | None, out: Path) -> str:
    lines: list[str] = []
    names = list(direct.scenarios)
    if proxied:
        names += [n for n in proxied.scenarios if n not in direct.scenarios]
    width = max([len(n) for n in names] + [8])
    lines.append(f"{'scenario':<{width}}  {'direct':<14}  {'through proxy':<14}")
    lines.append(f"{'-' * width}  {'-' * 14}  {'-' * 14}")
    differing: list[str] = []
    for name in names:
        d = direct.scenarios.get(name)
        p = proxied.scenarios.get(name) if proxied else None
        dcell = d.cell() if d else "-"
        pcell = p.cell() if p else ("-" if proxied else "not run")
        mark = ""
        if proxied and (d is None or p is None or d.signature() != p.signature()):
            mark = "  <-- differs"
            differing.append(name)
        lines.append(f"{name:<{width}}  {dcell:<14}  {pcell:<14}{mark}")
    lines.append("")

    def total(run: Run | None) -> str:
        if run is None:
            return "not run"
        passed, failed, warned = run.totals()
        failing = sum(1 for s in run.scenarios.values() if s.failed)
        text = (
            f"{len(run.scenarios)} scenarios, {failing} failing; checks: {passed} passed, "
            f"{failed} failed, {warned} warnings; {run.seconds:.1f}s"
        )
        return text + (f"; {run.note}" if run.note else "")

    lines.append(f"direct:        {total(direct)}")
    lines.append(f"through proxy: {total(proxied)}")
    if proxied is None and proxy is not None:
        lines += ["", "the proxy did not start; its log:", proxy.tail(30)]

    for run in (direct, proxied):
        if run is None:
            continue
        bad = [s for s in run.scenarios.values() if problems(s)]
        if not bad:
            continue
        lines += ["", f"=== {run.label}: failures and warnings ==="]
        for scenario in bad:
            for check in problems(scenario):
                lines.append(f"[{scenario.name}] {check.get('id')} {check.get('status')}")
                if check.get("errorMessage"):
                    lines.append(f"    message: {check['errorMessage']}")
                if check.get("details") is not None:
                    lines.append(f"    details: {_short(check['details'])}")
    if differing:
        lines += ["", "differs between direct and through proxy: " + ", ".join(differing)]
    if proxy is not None:
        noisy = [
            line
            for line in proxy.log.read_text(errors="replace").splitlines()
            if '"level":"error"' in line or '"level":"warning"' in line
        ]
        if noisy:
            lines += ["", f"=== proxy log: {len(noisy)} warning/error lines (first 10) ==="]
            lines += [_digest(line) for line in noisy[:10]]
    lines += ["", f"results, suite output and process logs: {out}"]
    return "\n".join(lines)


def _digest(line: str) -> str:
    """A proxy log line with a traceback cut to its last frames and the exception."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line[:1500]
    exc = entry.pop("exception", None) if isinstance(entry, dict) else None
    text = json.dumps(entry, separators=(",", ":"))
    if isinstance(exc, str):
        tail = [part for part in exc.strip().splitlines() if part.strip()][-5:]
        text += "\n    " + "\n    ".join(tail)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run the MCP conformance suite directly and through agent-warden."
    )
    parser.add_argument("--suite", default="all", choices=["all", "active", "pending"])
    parser.add_argument(
        "--scenario", action="append", default=[], help="one scenario; repeat for more"
    )
    parser.add_argument(
        "--proxy-arg", action="append", default=[], help="extra argument for `proxy run`"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="npm install dir")
    parser.add_argument("--out", type=Path, help="results dir (default: under --cache)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per suite invocation, s")
    parser.add_argument("--direct-only", action="store_true", help="skip the proxy run")
    parser.add_argument(
        "--proxy-ref",
        help="run the proxy as committed at this git ref (exported to the results dir) "
        "instead of the work tree",
    )
    opts = parser.parse_args()

    began = time.monotonic()
    out = opts.out or opts.cache / "out" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        node = ensure_node(opts.cache)
        entry = ensure_suite(opts.cache)
        print(f"suite {SUITE_PKG}@{SUITE_VERSION}, node {node}, results in {out}", flush=True)

        upstream, upstream_url = start_upstream(out, "direct")
        procs.append(upstream)
        print(f"direct: {upstream_url}/mcp ...", flush=True)
        direct = run_suite(node, entry, f"{upstream_url}/mcp", out, "direct", opts)
        upstream.stop()
        if not direct.scenarios:
            raise SetupError(f"direct run produced no results: {direct.note}")

        proxied: Run | None = None
        proxy: Proc | None = None
        if not opts.direct_only:
            upstream, upstream_url = start_upstream(out, "proxy")
            procs.append(upstream)
            listen, admin = free_port(), free_port()
            cmd = [
                sys.executable,
                "-m",
                "proxy",
                "run",
                "--upstream",
                upstream_url,
                "--listen",
                f"127.0.0.1:{listen}",
                "--admin",
                f"127.0.0.1:{admin}",
                *opts.proxy_arg,
            ]
            cwd = export_proxy(opts.proxy_ref, out / "proxy-src") if opts.proxy_ref else ROOT
            proxy = start("proxy", cmd, out / "proxy.log", cwd=cwd)
            procs.append(proxy)
            if wait_http_ok(proxy, f"http://127.0.0.1:{admin}/readyz"):
                url = f"http://127.0.0.1:{listen}/mcp"
                source = f"git {opts.proxy_ref}" if opts.proxy_ref else "work tree"
                print(f"through proxy ({source}): {url} -> {upstream_url} ...", flush=True)
                proxied = run_suite(node, entry, url, out, "proxy", opts)
            proxy.stop()
            upstream.stop()

        text = report(direct, proxied, proxy, out)
        (out / "report.txt").write_text(text + "\n")
        print()
        print(text)
        print(f"\nwall time: {time.monotonic() - began:.1f}s")
        return 0
    except SetupError as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
