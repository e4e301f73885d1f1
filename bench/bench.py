"""Latency, CPU, memory and throughput of agent-warden against direct and nginx paths.

Starts on loopback: nginx as a static MCP upstream, an nginx proxy_pass hop in front
of it, and agent-warden in front of it; drives each path with h2load (HTTP/1.1, a
tools/call body) at a fixed rate, then at full throttle; prints a Markdown table and
writes it to bench/out/latest.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"

REQUEST_BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"hi"}}}'
)
RESPONSE_BODY = (
    '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}'
)
INITIALIZE_BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"agent-warden-bench","version":"0"}}}'
)
REQUEST_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
    ("X-Agent-Id", "bench"),
)
MCP_PATH = "/mcp"
SSE_PATH = "/mcp-sse"  # the same answer as one server-sent event (text/event-stream)
SSE_BODY = f"event: message\ndata: {RESPONSE_BODY}\n\n"
SESSION_HEADER = "Mcp-Session-Id"
DEFAULT_POLICY = BENCH_DIR / "policy.yaml"

DIRECT = "direct"
NGINX = "nginx"
WARDEN = "agent-warden"
ALL_PATHS = (DIRECT, NGINX, WARDEN)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_PERCENT = 10.0
KEEP_UP = 0.98


class BenchError(Exception):
    """A failure the run cannot go on from; printed as one line."""


@dataclass(frozen=True, slots=True)
class Settings:
    paths: tuple[str, ...]
    rate: int
    connections: int
    duration_s: int
    warmup_s: int
    throttle_requests: int
    session_id: str | None
    policy: Path
    python: Path
    wait_proxy_s: float
    keep_temp: bool
    lockstep: bool
    sse: bool = False  # the upstream answers with an event stream instead of JSON


@dataclass(slots=True)
class PathResult:
    name: str
    url: str
    achieved_rps: float = 0.0
    requests_done: int = 0
    errors: int = 0
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    cpu_s_per_1000: float | None = None
    peak_rss_mb: float | None = None
    max_rps: float = math.nan
    throttle_errors: int = 0
    other_cpu_pct: float = 0.0


@dataclass(frozen=True, slots=True)
class H2loadSummary:
    elapsed_s: float
    rps: float
    done: int
    status_2xx: int


@dataclass(frozen=True, slots=True)
class PostAnswer:
    status: int
    session_id: str | None
    body: bytes


@dataclass(slots=True)
class Fleet:
    """Every process the run started, stopped in reverse order whatever happens."""

    workdir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> int:
        log = (self.workdir / f"{name}.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_WARDEN_")}
        with log:
            # Own session: Ctrl-C reaches only this script, which then stops them in order.
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc.pid

    def check_alive(self, name: str) -> None:
        for proc_name, proc in self.procs:
            if proc_name == name and proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        error_log = self.workdir / f"{name}-error.log"
        if error_log.exists():
            text += error_log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        # A second Ctrl-C must not cut the clean-up short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self.procs:
                _, proc = self.procs.pop()
                _stop(proc)
        finally:
            signal.signal(signal.SIGINT, previous)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # The group is the one start_new_session made for this child: it holds its workers.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------- processes and /proc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """The root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """utime + stime of the process tree, in seconds."""
    ticks = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_percent(seconds: float = 2.0) -> float:
    """How busy the machine is right now, other work included."""
    busy_0, total_0 = _cpu_ticks()
    time.sleep(seconds)
    busy_1, total_1 = _cpu_ticks()
    return 100 * (busy_1 - busy_0) / max(1, total_1 - total_0)


def machine_cpu_seconds() -> float:
    """Busy time of all CPUs since boot, whoever used it."""
    return _cpu_ticks()[0] / CLK_TCK


