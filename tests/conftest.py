"""Shared fixtures: isolated apps on a fresh memory:// broker per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio._transports.memory import MemoryBroker


@pytest.fixture
def broker_name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    MemoryBroker._registry.pop(name, None)


@pytest.fixture
def broker(broker_name: str) -> MemoryBroker:
    return MemoryBroker.get(broker_name)


@pytest.fixture
def app_factory(broker_name: str, tmp_path: Path) -> Callable[..., streamtrio.App]:
    """Build apps on this test's memory broker (same group unless ``id`` differs)."""

    def make(id: str = "testapp", **options: Any) -> streamtrio.App:
        options.setdefault("broker", f"memory://{broker_name}")
        options.setdefault("store", "memory://")
        options.setdefault("web_enabled", False)
        options.setdefault("datadir", str(tmp_path / id))
        return streamtrio.App(id, **options)

    return make


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
