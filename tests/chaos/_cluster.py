"""A group of worker processes running the verified workload, for the scenarios to hurt.

``chaos_cluster(...)`` creates the topics, starts a background producer of
keyed integer events and (with ``proxied=True``) a TCP proxy every worker
reaches the broker through; the scenario starts, kills, stops and restarts
workers (``start``, ``kill9``, ``stop``) and marks the end of each fault
(``fault_over``). ``finish()`` stops the producer, waits until the group has
committed every event, reads the web view (with ``web=True``), stops every
worker with SIGTERM, runs the verifier and records the report.
"""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from ..kafka._util import Produced, WorkerProcess, committed, new_producer, spread_keys, unique
from ._broker import ChaosBroker, _free_port
from ._proxy import TcpProxy
from ._verify import RESULTS, Report, Truth, get_text, verify, web_values

APP = Path(__file__).resolve().parent / "apps" / "verified.py"
PARTITIONS = 6
#: where the worker logs of a failed scenario are kept
ARTIFACTS = Path(tempfile.gettempdir()) / "streamtrio-chaos"
#: a graceful stop may take the app's shutdown_timeout plus this much
EXIT_MARGIN = 2.0


def _create_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names]
    )
    for future in futures.values():
        future.result(timeout=15)


def poison(kind: str, i: int) -> bytes:
    """A value the app cannot decode (``"decode"``) or raises on (``"agent"``)."""
    return {"decode": f"poison{{{i}", "agent": f"-{i}"}[kind].encode()


class Workload:
    """Keyed integer events (``spread_keys``), ``batch`` every ``interval`` s, on a thread until stopped.

    Like tests/kafka/_util.BackgroundProducer, but a batch waits for its
    delivery reports as long as it takes (a frozen broker holds them for a
    minute); what was delivered is in :attr:`produced`.

    With ``poison_every=k`` every k-th event is a poison value instead, in
    turn of each kind in ``poison_kinds``: ``"decode"`` (not JSON:
    ``poison{i``) and ``"agent"`` (a negative integer, ``-i``: the app
    raises). :meth:`inject` adds one poison value to the next batch.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        batch: int,
        interval: float,
        poison_every: int = 0,
        poison_kinds: tuple[str, ...] = ("decode", "agent"),
    ) -> None:
        self.produced = Produced()
        self.error: BaseException | None = None
        self._bootstrap, self._topic, self._batch, self._interval = bootstrap, topic, batch, interval
        self._poison_every, self._poison_kinds = poison_every, poison_kinds
        self._injected: list[tuple[bytes, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> Workload:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            producer = new_producer(self._bootstrap)
            errors: list[Any] = []

            def delivered(err: Any, msg: Any) -> None:
                if err is not None:
                    errors.append(err)
                else:
                    self.produced.values[msg.partition()][msg.offset()] = msg.value()

            sent = 0
            while not self._stop.is_set():
                events = enumerate(spread_keys(self._batch, start=sent), sent)
                batch = [self._poisoned(i, item) for i, item in events]
                batch += self._injected
                self._injected = []
                for key, value in batch:
                    while True:
                        try:
                            producer.produce(self._topic, value=value, key=key, on_delivery=delivered)
                            break
                        except BufferError:
                            producer.poll(0.05)
                while producer.flush(1.0) > 0:
                    pass
                assert not errors, f"undelivered: {errors[:3]}"
                sent += self._batch
                self._stop.wait(self._interval)
        except BaseException as exc:
            self.error = exc

    def _poisoned(self, i: int, item: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        k = self._poison_every
        if not k or i % k != k - 1:
            return item
        kind = self._poison_kinds[(i // k) % len(self._poison_kinds)]
        return item[0], poison(kind, i)

    def inject(self, key: bytes, kind: str, i: int) -> None:
        """Add the poison value ``poison(kind, i)`` for ``key`` to the next batch."""
        self._injected = [*self._injected, (key, poison(kind, i))]

    def stop(self) -> Produced:
        """Stop after the batch in progress is delivered."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=400)
            assert not self._thread.is_alive(), "the workload producer did not stop"
        assert self.error is None, f"the workload producer failed: {self.error!r}"
        return self.produced