def own_cpu_seconds(fleet: Fleet) -> float:
    """This script, its finished children (h2load) and every process of the fleet."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    fleet_s = sum(cpu_seconds(proc.pid) for _, proc in fleet.procs)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime + fleet_s


def peak_rss_mb(root: int) -> float:
    """VmHWM summed over the process tree, in MiB."""
    kib = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib += int(line.split()[1])
    return kib / 1024


# ---------------------------------------------------------------- servers


def render_nginx(template: str, workdir: Path, name: str, **values: object) -> Path:
    text = string.Template((BENCH_DIR / template).read_text()).substitute(
        prefix=workdir, name=name, **values
    )
    conf = workdir / f"{name}.conf"
    conf.write_text(text)
    return conf


def start_nginx(fleet: Fleet, name: str, conf: Path) -> int:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = str(fleet.workdir)
    error_log = str(fleet.workdir / f"{name}-error.log")
    # -e: nginx would otherwise try the packaged /var/log/nginx/error.log before the config.
    return fleet.start(name, [nginx, "-p", prefix, "-c", str(conf), "-e", error_log])


def wait_for_port(fleet: Fleet, name: str, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        fleet.check_alive(name)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s")


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return 0


def wait_for_ready(fleet: Fleet, name: str, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        fleet.check_alive(name)
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{name}: {url} was not 200 within {START_TIMEOUT_S:.0f} s")


def proxy_cli_works(python: Path) -> bool:
    result = subprocess.run(
        [str(python), "-m", "proxy", "run", "--help"],
        cwd=REPO_DIR,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def wait_for_proxy_cli(python: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not proxy_cli_works(python):
        if time.monotonic() >= deadline:
            raise BenchError(
                f"`{python} -m proxy run --help` fails: agent-warden is not runnable "
                "(use --paths direct,nginx, or --wait-proxy SECONDS)"
            )
        print("waiting for `python -m proxy run --help` to work ...", file=sys.stderr)
        time.sleep(min(60.0, max(1.0, deadline - time.monotonic())))


def post(name: str, url: str, body: bytes, headers: Sequence[tuple[str, str]]) -> PostAnswer:
    request = urllib.request.Request(url, data=body, method="POST")
    for key, value in headers:
        request.add_header(key, value)
    try:
        with _OPENER.open(request, timeout=5) as response:
            return PostAnswer(
                response.status, response.headers.get(SESSION_HEADER), response.read()
            )
    except urllib.error.HTTPError as exc:
        return PostAnswer(exc.code, None, exc.read())
    except OSError as exc:
        raise BenchError(f"{name}: POST {url} failed: {exc}") from exc


def open_session(name: str, url: str, headers: Sequence[tuple[str, str]]) -> str | None:
    """MCP initialize through the path; the session id it hands out, if any."""
    answer = post(name, url, INITIALIZE_BODY, headers)
    if answer.status != 200:
        raise BenchError(f"{name}: initialize answered {answer.status} {answer.body[:300]!r}")
    return answer.session_id


def smoke(name: str, url: str, headers: Sequence[tuple[str, str]], expected: str) -> None:
    """One request by hand: the path must answer the upstream's bytes before it is timed."""
    answer = post(name, url, REQUEST_BODY, headers)
    if answer.status != 200 or answer.body != expected.encode():
        raise BenchError(f"{name}: POST {url} answered {answer.status} {answer.body[:300]!r}")


# ---------------------------------------------------------------- h2load


_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: \d+ total, \d+ started, (\d+) done")
_STATUS = re.compile(r"status codes: (\d+) 2xx")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_h2load(output: str) -> H2loadSummary:
    finished, requests, status = (
        _FINISHED.search(output),
        _REQUESTS.search(output),
        _STATUS.search(output),
    )
    if finished is None or requests is None or status is None:
        raise BenchError(f"cannot read h2load's output:\n{output[-2000:]}")
    return H2loadSummary(
        elapsed_s=float(finished.group(1)) * _UNIT_S[finished.group(2)],
        rps=float(finished.group(3)),
        done=int(requests.group(1)),
        status_2xx=int(status.group(1)),
    )


def h2load_argv(url: str, body: Path, headers: Sequence[tuple[str, str]], *args: str) -> list[str]:
    exe = shutil.which("h2load")
    if exe is None:
        raise BenchError("h2load not found: run bench/install.sh")
    argv = [exe, "--h1", "-d", str(body), *args]
    for key, value in headers:
        argv += ["-H", f"{key}: {value}"]
    argv.append(url)
    return argv


