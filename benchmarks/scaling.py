"""How ``streamtrio run --workers N`` scales on this machine: throughput and CPU per event per process.

    python -m benchmarks.scaling                     # 300,000 events, stateless and stateful, N = 1, 2
    python -m benchmarks.scaling --events 100000 --workers 1,2,4 --workloads stateless

It starts Apache Kafka as ``python -m benchmarks`` does (or uses
``STREAMTRIO_TEST_BROKER``), then for each workload and N runs ``streamtrio
run APP --workers N`` on a fresh topic (8 partitions), group and data dir.
Once every worker process has its share of the partitions (checked on each
process's ``/stats/``), the benchmark's events (``benchmarks/workload.py``)
are produced in one Kafka transaction, left open: the workers read committed
records only (librdkafka's default), so they fetch nothing yet, and the
producer's work is outside the measurement. Committing the transaction
releases every event at once. Each process notes the wall time and its own
CPU time (``time.process_time()``) at its first event and every 256th; the
benchmark reads each process's and the broker's CPU time (utime + stime of
every thread, ``/proc/<pid>/stat``) at the release and when the group's
committed offsets reach the end. Reported per run:

- events/s: all events / (the last noted event of any process - the first
  event of any process);
- per process: its events, its rate, its CPU µs per event from the release
  to the last commit (fetch, decode, agent, commits and changelogs, plus
  what an idle worker spends while it waits up to a ``commit_interval`` for
  its last commit), and in brackets from its first event to its last noted
  one (processing only). It should not grow with N;
- the broker's CPU µs per event over the same span, when this script started
  the broker: it shares the cores.

A run whose sum of amounts differs from the produced total is FAILED.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition

from ._protocol import SPAN_SECONDS
from .workload import KEYS, PARTITIONS, amount_of, create_topics, expected_total

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")

APP = textwrap.dedent(
    '''
    """The measured app of benchmarks/scaling.py (written there, configured by its environment)."""
    import json
    import os
    import time
    from pathlib import Path

    import streamtrio

    out = Path(os.environ["SCALING_OUT"])
    index = os.environ.get("STREAMTRIO_WORKER_INDEX", "0")
    stateful = os.environ["SCALING_WORKLOAD"] == "stateful"
    app = streamtrio.App(
        os.environ["SCALING_GROUP"],
        store="lmdb://",
        datadir=os.environ["SCALING_DATADIR"],
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=int(os.environ["SCALING_WEB_PORT"]),
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.2,
        lmdb_map_size=1 << 31,
    )
    partitions = int(os.environ["SCALING_PARTITIONS"])
    topic = app.topic(os.environ["SCALING_TOPIC"], key_type=str, partitions=partitions)
    state = {"pid": os.getpid(), "index": index, "count": 0, "sum": 0}
    marks = []  # (events, wall time, CPU time) at the first event and every 256th
    written = 0
    if stateful:
        totals = app.Table("totals", default=int, key_type=str, value_type=int, partitions=partitions)


    @app.agent(topic)
    async def process(stream):
        count = total = 0
        clock, cpu = time.time, time.process_time
        async for value in stream:
            if count == 0:
                marks.append((0, clock(), cpu()))
            count += 1
            total += value["amount"]
            if stateful:
                totals[value["user"]] += value["amount"]
            if count % 256 == 0:
                marks.append((count, clock(), cpu()))
            state["count"] = count
            state["sum"] = total


    @app.timer(0.1)
    async def report():
        global written
        if written < len(marks):
            with open(out / f"marks-{index}.txt", "a") as f:
                f.writelines(f"{n} {t} {c}\\n" for n, t, c in marks[written:])
            written = len(marks)
        (out / f"progress-{index}.tmp").write_text(json.dumps(state))
        (out / f"progress-{index}.tmp").replace(out / f"progress-{index}.json")
    '''
)


def free_ports(count: int) -> int:
    """A port ``p`` with ``p .. p + count - 1`` free, below the kernel's ephemeral range."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} free ports in a row")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_until(predicate: Any, timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def produce_in_transaction(bootstrap: str, topic: str, events: int) -> Any:
    """Produce the workload's events in one open transaction; the caller commits it."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"scaling-{uuid.uuid4().hex[:8]}",
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "partitioner": "murmur2_random",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    span_ms = SPAN_SECONDS * 1000
    base_ms = int(time.time() * 1000) - span_ms
    for i in range(events):
        user = f"k{i % KEYS}"
        value = json.dumps({"user": user, "amount": amount_of(i)}, separators=(",", ":")).encode()
        while True:
            try:
                producer.produce(topic, value, user.encode(), timestamp=base_ms + i * span_ms // events)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("producing the events failed")
    return producer


def run_one(
    bootstrap: str, events: int, workload: str, workers: int, work: Path, broker_pid: int | None
) -> dict[str, Any]:
    run_dir = work / f"{workload}-{workers}-{uuid.uuid4().hex[:6]}"
    topic = f"scaling-{uuid.uuid4().hex[:6]}-events"
    create_topics(bootstrap, [topic])
    out = run_dir / "out"
    out.mkdir(parents=True)
    app_file = run_dir / "scaling_app.py"
    app_file.write_text(APP)
    base = free_ports(workers)
    import streamtrio

    # The streamtrio this script imported, whatever the run directory.
    path = [str(Path(streamtrio.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "SCALING_OUT": str(out),
        "SCALING_GROUP": f"scaling-{uuid.uuid4().hex[:8]}",
        "SCALING_DATADIR": str(run_dir / "data"),
        "SCALING_WEB_PORT": str(base),
        "SCALING_TOPIC": topic,
        "SCALING_PARTITIONS": str(PARTITIONS),
        "SCALING_WORKLOAD": workload,
    }
    log_path = run_dir / "run.log"
    command = [
        sys.executable,
        "-m",
        "streamtrio",
        "run",
        str(app_file),
        "--broker",
        f"kafka://{bootstrap}",
        "--workers",
        str(workers),
        "--no-progress",
        "--loglevel",
        "warning",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        low, extra = divmod(PARTITIONS, workers)
        shares = sorted(low + (1 if i < extra else 0) for i in range(workers))

        def split() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            held = []
            pids.clear()
            for i in range(workers):
                try:
                    doc = httpx.get(f"http://127.0.0.1:{base + i}/stats/", timeout=2).json()
                except (httpx.HTTPError, ValueError):
                    return False
                held.append(sum(1 for p in doc.get("partitions", {}).values() if p["topic"] == topic))
                pids.append(doc["process"]["pid"])
            return sorted(held) == shares

        pids: list[int] = []
        wait_until(split, 120, f"{workers} worker processes sharing the partitions")
        # read_committed (librdkafka's default): nothing is fetched before the commit
        producer = produce_in_transaction(bootstrap, topic, events)
        cpu_before = [cpu_seconds(pid) for pid in pids]
        broker_before = cpu_seconds(broker_pid) if broker_pid else None
        producer.commit_transaction(30)
        released = time.time()
        committed = Consumer({"bootstrap.servers": bootstrap, "group.id": env["SCALING_GROUP"]})
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]

        def all_committed() -> bool:
            offsets = committed.committed(partitions, timeout=10)
            return sum(max(tp.offset, 0) for tp in offsets) >= events

        wait_until(all_committed, 900, f"{events:,} events processed and committed", poll=0.05)
        done = time.time()
        cpu_after = [cpu_seconds(pid) for pid in pids]
        broker_after = cpu_seconds(broker_pid) if broker_pid else None
        committed.close()

        def progress() -> list[dict[str, Any]] | None:
            docs = [json.loads(p.read_text()) for p in sorted(out.glob("progress-*.json"))]
            return docs if sum(d["count"] for d in docs) >= events else None

        docs = wait_until(progress, 10, "the processes' last progress report", poll=0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    total = sum(d["sum"] for d in docs)
    per_process = []
    firsts, lasts = [], []
    by_pid = {d["pid"]: (d["index"], d) for d in docs}
    for pid, before, after in zip(pids, cpu_before, cpu_after, strict=True):
        index, doc = by_pid[pid]
        lines = (out / f"marks-{index}.txt").read_text().splitlines()
        marks = [tuple(map(float, line.split())) for line in lines]
        start, end = marks[0], marks[-1]
        firsts.append(start[1])
        lasts.append(end[1])
        per_process.append(
            {
                "events": doc["count"],
                "events_per_second": round((end[0] - start[0]) / (end[1] - start[1])),
                "cpu_us_per_event": round((after - before) / doc["count"] * 1e6, 1),
                "processing_cpu_us_per_event": round((end[2] - start[2]) / (end[0] - start[0]) * 1e6, 1),
            }
        )
    result: dict[str, Any] = {
        "workload": workload,
        "workers": workers,
        "ok": total == expected_total(events) and code == 0,
        "exit_code": code,
        "events": events,
        "seconds": round(max(lasts) - min(firsts), 2),
        "events_per_second": round(events / (max(lasts) - min(firsts))),
        "seconds_to_committed": round(done - released, 2),
        "processes": per_process,
        "broker_cpu_us_per_event": (
            round((broker_after - broker_before) / events * 1e6, 1)
            if broker_before is not None and broker_after is not None
            else None
        ),
    }
    if total != expected_total(events):
        result["reason"] = f"sum {total} != {expected_total(events)}"
    return result


@contextlib.contextmanager
def broker() -> Iterator[tuple[str, str, int | None]]:
    from streamtrio.testing._apache_kafka import run_apache_kafka
    from streamtrio.testing._broker import TEST_BROKER_ENV, start_test_broker

    from .runner import BENCH_JVM_OPTIONS

    external = os.environ.get(TEST_BROKER_ENV, "").strip()
    if external:
        with start_test_broker() as bootstrap:
            yield bootstrap, f"{TEST_BROKER_ENV}={external}", None
        return
    with run_apache_kafka(jvm_options=BENCH_JVM_OPTIONS, timeout=60) as kafka:
        yield kafka.bootstrap, f"Apache Kafka {kafka.version} ({' '.join(BENCH_JVM_OPTIONS)})", kafka.pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=300_000, help="events per run (300,000)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker process counts (1,2)")
    p.add_argument("--workloads", default="stateless,stateful", help="stateless, stateful (both)")
    p.add_argument("--json", type=Path, help="write every result to this file")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    workloads = [w.strip() for w in args.workloads.split(",")]
    work = Path(tempfile.mkdtemp(prefix="streamtrio-scaling-"))
    results = []
    with broker() as (bootstrap, description, broker_pid):
        print(f"[scaling] {description} on {bootstrap}; {os.cpu_count()} cores; work dir {work}", flush=True)
        for workload in workloads:
            for n in counts:
                result = run_one(bootstrap, args.events, workload, n, work, broker_pid)
                results.append(result)
                print(f"[scaling] {json.dumps(result)}", flush=True)
    print()
    print(
        "| workload | processes | events/s | per process: events, events/s, "
        "CPU µs/event (processing only) | broker CPU µs/event |"
    )
    print("| --- | --: | --: | --- | --: |")
    for r in results:
        procs = "; ".join(
            f"{p['events']:,}, {p['events_per_second']:,}, {p['cpu_us_per_event']} "
            f"({p['processing_cpu_us_per_event']})"
            for p in r["processes"]
        )
        rate = f"{r['events_per_second']:,}" if r["ok"] else f"FAILED ({r.get('reason', r['exit_code'])})"
        print(f"| {r['workload']} | {r['workers']} | {rate} | {procs} | {r['broker_cpu_us_per_event']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
