"""A running worker raises the garbage collector's first threshold (``gc_threshold``)
and gives the interpreter's back when it stops."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

import streamtrio
from streamtrio import ConfigurationError

from .conftest import running

AppFactory = Callable[..., streamtrio.App]


@pytest.fixture(autouse=True)
def python_default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


async def test_a_running_worker_raises_the_threshold_and_restores_it(app_factory: AppFactory) -> None:
    app = app_factory()
    assert app.conf.gc_threshold == 100_000
    async with running(app):
        assert gc.get_threshold() == (100_000, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


async def test_zero_leaves_the_interpreter_alone(app_factory: AppFactory) -> None:
    app = app_factory(gc_threshold=0)
    async with running(app):
        assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("first", [0, 500_000])
async def test_a_threshold_the_process_chose_is_kept(app_factory: AppFactory, first: int) -> None:
    # 0: the process disabled automatic collection; 500,000: it raised it further itself
    gc.set_threshold(first, 20, 30)
    async with running(app_factory()):
        assert gc.get_threshold() == (first, 20, 30)
    assert gc.get_threshold() == (first, 20, 30)


async def test_the_last_worker_to_stop_restores_it(app_factory: AppFactory) -> None:
    one, two = app_factory(id="one"), app_factory(id="two", gc_threshold=50_000)
    async with running(one):
        async with running(two):
            assert gc.get_threshold() == (100_000, 10, 10)  # the first worker's
        assert gc.get_threshold() == (100_000, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_a_negative_threshold_is_refused_by_name(app_factory: AppFactory) -> None:
    with pytest.raises(ConfigurationError, match="gc_threshold"):
        app_factory(gc_threshold=-1)
