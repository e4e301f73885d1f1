"""proxy.metrics: exposition read back by a strict parser, histograms, snapshots, hot paths."""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from dataclasses import dataclass, field

import pytest

from proxy import __version__
from proxy.metrics import (
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    MERGE_RULES,
    CloseCause,
    Counter,
    Family,
    Gauge,
    GaugeFunc,
    Histogram,
    HistogramSample,
    Kind,
    Merge,
    Metrics,
    Registry,
    ReloadResult,
    RequestOutcome,
    Sample,
    merge,
    render,
)
from proxy.workers import families_from_wire, families_to_wire

try:  # a second, independent reader when it happens to be installed; never a dependency
    from prometheus_client.parser import (  # type: ignore[import-not-found, unused-ignore]
        text_string_to_metric_families,
    )
except ImportError:  # pragma: no cover - depends on the environment
    text_string_to_metric_families = None

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
Labels = tuple[tuple[str, str], ...]


class ExpositionError(AssertionError):
    pass


@dataclass
class ParsedFamily:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def value(self, sample_name: str, **labels: str) -> float:
        want = tuple(sorted(labels.items()))
        found = [v for n, ls, v in self.samples if n == sample_name and tuple(sorted(ls)) == want]
        assert len(found) == 1, (sample_name, labels, self.samples)
        return found[0]


