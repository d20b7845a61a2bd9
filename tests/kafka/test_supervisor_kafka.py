"""``streamtrio run app.py --workers 2`` on the test broker: one supervisor, two worker processes.

Both join the group and split the partitions; every event lands in the table
exactly once (``exactly_once``: each worker process has its own data dir, so
its own worker id and transactional id); a worker killed with SIGKILL is
restarted and the group carries on with nothing lost; Ctrl-C stops all and
the supervisor exits 0 with no child left.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import trio

from ..test_supervisor import gone
from ._util import APPS, WorkerProcess, create_topic, produce, unique

PARTITIONS = 4
KEYS = [f"key-{i}" for i in range(24)]


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free, below the kernel's ephemeral range."""
    for _ in range(100):
        base = random.randrange(20000, 30000)
        try:
            for port in (base, base + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no two free ports in a row")


async def get_json(client: httpx.AsyncClient, url: str) -> Any:
    try:
        answer = await client.get(url, follow_redirects=True)
        return answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def test_two_worker_processes_split_the_group_survive_a_kill_and_stop_on_ctrl_c(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id = unique("supervised")
    topic = f"{app_id}-amounts"
    await trio.to_thread.run_sync(create_topic, kafka_bootstrap, topic, PARTITIONS)
    base = free_port_pair()
    urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    datadir = tmp_path / "data"
    env = {"TOTALS_APP_ID": app_id, "TOTALS_DATADIR": str(datadir), "TOTALS_WEB_PORT": str(base)}
    sup = WorkerProcess(
        "supervisor", APPS / "supervised_totals.py", kafka_bootstrap, tmp_path, env, args=["--workers", "2"]
    )
    expected = dict.fromkeys(KEYS, 0)

    def produce_round(rounds: int) -> None:
        items = [(key.encode(), b"1") for _ in range(rounds) for key in KEYS]
        produce(kafka_bootstrap, topic, items)
        for key in KEYS:
            expected[key] += rounds

    async with httpx.AsyncClient(timeout=5.0) as client:

        async def stats() -> list[Any]:
            return [await get_json(client, f"{url}/stats/") for url in urls]

        async def split_evenly() -> list[Any]:
            """Wait until each worker process holds two of the four partitions; their stats."""

            def held(doc: Any) -> int | None:
                if doc is None:
                    return None
                return sum(1 for p in doc["partitions"].values() if p["topic"] == topic)

            docs: list[Any] = []
            deadline = trio.current_time() + 30
            while trio.current_time() < deadline:
                docs = await stats()
                if [held(d) for d in docs] == [2, 2]:
                    return docs
                await trio.sleep(0.1)
            split = [held(d) for d in docs]
            raise AssertionError(f"not split 2 + 2 within 30s: {split}:\n{sup.log()[-3000:]}")

        async def all_counted() -> None:
            """Wait until every key's total, asked of either worker, is what was produced."""

            async def counted() -> bool:
                for key, total in expected.items():
                    for url in urls:
                        doc = await get_json(client, f"{url}/table/totals/{key}/")
                        if doc is None or doc["value"] != total:
                            return False
                return True

            with trio.fail_after(30):
                while not await counted():
                    await trio.sleep(0.1)

        try:
            await sup.wait_for_log("2 worker processes under supervisor", timeout=30)
            docs = await split_evenly()
            assert [d["process"]["worker_index"] for d in docs] == [0, 1]
            assert all(d["process"]["workers"] == 2 and d["process"]["web_urls"] == urls for d in docs)
            pids = [d["process"]["pid"] for d in docs]
            log = sup.log()
            assert f"worker-0  pid {pids[0]}  datadir {datadir / 'worker-0'}  web {urls[0]}" in log
            assert f"worker-1  pid {pids[1]}  datadir {datadir / 'worker-1'}  web {urls[1]}" in log
            assert "process   worker-1 (2 of 2)" in log  # the worker's own banner
            await trio.to_thread.run_sync(produce_round, 50)
            await all_counted()

            # kill -9 one worker: restarted, the group splits again, nothing lost or counted twice
            os.kill(pids[1], signal.SIGKILL)
            await trio.to_thread.run_sync(produce_round, 50)
            await sup.wait_for_log("worker-1 started again", timeout=15)
            killed = rf"worker-1 \(pid {pids[1]}\) killed by SIGKILL after [\d.]+s; restarting it in 1s"
            assert re.search(killed, sup.log())
            docs = await split_evenly()
            restarted = docs[1]["process"]["pid"]
            assert restarted != pids[1] and docs[0]["process"]["pid"] == pids[0]
            await all_counted()
            assert sum(expected.values()) == 100 * len(KEYS)

            # Ctrl-C: every worker stops gracefully, the supervisor exits 0, nothing is left
            sup.signal(signal.SIGINT)
            code = await sup.wait_async(30)
        finally:
            sup.kill()
    log = sup.log()
    assert code == 0, log[-4000:]
    assert "SIGINT received (send it again to exit at once): stopping 2 worker process(es)" in log
    assert "[worker-0] streamtrio._run: SIGTERM received: shutting down gracefully" in log
    assert "[worker-1] streamtrio._run: SIGTERM received: shutting down gracefully" in log
    assert "all 2 worker processes stopped cleanly" in log
    assert gone(pids[0]) and gone(restarted)
    assert sorted(p.name for p in datadir.iterdir()) == ["worker-0", "worker-1"]
