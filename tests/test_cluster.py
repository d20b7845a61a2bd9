"""The cluster map: claims folded in topic order; stale claims superseded; tombstones."""

from __future__ import annotations

import json
from collections.abc import Callable

import trio

import streamtrio
from streamtrio import TP, ClusterMap, WorkerInfo
from streamtrio._cluster import cluster_topic_name
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


def claim(worker: str, seq: int, active: list[int], standby: list[int] = ()) -> WorkerInfo:  # type: ignore[assignment]
    return WorkerInfo(
        worker_id=worker,
        url=f"http://{worker}:6066",
        generation=1,
        active=frozenset(TP("t", p) for p in active),
        standby=frozenset(TP("t", p) for p in standby),
        timestamp=0.0,
        sequence=seq,
    )


def test_a_later_claim_supersedes_a_crashed_workers_claim() -> None:
    m = ClusterMap()
    m.apply(claim("a", 1, [0, 1]))
    m.apply(claim("b", 2, [2, 3], standby=[0]))
    assert m.owner(TP("t", 0)).worker_id == "a"  # type: ignore[union-attr]
    assert [s.worker_id for s in m.standbys(TP("t", 0))] == ["b"]
    assert set(m.workers()) == {"a", "b"}
    # "a" crashed without publishing; "b" takes everything in a later claim.
    m.apply(claim("b", 3, [0, 1, 2, 3]))
    assert {m.owner(TP("t", p)).worker_id for p in range(4)} == {"b"}  # type: ignore[union-attr]
    assert set(m.workers()) == {"b"}
    assert set(m.stale_workers()) == {"a"}
    assert m.standbys(TP("t", 0)) == []  # the owner is no standby of itself


def test_an_older_claim_arriving_late_does_not_win() -> None:
    m = ClusterMap()
    m.apply(claim("a", 5, [0]))
    m.apply(claim("a", 3, [1]))
    assert m.owner(TP("t", 0)).worker_id == "a"  # type: ignore[union-attr]
    assert m.owner(TP("t", 1)) is None


def test_tombstone_and_empty_claims() -> None:
    m = ClusterMap()
    m.apply(claim("a", 1, [0]))
    m.apply(claim("b", 2, []))  # a worker with nothing assigned is still a live worker
    assert set(m.workers()) == {"a", "b"}
    m.remove("a")
    assert m.owner(TP("t", 0)) is None
    assert set(m.workers()) == {"b"}
    doc = m.as_dict()
    assert doc["workers"]["b"]["url"] == "http://b:6066"
    assert doc["partitions"] == {}


def test_claims_round_trip_through_json() -> None:
    info = claim("a", -1, [0, 3], standby=[1])
    back = WorkerInfo.from_json(info.to_json(), sequence=7)
    assert back.active == info.active and back.standby == info.standby and back.sequence == 7
    assert json.loads(info.to_json())["active"] == [["t", 0], ["t", 3]]


async def test_wait_changed_wakes_on_a_change() -> None:
    m = ClusterMap()
    seen: list[int] = []

    async def waiter() -> None:
        seen.append(await m.wait_changed())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.01)
        assert seen == []
        m.apply(claim("a", 1, [0]))
    assert seen == [m.version]


async def test_workers_publish_claims_after_rebalances_and_a_tombstone_on_stop(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    def make() -> streamtrio.App:
        app = app_factory("clusterapp", commit_interval=0.05)
        topic = app.topic("src", partitions=4)

        @app.agent(topic)
        async def consume(stream: streamtrio.Stream[bytes]) -> None:
            async for _ in stream:
                pass

        return app

    a, b = make(), make()
    name = cluster_topic_name("clusterapp")
    async with running(a):
        await wait_for(
            lambda: a.cluster.map.partitions_of(a.cluster.worker_id) >= {TP("src", p) for p in range(4)}
        )
        async with trio.open_nursery() as nursery:
            wb = await nursery.start(streamtrio.serve, b)
            src = {TP("src", p) for p in range(4)}
            split = ({TP("src", 0), TP("src", 1)}, {TP("src", 2), TP("src", 3)})

            def split_seen_by(app: streamtrio.App) -> bool:
                m = app.cluster.map
                mine = m.partitions_of(a.cluster.worker_id) & src
                theirs = m.partitions_of(b.cluster.worker_id) & src
                return (mine, theirs) == split

            await wait_for(lambda: split_seen_by(a) and split_seen_by(b))
            b_id = b.cluster.worker_id
            wb.stop()
        await wait_for(
            lambda: (
                b_id not in a.cluster.map.workers()
                and a.cluster.map.partitions_of(a.cluster.worker_id) >= {TP("src", p) for p in range(4)}
            )
        )
    stored = broker.messages(name, 0)
    assert broker.topics()[name] == 1
    # b's last record is its tombstone; a's too, after it stopped.
    last = {m.key: m.value for m in stored}
    assert last[b_id.encode()] is None
    assert last[a.cluster.worker_id.encode()] is None
    # Every claim of b names its URL (None: web disabled) and only src/leader partitions.
    for m in stored:
        if m.key == b_id.encode() and m.value is not None:
            info = WorkerInfo.from_json(m.value, sequence=m.offset)
            assert {tp.topic for tp in info.active} <= {"src", a.leader_topic_name}
