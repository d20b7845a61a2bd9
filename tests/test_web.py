"""The web layer on the memory transport: several workers of one app in one trio run.

Each worker is an App built from the same factory (same id, so the same
group) with its own web server on a free port. Requests go over real HTTP.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from werkzeug.exceptions import NotFound

import streamtrio
from streamtrio import TP
from streamtrio._worker import Worker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

PARTITIONS = 4
KEYS = [f"k{i}" for i in range(40)]


def web_options(**options: Any) -> dict[str, Any]:
    options.setdefault("web_enabled", True)
    options.setdefault("web_port", 0)
    options.setdefault("web_bind", "127.0.0.1")
    options.setdefault("web_host", "127.0.0.1")
    options.setdefault("commit_interval", 0.05)
    options.setdefault("shutdown_timeout", 5.0)
    return options


def orders_app(app_factory: AppFactory, *, table: bool = False, **options: Any) -> streamtrio.App:
    """Every worker runs this: an agent keeping the latest value per key, and routed pages."""
    app = app_factory("webapp", **web_options(**options))
    orders = app.topic("orders", key_type=str, value_type=int, partitions=PARTITIONS)
    latest: dict[str, int] = {}  # only the keys of this worker's partitions
    app.latest = latest  # type: ignore[attr-defined]
    # The table encodes keys as the topic does, so a key's table partition is its topic partition.
    totals = (
        app.Table("totals", key_type=str, default=int, partitions=PARTITIONS, key_serializer="raw")
        if table
        else None
    )

    @app.agent(orders)
    async def remember(stream: streamtrio.Stream[int]) -> None:
        async for event in stream.events():
            latest[event.key] = event.value
            if totals is not None:
                totals[event.key] += event.value

    @app.page("/latest/<key>/")
    @app.topic_route(orders, match_info="key")
    async def get_latest(request: Any, key: str) -> Any:
        if key not in latest:
            raise NotFound(f"no order for {key!r} here")
        return {"key": key, "value": latest[key], "worker": app.cluster.worker_id}

    @app.page("/latest-proxied/")
    @app.topic_route(orders, query_param="key", proxy=True)
    async def get_latest_proxied(request: Any) -> Any:
        key = request.args["key"]
        return {"key": key, "value": latest.get(key), "worker": app.cluster.worker_id}

    if totals is not None:

        @app.page("/totals/{key}/")
        @app.table_route(totals, match_info="key")
        async def get_total(request: Any, key: str) -> Any:
            return {"key": key, "total": totals[key]}

    return app


async def produce(app: streamtrio.App, items: list[tuple[str, int]]) -> None:
    topic = app._topic_named("orders")
    async with app.open_client():
        for key, value in items:
            topic.send_soon(key=key, value=value)
        await app.producer.flush()


def owner_partition(app: streamtrio.App, key: str) -> TP:
    return app.router.topic_partition("orders", key)


def converged(apps: list[streamtrio.App]) -> bool:
    """Every worker's map names, for every source partition, the worker that holds it."""
    holders = {}
    for app in apps:
        worker = app._worker
        if worker is None or not worker.ready:
            return False
        for tp in worker.assigned:
            holders[tp] = app.web.url
    if {tp for tp in holders if tp.topic == "orders"} != {TP("orders", p) for p in range(PARTITIONS)}:
        return False
    for app in apps:
        for tp, url in holders.items():
            owner = app.cluster.map.owner(tp)
            if owner is None or owner.url != url:
                return False
        if set(app.cluster.map.workers()) != {a.cluster.worker_id for a in apps}:
            return False
    return True


@asynccontextmanager
async def cluster(apps: list[streamtrio.App]) -> AsyncIterator[dict[str, Worker]]:
    """Run one worker per app (started one after the other) until the block ends."""
    async with trio.open_nursery() as nursery:
        workers: dict[str, Worker] = {}
        for app in apps:
            worker: Worker = await nursery.start(streamtrio.serve, app)
            workers[app.cluster.worker_id] = worker
        try:
            yield workers
        finally:
            for worker in workers.values():
                worker.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c


