"""Shared fixtures: isolated apps on a fresh memory:// broker per test.

They are the public plugin's fixtures (``streamtrio.testing.pytest_plugin``),
so every test that builds apps also checks that it leaves no thread, LMDB
environment, store or group member behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

import streamtrio
from streamtrio._transports.memory import MemoryBroker
from streamtrio.testing import AppFactory


@pytest.fixture
def app_factory(streamtrio_app_factory: AppFactory) -> AppFactory:
    """Build apps on this test's memory broker (same group unless ``id`` differs)."""
    return streamtrio_app_factory


@pytest.fixture
def broker(streamtrio_app_factory: AppFactory) -> MemoryBroker:
    return streamtrio_app_factory.broker


@asynccontextmanager
async def running(app: streamtrio.App) -> AsyncIterator[streamtrio.Worker]:
    """Run a worker for the block; stop it gracefully at the end."""
    async with trio.open_nursery() as nursery:
        worker: streamtrio.Worker = await nursery.start(streamtrio.serve, app)
        try:
            yield worker
        finally:
            worker.stop()


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0, poll: float = 0.005) -> None:
    """Wait until ``predicate()`` is true (bounded)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(poll)
