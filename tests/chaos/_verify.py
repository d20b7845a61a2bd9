"""The verified workload's truth and an independent verifier.

The workload: keyed integer events, ``key-{i % 997}`` -> ``str(i)``, written by
a plain confluent producer whose delivery reports (``Produced``) are the truth:
every ``(partition, offset)`` that exists, the number of events of each key
and the sum of their values.

The app under test (``apps/verified.py``) counts events per key into
``counts`` (``+= 1``: not idempotent, so at_least_once may count some twice),
adds each value into ``sums`` idempotently (``[last offset, sum]``: an event at
or below the last offset is skipped, so the sum is exact even when events are
processed again) and echoes every input to a sink topic as
``"partition:offset:value"``.

The verifier reads what a user of the broker sees, with plain confluent
clients (``isolation.level=read_committed``) and HTTP, never through
streamtrio: the sink topic, the two changelogs in log order and, when the
workers serve the web, ``GET /table/<name>/<key>/``. It compares them with the
truth and returns a :class:`Report`; :data:`RESULTS` collects the reports of a
run for the summary line (see conftest.py).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack
from confluent_kafka import Consumer, KafkaError, TopicPartition

from ..kafka._util import Produced, unique

__all__ = ["RESULTS", "Report", "Truth", "get_text", "metric", "read_all", "verify"]


@dataclass
class Truth:
    """What was produced: positions, and per key the count and the sum of the values."""

    positions: set[tuple[int, int]]  # of the good events
    counts: Counter[str]
    sums: dict[str, int]
    #: the poison values (neither a non-negative integer) by position
    poisons: dict[tuple[int, int], bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, produced: Produced) -> Truth:
        counts: Counter[str] = Counter()
        sums: dict[str, int] = defaultdict(int)
        positions: set[tuple[int, int]] = set()
        poisons: dict[tuple[int, int], bytes] = {}
        for partition, offsets in produced.values.items():
            for offset, raw in offsets.items():
                if not raw.isdigit():
                    poisons[(partition, offset)] = raw
                    continue
                value = int(raw)
                key = f"key-{value % 997}"
                counts[key] += 1
                sums[key] += value
                positions.add((partition, offset))
        return cls(positions, counts, dict(sums), poisons)


@dataclass
class Report:
    """One scenario's figures. ``ok`` applies the promise of the guarantee."""

    scenario: str
    guarantee: str
    events: int = 0
    lost: int = 0  # inputs with no echo on the sink
    duplicated: int = 0  # extra echoes on the sink
    regressions: int = 0  # a key's changelog value going down, in log order (both tables)
    below: int = 0  # keys whose count or sum ends below the truth (changelog)
    above: int = 0  # keys whose count ends above the truth (changelog)
    sums_wrong: int = 0  # keys whose idempotent sum is not exact (changelog)
    web_below: int | None = None  # keys the web view serves below the truth (None: web off)
    web_wrong: int | None = None  # keys the web view serves different from the changelog's last value
    caught_up_after: float | None = None  # seconds from the end of the last fault to all committed
    hangs: int = 0  # waits that ran out: catching up, a worker's exit
    bad_exits: int = 0  # graceful stops (SIGTERM) that did not exit 0
    faults: int = 0
    #: the scenario's own checks that failed (poison handling, exit codes, warnings), described
    failed_checks: list[str] = field(default_factory=list)
    #: the scenario's own figures ("replayed by the new owner": "0"), printed in the line
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} lost")
        if self.regressions:
            found.append(f"{self.regressions} changelog regressions")
        if self.below:
            found.append(f"{self.below} keys below the truth")
        if self.sums_wrong:
            found.append(f"{self.sums_wrong} idempotent sums not exact")
        if self.web_below:
            found.append(f"{self.web_below} keys below the truth in the web view")
        if self.web_wrong:
            found.append(f"{self.web_wrong} keys differ between the web view and the changelog")
        if self.hangs:
            found.append(f"{self.hangs} hangs")
        if self.bad_exits:
            found.append(f"{self.bad_exits} graceful stops not exiting 0")
        found += self.failed_checks
        if self.guarantee == "exactly_once":
            if self.duplicated:
                found.append(f"{self.duplicated} duplicated at the sink")
            if self.above:
                found.append(f"{self.above} keys above the truth")
        return found

    def ok(self) -> bool:
        return not self.problems()

    def line(self) -> str:
        caught = "-" if self.caught_up_after is None else f"{self.caught_up_after:.1f}s"
        web = "" if self.web_below is None else f", web below {self.web_below}, web wrong {self.web_wrong}"
        return (
            f"{self.scenario} [{self.guarantee}]: {self.faults} faults, {self.events} events, "
            f"lost {self.lost}, duplicated {self.duplicated}, regressions {self.regressions}, "
            f"below {self.below}, above {self.above}, sums wrong {self.sums_wrong}{web}, "
            f"caught up after {caught}, hangs {self.hangs}, bad exits {self.bad_exits}"
            + "".join(f", {name} {value}" for name, value in self.figures.items())
            + (f" ({'; '.join(self.notes + self.failed_checks)})" if self.notes or self.failed_checks else "")
        )


#: Every report of this run, in order (printed by conftest.py's terminal summary).
RESULTS: list[Report] = []