def run_h2load(argvs: Sequence[Sequence[str]], stagger_s: float = 0.0) -> list[H2loadSummary]:
    """Runs the h2load commands side by side, the i-th started i * stagger_s after the first."""
    procs: list[subprocess.Popen[str]] = []
    try:
        start = time.monotonic()
        for i, argv in enumerate(argvs):
            time.sleep(max(0.0, start + i * stagger_s - time.monotonic()))
            procs.append(
                subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        # Each prints a few KiB at most: reading them one after another cannot block.
        outputs = [proc.communicate() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    summaries = []
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise BenchError(f"h2load exited {proc.returncode}:\n{stderr[-2000:]}")
        summaries.append(parse_h2load(stdout))
    return summaries


def latencies_ms(log_file: Path) -> list[float]:
    """2xx response times from h2load's --log-file (start, status, microseconds), in ms."""
    values = []
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].isdigit() and 200 <= int(parts[1]) < 300:
            values.append(int(parts[2]) / 1000)
    return values


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------- measuring


def fixed_rate_commands(
    settings: Settings,
    url: str,
    body: Path,
    headers: Sequence[tuple[str, str]],
    seconds: int,
    log_prefix: Path | None = None,
) -> tuple[list[list[str]], float]:
    """h2load commands for `seconds` at settings.rate, and the stagger between their starts."""
    per_client = str(settings.rate // settings.connections)
    if settings.lockstep:
        args = ["-c", str(settings.connections), "--rps", per_client, "-D", str(seconds)]
        if log_prefix:
            args += ["--log-file", f"{log_prefix}.tsv"]
        return [h2load_argv(url, body, headers, *args)], 0.0
    # One h2load's clients share one event loop and its timers drift into step: bursts of
    # 10 requests every 10 ms. One single-connection h2load per connection, started
    # 1/rate s apart, keeps the arrivals spread like independent callers.
    commands = []
    for i in range(settings.connections):
        args = ["-c", "1", "--rps", per_client, "-D", str(seconds)]
        if log_prefix:
            args += ["--log-file", f"{log_prefix}-{i}.tsv"]
        commands.append(h2load_argv(url, body, headers, *args))
    return commands, 1 / settings.rate


def measure_fixed_rate(
    settings: Settings,
    result: PathResult,
    hop_pid: int | None,
    body: Path,
    headers: Sequence[tuple[str, str]],
    workdir: Path,
    fleet: Fleet,
) -> None:
    if settings.warmup_s > 0:
        # A separate run, so the CPU window below holds only measured requests.
        run_h2load(*fixed_rate_commands(settings, result.url, body, headers, settings.warmup_s))
    log_prefix = workdir / f"h2load-{result.name}"
    commands, stagger_s = fixed_rate_commands(
        settings, result.url, body, headers, settings.duration_s, log_prefix
    )
    cpu_before = cpu_seconds(hop_pid) if hop_pid else 0.0
    machine_before, own_before, clock_before = (
        machine_cpu_seconds(),
        own_cpu_seconds(fleet),
        time.monotonic(),
    )
    summaries = run_h2load(commands, stagger_s)
    machine_after, own_after, clock_after = (
        machine_cpu_seconds(),
        own_cpu_seconds(fleet),
        time.monotonic(),
    )
    cpu_after = cpu_seconds(hop_pid) if hop_pid else 0.0
    foreign = (machine_after - machine_before) - (own_after - own_before)
    result.other_cpu_pct = max(0.0, 100 * foreign / (clock_after - clock_before))
    ordered = sorted(
        value for log in workdir.glob(f"{log_prefix.name}*.tsv") for value in latencies_ms(log)
    )
    done = sum(s.done for s in summaries)
    result.achieved_rps = sum(s.rps for s in summaries)
    result.requests_done = done
    # h2load's "done" includes failed requests and non-2xx answers.
    result.errors = done - sum(s.status_2xx for s in summaries)
    result.p50_ms, result.p90_ms, result.p99_ms = (percentile(ordered, p) for p in (50, 90, 99))
    if hop_pid and done:
        result.cpu_s_per_1000 = (cpu_after - cpu_before) / done * 1000


def measure_throttle(
    settings: Settings,
    result: PathResult,
    body: Path,
    headers: Sequence[tuple[str, str]],
) -> None:
    throttle = ["-c", str(settings.connections), "-n", str(settings.throttle_requests)]
    [summary] = run_h2load([h2load_argv(result.url, body, headers, *throttle)])
    result.max_rps = summary.rps
    result.throttle_errors = settings.throttle_requests - summary.status_2xx


def run(settings: Settings, workdir: Path, fleet: Fleet) -> tuple[list[PathResult], str | None]:
    body = workdir / "request.json"
    body.write_bytes(REQUEST_BODY)

    upstream_port = free_port()
    conf = render_nginx(
        "nginx-upstream.conf.tmpl",
        workdir,
        "upstream",
        port=upstream_port,
        response=RESPONSE_BODY,
        sse_response=SSE_BODY,
    )
    path = SSE_PATH if settings.sse else MCP_PATH
    start_nginx(fleet, "upstream", conf)
    wait_for_port(fleet, "upstream", upstream_port)

    results: list[PathResult] = []
    # Path name -> (process name in the fleet, pid) of the hop whose cost is measured.
    hops: dict[str, tuple[str, int]] = {}
    if DIRECT in settings.paths:
        results.append(PathResult(DIRECT, f"http://127.0.0.1:{upstream_port}{path}"))
    if NGINX in settings.paths:
        port = free_port()
        conf = render_nginx(
            "nginx-hop.conf.tmpl", workdir, "nginx-hop", port=port, upstream_port=upstream_port
        )
        hops[NGINX] = ("nginx-hop", start_nginx(fleet, "nginx-hop", conf))
        wait_for_port(fleet, "nginx-hop", port)
        results.append(PathResult(NGINX, f"http://127.0.0.1:{port}{path}"))
    if WARDEN in settings.paths:
        wait_for_proxy_cli(settings.python, settings.wait_proxy_s)
        port, admin = free_port(), free_port()
        argv = [
            str(settings.python),
            "-m",
            "proxy",
            "run",
            "--upstream",
            f"http://127.0.0.1:{upstream_port}/",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--policy",
            str(settings.policy),
        ]
        hops[WARDEN] = (WARDEN, fleet.start(WARDEN, argv, cwd=REPO_DIR))
        wait_for_ready(fleet, WARDEN, f"http://127.0.0.1:{admin}/readyz")
        results.append(PathResult(WARDEN, f"http://127.0.0.1:{port}{path}"))

    headers = list(REQUEST_HEADERS)
    session_id = settings.session_id
    if session_id is None and WARDEN in hops:
        # A session-aware proxy refuses calls outside a session it knows; every path then
        # gets the same header, so all three see the same request bytes.
        session_id = open_session(WARDEN, results[-1].url.replace(SSE_PATH, MCP_PATH), headers)
    if session_id:
        headers.append((SESSION_HEADER, session_id))
    for result in results:
        smoke(result.name, result.url, headers, SSE_BODY if settings.sse else RESPONSE_BODY)
    for result in results:
        print(f"fixed rate: {result.name} ...", file=sys.stderr)
        hop_pid = hops[result.name][1] if result.name in hops else None
        measure_fixed_rate(settings, result, hop_pid, body, headers, workdir, fleet)
    for result in results:
        print(f"full throttle: {result.name} ...", file=sys.stderr)
        measure_throttle(settings, result, body, headers)
    for result in results:
        if result.name in hops:
            proc_name, pid = hops[result.name]
            fleet.check_alive(proc_name)
            result.peak_rss_mb = peak_rss_mb(pid)
    return results, session_id


# ---------------------------------------------------------------- report


def _added(result: PathResult, direct: PathResult | None) -> tuple[float, float, float] | None:
    if direct is None or result is direct:
        return None
    return (
        result.p50_ms - direct.p50_ms,
        result.p90_ms - direct.p90_ms,
        result.p99_ms - direct.p99_ms,
    )


def _added_at(index: int) -> Callable[[PathResult, PathResult | None], float | None]:
    def measure(result: PathResult, direct: PathResult | None) -> float | None:
        added = _added(result, direct)
        return None if added is None else added[index]

    return measure


@dataclass(frozen=True, slots=True)
class Goal:
    label: str
    limit: float
    unit: str
    measure: Callable[[PathResult, PathResult | None], float | None]


# The goals the hot path is designed for (issue 2, item 9).
GOALS = (
    Goal("added p50 latency", 1.0, "ms", _added_at(0)),
    Goal("added p99 latency", 2.0, "ms", _added_at(2)),
    Goal("CPU per 1000 req/s", 0.20, "vCPU", lambda r, _: r.cpu_s_per_1000),
    Goal("peak RSS", 60.0, "MB", lambda r, _: r.peak_rss_mb),
)


def _verdict(value: float | None, limit: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "PASS" if value <= limit else "MISS"


def _opt(value: float | None, fmt: str) -> str:
    return "—" if value is None or math.isnan(value) else format(value, fmt)


def machine_line() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


def tool_versions() -> str:
    parts = []
    for argv in (["nginx", "-v"], ["h2load", "--version"]):
        with contextlib.suppress(OSError):
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
            parts.append((out.stdout + out.stderr).strip().splitlines()[0])
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def git_revision() -> str:
    with contextlib.suppress(OSError):
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


def report(
    settings: Settings,
    results: Sequence[PathResult],
    session_id: str | None,
    busy_before: float,
) -> str:
    direct = next((r for r in results if r.name == DIRECT), None)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# agent-warden bench, {now}",
        "",
        f"- revision `{git_revision()}`; {machine_line()}, {busy_before:.0f}% busy before the run",
        f"- {tool_versions()}",
        f"- load: h2load --h1, {settings.connections} connections, {settings.rate} req/s for "
        f"{settings.duration_s} s after {settings.warmup_s} s warm-up, "
        f"{'one h2load, in lockstep' if settings.lockstep else 'one h2load per connection'}"
        "; full throttle: "
        f"{settings.throttle_requests} requests, {settings.connections} connections",
        f"- request: POST {SSE_PATH if settings.sse else MCP_PATH} tools/call, "
        f"{len(REQUEST_BODY)} bytes, answered with "
        f"{'one server-sent event' if settings.sse else 'JSON'}; headers "
        + ", ".join(f"`{k}`" for k, _ in REQUEST_HEADERS)
        + (f", `{SESSION_HEADER}`" if session_id else "")
        + (
            f"; agent-warden policy `{_shown(settings.policy)}`"
            if any(r.name == WARDEN for r in results)
            else ""
        ),
        "",
        "| path | p50 ms | p90 ms | p99 ms | added p50/p90/p99 ms vs direct "
        "| CPU s per 1000 req | peak RSS MB | max rps | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        added = _added(r, direct)
        added_text = "—" if added is None else " / ".join(f"{v:+.2f}" for v in added)
        lines.append(
            f"| {r.name} | {_opt(r.p50_ms, '.2f')} | {_opt(r.p90_ms, '.2f')} "
            f"| {_opt(r.p99_ms, '.2f')} | {added_text} "
            f"| {_opt(r.cpu_s_per_1000, '.3f')} | {_opt(r.peak_rss_mb, '.1f')} "
            f"| {_opt(r.max_rps, ',.0f')} | {r.errors + r.throttle_errors} |"
        )
    lines += [
        "",
        "Achieved fixed rate: "
        + ", ".join(
            f"{r.name} {r.achieved_rps:,.0f} req/s ({r.requests_done} done)" for r in results
        ),
        "",
        "CPU busy outside the benchmark's processes during the fixed-rate runs, in % of one "
        "core: " + ", ".join(f"{r.name} {r.other_cpu_pct:.0f}%" for r in results),
        "",
    ]
    noisy = max(r.other_cpu_pct for r in results)
    if noisy > BUSY_PERCENT:
        lines += [f"**Other work took up to {noisy:.0f}% of a core: the figures are noisy.**", ""]
    behind = [r.name for r in results if r.achieved_rps < KEEP_UP * settings.rate]
    if behind:
        lines += [
            f"**{', '.join(behind)} fell behind the fixed rate**: its latencies include queueing.",
            "",
        ]
    warden = next((r for r in results if r.name == WARDEN), None)
    nginx = next((r for r in results if r.name == NGINX), None)
    if warden is not None:
        lines += [
            "| goal | target | agent-warden | verdict | nginx hop (reference) |",
            "|---|---|--:|---|--:|",
        ]
        for goal in GOALS:
            measured = goal.measure(warden, direct)
            reference = goal.measure(nginx, direct) if nginx else None
            lines.append(
                f"| {goal.label} | <= {goal.limit:g} {goal.unit} | {_opt(measured, '.3f')} "
                f"| {_verdict(measured, goal.limit)} | {_opt(reference, '.3f')} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_DIR)) if path.is_relative_to(REPO_DIR) else str(path)


def _finite(row: dict[str, object]) -> dict[str, object]:
    """JSON has no NaN: a value not measured is null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bench.py", description="Benchmark agent-warden against direct and nginx paths."
    )
    parser.add_argument("--duration", type=int, default=15, help="measured seconds per path")
    parser.add_argument("--quick", action="store_true", help="5 s per path, shorter warm-up")
    parser.add_argument("--rate", type=int, default=1000, help="fixed total requests/s")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20000, help="full-throttle request count")
    parser.add_argument(
        "--paths", default=",".join(ALL_PATHS), help=f"comma list of {', '.join(ALL_PATHS)}"
    )
    parser.add_argument(
        "--session-id",
        default=None,
        help="Mcp-Session-Id to send (default: the one agent-warden issues on initialize)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        default=DEFAULT_POLICY,
        help="policy file for agent-warden (default: bench/policy.yaml, limits lifted)",
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=REPO_DIR / ".venv" / "bin" / "python",
        help="interpreter that runs `-m proxy`",
    )
    parser.add_argument(
        "--wait-proxy",
        type=float,
        default=0.0,
        help="seconds to wait for `python -m proxy run --help` to work",
    )
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="plain `h2load -c N --rps R -D S`: all connections send at the same instants",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep configs, logs, h2load logs")
    parser.add_argument(
        "--sse",
        action="store_true",
        help="the upstream answers with one server-sent event (text/event-stream), not JSON",
    )
    args = parser.parse_args(argv)

    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    unknown = sorted(set(paths) - set(ALL_PATHS))
    if unknown or not paths:
        parser.error(f"--paths: unknown {', '.join(unknown) or '(empty)'}")
    if args.rate <= 0 or args.connections <= 0 or args.rate % args.connections:
        parser.error(
            "--rate must be a positive multiple of --connections (h2load's --rps is per client)"
        )
    duration = 5 if args.quick else args.duration
    if duration <= 0 or args.requests <= 0:
        parser.error("--duration and --requests must be positive")
    return Settings(
        paths=tuple(p for p in ALL_PATHS if p in paths),
        rate=args.rate,
        connections=args.connections,
        duration_s=duration,
        warmup_s=1 if args.quick else 3,
        throttle_requests=min(args.requests, 5000) if args.quick else args.requests,
        session_id=args.session_id,
        policy=args.policy.resolve(),
        python=args.python,
        wait_proxy_s=args.wait_proxy,
        keep_temp=args.keep_temp,
        lockstep=args.lockstep,
        sse=args.sse,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    # Explicit: a shell's background job starts with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    busy_before = busy_percent()
    if busy_before > BUSY_PERCENT:
        # Other work on these cores moves every figure; say so rather than refuse to run.
        print(
            f"bench: the CPUs are {busy_before:.0f}% busy: figures will be noisy", file=sys.stderr
        )
    workdir = Path(tempfile.mkdtemp(prefix="agent-warden-bench-"))
    fleet = Fleet(workdir)
    try:
        results, session_id = run(settings, workdir, fleet)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        fleet.stop_all()
        if settings.keep_temp:
            print(f"bench: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(settings, results, session_id, busy_before)
    if max(r.other_cpu_pct for r in results) > BUSY_PERCENT:
        print(
            "bench: other processes used the CPUs during the run: figures are noisy",
            file=sys.stderr,
        )
    print(text)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "latest.md").write_text(text)
    (OUT_DIR / "latest.json").write_text(
        json.dumps([_finite(asdict(r)) for r in results], indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
