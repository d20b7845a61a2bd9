"""Streams over topics outside agents: ``topic.stream()`` and ``app.stream(topic)``.

Faust lets a task iterate a topic::

    @app.task
    async def audit():
        async for order in orders_topic.stream():
            ...

Here the task iterating the stream is its actor. The stream subscribes the
topic on the running worker at its first ``async for`` step (the group
rebalances once) and gets every message of the partitions this worker is
assigned, beside any agent of the same topic. Acks follow the agent rules:
an event is acked when the next one is asked for (or ``event.ack()`` after
``noack()``, or at the end of an ``async with event:`` block), and is done,
so committable, only once every output it produced is delivered. The
commit of a partition is the smallest frontier over its subscribers, so
the task holds commits back exactly as an agent would. A failed output
stops the worker (an agent's ``on_error="stop"``); so does an exception in
the task, and the event it held stays uncommitted. A stopping worker does
not wait for the events of a task that no longer runs (they stay unacked:
processed again after the restart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ._exceptions import AgentError, ClosedError, WorkerError
from ._stream import Event, Stream, TopicSource

if TYPE_CHECKING:
    from ._app import App
    from ._topic import Topic
    from ._worker import Worker

__all__ = ["WorkerTopicSource"]

T = TypeVar("T")


class WorkerTopicSource(Generic[T]):
    """Events of ``topic``, subscribed on the app's running worker at the first take."""

    #: not restricted to one partition (see Stream.active_partitions)
    tp = None

    def __init__(self, app: App, topic: Topic[T], label: str) -> None:
        self.app = app
        self.topic = topic
        self.label = label
        self._inner: TopicSource[T] | None = None
        self._worker: Worker | None = None
        #: the stream this source feeds (set by App.stream)
        self.stream: Stream[T] | None = None

    def take_nowait(self) -> Event[T] | None:
        return self._inner.take_nowait() if self._inner is not None else None

    async def take(self) -> Event[T]:
        if self._inner is None:
            self._inner = await self._subscribe()
        return await self._inner.take()

    def release(self, event: Event[T], error: BaseException, *, retry: bool) -> None:
        if self._inner is not None:
            self._inner.release(event, error, retry=retry)

    async def _subscribe(self) -> TopicSource[T]:
        worker = self.app._worker
        if worker is None or worker.consumer is None:
            raise ClosedError(
                f"stream over {self.topic.label!r}: a topic stream is read by a task of a running "
                "worker (iterate it in an @app.task, or consume the topic with an @app.agent)"
            )
        self._worker = worker
        inbox = await worker.add_subscription(self.topic)
        inbox.on_failure = self._output_failed
        task = trio.lowlevel.current_task()
        if task.parent_nursery is not None:
            task.parent_nursery.start_soon(self._release_when_stopped, worker, task)
        return TopicSource(self.app, inbox, self.topic.schema, agent=self.label)

    async def _release_when_stopped(self, worker: Worker, task: trio.lowlevel.Task) -> None:
        """Once the worker stops, release what the iterating task still holds if
        that task has ended (it raised, or left its loop): the drain then does not
        wait for events nobody will ack. They stay unacked, so uncommitted."""
        stop = worker._stop
        if stop is None:
            return
        await stop.wait()
        # Polled only while the worker stops, as the worker polls its lanes then.
        while task.coro.cr_frame is not None:  # noqa: ASYNC110 - no event tells a task ended
            await trio.sleep(0.005)
        if self.stream is not None:
            self.stream.release_held(WorkerError(f"{self.label}: its task ended"), retry=False)

    def _output_failed(self, event: Event[Any], error: BaseException) -> None:
        """An output of ``event`` failed: it is never done, and the worker stops."""
        event._failed = True
        if event._lane is not None:
            event._lane.abandon(event.message.offset)  # a drain does not wait for it
        failure = AgentError(f"{self.label}: an output of the event at {event._describe()} failed: {error}")
        failure.__cause__ = error
        if self._worker is not None:
            self._worker.crash(failure)