def read_all(bootstrap: str, topic: str, partitions: int, *, timeout: float = 60.0) -> list[Any]:
    """Every committed message of ``topic``, from the beginning to the end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("verifier"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout:g}s"
            for m in consumer.consume(num_messages=5000, timeout=0.2):
                if m.error() is None:
                    messages.append(m)
                    at_end.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    raise AssertionError(f"reading {topic}: {m.error()}")
    finally:
        consumer.close()
    return messages


def _in_log_order(records: Iterable[Any]) -> list[Any]:
    return sorted(records, key=lambda m: (m.partition(), m.offset()))


def changelog(records: Sequence[Any], rank: Any) -> tuple[int, dict[str, Any]]:
    """(how many times a key's ``rank(value)`` went down in log order, the last value of each key)."""
    regressions = 0
    last: dict[str, Any] = {}
    for m in _in_log_order(records):
        key = m.key().decode()  # raw keys
        if m.value() is None:
            last.pop(key, None)
            continue
        value = msgpack.unpackb(m.value())
        if key in last and rank(value) < rank(last[key]):
            regressions += 1
        last[key] = value
    return regressions, last


def sink_positions(records: Sequence[Any]) -> Counter[tuple[int, int]]:
    seen: Counter[tuple[int, int]] = Counter()
    for m in records:
        partition, offset, _value = m.value().decode().split(":")
        seen[(int(partition), int(offset))] += 1
    return seen


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def metric(texts: Iterable[str], name: str, **labels: str) -> float:
    """The sum over ``texts`` (Prometheus exposition) of the samples of ``name`` with ``labels``."""
    total = 0.0
    for text in texts:
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            metric_name, _, rest = sample.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
    return total


def _get_json(url: str, *, attempts: int = 20) -> Any:
    """GET ``url`` (following redirects to the owner); a 404 is ``None``; 503s are retried."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if attempt == attempts - 1:
                raise
        except OSError:
            if attempt == attempts - 1:
                raise
        time.sleep(0.5)
    raise AssertionError("unreachable")


def web_values(base_urls: Sequence[str], table: str, keys: Iterable[str]) -> dict[str, Any]:
    """Each key's value as ``GET <worker>/table/<table>/<key>/`` serves it (redirects followed)."""
    ordered = sorted(keys)

    def get(item: tuple[int, str]) -> Any:
        i, key = item
        body = _get_json(f"{base_urls[i % len(base_urls)]}/table/{table}/{key}/")
        return None if body is None else body["value"]

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(ordered, pool.map(get, enumerate(ordered)), strict=True))


def verify(
    report: Report,
    bootstrap: str,
    produced: Produced,
    *,
    app_id: str,
    sink: str,
    partitions: int,
    served: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> Report:
    """Fill ``report`` from the sink, the changelogs and ``served`` (the web view's counts and sums)."""
    truth = Truth.of(produced)
    report.events = len(truth.positions)

    sink_records = read_all(bootstrap, sink, partitions)
    echoes = sink_positions(sink_records)
    report.lost = len(truth.positions - set(echoes))
    report.duplicated = sum(n - 1 for n in echoes.values() if n > 1)
    strays = set(echoes) - truth.positions
    if strays:
        report.notes.append(f"{len(strays)} echoes of inputs never produced")
        report.lost += len(strays)  # a corrupt sink is as bad as a loss

    count_regressions, counts = changelog(
        read_all(bootstrap, f"{app_id}-counts-changelog", partitions), rank=lambda v: v
    )
    sum_regressions, sums = changelog(
        read_all(bootstrap, f"{app_id}-sums-changelog", partitions), rank=lambda v: v[0]
    )
    report.regressions = count_regressions + sum_regressions
    below = {k for k, n in truth.counts.items() if counts.get(k, 0) < n}
    below |= {k for k, s in truth.sums.items() if (sums.get(k) or [-1, 0])[1] < s}
    report.below = len(below)
    report.above = sum(1 for k, n in truth.counts.items() if counts.get(k, 0) > n)
    report.sums_wrong = sum(1 for k, s in truth.sums.items() if (sums.get(k) or [-1, 0])[1] != s)
    if below:
        counts_below = sum(1 for k, n in truth.counts.items() if counts.get(k, 0) < n)
        report.notes.append(
            f"{counts_below} counts below, {len(below) - counts_below} more keys with only sums below"
        )
        home = {m.key().decode(): m.partition() for m in sink_records}
        for k in sorted(below)[:5]:
            report.notes.append(
                f"{k} (partition {home.get(k)}): count {counts.get(k)} of {truth.counts[k]}, "
                f"sum {sums.get(k)} of {truth.sums[k]}"
            )
        by_partition = Counter(home.get(k) for k in below)
        report.notes.append(f"keys below by partition: {dict(sorted(by_partition.items()))}")

    if served is not None:
        served_counts, served_sums = served
        report.web_below = sum(
            1
            for k in truth.counts
            if (served_counts[k] or 0) < truth.counts[k] or (served_sums[k] or [-1, 0])[1] < truth.sums[k]
        )
        report.web_wrong = sum(
            1 for k in truth.counts if served_counts[k] != counts.get(k) or served_sums[k] != sums.get(k)
        )
    return report