class Cluster:
    def __init__(
        self,
        kafka: ChaosBroker,
        tmp_path: Path,
        report: Report,
        *,
        workers: int,
        proxy: TcpProxy | None,
        web: bool,
        shutdown_timeout: float,
        delay: float,
        env: dict[str, str],
    ) -> None:
        self.kafka = kafka
        self.report = report
        self.proxy = proxy
        self.shutdown_timeout = shutdown_timeout
        self.app_id, self.source, self.sink = unique("chaos"), unique("chaos-in"), unique("chaos-out")
        self.random = random.Random(19)
        self.slots = range(workers)
        self.procs: dict[int, WorkerProcess | None] = dict.fromkeys(self.slots)
        self.exits: list[tuple[str, int, float]] = []  # (worker, exit code, seconds) of graceful stops
        self.web_ports = {i: _free_port() for i in self.slots} if web else {}
        self.last_fault_over = time.monotonic()
        self._tmp = tmp_path
        self._incarnations = dict.fromkeys(self.slots, 0)
        self._delay = delay
        self._env = env
        self.producer: Workload | None = None
        #: each running worker's /metrics text, read by finish() (web=True) before the stops
        self.metrics: list[str] = []

    @property
    def worker_bootstrap(self) -> str:
        if self.proxy is not None:
            assert self.kafka.proxied is not None
            return self.kafka.proxied[0]
        return self.kafka.bootstrap

    @property
    def producing(self) -> Workload:
        assert self.producer is not None
        return self.producer

    def datadir(self, slot: int) -> Path:
        return self._tmp / f"data-w{slot}"

    def start(self, slot: int, env: dict[str, str] | None = None) -> WorkerProcess:
        """Start worker ``slot`` with the cluster's environment, updated with ``env``."""
        assert self.procs[slot] is None, f"w{slot} is running"
        self._incarnations[slot] += 1
        env = {
            "CHAOS_APP_ID": self.app_id,
            "CHAOS_SOURCE": self.source,
            "CHAOS_SINK": self.sink,
            "CHAOS_PARTITIONS": str(PARTITIONS),
            "CHAOS_GUARANTEE": self.report.guarantee,
            "CHAOS_DATADIR": str(self.datadir(slot)),
            "CHAOS_SHUTDOWN_TIMEOUT": str(self.shutdown_timeout),
            "CHAOS_DELAY": str(self._delay),
            **self._env,
            **(env or {}),
        }
        if self.web_ports:
            env["CHAOS_WEB_PORT"] = str(self.web_ports[slot])
        name = f"w{slot}.{self._incarnations[slot]}"
        proc = WorkerProcess(name, APP, self.worker_bootstrap, self._tmp, env)
        self.procs[slot] = proc
        return proc

    def running(self) -> list[int]:
        return [i for i, p in self.procs.items() if p is not None]

    def stopped(self) -> list[int]:
        return [i for i, p in self.procs.items() if p is None]

    def pick_running(self) -> int:
        return self.random.choice(self.running())

    async def wait_assigned(self, slot: int, *, timeout: float = 60.0) -> None:
        proc = self.procs[slot]
        assert proc is not None
        await proc.wait_for_log("streamtrio._worker: assigned", timeout=timeout)

    def kill9(self, slot: int) -> None:
        proc = self.procs[slot]
        assert proc is not None
        proc.kill()
        self.procs[slot] = None
        self.report.faults += 1

    async def stop(self, slot: int, *, fault: bool = True) -> tuple[int, float]:
        """SIGTERM; wait for the exit (a hang past shutdown_timeout + EXIT_MARGIN is counted)."""
        proc = self.procs[slot]
        assert proc is not None
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        try:
            code = await proc.wait_async(self.shutdown_timeout + 30)
        except AssertionError:
            proc.kill()
            code = -9
        took = time.monotonic() - began
        self.procs[slot] = None
        self.exits.append((proc.name, code, took))
        if took > self.shutdown_timeout + EXIT_MARGIN:
            self.report.hangs += 1
            self.report.notes.append(f"{proc.name} took {took:.1f}s to exit")
        if code != 0:
            self.report.bad_exits += 1
            self.report.notes.append(f"{proc.name} exited {code}")
        if fault:
            self.report.faults += 1
        return code, took

    async def exited(self, slot: int, *, timeout: float = 60.0) -> int:
        """Wait until worker ``slot`` exits by itself (no signal); its exit code."""
        proc = self.procs[slot]
        assert proc is not None
        code = await proc.wait_async(timeout)
        self.procs[slot] = None
        return code

    def fault_over(self) -> None:
        self.last_fault_over = time.monotonic()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc is not None:
                proc.kill()

    def logs(self) -> str:
        return "\n".join(
            f"== {path.stem}\n{path.read_text()[-3000:]}" for path in sorted(self._tmp.glob("w*.log"))
        )

    async def finish(self, *, catch_up_timeout: float = 120.0) -> Report:
        """Stop producing, wait until all is committed, check the web, stop the workers, verify."""
        assert self.producer is not None
        produced = await trio.to_thread.run_sync(self.producer.stop)
        ends = produced.ends()
        deadline = time.monotonic() + catch_up_timeout
        while True:
            try:
                done = await trio.to_thread.run_sync(
                    committed, self.kafka.bootstrap, self.app_id, self.source, PARTITIONS
                )
            except KafkaException:
                done = {}  # the coordinator moving or loading after a fault: ask again
            if all(done.get(p) == end for p, end in ends.items()):
                self.report.caught_up_after = time.monotonic() - self.last_fault_over
                break
            if time.monotonic() > deadline:
                self.report.hangs += 1
                self.report.notes.append(f"not caught up after {catch_up_timeout:g}s: {done} of {ends}")
                break
            await trio.sleep(0.5)
        served = None
        if self.web_ports:
            # read the web view while the group is settled, before the workers stop
            urls = [f"http://127.0.0.1:{self.web_ports[i]}" for i in self.running()]
            truth = Truth.of(produced)
            served = await trio.to_thread.run_sync(
                lambda: (web_values(urls, "counts", truth.counts), web_values(urls, "sums", truth.sums))
            )
            self.metrics = [await trio.to_thread.run_sync(get_text, f"{url}/metrics") for url in urls]
        for slot in self.running():
            await self.stop(slot, fault=False)
        report = await trio.to_thread.run_sync(
            lambda: verify(
                self.report,
                self.kafka.bootstrap,
                produced,
                app_id=self.app_id,
                sink=self.sink,
                partitions=PARTITIONS,
                served=served,
            )
        )
        RESULTS.append(report)
        if not report.ok():
            # keep the worker logs: pytest removes old tmp dirs, and other runs rotate them
            kept = ARTIFACTS / f"{self.app_id}"
            kept.mkdir(parents=True, exist_ok=True)
            for path in self._tmp.glob("w*.log"):
                shutil.copy(path, kept / path.name)
            report.notes.append(f"logs in {kept}")
        return report


