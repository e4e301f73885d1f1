"""Metrics: a tiny registry rendered as Prometheus text 0.0.4, and the proxy's instruments.

Everything runs on one event loop, so the hot paths take no lock: ``Counter.inc`` and
``Histogram.observe`` are a dict lookup on the label-value tuple and an in-place update,
with label checks and string work deferred to the first sight of a series and to scrapes.

``Registry.collect()`` is the one source of truth: ``render()`` formats it, and an
OpenTelemetry bridge can turn the same snapshot into OTLP without touching call sites
(counters: cumulative monotonic sums; gauges: gauges; histograms: explicit-bucket
histograms whose ``bucket_counts`` are per bucket, as OTLP wants, with ``bounds`` as the
explicit bounds and ``Registry.start_time_unix_nano`` as every point's start). It may run
on the exporter's thread: it copies each series table in one C-level call, so it never
sees a table change size, at worst an observation half-applied (bucket counted, sum not).
"""

from __future__ import annotations

import enum
import logging
import math
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

from proxy import __version__

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

LabelValues = tuple[str, ...]
GaugeCallback = Callable[[], float | Mapping[LabelValues, float]]


class Kind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of a counter or gauge: label values in the family's label-name order."""

    labels: LabelValues
    value: float


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """One histogram series; ``bucket_counts[i]`` counts values in (bounds[i-1], bounds[i]].

    There is one more count than bounds: the last is the overflow bucket (bounds[-1], +Inf].
    """

    labels: LabelValues
    bucket_counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.bucket_counts)

    def cumulative(self) -> tuple[int, ...]:
        """Counts of values <= each bound, then of all values: Prometheus' ``_bucket``."""
        out: list[int] = []
        running = 0
        for c in self.bucket_counts:
            running += c
            out.append(running)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Family:
    """A snapshot of one instrument: everything Prometheus and OTLP need to export it."""

    name: str
    kind: Kind
    help: str
    label_names: tuple[str, ...]
    samples: tuple[Sample, ...] = ()
    histograms: tuple[HistogramSample, ...] = ()
    bounds: tuple[float, ...] = ()  # histograms only, without +Inf
    unit: str = ""  # UCUM, for OTLP ("s"); the text format 0.0.4 has no place for it


def _check_name(name: str) -> None:
    if not _METRIC_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")


def _check_label_names(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for label in names:
        if not _LABEL_NAME_RE.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"invalid label name {label!r}")
        if label in seen:
            raise ValueError(f"duplicate label name {label!r}")
        seen.add(label)


class _Instrument:
    kind: Kind

    def __init__(
        self, name: str, help: str, label_names: Iterable[str] = (), *, unit: str = ""
    ) -> None:
        _check_name(name)
        self.name = name
        self.help = help
        self.label_names = tuple(label_names)
        self.unit = unit
        _check_label_names(self.label_names)

    def _series_key(self, label_values: LabelValues) -> LabelValues:
        """The checked key of a new series, as plain strings; never on the hot path."""
        if len(label_values) != len(self.label_names):
            raise ValueError(
                f"{self.name} takes {len(self.label_names)} label values "
                f"{self.label_names}, got {len(label_values)}"
            )
        for value in label_values:
            if not isinstance(value, str):
                raise TypeError(f"{self.name}: label value {value!r} is not a string")
        # A str enum member keys the same series; store its plain value for exporters.
        return tuple(str(value) for value in label_values)

    def series_names(self) -> tuple[str, ...]:
        """Every sample name this instrument renders, for the registry's clash check."""
        return (self.name,)

    def collect(self) -> Family:
        raise NotImplementedError


class _Valued(_Instrument):
    """Counters and gauges: one number per label-value tuple."""

    def __init__(
        self, name: str, help: str, label_names: Iterable[str] = (), *, unit: str = ""
    ) -> None:
        super().__init__(name, help, label_names, unit=unit)
        self._values: dict[LabelValues, float] = {}
        if not self.label_names:
            # An unlabelled series exists from the start, so it is exported as 0.
            self._values[()] = 0

    def value(self, *label_values: str) -> float:
        return self._values.get(label_values, 0)

    def collect(self) -> Family:
        items = sorted(self._values.copy().items())
        return Family(
            self.name,
            self.kind,
            self.help,
            self.label_names,
            samples=tuple(Sample(labels, value) for labels, value in items),
            unit=self.unit,
        )


