"""Lane invariants under random interleavings, against a small reference model.

The model knows, per offset fed to a lane, whether it is buffered, in flight,
done or dropped (revoked). The lane's frontier must always be the lowest
offset that is not done (so it never passes an unacked, requeued or dropped
offset) and, when everything fed is done, one past the highest offset taken
(so it never stops moving). ``unacked()`` must count the items a live actor
still works on.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamtrio import TP
from streamtrio._lanes import Inbox

TP0 = TP("t", 0)

# (operation, argument): the argument picks a run length or an item.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["feed", "take", "take", "ack", "ack", "requeue", "abandon", "revoke"]),
        st.integers(min_value=0, max_value=1000),
    ),
    max_size=60,
)


class Model:
    def __init__(self) -> None:
        self.fed: list[int] = []
        self.buffered: list[int] = []  # in hand-out order
        self.in_flight: list[int] = []
        self.abandoned: set[int] = set()
        self.done: set[int] = set()
        self.taken_high: int | None = None
        self.revoked = False

    def frontier(self) -> int | None:
        pending = [o for o in self.fed if o not in self.done]
        if pending:
            return min(pending)
        return self.taken_high


def check(ops: list[tuple[str, int]]) -> None:
    inbox: Inbox[int] = Inbox(lambda item: item, high_water=1000)
    lane = inbox.add_lane(TP0)
    model = Model()
    next_offset = 0
    for op, arg in ops:
        if op == "feed" and not model.revoked:
            count = 1 + arg % 5
            items = list(range(next_offset, next_offset + count))
            inbox.feed(TP0, items, items[0], items[-1])
            model.fed += items
            model.buffered += items
            next_offset += count
        elif op == "take" and not model.revoked:
            got = inbox.take_nowait()
            if model.buffered:
                assert got is not None
                expected = min(model.buffered)  # requeued items come back first, in order
                assert got[1] == expected
                model.buffered.remove(expected)
                model.in_flight.append(expected)
                model.taken_high = max(model.taken_high or 0, expected + 1)
            else:
                assert got is None
        elif op == "ack" and model.in_flight:
            offset = model.in_flight.pop(arg % len(model.in_flight))
            lane.ack(offset)
            model.done.add(offset)
            model.abandoned.discard(offset)
        elif op == "requeue" and model.in_flight:
            offset = model.in_flight.pop(arg % len(model.in_flight))
            lane.requeue(offset, offset)
            model.abandoned.discard(offset)
            if not model.revoked:
                model.buffered.append(offset)
        elif op == "abandon" and model.in_flight:
            offset = model.in_flight[arg % len(model.in_flight)]
            lane.abandon(offset)
            model.abandoned.add(offset)
        elif op == "revoke" and not model.revoked:
            inbox.revoke_lane(TP0)
            model.revoked = True
            model.buffered.clear()
        assert lane.frontier() == model.frontier(), (op, arg)
        live = [o for o in model.in_flight if o not in model.abandoned]
        assert lane.unacked() == len(live)
        assert sorted(inbox.offset_of(i) for i in lane.buffer) == sorted(model.buffered)


@settings(max_examples=3000, deadline=None)
@given(OPS)
def test_lane_frontier_matches_the_model(ops: list[tuple[str, int]]) -> None:
    check(ops)


def test_requeue_from_the_middle_keeps_the_frontier_below_it() -> None:
    """Seen on main: offset 1 committable while offset 0 was back in the buffer."""
    check([("feed", 1), ("take", 0), ("take", 0), ("ack", 1), ("requeue", 0)])


def test_retaken_requeued_item_does_not_move_the_frontier_backwards() -> None:
    takes = [("take", 0)] * 3
    check([("feed", 2), *takes, ("requeue", 0), ("take", 0), ("ack", 0), ("ack", 0), ("ack", 0)])
