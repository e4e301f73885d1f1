"""Hostile policy files (issue 11, findings 11-13): bounded work, a file:line problem each.

Every test here fails on the loader and watcher before the hardening: by a hang, a
RecursionError, an unbounded allocation or a wrong answer. The expansion bombs run in a
child process with an address-space limit, so that a regression fails the test instead
of exhausting the machine; anything that could block is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.policy import PolicyError, PolicyFile, check_files, load_policy, parse_policy
from proxy.policy import watch as watch_module
from proxy.policy.load import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_MESSAGE,
    MAX_NODES,
    MAX_PROBLEMS,
    MAX_VISITED_CHARS,
    MAX_VISITS,
)
from proxy.policy.watch import PolicyWatcher

ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0  # the bound of every wait in the watcher tests; never a measured timing
NEVER = 3600.0  # polling interval when the test drives check() itself
PEAK = 50 << 20  # bytes: the bound on tracemalloc's peak while a bomb is checked
CHILD_MEMORY = 2 << 30  # address-space limit of the child processes (a regression's fuse)
LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.+)$")


# --- hostile inputs -----------------------------------------------------------------


def merge_bomb(leaf: str = "{mode: audit, bogus: 1}", levels: int = 10, width: int = 10) -> str:
    """Nested ``<<`` merges: ``width ** levels`` merged keys if each merge is re-expanded."""
    lines = ["version: 1", f"x-0: &l0 {leaf}"]
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * width)
        lines.append(f"x-{i}: &l{i} {{<<: [{refs}]}}")
    lines.append(f"defaults: {{<<: *l{levels - 1}}}")
    return "\n".join(lines) + "\n"


def alias_bomb(globs: int = 1000, uses: int = 3000) -> str:
    """One policy of ``globs`` tools, listed ``uses`` times by alias: globs * uses to check."""
    listed = ", ".join(f'"t{i}*"' for i in range(globs))
    refs = ", ".join(["*p"] * uses)
    return (
        "version: 1\n"
        f"x-tools: &g [{listed}]\n"
        "x-policy: &p {name: p, match: {agents: [a]}, tools: {allow: *g}}\n"
        f"policies: [{refs}]\n"
    )


def string_bomb(length: int = 400_000, uses: int = 50_000) -> str:
    """One long glob listed ``uses`` times by alias: length * uses characters to check."""
    refs = ", ".join(["*s"] * uses)
    return f'version: 1\nx-s: &s "{"a" * length}*"\ndefaults: {{tools: {{allow: [{refs}]}}}}\n'


def problem_bomb(keys: int = 1000, uses: int = 200) -> str:
    """A policy of ``keys`` unknown keys listed ``uses`` times by alias: a problem each."""
    listed = ", ".join(f"bogus_key_{i}: 1" for i in range(keys))
    refs = ", ".join(["*p"] * uses)
    return (
        "version: 1\n"
        f"x-policy: &p {{name: p, match: {{agents: [a]}}, {listed}}}\n"
        f"policies: [{refs}]\n"
    )


def merge_chain(depth: int) -> str:
    """``depth`` mappings, each merging the one before; ``defaults`` merges the last."""
    lines = ["version: 1", "x-0: &m0 {mode: audit}"]
    lines += [f"x-{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, depth)]
    lines.append(f"defaults: {{<<: *m{depth - 1}}}")
    return "\n".join(lines) + "\n"


def flow_list(depth: int) -> str:
    return "version: 1\nx-deep: " + "[" * depth + "]" * depth + "\n"


def block_list(depth: int) -> str:
    return "version: 1\nx-deep:\n" + "".join("  " * i + "-\n" for i in range(1, depth + 1))


def flow_mapping(depth: int) -> str:
    return "version: 1\nx-deep: " + "{a: " * depth + "1" + "}" * depth + "\n"


def problems_of(text: str, name: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, name)
    return [str(p) for p in info.value.problems]


def one_problem(problems: list[str], name: str, pattern: str) -> int:
    """The line of the only problem, which must be ``name:line: ...pattern...``."""
    assert len(problems) == 1, problems
    match = LINE.match(problems[0])
    assert match is not None, problems
    assert match["file"] == name
    assert re.search(pattern, match["message"]), problems
    return int(match["line"])


# --- child processes ----------------------------------------------------------------


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def child(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python args`` with this checkout's ``proxy``, an address-space limit and a timeout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"python {' '.join(args)} ran more than {timeout} s")


MEASURE = """
import json, sys, time, tracemalloc
from proxy.policy import PolicyError, parse_policy
text = open(sys.argv[1]).read()

