"""SetTable against a real Kafka broker: set operations, then recovery from the changelog."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import trio

import streamtrio
from streamtrio import TP

from ._util import lmdb_app

PARTITIONS = 4


def set_app(app_id: str, bootstrap: str, datadir: Path) -> tuple[streamtrio.App, Any, Any, list[int]]:
    app = lmdb_app(app_id, bootstrap, datadir, commit_interval=0.5, table_standby_replicas=0)
    ops = app.topic(f"{app_id}-ops", key_type=str, value_type=None, partitions=PARTITIONS)
    members = app.SetTable("members", value_type=str, partitions=PARTITIONS)
    done = [0]

    @app.agent(ops)
    async def apply(stream: streamtrio.Stream[Any]) -> None:
        async for user, (verb, member) in stream.items():
            if verb == "add":
                members[user].add(member)
            else:
                members[user].discard(member)
            done[0] += 1

    return app, members, ops, done


async def wait_for(predicate: Any, timeout: float = 120.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def test_set_table_recovers_from_the_changelog(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = f"sets-{uuid.uuid4().hex[:8]}"
    ops = [(f"u{i % 20}", ("add", f"m{i % 7}")) for i in range(400)]
    ops += [(f"u{i}", ("discard", "m0")) for i in range(20)]
    expected: dict[str, set[str]] = {}
    for user, (verb, member) in ops:
        if verb == "add":
            expected.setdefault(user, set()).add(member)
        else:
            expected.setdefault(user, set()).discard(member)

    app, members, topic, done = set_app(app_id, kafka_bootstrap, tmp_path / "one")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app)
        await app.tables.wait_until_recovery_completed()
        for user, op in ops:
            topic.send_soon(key=user, value=list(op))
        await app.producer.flush()
        await wait_for(lambda: done[0] >= len(ops))
        assert dict(members.items()) == expected
        worker.stop()

    # A new machine (empty data dir) rebuilds every set from the changelog.
    app2, members2, _, done2 = set_app(app_id, kafka_bootstrap, tmp_path / "two")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(streamtrio.serve, app2)
        await app2.tables.wait_until_recovery_completed()
        replayed = app2.tables.statistics().recovered
        assert set(replayed) == {TP(f"{app_id}-members-changelog", p) for p in range(PARTITIONS)}
        assert sum(replayed.values()) > 0
        assert dict(members2.items()) == expected
        assert members2["u3"] == expected["u3"] and "m0" not in members2["u3"]
        worker.stop()
    assert done2[0] == 0  # nothing consumed again: the source offsets were committed