def _unescape_help(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt not in ("\\", "n"):
                raise ExpositionError(f"bad escape in HELP: {text!r}")
            out.append(ESCAPES[nxt])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse_labels(text: str, pos: int) -> tuple[Labels, int]:
    """Labels from ``{`` at ``pos`` to the closing ``}``; returns them and the next index."""
    assert text[pos] == "{"
    pos += 1
    labels: list[tuple[str, str]] = []
    while text[pos] != "}":
        m = LABEL_RE.match(text, pos)
        if m is None or text[m.end() : m.end() + 2] != '="':
            raise ExpositionError(f"bad label at {pos}: {text!r}")
        pos = m.end() + 2
        value: list[str] = []
        while text[pos] != '"':
            if text[pos] == "\n":
                raise ExpositionError("raw newline in a label value")
            if text[pos] == "\\":
                if text[pos + 1] not in ESCAPES:
                    raise ExpositionError(f"bad escape in label value: {text!r}")
                value.append(ESCAPES[text[pos + 1]])
                pos += 2
            else:
                value.append(text[pos])
                pos += 1
        labels.append((m.group(), "".join(value)))
        pos += 1
        if text[pos] == ",":
            pos += 1
            if text[pos] == "}":
                raise ExpositionError("trailing comma in labels")
        elif text[pos] != "}":
            raise ExpositionError(f"expected , or }} at {pos}: {text!r}")
    names = [n for n, _ in labels]
    if len(set(names)) != len(names):
        raise ExpositionError(f"duplicate label name: {text!r}")
    return tuple(labels), pos + 1


def _parse_value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ExpositionError(f"bad value {text!r}")
    return float(text)


def _family_of(sample_name: str, families: dict[str, ParsedFamily]) -> ParsedFamily:
    if sample_name in families and families[sample_name].type != "histogram":
        return families[sample_name]
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample_name.removesuffix(suffix)
        if base != sample_name and families.get(base, ParsedFamily("")).type == "histogram":
            return families[base]
    raise ExpositionError(f"sample {sample_name} has no declared family")


def parse_exposition(data: bytes) -> dict[str, ParsedFamily]:
    """A strict reader of text format 0.0.4 as this proxy writes it (no timestamps)."""
    text = data.decode("utf-8")
    if not text:
        return {}
    if not text.endswith("\n"):
        raise ExpositionError("exposition must end with a newline")
    families: dict[str, ParsedFamily] = {}
    finished: set[str] = set()
    current: str | None = None
    series: set[tuple[str, Labels]] = set()
    for line in text[:-1].split("\n"):
        if not line:
            raise ExpositionError("empty line")
        if line.startswith("#"):
            m = re.fullmatch(r"# (HELP|TYPE) (\S+) ?(.*)", line)
            if m is None:
                raise ExpositionError(f"unexpected comment {line!r}")
            keyword, name, rest = m.groups()
            if not NAME_RE.fullmatch(name):
                raise ExpositionError(f"bad metric name {name!r}")
            if name != current:
                if name in families:
                    raise ExpositionError(f"family {name} is not contiguous")
                if current is not None:
                    finished.add(current)
                families[name] = ParsedFamily(name)
                current = name
            family = families[name]
            if keyword == "HELP":
                if family.help is not None:
                    raise ExpositionError(f"second HELP for {name}")
                family.help = _unescape_help(rest)
            else:
                if rest not in TYPES or family.samples or family.type != "untyped":
                    raise ExpositionError(f"bad or late TYPE line {line!r}")
                family.type = rest
            continue
        m = NAME_RE.match(line)
        if m is None:
            raise ExpositionError(f"bad sample line {line!r}")
        sample_name, pos = m.group(), m.end()
        labels: Labels = ()
        if line[pos : pos + 1] == "{":
            try:
                labels, pos = _parse_labels(line, pos)
            except IndexError:
                raise ExpositionError(f"unterminated labels in {line!r}") from None
        if line[pos : pos + 1] != " " or " " in line[pos + 1 :]:
            raise ExpositionError(f"expected exactly one value in {line!r}")
        value = _parse_value(line[pos + 1 :])
        family = _family_of(sample_name, families)
        if family.name != current:
            raise ExpositionError(f"sample {sample_name} outside its family's block")
        key = (sample_name, tuple(sorted(labels)))
        if key in series:
            raise ExpositionError(f"duplicate series {key}")
        series.add(key)
        family.samples.append((sample_name, labels, value))
    for family in families.values():
        if family.type == "histogram":
            _check_histogram(family)
    return families


def _check_histogram(family: ParsedFamily) -> None:
    groups: dict[Labels, list[tuple[float, float]]] = {}
    counts: dict[Labels, float] = {}
    for name, labels, value in family.samples:
        rest = tuple(sorted(kv for kv in labels if kv[0] != "le"))
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            groups.setdefault(rest, []).append((_parse_value(le), value))
        elif name.endswith("_count"):
            counts[rest] = value
    assert groups.keys() == counts.keys(), family.name
    for rest, buckets in groups.items():
        les = [le for le, _ in buckets]
        if les != sorted(les) or les[-1] != math.inf:
            raise ExpositionError(f"{family.name}{rest}: buckets out of order or no +Inf")
        values = [v for _, v in buckets]
        if values != sorted(values):
            raise ExpositionError(f"{family.name}{rest}: buckets are not cumulative")
        if values[-1] != counts[rest]:
            raise ExpositionError(f"{family.name}{rest}: +Inf bucket differs from _count")


def parse(registry: Registry | Metrics) -> dict[str, ParsedFamily]:
    data = registry.render()
    parsed = parse_exposition(data)
    if text_string_to_metric_families is not None:  # pragma: no cover - optional reader
        names = {f.name for f in text_string_to_metric_families(data.decode())}
        assert {n.removesuffix("_total") for n in parsed} <= names | set(parsed)
    return parsed


# --- the exposition format ------------------------------------------------------------------


def test_the_proxys_instruments_render_as_strict_exposition() -> None:
    metrics = Metrics()
    metrics.requests.inc("mcp", "tools/call", RequestOutcome.ALLOWED)
    metrics.requests.inc("mcp", "tools/call", "allowed")
    metrics.requests.inc("a2a", "message/send", RequestOutcome.DENIED)
    metrics.denials.inc("TOOL_NOT_AUTHORIZED", "enforce")
    metrics.upstream_latency.observe(0.003, "mcp")
    metrics.upstream_failures.inc("connect")
    metrics.sessions_opened.inc("mcp")
    metrics.sessions_closed.inc(CloseCause.ADMIN)
    metrics.policy_reloads.inc(ReloadResult.SUCCESS)
    metrics.set_policy("/etc/warden/policy.yaml", "ab" * 32)
    metrics.set_live_sessions(lambda: 4)
    metrics.in_flight.inc()

    parsed = parse(metrics)

    expected = {
        "agent_warden_requests_total": ("counter", ("protocol", "method", "outcome")),
        "agent_warden_denials_total": ("counter", ("reason", "mode")),
        "agent_warden_upstream_latency_seconds": ("histogram", ("protocol",)),
        "agent_warden_upstream_failures_total": ("counter", ("reason",)),
        "agent_warden_sessions_live": ("gauge", ()),
        "agent_warden_sessions_opened_total": ("counter", ("protocol",)),
        "agent_warden_sessions_closed_total": ("counter", ("cause",)),
        "agent_warden_policy_reloads_total": ("counter", ("result",)),
        "agent_warden_policy_file_valid": ("gauge", ()),
        "agent_warden_limits_tripped_total": ("counter", ("limit",)),
        "agent_warden_policy_info": ("gauge", ("source", "sha256")),
        "agent_warden_build_info": ("gauge", ("version",)),
        "agent_warden_requests_in_flight": ("gauge", ()),
        "agent_warden_decision_log_lines_total": ("counter", ("result",)),
    }
    assert set(parsed) == set(expected)
    for name, (kind, label_names) in expected.items():
        family = parsed[name]
        assert family.type == kind
        assert family.help
        if kind == "counter":
            assert name.endswith("_total")
        for _, labels, _ in family.samples:
            assert tuple(n for n, _ in labels if n != "le") == label_names
    requests = parsed["agent_warden_requests_total"]
    assert (
        requests.value(requests.name, protocol="mcp", method="tools/call", outcome="allowed") == 2
    )
    assert (
        requests.value(requests.name, protocol="a2a", method="message/send", outcome="denied") == 1
    )
    info = parsed["agent_warden_build_info"]
    assert info.value(info.name, version=__version__) == 1
    live = parsed["agent_warden_sessions_live"]
    assert live.value(live.name) == 4
    closed = parsed["agent_warden_sessions_closed_total"]
    assert {dict(ls)["cause"]: v for _, ls, v in closed.samples} == {
        "admin": 1,
        "delete": 0,
        "expired": 0,
        "stream_end": 0,
    }


def test_exposition_text_is_exactly_as_specified() -> None:
    registry = Registry()
    counter = registry.register(Counter("x_total", "An x.\nSecond line \\ end.", ("a", "b")))
    counter.inc("1", "2", amount=3)
    gauge = registry.register(Gauge("g", "A g."))
    gauge.set(0.25)
    assert registry.render() == (
        b"# HELP g A g.\n"
        b"# TYPE g gauge\n"
        b"g 0.25\n"
        b"# HELP x_total An x.\\nSecond line \\\\ end.\n"
        b"# TYPE x_total counter\n"
        b'x_total{a="1",b="2"} 3\n'
    )
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ('say "hi"', 'say \\"hi\\"'),
        ("C:\\dir\\", "C:\\\\dir\\\\"),
        ("two\nlines", "two\\nlines"),
        ('\\"\n', '\\\\\\"\\n'),
        ("ünïcødé {}=,", "ünïcødé {}=,"),
        ("", ""),
    ],
)
def test_label_values_are_escaped_and_read_back(raw: str, escaped: str) -> None:
    registry = Registry()
    registry.register(Counter("c_total", "c", ("v",))).inc(raw)
    text = registry.render().decode()
    assert f'c_total{{v="{escaped}"}} 1\n' in text
    (_, labels, value), *_ = parse(registry)["c_total"].samples
    assert labels == (("v", raw),)
    assert value == 1