def run():
    try:
        policy = parse_policy(text, "bomb.yaml")
    except PolicyError as exc:
        return {"problems": [str(p) for p in exc.problems]}
    return {"problems": [], "mode": policy.defaults.mode}

start = time.perf_counter()
out = run()
out["seconds"] = time.perf_counter() - start
tracemalloc.start()  # a second run for the peak: tracing slows allocation-heavy code
assert run() == {k: v for k, v in out.items() if k != "seconds"}
out["peak"] = tracemalloc.get_traced_memory()[1]
print(json.dumps(out))
"""


def measure(tmp_path: Path, text: str) -> dict[str, object]:
    """parse_policy(text) in a child: its outcome, seconds taken, then tracemalloc's peak."""
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    done = child(["-c", MEASURE, str(path)], timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def number(out: dict[str, object], key: str) -> float:
    value = out[key]
    assert isinstance(value, int | float), out
    return float(value)


# --- finding 11: merge and alias bombs ----------------------------------------------


def test_merge_bomb_is_expanded_once_per_mapping(tmp_path: Path) -> None:
    """Finding 11: 10 levels of 10 nested merges (10**10 keys re-expanded at HEAD).

    Each mapping's merged keys are worked out once: the bomb's one real problem is
    reported with its file and line in well under a couple of seconds, in little memory.
    """
    text = merge_bomb()
    assert len(text) < 1000  # the review's bomb was 834 bytes
    out = measure(tmp_path, text)
    assert out["problems"] == [
        "bomb.yaml:2: defaults.bogus: unknown key; "
        "expected one of: mode, session, budget, rate_limit, tools, methods, require_scopes"
    ]
    assert number(out, "seconds") < 2.0, out
    assert number(out, "peak") < PEAK, out


def test_merge_bomb_without_a_problem_loads_with_its_merged_value(tmp_path: Path) -> None:
    """Finding 11: merges still work (first source wins); a valid bomb simply loads."""
    out = measure(tmp_path, merge_bomb(leaf="{mode: audit}"))
    assert out["problems"] == []
    assert out["mode"] == "audit"
    assert number(out, "peak") < PEAK, out


def test_alias_bomb_stops_at_the_visit_limit_with_file_and_line(tmp_path: Path) -> None:
    """Finding 11: 3000 aliases of a policy of 1000 globs (3 million to check at HEAD).

    Checking stops after MAX_VISITS nodes with one problem naming the file, the line
    and the key path where the limit was crossed.
    """
    out = measure(tmp_path, alias_bomb())
    problems = out["problems"]
    assert isinstance(problems, list)
    line = one_problem(problems, "bomb.yaml", rf"expands to more than {MAX_VISITS} nodes")
    assert line == 2  # inside the aliased list of tools
    assert re.search(r": policies\[\d+\]\.tools\.allow\[\d+\]: ", problems[0]), problems
    assert number(out, "seconds") < 5.0, out
    assert number(out, "peak") < PEAK, out


def test_a_long_string_used_by_alias_stops_at_the_character_limit(tmp_path: Path) -> None:
    """Finding 11: a 400 kB glob listed 50k times by alias (20 GB of globs at HEAD)."""
    text = string_bomb()
    assert len(text) < MAX_FILE_BYTES
    out = measure(tmp_path, text)
    problems = out["problems"]
    assert isinstance(problems, list)
    one_problem(
        problems,
        "bomb.yaml",
        rf"^defaults\.tools\.allow\[\d+\]: the file expands to more than "
        rf"{MAX_VISITED_CHARS} characters of values",
    )
    assert number(out, "seconds") < 2.0, out
    assert number(out, "peak") < PEAK, out


@pytest.mark.timeout(10)
def test_problems_stop_at_the_problem_limit() -> None:
    """Finding 11: 200 aliases of a policy of 1000 unknown keys (200k problems, 16 s and
    over 100 MB at HEAD): the first MAX_PROBLEMS, sorted by line, then one saying so."""
    problems = problems_of(problem_bomb())
    assert len(problems) == MAX_PROBLEMS + 1
    assert all(p.startswith("p.yaml:2: policies[") for p in problems[:-1]), problems[:3]
    assert problems[-1] == f"p.yaml:2: more than {MAX_PROBLEMS} problems; checking stopped"


def test_a_problem_quoting_a_long_value_is_shortened() -> None:
    """Finding 11: HEAD put the whole value (here 100k characters) into the problem, and
    so into each of its uses by alias."""
    (problem,) = problems_of("version: 1\ndefaults: {mode: " + "k" * 100_000 + "}\n")
    assert problem.startswith("p.yaml:2: defaults.mode: expected one of 'enforce', 'audit'")
    assert "kkk[... " in problem
    assert problem.endswith(" characters ...]" + "k" * (MAX_MESSAGE // 4 - 1) + "'")
    assert len(problem) < MAX_MESSAGE + 100


def test_too_many_nodes_is_a_problem_at_the_line_crossing_the_limit() -> None:
    """Finding 11: a file of more than MAX_NODES nodes is refused (HEAD composed them all)."""
    text = "version: 1\nx-big:\n" + "".join(f"  - {i}\n" for i in range(MAX_NODES))
    line = one_problem(problems_of(text), "p.yaml", rf"more than {MAX_NODES} YAML nodes")
    # Five nodes come before the items (the top mapping, two keys, a value, the list);
    # item k is on line 3 + k: the node past the limit is item MAX_NODES - 5.
    assert line == 3 + MAX_NODES - 5


# --- finding 12: deep nesting -------------------------------------------------------


def test_a_5000_deep_merge_chain_is_a_problem_not_a_recursion_error() -> None:
    """Finding 12: a 5000-deep merge chain raised RecursionError (a traceback) at HEAD."""
    line = one_problem(
        problems_of(merge_chain(5000)),
        "p.yaml",
        rf"^defaults\.<<: merges nested more than {MAX_DEPTH} levels deep$",
    )
    assert 1 < line < 5002


def test_merge_chains_up_to_the_depth_limit_load() -> None:
    """Finding 12 (the boundary): MAX_DEPTH merges deep is fine, one more is not."""
    assert parse_policy(merge_chain(MAX_DEPTH), "p.yaml").defaults.mode == "audit"
    one_problem(problems_of(merge_chain(MAX_DEPTH + 1)), "p.yaml", "merges nested more than")


@pytest.mark.parametrize(
    ("make", "depth"),
    [(flow_list, 200_000), (block_list, 3000), (flow_mapping, 100_000)],
    ids=["flow-list-200k", "block-list-3000", "flow-mapping-100k"],
)
def test_deep_nesting_is_a_problem_not_a_recursion_error(
    make: Callable[[int], str], depth: int
) -> None:
    """Finding 12: a 200k-deep flow list raised RecursionError (libyaml's own limit, then
    the pure-Python fallback) at HEAD; nesting is bounded while composing, without
    recursion."""
    line = one_problem(
        problems_of(make(depth)), "p.yaml", rf"^YAML nested more than {MAX_DEPTH} levels deep$"
    )
    assert line == (2 if make is not block_list else MAX_DEPTH + 2)


def test_nesting_up_to_the_depth_limit_loads() -> None:
    """Finding 12 (the boundary): the top mapping and MAX_DEPTH - 1 lists are fine."""
    assert parse_policy(flow_list(MAX_DEPTH - 1), "p.yaml").source == "p.yaml"
    one_problem(problems_of(flow_list(MAX_DEPTH)), "p.yaml", "nested more than")


def test_check_files_reports_deep_files_and_goes_on(tmp_path: Path) -> None:
    """Finding 12: ``check_files`` (what ``check`` prints) gives file:line for each file."""
    chain, deep, good = tmp_path / "chain.yaml", tmp_path / "deep.yaml", tmp_path / "ok.yaml"
    chain.write_text(merge_chain(5000))
    deep.write_text(flow_list(200_000))
    good.write_text("version: 1\n")
    out = check_files([str(chain), str(deep), str(good)])
    assert len(out) == 2, out
    one_problem(out[:1], str(chain), "merges nested more than")
    assert out[1] == f"{deep}:2: YAML nested more than {MAX_DEPTH} levels deep"


# --- finding 13: what the path names ------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO; any reader still blocked on it late in the test, or at the end, is released.

    Only a regression blocks on it: releasing it keeps such a failure from hanging the
    suite (a worker thread stuck in open() would stop the event loop from closing).
    """
    path = tmp_path / "policy.fifo"
    os.mkfifo(path)
    done = threading.Event()

    def release() -> None:
        with contextlib.suppress(OSError):  # ENXIO: nobody is reading
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    def watchdog() -> None:
        if not done.wait(8.0):
            while not done.wait(0.05):
                release()

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        done.set()
        thread.join()
        release()


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_at_once(fifo: Path) -> None:
    """Finding 13: load_policy blocked forever on a FIFO at HEAD (open() with no writer)."""
    with pytest.raises(PolicyError) as info:
        load_policy(fifo)
    assert [str(p) for p in info.value.problems] == [
        f"{fifo}:0: cannot read policy file: not a regular file but a FIFO"
    ]
    assert check_files([str(fifo)]) == [str(info.value.problems[0])]


@pytest.mark.timeout(10)
def test_a_device_is_refused() -> None:
    """Finding 13: HEAD read /dev/null as an empty, valid policy (and /dev/zero forever)."""
    assert check_files([os.devnull]) == [
        f"{os.devnull}:0: cannot read policy file: not a regular file but a character device"
    ]


def test_an_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    """Finding 13: HEAD read a file of any size; one byte over MAX_FILE_BYTES is refused."""
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\n" + "#" * (MAX_FILE_BYTES - len("version: 1\n")))
    assert load_policy(path).source == str(path)  # exactly the limit: fine
    with path.open("a") as f:
        f.write("#")
    assert check_files([str(path)]) == [
        f"{path}:0: cannot read policy file: "
        f"the file is {MAX_FILE_BYTES + 1} bytes, the limit is {MAX_FILE_BYTES}"
    ]


# --- the watcher --------------------------------------------------------------------


def text(calls: int) -> str:
    return f"version: 1\ndefaults:\n  budget:\n    calls: {calls}\n"


def write(path: Path, content: str) -> None:
    """Replace the file atomically, as editors and config tools do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


def point(link: Path, target: Path) -> None:
    """Swap the symlink ``link`` to ``target`` atomically (a ConfigMap-style swap)."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.005)


@dataclass
class Seen:
    changes: list[PolicyFile] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)

    @property
    def calls(self) -> list[int | None]:
        return [p.defaults.budget.calls for p in self.changes]

    def problems(self) -> list[list[str]]:
        return [[str(p) for p in e.problems] for e in self.errors]


@pytest.fixture
async def watched() -> AsyncIterator[Callable[[Path, float], tuple[PolicyWatcher, Seen]]]:
    made: list[PolicyWatcher] = []

    def make(path: Path, interval: float) -> tuple[PolicyWatcher, Seen]:
        seen = Seen()
        watcher = PolicyWatcher(str(path), seen.changes.append, seen.errors.append, interval)
        made.append(watcher)
        return watcher, seen

    yield make
    for watcher in made:
        await asyncio.wait_for(watcher.stop(), WAIT)


@pytest.mark.timeout(10)
async def test_the_watcher_survives_a_fifo_swapped_in(
    watched: Callable[[Path, float], tuple[PolicyWatcher, Seen]], tmp_path: Path, fifo: Path
) -> None:
    """Finding 13: at HEAD a FIFO swapped in at the path blocked the watcher forever.

    Now the FIFO is reported once (and so counted once), SIGHUP and later edits still
    work, and ``stop`` returns at once.
    """
    good = tmp_path / "one.yaml"
    good.write_text(text(1))
    link = tmp_path / "policy.yaml"
    os.symlink(good, link)
    watcher, seen = watched(link, 0.01)
    assert await watcher.start() is True
    loop = asyncio.get_running_loop()
    watcher.install_sighup(loop)

    point(link, fifo)
    await until(lambda: len(seen.errors) == 1, "the FIFO reported")
    assert seen.problems() == [
        [f"{link}:0: cannot read policy file: not a regular file but a FIFO"]
    ]
    for _ in range(20):  # many ticks later: not reported again
        await asyncio.sleep(0.01)
    assert len(seen.errors) == 1

    os.kill(os.getpid(), signal.SIGHUP)  # a forced reload reports its outcome again
    await until(lambda: len(seen.errors) == 2, "the SIGHUP reload done")
    assert seen.calls == [1]

    other = tmp_path / "two.yaml"
    other.write_text(text(2))
    point(link, other)
    await until(lambda: seen.calls == [1, 2], "the good file swapped back applied")
    assert watcher.last_error is None
    await asyncio.wait_for(watcher.stop(), WAIT)


async def test_each_distinct_failure_is_reported_once(
    watched: Callable[[Path, float], tuple[PolicyWatcher, Seen]],
    tmp_path: Path,
    fifo: Path,
) -> None:
    """Findings 12 and 13: HEAD raised RecursionError out of every tick (logged each
    tick, never reported, so never counted). Each bad version is now reported once,
    however many ticks see it, with a file:line problem; a new bad version once more."""
    path = tmp_path / "policy.yaml"
    path.write_text(text(1))
    watcher, seen = watched(path, NEVER)
    await watcher.start()

    async def ticks() -> None:
        for _ in range(3):
            await watcher.check()

    bad = [
        (merge_chain(5000), "merges nested more than"),
        (flow_list(200_000), "YAML nested more than"),
        ("#" * (MAX_FILE_BYTES + 1), "the file is 1048577 bytes"),
    ]
    for i, (content, pattern) in enumerate(bad, start=1):
        write(path, content)
        await ticks()
        write(path, content)  # the same content again (a new inode): not reported again
        await ticks()
        assert len(seen.errors) == i
        one_problem(seen.problems()[-1], str(path), pattern)

    os.remove(path)
    os.symlink(fifo, path)
    await ticks()
    assert len(seen.errors) == 4
    assert "not a regular file but a FIFO" in seen.problems()[-1][0]

    os.remove(path)
    path.write_text(text(5))
    await ticks()
    assert seen.calls == [1, 5]
    assert len(seen.errors) == 4


async def test_a_loader_crash_is_reported_once_not_raised_every_tick(
    watched: Callable[[Path, float], tuple[PolicyWatcher, Seen]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding 12: whatever the loader raises (RecursionError, MemoryError, a bug) is one
    reported failure per content, never an exception out of the tick (HEAD: every tick)."""
    path = tmp_path / "policy.yaml"
    path.write_text(text(1))
    watcher, seen = watched(path, NEVER)
    await watcher.start()

    def crash(data: bytes, filename: str) -> PolicyFile:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(watch_module, "parse_policy_bytes", crash)
    write(path, text(2))
    for _ in range(3):
        await watcher.check()
    assert seen.problems() == [
        [f"{path}:0: cannot check policy file: RecursionError: maximum recursion depth exceeded"]
    ]


# --- the command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: merge_bomb(), r"defaults\.bogus: unknown key"),
        (lambda: alias_bomb(), rf"expands to more than {MAX_VISITS} nodes"),
        (lambda: merge_chain(5000), "merges nested more than"),
        (lambda: flow_list(200_000), "YAML nested more than"),
        (lambda: "#" * (MAX_FILE_BYTES + 1), "the file is 1048577 bytes"),
        (None, "not a regular file but a FIFO"),
    ],
    ids=["merge-bomb", "alias-bomb", "merge-chain", "deep-list", "oversized", "fifo"],
)
@pytest.mark.timeout(60)
def test_check_prints_file_and_line_and_exits_1_without_a_traceback(
    make: Callable[[], str] | None, pattern: str, tmp_path: Path, fifo: Path
) -> None:
    """Findings 11-13 and the contract ("never a traceback"): ``agent-warden check``."""
    if make is None:
        path = fifo
    else:
        path = tmp_path / "policy.yaml"
        path.write_text(make())
    done = child(["-m", "proxy", "check", str(path)], timeout=30)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    one_problem(lines, str(path), pattern)
