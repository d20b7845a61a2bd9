"""Helpers for worker tests on the test broker: plain confluent clients and worker processes.

The tests check what a user of the broker would see, so they produce, read
and look up committed offsets with plain confluent-kafka clients, never
through streamtrio. Blocking calls run in threads (``trio.to_thread``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"

#: Group timings that join in about a second on Tansu (Apache Kafka needs no such settings;
#: see test_default_group_timings_share_and_hand_back_partitions_within_seconds).
FAST_GROUP: dict[str, Any] = {"broker_session_timeout": 2.0, "broker_heartbeat_interval": 0.2}


def lmdb_app(app_id: str, bootstrap: str, datadir: Path, **settings: Any) -> Any:
    """An App on ``bootstrap`` with LMDB tables in ``datadir``, no web, a fast group;
    ``settings`` add to or override these."""
    import streamtrio

    return streamtrio.App(
        app_id,
        **{
            "broker": f"kafka://{bootstrap}",
            "store": "lmdb://",
            "datadir": str(datadir),
            "web_enabled": False,
            "shutdown_timeout": 20.0,
            **FAST_GROUP,
            **settings,
        },
    )


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, poll: float = 0.05) -> None:
    """Wait until ``predicate()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = trio.current_time() + timeout
    while not predicate():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await trio.sleep(poll)


# -- plain confluent clients -------------------------------------------------------


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    for future in futures.values():
        future.result(timeout=15)


class Produced:
    """What a plain producer wrote, from its delivery reports (never from watermarks).

    ``values[p]`` maps offset -> value of partition ``p``.
    """

    def __init__(self) -> None:
        self.values: dict[int, dict[int, bytes]] = defaultdict(dict)

    def count(self, partition: int) -> int:
        return len(self.values.get(partition, {}))

    def total(self) -> int:
        return sum(len(v) for v in self.values.values())

    def ends(self) -> dict[int, int]:
        """Per partition, the offset after the last message (offsets start at 0 on a new topic)."""
        ends = {p: max(offsets) + 1 for p, offsets in self.values.items() if offsets}
        for p, offsets in self.values.items():
            assert sorted(offsets) == list(range(len(offsets))), f"partition {p} has gaps"
        return ends

    def pairs(self) -> set[tuple[int, int]]:
        return {(p, off) for p, offsets in self.values.items() for off in offsets}


def new_producer(bootstrap: str) -> Any:
    # The Java client's partitioner, as streamtrio's producer uses.
    return Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5, "acks": "all"}
    )


def produce(
    bootstrap: str,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes]],
    produced: Produced | None = None,
    *,
    partition: int | None = None,
    producer: Any = None,
) -> Produced:
    """Produce ``(key, value)`` pairs and wait for every delivery report (blocking)."""
    produced = produced if produced is not None else Produced()
    producer = producer if producer is not None else new_producer(bootstrap)
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            produced.values[msg.partition()][msg.offset()] = msg.value()

    extra = {} if partition is None else {"partition": partition}
    for key, value in items:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered, **extra)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0 and not errors, f"{remaining} undelivered, errors: {errors[:3]}"
    return produced


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets, as any Kafka client sees them (blocking)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        result = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
    finally:
        consumer.close()
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in result}


async def committed_async(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    return await trio.to_thread.run_sync(committed, bootstrap, group, topic, partitions)


def read_topic(bootstrap: str, topic: str, partitions: int, *, timeout: float = 30.0) -> list[Any]:
    """Every message of ``topic`` from the beginning to the end of each partition (blocking)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout:g}s"
            for m in consumer.consume(num_messages=1000, timeout=0.2):
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


def spread_keys(n: int, *, start: int = 0) -> list[tuple[bytes, bytes]]:
    """``n`` events with many distinct keys; the value is the event's sequence number."""
    return [(f"key-{i % 997}".encode(), str(i).encode()) for i in range(start, start + n)]


# -- records written by worker processes ------------------------------------------------


def read_records(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """The ``partition offset`` lines the recorder app wrote (a torn last line is ignored)."""
    pairs: list[tuple[int, int]] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2:
                pairs.append((int(fields[0]), int(fields[1])))
    return pairs


def duplicates(pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
    return {pair: n for pair, n in Counter(pairs).items() if n > 1}


# -- worker processes --------------------------------------------------------------------


class WorkerProcess:
    """``python -m streamtrio run APP --broker kafka://... [ARGS]`` with its log in a file."""

    def __init__(
        self,
        name: str,
        app: Path | str,
        bootstrap: str,
        tmp_path: Path,
        env: dict[str, str],
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamtrio", "run", str(app), "--broker", f"kafka://{bootstrap}", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            tail = self.log()[-4000:]
            raise AssertionError(f"{self.name} did not exit within {timeout:g}s:\n{tail}") from exc
        finally:
            self._log.close()

    async def wait_async(self, timeout: float) -> int:
        return await trio.to_thread.run_sync(self.wait, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    async def wait_for_log(self, text: str, *, timeout: float = 60.0, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and self.log().count(text) < count:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            return self.log().count(text) >= count

        await wait_for(seen, timeout=timeout, what=f"{text!r} x{count} in {self.name}'s log", poll=0.1)


def partition_count(bootstrap: str, topic: str) -> int | None:
    """How many partitions ``topic`` has, or ``None`` if it does not exist (blocking)."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        return None
    return len(described.partitions)


class BackgroundProducer:
    """Produces ``batch`` events every ``interval`` seconds on a thread until stopped."""

    def __init__(self, bootstrap: str, topic: str, *, batch: int, interval: float) -> None:
        self.produced = Produced()
        self._bootstrap = bootstrap
        self._topic = topic
        self._batch = batch
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-producer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        producer = new_producer(self._bootstrap)
        sent = 0
        try:
            while not self._stop.is_set():
                produce(
                    self._bootstrap,
                    self._topic,
                    spread_keys(self._batch, start=sent),
                    self.produced,
                    producer=producer,
                )
                sent += self._batch
                self._stop.wait(self._interval)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> Produced:
        """Stop after the batch in progress; every event produced is delivered."""
        self._stop.set()
        if self._thread.ident is None:
            return self.produced  # never started
        self._thread.join(timeout=90)
        assert not self._thread.is_alive(), "the background producer did not stop"
        assert self.error is None, f"the background producer failed: {self.error!r}"
        return self.produced


_ASSIGNED = re.compile(r"streamtrio\._worker: assigned (.*)$", re.MULTILINE)


def last_assignment(log: str, topic: str) -> set[int] | None:
    """The partitions of ``topic`` in a worker log's last "assigned" line (``None``: none yet).

    With the eager ``range`` protocol every rebalance revokes everything and
    assigns anew, so the last line is the worker's current assignment.
    """
    lines = _ASSIGNED.findall(log)
    if not lines:
        return None
    found = re.search(re.escape(topic) + r"\[([0-9, ]*)\]", lines[-1])
    if found is None:
        return set()
    return {int(p) for p in found.group(1).split(",") if p.strip()}