def test_ordering_is_stable_whatever_the_order_of_events() -> None:
    def build(order: list[tuple[str, str]]) -> bytes:
        registry = Registry()
        hist = registry.register(Histogram("h_seconds", "h", ("p",), buckets=(1.0,)))
        counter = registry.register(Counter("a_total", "a", ("x", "y")))
        for x, y in order:
            counter.inc(x, y)
            hist.observe(0.5, x)
        return registry.render()

    events = [("b", "1"), ("a", "2"), ("a", "1"), ("c", "0")]
    first = build(events)
    assert first == build(list(reversed(events)))
    names = [line.split()[2] for line in first.decode().splitlines() if line.startswith("# TYPE")]
    assert names == sorted(names)
    rows = [line for line in first.decode().splitlines() if line.startswith("a_total{")]
    assert rows == sorted(rows)


def test_empty_registry_renders_nothing_and_unlabelled_series_start_at_zero() -> None:
    assert Registry().render() == b""
    registry = Registry()
    registry.register(Counter("c_total", "c"))
    registry.register(Gauge("g", "g"))
    registry.register(Histogram("h", "h", buckets=(1.0,)))
    registry.register(Counter("labelled_total", "l", ("x",)))
    parsed = parse(registry)
    assert parsed["c_total"].value("c_total") == 0
    assert parsed["g"].value("g") == 0
    assert parsed["h"].value("h_count") == 0
    assert parsed["h"].value("h_bucket", le="+Inf") == 0
    assert parsed["labelled_total"].samples == []