async def test_every_key_is_answered_by_its_owner_from_any_worker(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    apps = [orders_app(app_factory) for _ in range(3)]
    values = {key: i * 10 for i, key in enumerate(KEYS)}
    async with cluster(apps):
        await wait_for(lambda: converged(apps))
        await produce(apps[0], list(values.items()))
        await wait_for(lambda: sum(len(a.latest) for a in apps) == len(KEYS))  # type: ignore[attr-defined]
        urls = {a.cluster.worker_id: a.web.url for a in apps}
        redirects = 0
        for key, value in values.items():
            holder = next(a for a in apps if key in a.latest)  # type: ignore[attr-defined]
            assert holder.router.external_topic_key_store("orders", key) == holder.web.url
            for app in apps:
                answer = await client.get(f"{app.web.url}/latest/{key}/", follow_redirects=True)
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"key": key, "value": value, "worker": holder.cluster.worker_id}
                raw = await client.get(f"{app.web.url}/latest/{key}/?x=1", follow_redirects=False)
                if app is holder:
                    assert raw.status_code == 200
                else:
                    redirects += 1
                    assert raw.status_code == 307, raw.text
                    assert raw.headers["location"] == f"{holder.web.url}/latest/{key}/?x=1"
                    # Other workers' key_store agrees with where the key lives.
                    assert app.router.external_topic_key_store("orders", key) == holder.web.url
                proxied = await client.get(f"{app.web.url}/latest-proxied/", params={"key": key})
                assert proxied.status_code == 200
                assert proxied.json()["worker"] == holder.cluster.worker_id
                assert proxied.json()["value"] == value
        assert redirects == 2 * len(KEYS)
        assert len(set(urls.values())) == 3

        # /router/ shows the same map on every worker, with every partition owned.
        maps = [(await client.get(f"{a.web.url}/router/")).json() for a in apps]
        for doc in maps:
            assert doc["partitions"]["orders"] == maps[0]["partitions"]["orders"]
            assert set(doc["partitions"]["orders"]) == {str(p) for p in range(PARTITIONS)}
            assert set(doc["workers"]) == set(urls)
            assert set(doc["topics"]) <= set(urls.values())


