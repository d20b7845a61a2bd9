"""Router (``app.router``): find the worker that holds a key, and send a request there.

A key is placed exactly as the producer places it: encoded with the table's
(or topic's) key serializer, then hashed by the table's (or topic's)
partitioner, the ``partitioner`` setting unless given (Kafka's murmur2 by
default, :mod:`streamtrio._partitioner`). The worker holding that
partition comes from the cluster map (:mod:`streamtrio._cluster`), except for
this worker itself, which trusts its own live assignment first.

Faust's semantics: :meth:`Router.route_req` raises :class:`SameNode` when
this worker is the one to answer, and otherwise returns the response to send
(a 307 redirect to the owner, the owner's own response when proxying, or 503
with ``Retry-After`` when no owner is known yet).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .._codecs import Schema
from .._exceptions import StreamtrioError
from .._records import Record
from .._topic import Topic
from .._types import TP

if TYPE_CHECKING:
    from quart import Request, Response

    from .._app import App
    from .._cluster import WorkerInfo

__all__ = ["NoOwnerError", "Router", "SameNode", "TableNotFoundError", "coerce_key"]

log = logging.getLogger(__name__)

#: Header counting how many workers a proxied request went through.
HOPS_HEADER = "X-Streamtrio-Hops"
#: A request is proxied at most this many times (maps briefly disagree during rebalances).
MAX_HOPS = 2
#: Seconds a client is asked to wait when a key has no known owner.
RETRY_AFTER = 1

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
    }
)


class SameNode(Exception):
    """Raised by :meth:`Router.route_req` when this worker holds the key: serve it here."""


class NoOwnerError(StreamtrioError):
    """No worker is known to actively hold the key's partition (yet).

    Attributes:
        tp: the partition.
        retry_after: seconds after which asking again is sensible.
    """

    def __init__(self, message: str, *, tp: TP, retry_after: int = RETRY_AFTER) -> None:
        super().__init__(message)
        self.tp = tp
        self.retry_after = retry_after


class TableNotFoundError(KeyError, StreamtrioError):
    """The app has no table of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such table"


def coerce_key(key: Any, key_type: Any) -> Any:
    """Turn a key taken from a URL (a string) into the table's or topic's key type.

    ``int``/``float``/``bytes`` keys are converted; a Record key is parsed
    from JSON. Anything that is not a string is returned unchanged.
    """
    if not isinstance(key, str):
        return key
    if key_type is int:
        return int(key)
    if key_type is float:
        return float(key)
    if key_type is bytes:
        return key.encode()
    if isinstance(key_type, type) and issubclass(key_type, Record):
        return key_type.from_data(json.loads(key))
    return key