def test_numbers_are_written_in_the_shortest_exact_form() -> None:
    registry = Registry()
    gauge = registry.register(Gauge("g", "g", ("k",)))
    cases = {
        "int": (7, "7"),
        "integral": (3.0, "3"),
        "fraction": (0.1, "0.1"),
        "tiny": (1e-7, "1e-07"),
        "huge": (1e300, "1e+300"),
        "neg": (-2.5, "-2.5"),
        "inf": (math.inf, "+Inf"),
        "ninf": (-math.inf, "-Inf"),
        "nan": (math.nan, "NaN"),
    }
    for key, (value, _) in cases.items():
        gauge.set(value, key)
    text = registry.render().decode()
    for key, (_, written) in cases.items():
        assert f'g{{k="{key}"}} {written}\n' in text
    parsed = parse(registry)["g"]
    assert parsed.value("g", k="tiny") == 1e-7
    assert math.isnan(parsed.value("g", k="nan"))


@pytest.mark.parametrize(
    "text",
    [
        b"x 1",  # no final newline
        b"x 1\n\n",  # empty line
        b"# TYPE x gauge\nx 1 2 3\n",  # timestamp and junk
        b"# TYPE x gauge\nx one\n",
        b'# TYPE x gauge\nx{a="1",} 1\n',
        b'# TYPE x gauge\nx{a="1} 1\n',
        b'# TYPE x gauge\nx{a="1",a="2"} 1\n',
        b'# TYPE x gauge\nx{a="\\t"} 1\n',  # unknown escape
        b'# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2\n',  # duplicate series
        b"y 1\n",  # no family
        b"# TYPE x gauge\n# TYPE y gauge\nx 1\n",  # outside its block
        b"# TYPE x gauge\n# TYPE x gauge\n",
        b"# TYPE x wibble\n",
        b"# a comment\n",
        b"# HELP x bad \\q escape\n",
        b'# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\n',
        b'# TYPE h histogram\nh_bucket{le="1"} 1\nh_count 1\n',  # no +Inf
        b'# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 1\n',
    ],
)
def test_the_strict_reader_refuses_malformed_text(text: bytes) -> None:
    with pytest.raises(ExpositionError):
        parse_exposition(text)


# --- histograms ----------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_inclusive_and_end_at_inf() -> None:
    registry = Registry()
    hist = registry.register(Histogram("lat_seconds", "l", ("p",), buckets=(0.1, 1.0, 5.0)))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0, 7.0, 100.0):
        hist.observe(value, "mcp")
    hist.observe(0.2, "a2a")
    hist.observe(math.nan, "mcp")  # dropped: it would poison the sum

    family = parse(registry)["lat_seconds"]
    buckets = {
        dict(ls)["le"]: v
        for n, ls, v in family.samples
        if n.endswith("_bucket") and ("p", "mcp") in ls
    }
    assert buckets == {"0.1": 2, "1": 4, "5": 5, "+Inf": 7}
    assert family.value("lat_seconds_count", p="mcp") == 7
    assert family.value("lat_seconds_sum", p="mcp") == pytest.approx(111.65)
    assert family.value("lat_seconds_bucket", p="a2a", le="0.1") == 0
    assert family.value("lat_seconds_bucket", p="a2a", le="1") == 1
    assert family.value("lat_seconds_count", p="a2a") == 1
    lines = registry.render().decode().splitlines()
    mcp = [line for line in lines if 'p="mcp"' in line]
    assert mcp[-3].startswith('lat_seconds_bucket{p="mcp",le="+Inf"} 7')
    assert mcp[-2:] == ['lat_seconds_sum{p="mcp"} 111.65', 'lat_seconds_count{p="mcp"} 7']


def test_default_buckets_suit_proxy_latencies() -> None:
    assert DEFAULT_BUCKETS == (
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
    )  # fmt: skip
    hist = Histogram("h_seconds", "h")
    assert hist.bounds == DEFAULT_BUCKETS
    hist.observe(0.0005)
    hist.observe(61)
    (sample,) = hist.collect().histograms
    assert sample.bucket_counts[0] == 1
    assert sample.bucket_counts[-1] == 1
    assert len(sample.bucket_counts) == len(DEFAULT_BUCKETS) + 1


@pytest.mark.parametrize(
    "buckets", [(), (1.0, 1.0), (2.0, 1.0), (math.nan,), (-math.inf, 1.0), (math.inf,)]
)
def test_histogram_refuses_bad_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bucket"):
        Histogram("h", "h", buckets=buckets)