class Counter(_Valued):
    """A monotonic count; the name must end in ``_total``."""

    kind = Kind.COUNTER

    def __init__(
        self, name: str, help: str, label_names: Iterable[str] = (), *, unit: str = ""
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in _total")
        super().__init__(name, help, label_names, unit=unit)

    def inc(self, *label_values: str, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        values = self._values
        try:
            values[label_values] += amount
        except KeyError:
            values[self._series_key(label_values)] = amount

    def touch(self, *label_values: str) -> None:
        """Create a series at 0, so it is exported (and rates start) before its first inc."""
        self._values.setdefault(self._series_key(label_values), 0)


class Gauge(_Valued):
    kind = Kind.GAUGE

    def set(self, value: float, *label_values: str) -> None:
        values = self._values
        if label_values in values:
            values[label_values] = value
        else:
            values[self._series_key(label_values)] = value

    def inc(self, *label_values: str, amount: float = 1) -> None:
        values = self._values
        try:
            values[label_values] += amount
        except KeyError:
            values[self._series_key(label_values)] = amount

    def dec(self, *label_values: str, amount: float = 1) -> None:
        self.inc(*label_values, amount=-amount)

    def replace(self, value: float, *label_values: str) -> None:
        """Make this the only series, in one step (an info gauge after a reload)."""
        self._values = {self._series_key(label_values): value}

    def remove(self, *label_values: str) -> None:
        self._values.pop(label_values, None)


class GaugeFunc(_Instrument):
    """A gauge computed at scrape time by a synchronous, cheap snapshot function.

    Without label names ``fn`` returns a number; with label names it returns a mapping
    of label-value tuples to numbers. It must not block or await (it may run on an
    exporter thread): read a counter the owner keeps current, not a remote store. With
    no function set, or when it raises, the family is exported without samples.
    """

    kind = Kind.GAUGE

    def __init__(
        self,
        name: str,
        help: str,
        fn: GaugeCallback | None = None,
        label_names: Iterable[str] = (),
        *,
        unit: str = "",
    ) -> None:
        super().__init__(name, help, label_names, unit=unit)
        self.fn = fn

    def set_function(self, fn: GaugeCallback | None) -> None:
        self.fn = fn

    def _read(self) -> list[Sample]:
        if self.fn is None:
            return []
        try:
            result = self.fn()
            if isinstance(result, Mapping):
                items = sorted((self._series_key(k), float(v)) for k, v in result.items())
                return [Sample(labels, value) for labels, value in items]
            return [Sample(self._series_key(()), float(result))]
        except Exception:
            # A broken callback must not take the whole scrape down with it.
            log.warning("metric callback failed", exc_info=True, extra={"metric": self.name})
            return []

    def collect(self) -> Family:
        return Family(
            self.name,
            self.kind,
            self.help,
            self.label_names,
            samples=tuple(self._read()),
            unit=self.unit,
        )


class Histogram(_Instrument):
    """Fixed-bucket histogram; ``observe`` is one bisect and two in-place additions."""

    kind = Kind.HISTOGRAM

    def __init__(
        self,
        name: str,
        help: str,
        label_names: Iterable[str] = (),
        *,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        unit: str = "",
    ) -> None:
        super().__init__(name, help, label_names, unit=unit)
        if "le" in self.label_names:
            raise ValueError(f"{name}: 'le' is the histogram's own label")
        bounds = tuple(float(b) for b in buckets)
        if bounds and bounds[-1] == math.inf:
            bounds = bounds[:-1]  # +Inf is always the last bucket; naming it is harmless
        if not bounds:
            raise ValueError(f"{name}: a histogram needs at least one finite bucket")
        if any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ValueError(f"{name}: bucket bounds must be finite numbers")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"{name}: bucket bounds must be strictly increasing")
        self.bounds = bounds
        self.mirror: Callable[[float, LabelValues], None] | None = None
        """Also records each observation elsewhere (the OTLP export, when configured)."""
        # Per series: one count per bucket (the last is +Inf), then the sum.
        self._series: dict[LabelValues, list[float]] = {}
        if not self.label_names:
            self._series[()] = self._empty()

    def _empty(self) -> list[float]:
        return [0] * (len(self.bounds) + 1) + [0.0]

    def observe(self, value: float, *label_values: str) -> None:
        if value != value:  # NaN would poison the sum for the life of the process
            return
        try:
            state = self._series[label_values]
        except KeyError:
            state = self._series[self._series_key(label_values)] = self._empty()
        state[bisect_left(self.bounds, value)] += 1
        state[-1] += value
        if self.mirror is not None:
            self.mirror(value, label_values)

    def series_names(self) -> tuple[str, ...]:
        return tuple(self.name + suffix for suffix in ("", "_bucket", "_sum", "_count"))

    def collect(self) -> Family:
        snapshot = [(labels, state.copy()) for labels, state in self._series.copy().items()]
        snapshot.sort(key=lambda item: item[0])
        return Family(
            self.name,
            self.kind,
            self.help,
            self.label_names,
            histograms=tuple(
                HistogramSample(labels, tuple(int(c) for c in state[:-1]), state[-1])
                for labels, state in snapshot
            ),
            bounds=self.bounds,
            unit=self.unit,
        )


_I = TypeVar("_I", bound=_Instrument)


class Registry:
    def __init__(self) -> None:
        self.start_time_unix_nano = time.time_ns()
        self._instruments: list[_Instrument] = []
        self._taken: set[str] = set()

    def register(self, instrument: _I) -> _I:
        names = instrument.series_names()
        clash = self._taken.intersection(names)
        if clash:
            raise ValueError(f"metric {instrument.name!r} clashes with {sorted(clash)}")
        self._taken.update(names)
        self._instruments.append(instrument)
        self._instruments.sort(key=lambda i: i.name)
        return instrument

    def collect(self) -> tuple[Family, ...]:
        """A structured snapshot of every instrument, ordered by name."""
        return tuple(instrument.collect() for instrument in self._instruments)

    def render(self) -> bytes:
        """The Prometheus text exposition format 0.0.4 (serve it as ``CONTENT_TYPE``)."""
        return render(self.collect())


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    for family in families:
        name = family.name
        lines.append(f"# HELP {name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {name} {family.kind}")
        for sample in family.samples:
            labels = _label_text(family.label_names, sample.labels)
            lines.append(f"{name}{labels} {_number(sample.value)}")
        if family.histograms:
            les = [_number(b) for b in family.bounds] + ["+Inf"]
            for hist in family.histograms:
                pairs = _label_pairs(family.label_names, hist.labels)
                for le, count in zip(les, hist.cumulative(), strict=True):
                    lines.append(f'{name}_bucket{{{pairs}{"," if pairs else ""}le="{le}"}} {count}')
                labels = f"{{{pairs}}}" if pairs else ""
                lines.append(f"{name}_sum{labels} {_number(hist.sum)}")
                lines.append(f"{name}_count{labels} {hist.count}")
    if not lines:
        return b""
    lines.append("")
    return "\n".join(lines).encode()


class Merge(enum.StrEnum):
    """How one family of several processes' snapshots becomes one (``merge``)."""

    SUM = "sum"  # per label set: counters, histograms, gauges of per-process quantities
    MAX = "max"  # per label set, the largest: the same in every process (info gauges)
    FIRST = "first"  # the first snapshot that has samples: one process's own reading


def merge(
    snapshots: Iterable[Iterable[Family]], rules: Mapping[str, Merge] | None = None
) -> tuple[Family, ...]:
    """Several registries' ``collect()`` as one snapshot, ordered by name, for ``render``.

    Each family merges by ``rules[name]``, else ``Merge.SUM``. The first snapshot holding
    a family fixes its kind, help, label names, bounds and unit; a family of that name
    that disagrees on any of them (another build) is left out rather than mixed in.
    Histograms always merge by ``SUM`` (bucket by bucket, and their sums).
    """
    rules = MERGE_RULES if rules is None else rules
    first: dict[str, Family] = {}
    values: dict[str, dict[LabelValues, float]] = {}
    hists: dict[str, dict[LabelValues, list[float]]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            name = family.name
            head = first.get(name)
            if head is None:
                head = first[name] = family
                values[name], hists[name] = {}, {}
            elif (head.kind, head.label_names, head.bounds) != (
                family.kind,
                family.label_names,
                family.bounds,
            ):
                log.warning("metric left out of a merge: its shape differs", extra={"metric": name})
                continue
            rule = rules.get(name, Merge.SUM)
            merged = values[name]
            if rule is Merge.FIRST and (merged or hists[name]):
                continue
            for sample in family.samples:
                had = merged.get(sample.labels)
                if had is None:
                    merged[sample.labels] = sample.value
                elif rule is Merge.MAX:
                    merged[sample.labels] = _larger(had, sample.value)
                else:
                    merged[sample.labels] = had + sample.value
            width = len(head.bounds) + 1
            for hist in family.histograms:
                if len(hist.bucket_counts) != width:
                    continue  # not this family's buckets: never a mixed histogram
                state = hists[name].setdefault(hist.labels, [0] * width + [0.0])
                for i, count in enumerate(hist.bucket_counts):
                    state[i] += count
                state[-1] += hist.sum
    out: list[Family] = []
    for name in sorted(first):
        head = first[name]
        out.append(
            Family(
                name,
                head.kind,
                head.help,
                head.label_names,
                samples=tuple(Sample(k, v) for k, v in sorted(values[name].items())),
                histograms=tuple(
                    HistogramSample(k, tuple(int(c) for c in state[:-1]), state[-1])
                    for k, state in sorted(hists[name].items())
                ),
                bounds=head.bounds,
                unit=head.unit,
            )
        )
    return tuple(out)


def _larger(a: float, b: float) -> float:
    """``max`` that ignores a NaN (an unknown reading) beside a number."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_pairs(names: tuple[str, ...], values: LabelValues) -> str:
    return ",".join(
        f'{name}="{_escape_value(value)}"' for name, value in zip(names, values, strict=True)
    )


def _label_text(names: tuple[str, ...], values: LabelValues) -> str:
    return f"{{{_label_pairs(names, values)}}}" if names else ""


def _number(value: float) -> str:
    """Shortest round-trip text; integral values without ``.0``, as Go's client writes them."""
    if isinstance(value, int):
        return str(int(value))  # int() turns a stray bool into 1 or 0
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class RequestOutcome(enum.StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    AUDIT_DENIED = "audit_denied"
    UPSTREAM_ERROR = "upstream_error"
    INVALID = "invalid"


class CloseCause(enum.StrEnum):
    DELETE = "delete"  # the client's DELETE with the session id
    ADMIN = "admin"  # DELETE /sessions/{id} on the admin listener
    EXPIRED = "expired"  # ttl or idle timeout, found by a request or the sweeper
    STREAM_END = "stream_end"  # an MCP 2024-11-05 session's event stream ended


class ReloadResult(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


# How the supervisor of ``--workers N`` merges its own snapshot (first) with the workers'
# (proxy/workers.py); every family not named here is summed per label set: requests,
# denials, sessions opened and closed, upstream failures, limits tripped, the latency
# histogram, requests in flight.
MERGE_RULES: Mapping[str, Merge] = {
    # Read from the shared store by the supervisor alone (the workers serve no /metrics).
    "agent_warden_sessions_live": Merge.FIRST,
    # Every process watches the same file: one edit is one reload, not one per process.
    "agent_warden_policy_reloads_total": Merge.MAX,
    # Every worker reads the same file (the supervisor reports none): 1 once one of them
    # has loaded the current version; all of them agree within a polling interval.
    "agent_warden_policy_file_valid": Merge.MAX,
    # Info gauges stay 1; a policy or build some process does not share shows as a
    # second series.
    "agent_warden_policy_info": Merge.MAX,
    "agent_warden_build_info": Merge.MAX,
}


class Metrics:
    """The proxy's instruments, declared in one place.

    Every label takes values from a fixed set, so the number of series is bounded:
    ``protocol`` is ``mcp`` or ``a2a``; ``outcome``, ``cause`` and ``result`` are the enums
    above; ``reason`` is an ErrorInfo reason (denials) or an upstream failure class, both
    from fixed tables; ``mode`` is ``enforce`` or ``audit``. The one open-ended input, the
    JSON-RPC method, A2A operation or HTTP method a client sends, goes through
    the forwarder's ``_method_label``, which folds anything unknown into ``other``.
    """

    def __init__(self, registry: Registry | None = None, *, version: str = __version__) -> None:
        r = self.registry = registry if registry is not None else Registry()
        self.requests = r.register(
            Counter(
                "agent_warden_requests_total",
                "Requests seen by the proxy, by protocol, method and outcome.",
                ("protocol", "method", "outcome"),
            )
        )
        self.denials = r.register(
            Counter(
                "agent_warden_denials_total",
                "Policy denials by reason and mode (audit: recorded, not blocked).",
                ("reason", "mode"),
            )
        )
        self.upstream_latency = r.register(
            Histogram(
                "agent_warden_upstream_latency_seconds",
                "Time from forwarding a request to the upstream's response headers.",
                ("protocol",),
                unit="s",
            )
        )
        self.upstream_failures = r.register(
            Counter(
                "agent_warden_upstream_failures_total",
                "Upstream calls that failed before a response, by failure class.",
                ("reason",),
            )
        )
        self.live_sessions = r.register(
            GaugeFunc("agent_warden_sessions_live", "Sessions currently live.")
        )
        self.sessions_opened = r.register(
            Counter(
                "agent_warden_sessions_opened_total",
                "Sessions opened, by protocol.",
                ("protocol",),
            )
        )
        self.sessions_closed = r.register(
            Counter(
                "agent_warden_sessions_closed_total",
                "Sessions ended, by cause.",
                ("cause",),
            )
        )
        self.limits_tripped = r.register(
            Counter(
                "agent_warden_limits_tripped_total",
                "Proxy-wide safety limits that refused, cut or closed something, by limit.",
                ("limit",),
            )
        )
        self.policy_reloads = r.register(
            Counter(
                "agent_warden_policy_reloads_total",
                "Policy file reloads, by result (a failure keeps the last good policy).",
                ("result",),
            )
        )
        self.policy_file_valid = r.register(
            GaugeFunc(
                "agent_warden_policy_file_valid",
                "1 when the policy file on disk loads, 0 when the last attempt to load it "
                "failed (the last good policy stays in force); absent without a policy file.",
            )
        )
        self.policy_info = r.register(
            Gauge(
                "agent_warden_policy_info",
                "The policy in force: its source and the SHA-256 of its text.",
                ("source", "sha256"),
            )
        )
        self.build_info = r.register(
            Gauge("agent_warden_build_info", "The running build.", ("version",))
        )
        self.in_flight = r.register(
            Gauge("agent_warden_requests_in_flight", "Requests being handled now.")
        )
        self.decision_log = r.register(
            Counter(
                "agent_warden_decision_log_lines_total",
                "Decision-log lines (--decision-log), by result: written, or failed (the "
                "file refused the write; the request was not affected).",
                ("result",),
            )
        )
        self.build_info.set(1, version)
        for result in ("written", "failed"):
            self.decision_log.touch(result)
        for cause in CloseCause:
            self.sessions_closed.touch(cause)
        for result in ReloadResult:
            self.policy_reloads.touch(result)

    def set_live_sessions(self, fn: Callable[[], float] | None) -> None:
        """Where the live-session count comes from: a synchronous, non-blocking read."""
        self.live_sessions.set_function(fn)

    def set_policy(self, source: str, sha256: str) -> None:
        """Record the policy now in force, replacing the previous one's series."""
        self.policy_info.replace(1, source, sha256)

    def render(self) -> bytes:
        return self.registry.render()
