"""The benchmark runner: one broker, the workload produced once, every system in turn.

``python -m benchmarks`` (or ``nox -s bench``) starts the test broker
(Tansu, or ``STREAMTRIO_TEST_BROKER``), produces the workload, then runs each
system and workload as its own process with a fresh consumer group and data
dir, and prints a table: events/s from the first event processed to the last
(group join and start-up excluded), the process's peak RSS (``wait4``'s
``ru_maxrss``), and ratios against streamtrio and the raw confluent loop. A
run whose sum over all keys differs from the produced total is FAILED and
gets no rate.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import venvs
from ._protocol import parse_result
from .workload import create_topics, expected_total, produce_changelog, produce_events

__all__ = ["Job", "Outcome", "main", "run_job"]

HERE = Path(__file__).parent
ROOT = HERE.parent

SCRIPTS = {
    "streamtrio": "sys_streamtrio.py",
    "raw": "sys_raw.py",
    "quix": "peer_quix.py",
    "faust": "peer_faust.py",
}
LABELS = {
    "streamtrio": "streamtrio",
    "raw": "raw confluent",
    "quix": "quixstreams",
    "faust": "faust-streaming",
}


@dataclass
class Job:
    system: str
    workload: str
    topic: str
    events: int
    expected: int
    variant: str = ""
    extra: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = LABELS[self.system]
        return f"{name} ({self.variant.rstrip(':/')})" if self.variant else name


@dataclass
class Outcome:
    job: Job
    ok: bool
    reason: str = ""
    rate: float | None = None
    seconds: float | None = None
    rss_mb: float | None = None
    #: CPU time of the whole process (every thread) per event, first event to last
    cpu_us: float | None = None
    #: the machine's 1-minute load average when the run ended (a shared machine's noise)
    load: float | None = None
    result: dict[str, Any] = field(default_factory=dict)


def run_job(job: Job, *, bootstrap: str, python: Path, workdir: Path, prefix: str, timeout: float) -> Outcome:
    """Run one system on one workload in its own process; check its result."""
    variant = job.variant.split(":")[0]
    group = f"{prefix}-{job.system}-{job.workload}{'-' + variant if variant else ''}-{uuid.uuid4().hex[:4]}"
    if job.workload == "replay":
        group = f"{prefix}-replay"  # the app id names the pre-produced changelog topic
    datadir = workdir / group
    datadir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(python),
        str(HERE / SCRIPTS[job.system]),
        "--bootstrap",
        bootstrap,
        "--topic",
        job.topic,
        "--events",
        str(job.events),
        "--workload",
        # "distinct" is the stateful workload on the topic where every key is new
        "stateful" if job.workload == "distinct" else job.workload,
        "--group",
        group,
        "--datadir",
        str(datadir),
        *(["--variant", job.variant] if job.variant else []),
        *job.extra,
    ]
    out_path, err_path = datadir / "stdout.txt", datadir / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=datadir)
        deadline = time.monotonic() + timeout
        status = rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                status = None
                break
            time.sleep(0.05)
    proc.returncode = 0  # reaped by wait4; keep Popen from waiting again
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    rss_mb = rusage.ru_maxrss / 1024 if rusage is not None else None  # KiB on Linux
    outcome = Outcome(job, ok=False, rss_mb=rss_mb, load=os.getloadavg()[0])
    result = parse_result(stdout) or parse_result(stderr)
    if status is None:
        outcome.reason = f"timed out after {timeout:.0f}s"
        if result is None:
            return outcome
    if result is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:]) or f"exit status {status}"
        outcome.reason = f"no result ({tail[-300:]})"
        return outcome
    outcome.result = result
    if result.get("error"):
        outcome.reason = str(result["error"])
        return outcome
    if result["events"] != job.events:
        outcome.reason = f"processed {result['events']} events, expected {job.events}"
        return outcome
    if result["sum"] != job.expected:
        outcome.reason = f"wrong result: sum {result['sum']}, expected {job.expected}"
        return outcome
    seconds = result["last"] - result["first"]
    outcome.ok = True
    outcome.seconds = seconds
    outcome.rate = job.events / seconds if seconds > 0 else float("inf")
    if result.get("cpu"):
        outcome.cpu_us = result["cpu"] / job.events * 1e6
    return outcome


# -- reporting -------------------------------------------------------------------------


def _fmt_rate(rate: float | None) -> str:
    return "FAILED" if rate is None else f"{rate:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def table(outcomes: list[Outcome]) -> str:
    """A markdown table of the throughput runs."""
    st = {o.job.workload: o.rate for o in outcomes if o.job.system == "streamtrio" and o.ok}
    raw = next((o.rate for o in outcomes if o.job.workload == "raw" and o.ok), None)
    raw_distinct = next(
        (o.rate for o in outcomes if o.job.system == "raw" and o.job.workload == "distinct" and o.ok), None
    )
    quix = {o.job.workload: o.rate for o in outcomes if o.job.system == "quix" and o.ok}
    lines = [
        "| system | workload | events | events/s | CPU µs/event | peak RSS MB | vs streamtrio "
        "| vs quix | vs raw | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        if o.job.workload in ("latency", "replay"):
            continue
        rate = o.rate if o.ok else None
        rss = "-" if o.rss_mb is None else f"{o.rss_mb:.0f}"
        cpu = "-" if o.cpu_us is None or not o.ok else f"{o.cpu_us:.1f}"
        lines.append(
            f"| {o.job.label} | {o.job.workload} | {o.job.events:,} | {_fmt_rate(rate)} | {cpu} | {rss} | "
            f"{_ratio(rate, st.get(o.job.workload))} | {_ratio(rate, quix.get(o.job.workload))} | "
            f"{_ratio(rate, raw_distinct if o.job.workload == 'distinct' else raw)} | "
            f"{'-' if o.load is None else f'{o.load:.1f}'} |"
        )
    failures = [o for o in outcomes if not o.ok]
    if failures:
        lines.append("")
        lines += [f"- FAILED {o.job.label} {o.job.workload}: {o.reason}" for o in failures]
    return "\n".join(lines)


def streamtrio_extras(outcomes: list[Outcome], raw: float | None) -> str:
    lines = []
    for o in outcomes:
        if o.job.workload == "latency":
            where = "agent" if o.job.system == "streamtrio" else "loop (the broker's share)"
            if o.ok:
                r = o.result
                lines.append(
                    f"- {o.job.label} end-to-end latency at {r['rate']:,} events/s ({o.job.events:,} "
                    f"events, produce call to {where}): p50 {r['p50_ms']:.1f} ms, "
                    f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms"
                )
            else:
                lines.append(f"- {o.job.label} latency: FAILED ({o.reason})")
        elif o.job.workload == "replay":
            if o.ok:
                lines.append(
                    f"- changelog replay: {o.job.events:,} records into a fresh LMDB data dir in "
                    f"{o.seconds:.2f} s = {_fmt_rate(o.rate)} records/s ({_ratio(o.rate, raw)} of the "
                    f"raw loop), peak RSS {o.rss_mb:.0f} MB"
                )
            else:
                lines.append(f"- changelog replay: FAILED ({o.reason})")
    by_workload = {o.job.workload: o for o in outcomes if o.job.system == "streamtrio" and o.ok}
    alo, eos = by_workload.get("stateful"), by_workload.get("eos")
    if alo is None or eos is None:
        lines.append("- exactly-once vs at-least-once: not measured by this run (workloads stateful and eos)")
    else:
        cpu = ""
        if alo.cpu_us is not None and eos.cpu_us is not None:
            cpu = f"; CPU {eos.cpu_us:.1f} vs {alo.cpu_us:.1f} µs/event"
        lines.append(
            f"- exactly-once vs at-least-once (stateful): {_fmt_rate(eos.rate)} vs {_fmt_rate(alo.rate)} "
            f"events/s = {_ratio(eos.rate, alo.rate)}{cpu}"
        )
    return "\n".join(lines)


def targets(outcomes: list[Outcome]) -> str:
    """Issue 18's targets (and the benchmarks issue's against faust), met or missed by this run."""

    def done(system: str, workload: str, variant: str = "") -> Outcome | None:
        for o in outcomes:
            if (o.job.system, o.job.workload, o.job.variant) == (system, workload, variant) and o.ok:
                return o
        return None

    def rate(system: str, workload: str, variant: str = "") -> float | None:
        o = done(system, workload, variant)
        return None if o is None else o.rate

    def rss(system: str, workload: str) -> float | None:
        o = done(system, workload)
        return None if o is None else o.rss_mb

    def vs(workload: str, peer: str, peer_variant: str = "") -> float | None:
        return _div(rate("streamtrio", workload), rate(peer, workload, peer_variant))

    raw = rate("raw", "raw")
    stateless = done("streamtrio", "stateless")
    # (name, measured, goal, unit): "x" and "%" are at least the goal, "µs" at most
    checks: list[tuple[str, float | None, float, str]] = [
        ("stateless >= 85% of the raw loop", _div(rate("streamtrio", "stateless"), raw), 0.85, "%"),
        ("stateless CPU per event <= 5 µs", None if stateless is None else stateless.cpu_us, 5.0, "µs"),
        ("stateful >= 2.5x quixstreams", vs("stateful", "quix"), 2.5, "x"),
        ("every key new (distinct) >= 2x quixstreams", vs("distinct", "quix"), 2.0, "x"),
        ("windowed >= 3x quixstreams", vs("windowed", "quix"), 3.0, "x"),
        ("replay >= 80% of the raw loop", _div(rate("streamtrio", "replay"), raw), 0.8, "%"),
        (
            "exactly_once costs <= 10% (>= 90% of at_least_once, stateful)",
            _div(rate("streamtrio", "eos"), rate("streamtrio", "stateful")),
            0.9,
            "%",
        ),
        ("stateless >= 10x faust-streaming", vs("stateless", "faust"), 10.0, "x"),
        ("stateful >= 10x faust-streaming", vs("stateful", "faust", "memory://"), 10.0, "x"),
    ]
    lines = []
    for name, value, goal, unit in checks:
        if value is None:
            lines.append(f"- {name}: not measured")
            continue
        if unit == "µs":
            shown, met = f"{value:.1f} µs", value <= goal
        else:
            shown = f"{value * 100:.0f}%" if unit == "%" else f"{value:.2f}x"
            met = value >= goal
        lines.append(f"- {name}: {shown} -> {'met' if met else 'MISSED'}")
    st_rss, quix_rss = rss("streamtrio", "distinct"), rss("quix", "distinct")
    name = "peak RSS, every key new <= half of quixstreams'"
    if st_rss is None or quix_rss is None:
        lines.append(f"- {name}: not measured")
    else:
        verdict = "met" if st_rss <= quix_rss / 2 else "MISSED"
        lines.append(f"- {name}: {st_rss:.0f} MB vs {quix_rss:.0f} MB -> {verdict}")
    return "\n".join(lines)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# -- the run ---------------------------------------------------------------------------

#: The JVM of the benchmark's Apache Kafka: a heap that holds the workload and the
#: full JIT. The test fixture's defaults (C1 only, 512 MB, serial GC) start fast but
#: serve fetches at a fraction of the rate: the broker, not the systems, was measured.
BENCH_JVM_OPTIONS = ("-Xms1g", "-Xmx1g", "-XX:+UseParallelGC", "-Djava.awt.headless=true")


@contextlib.contextmanager
def bench_broker() -> Iterator[tuple[str, str]]:
    """The broker to measure on, as ``(bootstrap, description)``: the one named in
    ``STREAMTRIO_TEST_BROKER``, else Apache Kafka (tuned for throughput) when it can
    run here, else Tansu (``STREAMTRIO_TEST_BROKER_KIND`` chooses, as for the tests)."""
    from streamtrio.testing._apache_kafka import run_apache_kafka
    from streamtrio.testing._broker import TEST_BROKER_ENV, choose_broker_kind, start_test_broker

    external = os.environ.get(TEST_BROKER_ENV, "").strip()
    kind, notice = choose_broker_kind()
    if external or kind != "kafka":
        if notice and not external:
            print(notice, flush=True)
        with start_test_broker() as bootstrap:
            yield bootstrap, (f"{TEST_BROKER_ENV}={external}" if external else kind)
        return
    with run_apache_kafka(jvm_options=BENCH_JVM_OPTIONS, timeout=60) as kafka:
        yield kafka.bootstrap, f"Apache Kafka {kafka.version} ({' '.join(BENCH_JVM_OPTIONS)})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events per throughput run (1,000,000)")
    p.add_argument(
        "--faust-events",
        type=int,
        default=100_000,
        help="events for faust-streaming, which runs 10-100x slower (100,000; 0 = --events)",
    )
    p.add_argument("--replay-records", type=int, default=0, help="changelog records to replay (= --events)")
    p.add_argument("--latency-events", type=int, default=200_000, help="events of the latency run")
    p.add_argument("--rate", type=int, default=20_000, help="events/s of the latency run (20,000)")
    p.add_argument(
        "--systems",
        default="raw,streamtrio,quix,faust",
        help="comma-separated: raw, streamtrio, quix, faust (default: all)",
    )
    p.add_argument(
        "--workloads",
        default="stateless,stateful,distinct,windowed,join,session,eos,latency,replay",
        help="comma-separated: stateless, stateful, distinct (stateful, every key new), windowed, "
        "join, session, eos (stateful, exactly_once), latency, replay",
    )
    p.add_argument("--venvs", type=Path, default=ROOT / ".bench-venvs", help="where peer venvs live")
    p.add_argument("--json", type=Path, help="also write every outcome to this JSON file")
    p.add_argument("--timeout", type=float, default=0, help="seconds per run (default: from the events)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(systems) - set(SCRIPTS)
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))}")
    faust_events = args.faust_events or args.events
    replay_records = args.replay_records or args.events
    versions: dict[str, dict[str, str]] = {"project": venvs.project_versions()}
    pythons: dict[str, Path] = {"streamtrio": Path(sys.executable), "raw": Path(sys.executable)}
    skipped: list[str] = []
    faust_rocksdb = False
    for name in ("quix", "faust"):
        if name not in systems:
            continue
        env = venvs.ensure(venvs.PEERS[name], args.venvs)
        if env.python is None:
            skipped.append(f"{LABELS[name]}: not run, it could not be installed: {env.error}")
            continue
        pythons[name] = env.python
        versions[name] = env.versions
        if name == "faust":
            faust_rocksdb = env.extras.get("rocksdict") is None
            if not faust_rocksdb:
                skipped.append(
                    f"faust-streaming on RocksDB: not run, rocksdict: {env.extras.get('rocksdict')}"
                )

    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="streamtrio-bench-"))
    outcomes: list[Outcome] = []
    started = datetime.datetime.now(datetime.UTC)
    try:
        with bench_broker() as (bootstrap, broker):
            versions["project"]["broker"] = broker
            print(f"[bench] broker {broker} on {bootstrap}; work dir {workdir}", flush=True)
            main_topic = f"{prefix}-events"
            small_topic = f"{prefix}-events-small" if faust_events != args.events else main_topic
            topics = [main_topic, small_topic, f"{prefix}-latency-raw", f"{prefix}-latency-streamtrio"]
            topics.append(f"{prefix}-replay-src")
            distinct_topic = f"{prefix}-events-distinct"
            if "distinct" in workloads:
                topics.append(distinct_topic)
            changelog = f"{prefix}-replay-totals-changelog"
            create_topics(bootstrap, [*dict.fromkeys(topics), changelog])
            seconds = produce_events(bootstrap, main_topic, args.events)
            print(f"[bench] produced {args.events:,} events to {main_topic} in {seconds:.1f}s", flush=True)
            if "faust" in pythons and small_topic != main_topic:
                produce_events(bootstrap, small_topic, faust_events)
                print(f"[bench] produced {faust_events:,} events to {small_topic}", flush=True)
            if "distinct" in workloads:
                seconds = produce_events(bootstrap, distinct_topic, args.events, keys=args.events)
                print(
                    f"[bench] produced {args.events:,} events with as many keys to {distinct_topic} "
                    f"in {seconds:.1f}s",
                    flush=True,
                )
            replay_total = None
            if "streamtrio" in systems and "replay" in workloads:
                replay_total = produce_changelog(bootstrap, changelog, replay_records)
                print(f"[bench] produced {replay_records:,} changelog records to {changelog}", flush=True)

            jobs = plan(
                args,
                systems,
                workloads,
                pythons,
                main_topic,
                small_topic,
                distinct_topic,
                prefix,
                faust_events,
                replay_records,
                replay_total,
                faust_rocksdb,
            )
            if jobs:
                # The broker's first reads of the topic run on a cold JIT (and page
                # cache): a raw pass first, not reported, so the first system measured
                # is not the one that pays for it.
                warm = Job("raw", "raw", main_topic, args.events, expected_total(args.events))
                run_job(
                    warm,
                    bootstrap=bootstrap,
                    python=pythons["raw"],
                    workdir=workdir,
                    prefix=f"{prefix}-warmup",
                    timeout=90 + args.events / 10_000,
                )
                print("[bench] warmed the broker up with one raw pass over the events", flush=True)
            for job in jobs:
                per_second = {"faust": 1_000, "quix": 2_000}.get(job.system, 10_000)
                timeout = args.timeout or 90 + job.events / per_second
                print(
                    f"[bench] {job.label} / {job.workload} ({job.events:,} events) ...", end=" ", flush=True
                )
                outcome = run_job(
                    job,
                    bootstrap=bootstrap,
                    python=pythons[job.system],
                    workdir=workdir,
                    prefix=prefix,
                    timeout=timeout,
                )
                shown = f"{outcome.rate:,.0f}/s" if outcome.ok else f"FAILED: {outcome.reason}"
                rss = f", peak RSS {outcome.rss_mb:.0f} MB" if outcome.rss_mb is not None else ""
                rss += f", load {outcome.load:.1f}" if outcome.load is not None else ""
                print(shown + rss, flush=True)
                outcomes.append(outcome)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    raw = next((o.rate for o in outcomes if o.job.workload == "raw" and o.ok), None)
    report = "\n\n".join(
        [
            f"streamtrio benchmarks, {started:%Y-%m-%d %H:%M} UTC, {platform.node()} "
            f"({os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()})",
            table(outcomes),
            "streamtrio only:\n" + streamtrio_extras(outcomes, raw),
            "Targets:\n" + targets(outcomes),
            *(["Not run:\n" + "\n".join(f"- {s}" for s in skipped)] if skipped else []),
            "Versions: " + json.dumps(versions, indent=None),
        ]
    )
    print("\n" + report)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "versions": versions,
                    "skipped": skipped,
                    "outcomes": [
                        {**{k: v for k, v in asdict(o).items() if k != "job"}, "job": asdict(o.job)}
                        for o in outcomes
                    ],
                },
                indent=2,
            )
        )
    return 0 if all(o.ok for o in outcomes) else 1


def plan(
    args: argparse.Namespace,
    systems: list[str],
    workloads: list[str],
    pythons: dict[str, Path],
    main_topic: str,
    small_topic: str,
    distinct_topic: str,
    prefix: str,
    faust_events: int,
    replay_records: int,
    replay_total: int | None,
    faust_rocksdb: bool,
) -> list[Job]:
    total = expected_total(args.events)
    jobs: list[Job] = []
    if "raw" in systems:
        jobs.append(Job("raw", "raw", main_topic, args.events, total))
    for workload in ("stateless", "stateful", "windowed"):
        if workload not in workloads:
            continue
        expected = args.events if workload == "windowed" else total
        for system in ("streamtrio", "quix"):
            if system in systems and system in pythons:
                jobs.append(Job(system, workload, main_topic, args.events, expected))
        if "faust" in systems and "faust" in pythons:
            f_expected = faust_events if workload == "windowed" else expected_total(faust_events)
            variants = (
                ["memory://", *(["rocksdb://"] if faust_rocksdb else [])] if workload == "stateful" else [""]
            )
            for variant in variants:
                jobs.append(Job("faust", workload, small_topic, faust_events, f_expected, variant=variant))
    if "distinct" in workloads:
        # The running sum where every event brings a new key: each table read
        # misses and the state grows with every event (the raw loop's dict too).
        for system in ("raw", "streamtrio", "quix"):
            if system in systems and system in pythons:
                jobs.append(Job(system, "distinct", distinct_topic, args.events, total))
    if "streamtrio" in systems:
        # Quix Streams has no session windows, and its join_lookup enriches from an
        # external lookup rather than a Kafka-backed table: these run for streamtrio
        # alone, beside the tumbling count (windowed) and running sum (stateful) of every peer.
        for workload in ("join", "session", "eos"):
            if workload in workloads:
                expected = args.events if workload == "session" else total
                jobs.append(Job("streamtrio", workload, main_topic, args.events, expected))
        if "latency" in workloads:
            n = args.latency_events
            rate = ["--rate", str(args.rate)]
            for system in ("raw", "streamtrio"):
                if system in systems:
                    topic = f"{prefix}-latency-{system}"
                    jobs.append(Job(system, "latency", topic, n, expected_total(n), extra=rate))
        if "replay" in workloads and replay_total is not None:
            jobs.append(Job("streamtrio", "replay", f"{prefix}-replay-src", replay_records, replay_total))
    return jobs


if __name__ == "__main__":
    raise SystemExit(main())