def test_histogram_accepts_a_trailing_inf_and_refuses_an_le_label() -> None:
    assert Histogram("h", "h", buckets=(1, 2, math.inf)).bounds == (1.0, 2.0)
    with pytest.raises(ValueError, match="le"):
        Histogram("h", "h", ("le",))


# --- counters, gauges, callbacks -----------------------------------------------------------


def test_counter_series_are_keyed_by_their_label_tuple() -> None:
    counter = Counter("c_total", "c", ("protocol", "outcome"))
    counter.inc("mcp", "allowed")
    counter.inc("mcp", RequestOutcome.ALLOWED, amount=2)
    counter.inc("a2a", "allowed")
    counter.inc("allowed", "mcp")  # order matters: a different series
    assert counter.value("mcp", "allowed") == 3
    assert counter.value("a2a", "allowed") == 1
    assert counter.value("allowed", "mcp") == 1
    assert counter.value("never", "seen") == 0
    # Enum members are stored as their plain values, for exporters.
    assert all(type(v) is str for key in counter._values for v in key)

    with pytest.raises(ValueError, match="takes 2 label values"):
        counter.inc("mcp")
    with pytest.raises(TypeError, match="not a string"):
        counter.inc("mcp", 200)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc("mcp", "allowed", amount=-1)
    assert len(counter._values) == 3


def test_counter_touch_exports_a_series_before_its_first_increment() -> None:
    counter = Counter("c_total", "c", ("result",))
    counter.touch("failure")
    counter.touch("failure")
    assert counter.collect().samples == (Sample(("failure",), 0),)
    counter.inc("failure")
    counter.touch("failure")
    assert counter.value("failure") == 1


def test_increments_reuse_the_first_key_and_allocate_nothing_after_it() -> None:
    counter = Counter("c_total", "c", ("protocol", "method", "outcome"))
    hist = Histogram("h_seconds", "h", ("protocol",))
    gauge = Gauge("g", "g")
    labels = ("mcp", "tools/call", "allowed")
    counter.inc(*labels)
    hist.observe(0.01, "mcp")
    (first_key,) = counter._values
    (first_state,) = hist._series.values()

    def burst() -> None:
        for _ in range(2000):
            counter.inc(*labels)
            hist.observe(0.004, "mcp")
            gauge.inc()
            gauge.dec()

    burst()  # warm up anything lazily created by the interpreter
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        burst()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Anything retained per increment would be >= 8 bytes x 8000 updates; the slack absorbs
    # allocations of other threads (the suite's upstream servers) that tracemalloc also sees.
    assert after - before < 16_384
    (key,) = counter._values
    assert key is first_key
    assert hist._series[("mcp",)] is first_state
    assert counter.value(*labels) == 4001
    assert len(gauge._values) == 1


def test_gauge_set_inc_dec_replace_remove() -> None:
    gauge = Gauge("g", "g", ("k",))
    gauge.set(5, "a")
    gauge.inc("a", amount=2)
    gauge.dec("a")
    gauge.dec("b")
    assert gauge.value("a") == 6
    assert gauge.value("b") == -1
    gauge.replace(1, "only")
    assert gauge.collect().samples == (Sample(("only",), 1),)
    gauge.remove("only")
    gauge.remove("never")
    assert gauge.collect().samples == ()
    with pytest.raises(ValueError, match="label values"):
        gauge.set(1)


def test_policy_info_holds_one_series_replaced_on_reload() -> None:
    metrics = Metrics()
    assert metrics.policy_info.collect().samples == ()
    metrics.set_policy("builtin", "0" * 64)
    metrics.set_policy("/etc/p.yaml", "f" * 64)
    family = parse(metrics)["agent_warden_policy_info"]
    assert family.samples == [
        ("agent_warden_policy_info", (("source", "/etc/p.yaml"), ("sha256", "f" * 64)), 1)
    ]


def test_in_flight_goes_up_and_down() -> None:
    metrics = Metrics()
    metrics.in_flight.inc()
    metrics.in_flight.inc()
    metrics.in_flight.dec()
    assert (
        parse(metrics)["agent_warden_requests_in_flight"].value("agent_warden_requests_in_flight")
        == 1
    )


def test_gauge_func_reads_its_callback_at_scrape_time() -> None:
    live = [0]
    metrics = Metrics()
    family = parse(metrics)["agent_warden_sessions_live"]
    assert family.samples == []  # unknown until the store is wired in
    metrics.set_live_sessions(lambda: live[0])
    live[0] = 12
    assert parse(metrics)["agent_warden_sessions_live"].value("agent_warden_sessions_live") == 12
    live[0] = 3
    assert metrics.live_sessions.collect().samples == (Sample((), 3),)
    metrics.set_live_sessions(None)
    assert metrics.live_sessions.collect().samples == ()


