"""Property tests (hypothesis): sessions and stream-stream joins on random out-of-order inputs.

Each example runs a real worker on its own ``memory://`` broker under a
``MockClock`` and compares what it computed with the brute-force references
of ``test_sessions.py`` and ``test_stream_join.py``.
"""

from __future__ import annotations

import tempfile
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtrio.testing._factory import AppFactory

from . import test_sessions, test_stream_join
from .conftest import running, wait_for

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

session_events = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 160).map(lambda q: q / 4)),
    min_size=1,
    max_size=60,
)


def run(test: Any, *args: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        factory = AppFactory(tmp)
        try:
            trio.run(test, factory, *args, clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            factory.close()


@PROPERTY
@given(events=session_events)
def test_sessions_equal_the_reference(events: list[tuple[str, float]]) -> None:
    async def check(factory: AppFactory, events: list[tuple[str, float]]) -> None:
        closed: list[tuple[Any, Any]] = []
        app, table, sessions, processed = test_sessions.session_app(factory, closed)
        async with running(app):
            await test_sessions.produce(app, events)
            await wait_for(lambda: processed[0] == len(events))
            await trio.sleep(1.1)  # idle: stream time follows the clock (times on a 0.25 s grid)
            expected_closed, expected_open, late = test_sessions.reference(events, idle=1.1)
            assert dict(closed) == expected_closed and len(closed) == len(expected_closed)
            assert dict(table.items()) == expected_open
            assert sessions.late_dropped == late

    run(check, events)


join_events = st.lists(
    st.tuples(
        st.sampled_from(["left", "right"]),
        st.sampled_from(["a", "b"]),
        st.integers(0, 80).map(lambda q: q / 2),
    ),
    min_size=1,
    max_size=50,
)


@PROPERTY
@given(raw=join_events)
def test_window_join_equals_the_reference(raw: list[tuple[str, str, float]]) -> None:
    events = [(side, key, t, i) for i, (side, key, t) in enumerate(raw)]

    async def check(factory: AppFactory, events: list[tuple[str, str, float, int]]) -> None:
        app, pairs, processed, _ = test_stream_join.join_app(factory, grace=1000)
        async with running(app):
            await test_stream_join.produce(app, events)
            await wait_for(lambda: processed[0] == len(events))
            await trio.sleep(0.5)
        assert sorted(pairs) == test_stream_join.reference(events)

    run(check, events)