@asynccontextmanager
async def chaos_cluster(
    kafka: ChaosBroker,
    tmp_path: Path,
    scenario: str,
    *,
    guarantee: str = "at_least_once",
    workers: int = 3,
    proxied: bool = False,
    web: bool = False,
    shutdown_timeout: float = 5.0,
    delay: float = 0.0,
    batch: int = 50,
    interval: float = 0.05,
    env: dict[str, str] | None = None,
    poison_every: int = 0,
    poison_kinds: tuple[str, ...] = ("decode", "agent"),
) -> AsyncIterator[Cluster]:
    """A cluster of ``workers`` slots (none started) with the producer running."""
    proxy = None
    if proxied:
        if kafka.proxied is None:
            pytest.skip(f"{scenario}: needs a second listener behind the proxy (Apache Kafka only)")
        advertised, listening = kafka.proxied
        proxy = TcpProxy(int(advertised.rpartition(":")[2]), listening)
    cluster = Cluster(
        kafka,
        tmp_path,
        Report(scenario if kafka.kind == "kafka" else f"{scenario} on {kafka.kind}", guarantee),
        workers=workers,
        proxy=proxy,
        web=web,
        shutdown_timeout=shutdown_timeout,
        delay=delay,
        env=env or {},
    )
    await trio.to_thread.run_sync(_create_topics, kafka.bootstrap, cluster.source, cluster.sink)
    async with trio.open_nursery() as nursery:
        if proxy is not None:
            await nursery.start(proxy.serve)
        cluster.producer = Workload(
            kafka.bootstrap,
            cluster.source,
            batch=batch,
            interval=interval,
            poison_every=poison_every,
            poison_kinds=poison_kinds,
        ).start()
        try:
            yield cluster
        finally:
            cluster.kill_all()
            await trio.to_thread.run_sync(cluster.producer.stop)
            nursery.cancel_scope.cancel()