async def test_a_stopped_worker_leaves_the_map_and_survivors_serve_every_key(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    apps = [orders_app(app_factory, table=True) for _ in range(3)]
    totals = dict.fromkeys(KEYS, 0)
    items = []
    for round_ in range(3):
        for i, key in enumerate(KEYS):
            items.append((key, i + round_))
            totals[key] += i + round_
    async with trio.open_nursery() as nursery:
        workers = [await nursery.start(streamtrio.serve, app) for app in apps]
        await wait_for(lambda: converged(apps))
        await produce(apps[0], items)

        async def all_totals_right(targets: list[streamtrio.App]) -> bool:
            for key, total in totals.items():
                for app in targets:
                    answer = await client.get(f"{app.web.url}/table/totals/{key}/", follow_redirects=True)
                    if answer.status_code != 200 or answer.json()["value"] != total:
                        return False
            return True

        with trio.fail_after(10):
            while not await all_totals_right(apps):
                await trio.sleep(0.05)
        # The user's table_route answers the same, and 307s name the owner.
        for key in KEYS[:10]:
            tp = apps[0].router.table_partition("totals", key)
            owner = apps[0].cluster.map.owner(tp)
            assert owner is not None
            for app in apps:
                raw = await client.get(f"{app.web.url}/totals/{key}/")
                if app.web.url == owner.url:
                    assert raw.status_code == 200
                    assert raw.json() == {"key": key, "total": totals[key]}
                else:
                    assert raw.status_code == 307
                    assert raw.headers["location"] == f"{owner.url}/totals/{key}/"

        gone = apps[1]
        gone_id, gone_url = gone.cluster.worker_id, gone.web.url
        workers[1].stop()
        survivors = [apps[0], apps[2]]
        with trio.fail_after(10):
            while True:
                docs = [(await client.get(f"{a.web.url}/router/")).json() for a in survivors]
                named = any(
                    gone_id in doc["workers"]
                    or any(
                        entry["active"] == gone_url
                        for parts in doc["partitions"].values()
                        for entry in parts.values()
                    )
                    for doc in docs
                )
                if not named and gone._worker is None and converged(survivors):
                    break
                await trio.sleep(0.05)
        with trio.fail_after(10):
            while not await all_totals_right(survivors):
                await trio.sleep(0.05)
        for worker in workers:
            worker.stop()


async def test_ready_turns_true_only_after_recovery(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    app = orders_app(app_factory, table=True)
    release = trio.Event()
    entered = trio.Event()

    class SlowRecovery:
        """Holds the assign hooks as a long table recovery would."""

        name = "slow-recovery"

        def attach(self, worker: Worker) -> None:
            async def hold(assigned: frozenset[TP]) -> None:
                entered.set()
                await release.wait()

            worker.on_assign_hooks.append(hold)

        async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()

    app._components.append(SlowRecovery())
    async with running(app):
        await entered.wait()
        url = app.web.url
        answer = await client.get(f"{url}/ready")
        assert answer.status_code == 503
        assert answer.json()["ready"] is False
        assert answer.json()["checks"]["partitions_assigned"] is False
        # No owner is published while recovering: a routed key is 503, not a guess.
        routed = await client.get(f"{url}/latest/k1/")
        assert routed.status_code == 503
        assert routed.headers["retry-after"] == "1"
        table_key = await client.get(f"{url}/table/totals/k1/")
        assert table_key.status_code == 503
        assert (await client.get(f"{url}/health")).status_code == 200
        release.set()
        await wait_for(lambda: app.cluster.map.owner(TP("orders", 0)) is not None)
        answer = await client.get(f"{url}/ready")
        assert answer.status_code == 200, answer.text
        assert answer.json()["checks"] == {
            "worker_running": True,
            "partitions_assigned": True,
            "tables_recovered": True,
            "cluster_map_loaded": True,
        }


async def test_unknown_table_is_a_404_that_names_it(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    app = orders_app(app_factory, table=True)
    async with running(app):
        for path in ("/table/nosuch/", "/table/nosuch/k1/"):
            answer = await client.get(f"{app.web.url}{path}")
            assert answer.status_code == 404
            assert "'nosuch'" in answer.json()["error"]
        info = await client.get(f"{app.web.url}/table/totals/")
        assert info.status_code == 200
        assert info.json()["name"] == "totals"
        assert info.json()["partitions"] == PARTITIONS
        assert info.json()["size"] == 0
        await produce(app, [("k1", 5), ("k2", 7)])
        await wait_for(lambda: len(app.latest) == 2)  # type: ignore[attr-defined]
        info = await client.get(f"{app.web.url}/table/totals/")
        assert info.json()["size"] == 2
        missing = await client.get(f"{app.web.url}/table/totals/nokey/")
        assert missing.status_code == 404
        assert "nokey" in missing.json()["error"]


async def test_index_stats_and_health(app_factory: AppFactory, client: httpx.AsyncClient) -> None:
    app = orders_app(app_factory, table=True)
    async with running(app):
        await produce(app, [(key, 1) for key in KEYS])
        await wait_for(lambda: len(app.latest) == len(KEYS))  # type: ignore[attr-defined]
        index = (await client.get(f"{app.web.url}/")).json()
        assert index["app"] == "webapp"
        assert index["version"] == streamtrio.__version__
        assert index["agents"]["remember"]["channel"] == "orders"
        assert "orders" in index["topics"]
        assert "webapp-__cluster" in index["topics"]
        assert index["tables"] == ["totals"]
        assert (await client.get(f"{app.web.url}/health")).json() == {"alive": True}

        async def counted() -> dict[str, Any]:
            return (await client.get(f"{app.web.url}/stats/")).json()  # type: ignore[no-any-return]

        with trio.fail_after(10):
            while (stats := await counted())["topics"].get("orders", {}).get("events", 0) < len(KEYS):
                await trio.sleep(0.05)
        assert stats["agents"]["remember"]["events"] == len(KEYS)
        assert stats["agents"]["remember"]["events_per_second"] > 0
        assert set(stats["partitions"]) >= {f"orders[{p}]" for p in range(PARTITIONS)}
        ends = {p: app.transport.broker.end_offset(TP("orders", p)) for p in range(PARTITIONS)}  # type: ignore[attr-defined]
        with trio.fail_after(10):
            while True:
                stats = await counted()
                parts = [stats["partitions"][f"orders[{p}]"] for p in range(PARTITIONS)]
                if all(part["commit_lag"] == 0 for part in parts if ends[part["partition"]]):
                    break
                await trio.sleep(0.05)
        for part in parts:
            assert part["processed_offset"] in (None, ends[part["partition"]])
        assert stats["commit"]["commits"] >= 1


async def test_pages_function_class_errors_and_json(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    app = app_factory("pages", **web_options())
    store: dict[str, Any] = {}

    @app.page("/hello/{name}/")
    async def hello(request: Any, name: str) -> Any:
        return {"hello": name, "q": request.args.get("q")}

    @app.page("/items/<item>/")
    class Items(streamtrio.View):
        async def get(self, request: Any, item: str) -> Any:
            if item not in store:
                raise NotFound(f"no item {item!r}")
            return {"item": item, "value": store[item], "app": self.app.id}

        async def put(self, request: Any, item: str) -> Any:
            store[item] = (await request.get_json())["value"]
            return {"stored": item}, 201

        async def delete(self, request: Any, item: str) -> Any:
            store.pop(item, None)
            return [item]

    @app.page("/plain")
    async def plain(request: Any) -> Any:
        from quart import Response

        return Response("just text", status=202, content_type="text/plain")

    @app.page("/boom")
    async def boom(request: Any) -> Any:
        raise RuntimeError("kaput")

    async with running(app):
        base = app.web.url
        answer = await client.get(f"{base}/hello/ann/?q=1")
        assert answer.json() == {"hello": "ann", "q": "1"}
        assert answer.headers["content-type"] == "application/json"
        assert (await client.get(f"{base}/items/a/")).status_code == 404
        assert (await client.get(f"{base}/items/a/")).json()["error"] == "no item 'a'"
        put = await client.put(f"{base}/items/a/", json={"value": [1, 2]})
        assert (put.status_code, put.json()) == (201, {"stored": "a"})
        assert (await client.get(f"{base}/items/a/")).json() == {"item": "a", "value": [1, 2], "app": "pages"}
        assert (await client.delete(f"{base}/items/a/")).json() == ["a"]
        assert (await client.post(f"{base}/items/a/")).status_code == 405
        plain_answer = await client.get(f"{base}/plain")
        assert (plain_answer.status_code, plain_answer.text) == (202, "just text")
        crash = await client.get(f"{base}/boom")
        assert crash.status_code == 500
        assert "kaput" in crash.json()["error"]
        assert (await client.get(f"{base}/nothing-here")).json()["status"] == 404
        assert (await client.get(f"{base}/hello/x/")).status_code == 200  # still serving


async def test_port_in_use_is_a_clear_start_up_error(app_factory: AppFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = app_factory("busy", **web_options(web_port=port))
        # raised as itself, not wrapped in the worker's nursery exception groups
        with pytest.raises(streamtrio.WorkerError, match=f"cannot listen on 127.0.0.1:{port}"):
            await streamtrio.serve(app)
    assert app._worker is None


async def test_web_disabled_serves_nothing_but_http_client_works(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    server = app_factory("server", **web_options())

    @server.page("/ping")
    async def ping(request: Any) -> Any:
        return {"pong": True}

    quiet = app_factory("quiet", **web_options(web_enabled=False))
    with pytest.raises(streamtrio.ClosedError):
        quiet.http_client  # noqa: B018
    async with running(server), running(quiet):
        assert quiet.web.url is None
        answer = await quiet.http_client.get(f"{server.web.url}/ping")
        assert answer.json() == {"pong": True}


async def test_canonical_url_setting_is_what_others_are_sent_to(
    app_factory: AppFactory, client: httpx.AsyncClient
) -> None:
    app = orders_app(app_factory, web_canonical_url="http://orders-1.example:8080/")
    async with running(app):
        assert app.web.url == "http://orders-1.example:8080"
        await wait_for(lambda: app.cluster.map.owner(TP("orders", 0)) is not None)
        owner = app.cluster.map.owner(TP("orders", 0))
        assert owner is not None and owner.url == "http://orders-1.example:8080"
        assert app.router.external_topics_metadata() == {
            "http://orders-1.example:8080": {"orders": list(range(PARTITIONS))}
        }
