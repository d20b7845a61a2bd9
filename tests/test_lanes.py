"""Lane bookkeeping: the frontier never passes an item in flight."""

from __future__ import annotations

import pytest

from streamtrio import TP
from streamtrio._lanes import Inbox

TP0 = TP("t", 0)


class Flow:
    def __init__(self) -> None:
        self.full: list[TP | None] = []
        self.drained: list[TP | None] = []

    def on_lane_full(self, tp: TP | None) -> None:
        self.full.append(tp)

    def on_lane_drained(self, tp: TP | None) -> None:
        self.drained.append(tp)


def make(high_water: int = 100) -> tuple[Inbox[int], Flow]:
    flow = Flow()
    inbox: Inbox[int] = Inbox(lambda item: item, high_water=high_water, flow=flow)
    inbox.add_lane(TP0)
    return inbox, flow


def take_all(inbox: Inbox[int]) -> list[int]:
    items = []
    while (got := inbox.take_nowait()) is not None:
        items.append(got[1])
    return items


def test_out_of_order_acks_hold_the_frontier() -> None:
    inbox, _ = make()
    inbox.feed(TP0, [10, 11, 12, 13], 10, 13)
    lane = inbox.lanes[TP0]
    assert take_all(inbox) == [10, 11, 12, 13]
    assert lane.frontier() == 10
    lane.ack(12)
    lane.ack(11)
    assert lane.frontier() == 10  # 10 is still in flight
    lane.ack(10)
    assert lane.frontier() == 13
    lane.ack(13)
    assert lane.frontier() == 14
    assert lane.unacked() == 0


def test_frontier_of_untaken_items_is_the_first_buffered_offset() -> None:
    inbox, _ = make()
    inbox.feed(TP0, [5, 6, 7], 5, 7)
    assert inbox.frontiers() == {TP0: 5}
    _, first = inbox.take_nowait() or (None, None)
    assert first == 5
    inbox.lanes[TP0].ack(5)
    assert inbox.frontiers() == {TP0: 6}


def test_redelivered_offsets_are_dropped() -> None:
    inbox, _ = make()
    inbox.feed(TP0, [0, 1, 2], 0, 2)
    inbox.feed(TP0, [1, 2, 3, 4], 1, 4)  # a refetch overlapping what we have
    assert take_all(inbox) == [0, 1, 2, 3, 4]


def test_requeued_item_is_taken_again_first() -> None:
    inbox, _ = make()
    inbox.feed(TP0, [0, 1, 2], 0, 2)
    lane = inbox.lanes[TP0]
    inbox.take_nowait()
    lane.ack(0)
    inbox.take_nowait()  # 1 is in flight and its actor dies
    lane.requeue(1, 1)
    assert lane.frontier() == 1
    assert take_all(inbox) == [1, 2]


def test_abandoned_item_blocks_frontier_but_is_not_waited_for() -> None:
    inbox, _ = make()
    inbox.feed(TP0, [0, 1], 0, 1)
    lane = inbox.lanes[TP0]
    take_all(inbox)
    lane.abandon(0)
    lane.ack(1)
    assert lane.unacked() == 0
    assert lane.frontier() == 0


def test_water_marks_signal_pause_and_resume() -> None:
    inbox, flow = make(high_water=4)
    inbox.feed(TP0, [0, 1, 2, 3, 4], 0, 4)
    assert flow.full == [TP0]
    inbox.take_nowait()
    inbox.take_nowait()
    assert flow.drained == []
    inbox.take_nowait()  # 2 left == low water (4 // 2)
    assert flow.drained == [TP0]


def test_revoked_lane_drops_buffer_and_ignores_feeds() -> None:
    inbox, _ = make()
    inbox.feed(TP0, [0, 1, 2], 0, 2)
    inbox.take_nowait()
    lane = inbox.revoke_lane(TP0)
    assert lane is not None
    inbox.feed(TP0, [3], 3, 3)
    assert inbox.take_nowait() is None
    assert lane.frontier() == 0
    lane.ack(0)
    assert lane.frontier() == 1


def test_partitions_are_served_fairly() -> None:
    inbox, _ = make(high_water=1000)
    other = TP("t", 1)
    inbox.add_lane(other)
    inbox.feed(TP0, list(range(200)), 0, 199)
    inbox.feed(other, list(range(1000, 1200)), 1000, 1199)
    first = [inbox.take_nowait() for _ in range(128)]
    partitions = {lane.tp for lane, _ in first if lane}  # type: ignore[union-attr]
    assert partitions == {TP0, other}


@pytest.mark.parametrize("n", [1, 3])
async def test_take_wakes_waiting_actor(n: int) -> None:
    import trio

    inbox, _ = make()
    got: list[int] = []

    async def actor() -> None:
        _, item = await inbox.take()
        got.append(item)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(actor)
        await trio.testing.wait_all_tasks_blocked()
        inbox.feed(TP0, list(range(n)), 0, n - 1)
    assert sorted(got) == list(range(n))
