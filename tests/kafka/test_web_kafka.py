"""The web layer against the real test broker: three worker processes, one app.

Each worker is ``streamtrio run`` on the same app file with its own web port
(0: a free one, announced on stdout). The test produces keyed events, then
asks every worker for every key over HTTP, then kills one worker (SIGKILL: no
goodbye) and checks the survivors' map forgets it and they serve every key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import streamtrio
from streamtrio._partitioner import partition_for_key

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
KEYS = [f"key-{i}" for i in range(30)]

APP_FILE = textwrap.dedent(
    """
    import os
    import streamtrio

    app = streamtrio.App(
        os.environ["WEBTEST_APP_ID"],
        store="memory://",
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=0,
        commit_interval=0.2,
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.2,
        broker_request_timeout=15.0,
        shutdown_timeout=10.0,
        rebalance_drain_timeout=5.0,
        consumer_config={"fetch.queue.backoff.ms": 10},
    )
    orders = app.topic("orders", key_type=str, value_type=int, partitions=%(partitions)d)
    totals = app.Table("totals", key_type=str, default=int, partitions=%(partitions)d, key_serializer="raw")

    @app.agent(orders)
    async def add(stream):
        async for event in stream.events():
            totals[event.key] += event.value

    @app.page("/totals/<key>/")
    @app.table_route(totals, match_info="key")
    async def get_total(request, key):
        return {"key": key, "total": totals[key], "worker": app.cluster.worker_id}

    @app.task
    async def announce():
        print("WEBURL", app.web.url, app.cluster.worker_id, flush=True)
    """
)


class Workers:
    def __init__(self, app_file: Path, app_id: str, bootstrap: str, tmp_path: Path) -> None:
        self.app_file = app_file
        self.app_id = app_id
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[str]] = []
        self.urls: list[str] = []
        self.ids: list[str] = []

    def start(self, n: int) -> None:
        env = dict(os.environ, WEBTEST_APP_ID=self.app_id, PYTHONUNBUFFERED="1")
        for i in range(n):
            log = open(self.tmp_path / f"worker-{i}.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamtrio",
                    "run",
                    str(self.app_file),
                    "--broker",
                    f"kafka://{self.bootstrap}",
                    "--datadir",
                    str(self.tmp_path / f"data-{i}"),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            self.procs.append(proc)
        for i, proc in enumerate(self.procs):
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            while True:
                line = proc.stdout.readline()
                if line.startswith("WEBURL"):
                    _, url, worker_id = line.split()
                    self.urls.append(url)
                    self.ids.append(worker_id)
                    break
                if not line or time.monotonic() > deadline:
                    raise AssertionError(f"worker {i} did not start:\n{self.log(i)}")

    def log(self, i: int) -> str:
        return (self.tmp_path / f"worker-{i}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Workers]:
    app_file = tmp_path / "webkafka.py"
    app_file.write_text(APP_FILE % {"partitions": PARTITIONS})
    group = Workers(app_file, f"webkafka-{uuid.uuid4().hex[:8]}", kafka_bootstrap, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


async def get_json(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[int, Any]:
    try:
        answer = await client.get(url, **kwargs)
    except httpx.HTTPError:
        return 0, None
    try:
        return answer.status_code, answer.json()
    except ValueError:
        return answer.status_code, None


async def test_every_key_from_any_worker_and_after_one_is_killed(
    workers: Workers, kafka_bootstrap: str
) -> None:
    workers.start(3)
    producer_app = streamtrio.App(workers.app_id, broker=f"kafka://{kafka_bootstrap}", web_enabled=False)
    orders = producer_app.topic("orders", key_type=str, value_type=int, partitions=PARTITIONS)
    expected = dict.fromkeys(KEYS, 0)
    async with producer_app.open_client():
        for round_ in range(3):
            for i, key in enumerate(KEYS):
                orders.send_soon(key=key, value=i + round_)
                expected[key] += i + round_
        await producer_app.producer.flush()

    async with httpx.AsyncClient(timeout=10.0) as client:

        async def owners_seen_by(url: str) -> dict[str, str] | None:
            status, doc = await get_json(client, f"{url}/router/")
            if status != 200:
                return None
            changelog = doc["partitions"].get(f"{workers.app_id}-totals-changelog", {})
            return {p: entry["active"] for p, entry in changelog.items()}

        async def all_served(urls: list[str]) -> bool:
            for key, total in expected.items():
                for url in urls:
                    status, doc = await get_json(client, f"{url}/table/totals/{key}/", follow_redirects=True)
                    if status != 200 or doc["value"] != total:
                        return False
            return True

        # Every key, from every worker, following redirects.
        with trio.fail_after(60):
            while not await all_served(workers.urls):
                await trio.sleep(0.2)
        for url in workers.urls:
            status, doc = await get_json(client, f"{url}/ready")
            assert status == 200, doc
            status, doc = await get_json(client, f"{url}/table/nosuch/")
            assert status == 404 and "'nosuch'" in doc["error"]
        owners = await owners_seen_by(workers.urls[0])
        assert owners is not None and set(owners) == {str(p) for p in range(PARTITIONS)}
        assert set(owners.values()) <= set(workers.urls)
        for url in workers.urls[1:]:
            assert await owners_seen_by(url) == owners
        # Without following, a non-owner answers 307 to the owner's URL (the user's table_route too).
        redirects = 0
        for key in KEYS:
            # Where Kafka's partitioner puts the key (the table encodes keys as raw bytes).
            owner = owners[str(partition_for_key(key.encode(), PARTITIONS))]
            for url in workers.urls:
                answer = await client.get(f"{url}/totals/{key}/?v=1")
                if url == owner:
                    assert answer.status_code == 200
                    assert answer.json()["total"] == expected[key]
                else:
                    redirects += 1
                    assert answer.status_code == 307
                    assert answer.headers["location"] == f"{owner}/totals/{key}/?v=1"
        assert redirects == 2 * len(KEYS)

        # Let the commits settle, then kill one worker: no tombstone, no revoke.
        await trio.sleep(1.5)
        victim = next(i for i, url in enumerate(workers.urls) if url in set(owners.values()))
        workers.procs[victim].send_signal(signal.SIGKILL)
        workers.procs[victim].wait(timeout=10)
        dead_url, dead_id = workers.urls[victim], workers.ids[victim]
        survivors = [url for i, url in enumerate(workers.urls) if i != victim]

        async def forgotten() -> bool:
            for url in survivors:
                status, doc = await get_json(client, f"{url}/router/")
                if status != 200 or dead_id in doc["workers"]:
                    return False
                seen = await owners_seen_by(url)
                if seen is None or set(seen) != {str(p) for p in range(PARTITIONS)}:
                    return False
                if dead_url in seen.values():
                    return False
            return True

        started = time.monotonic()
        with trio.fail_after(45):
            while not await forgotten():
                await trio.sleep(0.2)
        print(f"map forgot the killed worker after {time.monotonic() - started:.1f}s")
        with trio.fail_after(45):
            while not await all_served(survivors):
                await trio.sleep(0.2)