class Router:
    """Finds the worker that holds a key (``app.router``)."""

    def __init__(self, app: App) -> None:
        self.app = app

    # -- lookups ---------------------------------------------------------------------

    def _tables(self) -> Mapping[str, Any]:
        # Not ``app.tables``: that property creates the table manager.
        return getattr(self.app, "_table_manager", None) or {}

    def _table(self, table_name: str) -> Any:
        table = self._tables().get(table_name)
        if table is None:
            raise TableNotFoundError(f"no table named {table_name!r}")
        return table

    def table_partition(self, table_name: str, key: Any) -> TP:
        """The changelog partition that holds ``key`` of ``table_name``.

        Raises:
            TableNotFoundError: no such table.
        """
        table = self._table(table_name)
        key = coerce_key(key, table.key_type)
        # Outside an event a table places a key as the producer does.
        return TP(table.changelog_topic_name, table.key_partition(key))

    def topic_partition(self, topic: Topic[Any] | str, key: Any) -> TP:
        """The partition of ``topic`` the producer sends ``key`` to."""
        if isinstance(topic, str):
            topic = self.app._topic_named(topic)
        name = topic.get_topic_name()
        key = coerce_key(key, topic.schema.key_type)
        return TP(name, topic.key_partition(_encode(topic.schema, key), self._partition_count(topic, name)))

    def _partition_count(self, topic: Topic[Any], name: str) -> int:
        worker = self.app._worker
        counts: Mapping[str, int] = getattr(worker, "_partition_counts", None) or {}
        if name in counts:
            return counts[name]
        producer = self.app._producer
        if producer is not None:
            n = producer.partition_count(name)
            if n is not None:
                return n
        return topic.spec(name).partitions

    def _owner(self, tp: TP) -> WorkerInfo:
        info = self.app.cluster.map.owner(tp)
        if info is None or not info.url:
            raise NoOwnerError(f"no worker is known to hold {tp} yet", tp=tp)
        return info

    def key_store(self, table_name: str, key: Any) -> str:
        """The URL of the worker that holds ``key`` in ``table_name``.

        Raises:
            TableNotFoundError: no such table.
            NoOwnerError: no worker is known to hold the key's partition yet.
        """
        tp = self.table_partition(table_name, key)
        if self.local_state(tp) == "active":
            return self.app.web.url or ""
        return self._owner(tp).url or ""

    def external_topic_key_store(self, topic: Topic[Any] | str, key: Any) -> str:
        """The URL of the worker that processes ``key`` of ``topic``.

        Raises:
            NoOwnerError: no worker is known to hold the key's partition yet.
        """
        tp = self.topic_partition(topic, key)
        if self.local_state(tp) == "active":
            return self.app.web.url or ""
        return self._owner(tp).url or ""

    def local_state(self, tp: TP) -> str | None:
        """``"active"`` when this worker serves ``tp`` now, ``"recovering"``, or ``None``.

        Decided from this worker's live assignment, never from the map.
        """
        worker = self.app._worker
        if worker is None or worker.stopping:
            return None
        held = frozenset(worker.assigned)
        table = next((t for t in self._tables().values() if t.changelog_topic_name == tp.topic), None)
        if table is None:
            if tp not in held:
                return None
            return "recovering" if tp in worker._recovering else "active"
        manager = self._tables()
        if table.is_global:
            return "active" if getattr(manager, "running", False) else "recovering"
        if tp not in self.app.cluster.table_partitions(held):
            return None
        if tp.partition in table.served_partitions() and not any(
            r.partition == tp.partition for r in worker._recovering
        ):
            return "active"
        return "recovering"

    # -- metadata (Faust's shapes: {url: {topic: [partitions]}}) ------------------------

    def _metadata(self, topics: set[str]) -> MutableMapping[str, MutableMapping[str, list[int]]]:
        result: MutableMapping[str, MutableMapping[str, list[int]]] = {}
        for tp, info in sorted(self.app.cluster.map.owners().items()):
            if tp.topic in topics and info.url:
                result.setdefault(info.url, {}).setdefault(tp.topic, []).append(tp.partition)
        return result

    def table_metadata(self, table_name: str) -> MutableMapping[str, MutableMapping[str, list[int]]]:
        """Active partitions of one table's changelog by worker URL.

        Raises:
            TableNotFoundError: no such table.
        """
        return self._metadata({self._table(table_name).changelog_topic_name})

    def tables_metadata(self) -> MutableMapping[str, MutableMapping[str, list[int]]]:
        """Active partitions of every table's changelog by worker URL."""
        return self._metadata({t.changelog_topic_name for t in self._tables().values()})

    def external_topics_metadata(self) -> MutableMapping[str, MutableMapping[str, list[int]]]:
        """Active partitions of the app's source topics by worker URL."""
        names = {
            name
            for agent in self.app.agents.values()
            if isinstance(agent.channel, Topic)
            for name in agent.channel.topics
        }
        return self._metadata(names)

    # -- routing requests ----------------------------------------------------------------

    async def route_req(
        self, table_name: str, key: Any, web: Any, request: Request, *, proxy: bool = False
    ) -> Response:
        """Route ``request`` to the worker that holds ``key`` in ``table_name``.

        Raises:
            SameNode: this worker holds it; serve the request here.
            TableNotFoundError: no such table.
        """
        return await self._route(self.table_partition(table_name, key), request, proxy=proxy)

    async def route_topic_req(
        self, topic: Topic[Any] | str, key: Any, web: Any, request: Request, *, proxy: bool = False
    ) -> Response:
        """Route ``request`` to the worker that processes ``key`` of ``topic``.

        Raises:
            SameNode: this worker holds it; serve the request here.
        """
        return await self._route(self.topic_partition(topic, key), request, proxy=proxy)

    async def _route(self, tp: TP, request: Request, *, proxy: bool) -> Response:
        from .app import error_response

        state = self.local_state(tp)
        if state == "active":
            raise SameNode(tp)
        if state == "recovering":
            return error_response(503, f"{tp} is recovering on this worker", retry_after=RETRY_AFTER)
        info = self.app.cluster.map.owner(tp)
        me = self.app.web.url
        if info is None or not info.url or info.url == me:
            # Our own stale claim, or nobody yet: never a guess.
            return error_response(503, f"no worker is known to hold {tp} yet", retry_after=RETRY_AFTER)
        target = info.url.rstrip("/") + request.path
        query = request.query_string.decode("latin-1")
        if query:
            target += "?" + query
        if proxy:
            return await self._proxy(target, tp, request)
        from quart import Response

        body = json.dumps({"redirect": target, "partition": str(tp), "worker": info.worker_id})
        return Response(body, status=307, headers={"Location": target}, content_type="application/json")

    async def _proxy(self, target: str, tp: TP, request: Request) -> Response:
        import httpx
        from quart import Response

        from .app import error_response

        hops = int(request.headers.get(HOPS_HEADER, "0") or 0)
        if hops >= MAX_HOPS:
            return error_response(
                503, f"{tp}: workers disagree about its owner (rebalancing)", retry_after=RETRY_AFTER
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[HOPS_HEADER] = str(hops + 1)
        try:
            answer = await self.app.http_client.request(
                request.method,
                target,
                headers=headers,
                content=await request.get_data(),
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            log.warning("proxying to %s failed: %s", target, exc)
            return error_response(502, f"the worker holding {tp} did not answer: {exc}", retry_after=None)
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        return Response(answer.content, status=answer.status_code, headers=out)


def _encode(schema: Schema, key: Any) -> bytes | None:
    return schema.dumps_key(key)
