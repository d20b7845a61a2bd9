"""Stream operators and RPC on the real broker.

group_by into tables across two workers; RPC answered by a worker in another process.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import trio

import streamtrio

ROOT = Path(__file__).resolve().parents[2]


def kafka_app(app_id: str, bootstrap: str, tmp: Path, **options: Any) -> streamtrio.App:
    return streamtrio.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(tmp),
        web_enabled=False,
        commit_interval=0.2,
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.2,
        table_standby_replicas=0,
        **options,
    )


class Click(streamtrio.Record):
    click_id: str
    user: str


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_group_by_counts_land_on_the_owning_worker(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Word counts keyed by a re-keyed field are exact across 8 partitions and two workers."""
    app_id = f"gb-{uuid.uuid4().hex[:8]}"
    expected: Counter[str] = Counter()
    workers: list[tuple[streamtrio.App, streamtrio.Table, list[int]]] = []

    def make(index: int) -> tuple[streamtrio.App, streamtrio.Table, list[int]]:
        app = kafka_app(app_id, kafka_bootstrap, tmp_path / str(index))
        clicks = app.topic(f"{app_id}-clicks", key_type=str, value_type=Click, partitions=8)
        per_user = app.Table("per_user", default=int, partitions=8)
        seen = [0]

        @app.agent(clicks)
        async def count(stream: streamtrio.Stream[Click]) -> None:
            async for click in stream.group_by(Click.user):
                per_user[click.user] += 1
                seen[0] += 1

        return app, per_user, seen

    workers = [make(0), make(1)]
    first_app = workers[0][0]
    clicks_topic = first_app.topic(f"{app_id}-clicks", key_type=str, value_type=Click, partitions=8)
    async with trio.open_nursery() as nursery:
        running = [await nursery.start(streamtrio.serve, app) for app, _, _ in workers]
        async with first_app.open_client():
            for i in range(3000):
                click = Click(click_id=f"c{i}", user=f"user-{(i * 31) % 57}")
                expected[click.user] += 1
                clicks_topic.send_soon(key=click.click_id, value=click)
            await first_app.producer.flush()
        await wait_for(lambda: sum(seen[0] for _, _, seen in workers) >= 3000)
        # each user's count is held by exactly one worker: the owner of its partition
        totals: Counter[str] = Counter()
        for worker, (_app, table, _seen) in zip(running, workers, strict=True):
            owned = {tp.partition for tp in worker.assigned if tp.topic.endswith("-repartition")}
            for user, count in table.items():
                totals[user] += count
                assert table.key_partition(user) in owned
        assert totals == expected
        for worker in running:
            worker.stop()


async def test_rpc_map_across_processes(kafka_bootstrap: str, tmp_path: Path) -> None:
    """1,000 asks via map, answered by a worker in another process, come back in order."""
    app_id = f"sq-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "STREAMTRIO_BROKER": f"kafka://{kafka_bootstrap}",
        "SQUARES_APP_ID": app_id,
        "PYTHONPATH": str(ROOT),
    }
    log_path = tmp_path / "worker.log"
    log_file = log_path.open("wb")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "streamtrio", "run", "tests/kafka/apps/squares.py", "--loglevel", "warning"],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=log_file,
    )
    try:
        client = streamtrio.App(
            app_id, broker=f"kafka://{kafka_bootstrap}", store="memory://", web_enabled=False
        )
        requests = client.topic(f"{app_id}-requests", partitions=4)

        @client.agent(requests)
        async def square(stream: Any) -> None:  # the client only asks; it runs no worker
            pass

        async with client.open_client():
            first = await square.ask(3, timeout=60.0)
            replies = [reply async for reply in square.map(range(1000), timeout=60.0)]
        assert first["square"] == 9
        assert [r["square"] for r in replies] == [v * v for v in range(1000)]
        assert {r["pid"] for r in replies} == {proc.pid}
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.move_on_after(30):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log_file.close()
    assert proc.returncode == 0, log_path.read_text()