def test_gauge_func_with_labels_takes_a_snapshot_mapping() -> None:
    registry = Registry()
    snapshot: dict[tuple[str, ...], float] = {("mcp",): 2, ("a2a",): 5}
    registry.register(GaugeFunc("live", "l", lambda: snapshot, ("protocol",)))
    family = parse(registry)["live"]
    assert family.samples == [
        ("live", (("protocol", "a2a"),), 5),
        ("live", (("protocol", "mcp"),), 2),
    ]


def test_a_failing_callback_drops_its_samples_not_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> float:
        raise RuntimeError("store gone")

    registry = Registry()
    registry.register(GaugeFunc("bad", "b", broken))
    wrong: dict[tuple[str, ...], float] = {("x", "y"): 1}
    registry.register(GaugeFunc("wrong_arity", "w", lambda: wrong, ("k",)))
    registry.register(Gauge("good", "g")).set(1)
    parsed = parse(registry)
    assert parsed["bad"].samples == []
    assert parsed["wrong_arity"].samples == []
    assert parsed["good"].value("good") == 1
    assert "metric callback failed" in caplog.text


# --- the snapshot for exporters ------------------------------------------------------------


def test_collect_is_a_structured_snapshot_an_otlp_bridge_can_export() -> None:
    metrics = Metrics()
    metrics.requests.inc("mcp", "initialize", "allowed")
    metrics.upstream_latency.observe(0.002, "mcp")
    metrics.upstream_latency.observe(0.2, "mcp")
    metrics.set_live_sessions(lambda: 1)

    families = {f.name: f for f in metrics.registry.collect()}
    assert list(families) == sorted(families)
    assert metrics.registry.start_time_unix_nano > 0

    requests = families["agent_warden_requests_total"]
    assert requests.kind is Kind.COUNTER
    assert requests.label_names == ("protocol", "method", "outcome")
    assert requests.help.startswith("Requests")
    assert requests.samples == (Sample(("mcp", "initialize", "allowed"), 1),)
    assert requests.histograms == ()

    latency = families["agent_warden_upstream_latency_seconds"]
    assert latency.kind is Kind.HISTOGRAM
    assert latency.unit == "s"
    assert latency.bounds == DEFAULT_BUCKETS
    (point,) = latency.histograms
    assert isinstance(point, HistogramSample)
    assert point.labels == ("mcp",)
    # OTLP's shape: one count per bucket (not cumulative), one more than the bounds.
    assert len(point.bucket_counts) == len(latency.bounds) + 1
    assert point.bucket_counts[DEFAULT_BUCKETS.index(0.0025)] == 1
    assert point.bucket_counts[DEFAULT_BUCKETS.index(0.25)] == 1
    assert sum(point.bucket_counts) == point.count == 2
    assert point.sum == pytest.approx(0.202)
    assert point.cumulative()[-1] == 2

    assert families["agent_warden_sessions_live"].kind is Kind.GAUGE
    assert families["agent_warden_sessions_live"].samples == (Sample((), 1),)

    # A snapshot is a copy: later events do not change it.
    metrics.requests.inc("mcp", "initialize", "allowed")
    assert requests.samples[0].value == 1


# --- names, labels, the registry -----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Counter("requests", "no suffix"), "_total"),
        (lambda: Counter("bad-name_total", "x"), "metric name"),
        (lambda: Gauge("9lives", "x"), "metric name"),
        (lambda: Gauge("g", "x", ("bad-label",)), "label name"),
        (lambda: Gauge("g", "x", ("__reserved",)), "label name"),
        (lambda: Gauge("g", "x", ("a", "a")), "duplicate"),
    ],
)
def test_bad_names_are_refused(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=message):
        make()


def test_registry_refuses_clashing_names() -> None:
    registry = Registry()
    registry.register(Histogram("lat", "l"))
    with pytest.raises(ValueError, match="clashes"):
        registry.register(Gauge("lat", "again"))
    with pytest.raises(ValueError, match="clashes"):
        registry.register(Gauge("lat_count", "a histogram's own series"))
    registry.register(Gauge("lat_other", "fine"))
    with pytest.raises(ValueError, match="clashes"):
        Metrics(registry=Metrics().registry)


def test_outcome_and_cause_values_are_the_documented_ones() -> None:
    assert [o.value for o in RequestOutcome] == [
        "allowed",
        "denied",
        "audit_denied",
        "upstream_error",
        "invalid",
    ]
    assert [c.value for c in CloseCause] == ["delete", "admin", "expired", "stream_end"]
    assert [r.value for r in ReloadResult] == ["success", "failure"]


# --- merging processes' snapshots (run --workers N) ------------------------------------------


def _worker(requests: int, latencies: tuple[float, ...], in_flight: int) -> Metrics:
    metrics = Metrics()
    for _ in range(requests):
        metrics.requests.inc("mcp", "tools/call", RequestOutcome.ALLOWED)
    metrics.requests.inc("a2a", "SendMessage", RequestOutcome.DENIED)
    for value in latencies:
        metrics.upstream_latency.observe(value, "mcp")
    metrics.in_flight.inc(amount=in_flight)
    metrics.set_policy("/etc/policy.yaml", "ab12")
    metrics.policy_reloads.inc(ReloadResult.SUCCESS)
    return metrics


def _by_name(families: tuple[Family, ...]) -> dict[str, Family]:
    names = [f.name for f in families]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    return {f.name: f for f in families}


def test_merge_sums_counters_histograms_and_per_process_gauges_per_label_set() -> None:
    a, b = _worker(3, (0.002, 0.2), 1), _worker(4, (0.2, 100.0), 2)
    b.denials.inc("SESSION_BUDGET_EXCEEDED", "enforce")  # a series only one process has
    merged = _by_name(merge([a.registry.collect(), b.registry.collect()]))

    requests = merged["agent_warden_requests_total"]
    assert requests.samples == (
        Sample(("a2a", "SendMessage", "denied"), 2),
        Sample(("mcp", "tools/call", "allowed"), 7),
    )
    assert merged["agent_warden_denials_total"].samples == (
        Sample(("SESSION_BUDGET_EXCEEDED", "enforce"), 1),
    )
    assert merged["agent_warden_requests_in_flight"].samples == (Sample((), 3),)
    (latency,) = merged["agent_warden_upstream_latency_seconds"].histograms
    assert latency.labels == ("mcp",)
    assert latency.count == 4
    assert latency.sum == pytest.approx(100.402)
    assert latency.bucket_counts[DEFAULT_BUCKETS.index(0.25)] == 2
    assert latency.bucket_counts[-1] == 1  # 100 s: the +Inf bucket
    assert merged["agent_warden_upstream_latency_seconds"].bounds == DEFAULT_BUCKETS
    # Kind, help, label names and unit come through; the result renders strictly.
    assert merged["agent_warden_upstream_latency_seconds"].unit == "s"
    parsed = parse_exposition(render(merged.values()))
    assert (
        parsed["agent_warden_requests_total"].value(
            "agent_warden_requests_total", protocol="mcp", method="tools/call", outcome="allowed"
        )
        == 7
    )
    assert parsed["agent_warden_upstream_latency_seconds"].type == "histogram"


def test_merge_takes_same_everywhere_families_once() -> None:
    supervisor, a, b = Metrics(), _worker(1, (), 0), _worker(1, (), 0)
    supervisor.set_live_sessions(lambda: 5)  # read from the shared store, by one process
    supervisor.set_policy("/etc/policy.yaml", "ab12")
    supervisor.policy_reloads.inc(ReloadResult.SUCCESS)
    merged = _by_name(merge([s.registry.collect() for s in (supervisor, a, b)], MERGE_RULES))
    assert merged["agent_warden_sessions_live"].samples == (Sample((), 5),)
    assert merged["agent_warden_build_info"].samples == (Sample((__version__,), 1),)
    assert merged["agent_warden_policy_info"].samples == (Sample(("/etc/policy.yaml", "ab12"), 1),)
    # One edit of the file is one reload, not one per process.
    reloads = dict((s.labels, s.value) for s in merged["agent_warden_policy_reloads_total"].samples)
    assert reloads == {("failure",): 0, ("success",): 1}
    # A process still on another policy shows as a second series, not as a 2.
    b.set_policy("/etc/policy.yaml", "cd34")
    merged = _by_name(merge([s.registry.collect() for s in (supervisor, a, b)]))
    assert [s.value for s in merged["agent_warden_policy_info"].samples] == [1, 1]


def test_merge_rules_first_max_and_sum() -> None:
    def gauge(name: str, *values: float) -> list[Family]:
        return [Family(name, Kind.GAUGE, "g", (), samples=(Sample((), v),)) for v in values]

    snapshots = [
        [*gauge("first", 1), *gauge("max", 1), *gauge("sum", 1)],
        [Family("first", Kind.GAUGE, "g", ()), *gauge("max", 7), *gauge("sum", 2)],
        [*gauge("first", 9), *gauge("max", float("nan")), *gauge("sum", 3)],
    ]
    rules = {"first": Merge.FIRST, "max": Merge.MAX}
    merged = _by_name(merge(snapshots, rules))
    assert merged["first"].samples == (Sample((), 1),)
    assert merged["max"].samples == (Sample((), 7),)  # an unknown (NaN) reading is not a max
    assert merged["sum"].samples == (Sample((), 6),)
    # FIRST is the first snapshot that has samples at all.
    merged = _by_name(merge([[Family("first", Kind.GAUGE, "g", ())], gauge("first", 4)], rules))
    assert merged["first"].samples == (Sample((), 4),)
    # A NaN reading taken once stays NaN: unknown is not zero.
    merged = _by_name(merge([gauge("first", float("nan")), gauge("first", 4)], rules))
    assert math.isnan(merged["first"].samples[0].value)


def test_merge_leaves_out_a_family_whose_shape_differs(caplog: pytest.LogCaptureFixture) -> None:
    counter = Family("x_total", Kind.COUNTER, "x", ("a",), samples=(Sample(("1",), 1),))
    relabelled = Family("x_total", Kind.COUNTER, "x", ("b",), samples=(Sample(("1",), 5),))
    as_gauge = Family("x_total", Kind.GAUGE, "x", ("a",), samples=(Sample(("1",), 5),))
    hist = Family(
        "h", Kind.HISTOGRAM, "h", (), histograms=(HistogramSample((), (1, 0), 1.0),), bounds=(1.0,)
    )
    rebucketed = Family(
        "h",
        Kind.HISTOGRAM,
        "h",
        (),
        histograms=(HistogramSample((), (0, 0, 3), 9.0),),
        bounds=(1.0, 2.0),
    )
    merged = _by_name(merge([[counter, hist], [relabelled, rebucketed], [as_gauge]]))
    assert merged["x_total"].samples == (Sample(("1",), 1),)
    assert merged["h"].histograms == (HistogramSample((), (1, 0), 1.0),)
    assert "metric left out of a merge" in caplog.text


def test_merge_of_nothing_and_of_one_snapshot() -> None:
    assert merge([]) == ()
    metrics = _worker(2, (0.01,), 1)
    assert merge([metrics.registry.collect()]) == metrics.registry.collect()
    assert render(merge([metrics.registry.collect()])) == metrics.render()


def test_families_cross_the_control_channel_unchanged() -> None:
    metrics = _worker(3, (0.002, 0.2, 1e9), 2)
    metrics.set_live_sessions(lambda: float("nan"))
    families = metrics.registry.collect()
    wire = json.loads(json.dumps(families_to_wire(families)))
    back = families_from_wire(wire)
    assert [f.name for f in back] == [f.name for f in families]
    for got, want in zip(back, families, strict=True):
        if got.name == "agent_warden_sessions_live":
            assert math.isnan(got.samples[0].value)
            continue
        assert got == want


def _wire(**changes: object) -> list[dict[str, object]]:
    family: dict[str, object] = {
        "name": "x",
        "kind": "gauge",
        "help": "",
        "labels": [],
        "samples": [],
        "histograms": [],
        "bounds": [],
        "unit": "",
    }
    return [{**family, **changes}]


@pytest.mark.parametrize(
    ("wire", "needle"),
    [
        ({}, "expected a list"),
        ([1], "expected an object"),
        (_wire(kind="summary"), "not a valid Kind"),
        (_wire(name=7), "must be strings"),
        (_wire(labels=["a"], samples=[[[], 1]]), "do not match the label names"),
        (_wire(samples=[[[], "1"]]), "expected a number"),
        (_wire(samples=[[[], True]]), "expected a number"),
        (_wire(samples=[[[]]]), "expected lists of 2"),
        (_wire(kind="histogram", bounds=[1.0], histograms=[[[], [1], 1.0]]), "bounds"),
        (_wire(kind="histogram", bounds=[1.0], histograms=[[[], [1, -1], 1.0]]), "non-negative"),
    ],
)
def test_families_from_the_wire_refuse_anything_else(wire: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        families_from_wire(wire)
