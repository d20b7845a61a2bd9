"""The built-in views every worker serves.

=========================== ==================================================
``GET /``                   app id, version, this worker, agents, topics, tables
``GET /router/``            the cluster map: workers, partition -> worker URL
``GET /table/<name>/``      the table's info and its size on this worker
``GET /table/<name>/<key>/`` the value, answered by the worker holding the key
``GET /health``             200 while the worker runs (503 when stopping)
``GET /ready``              200 once the worker is ready: group joined,
                            partitions assigned and tables recovered
``GET /stats/``             events/s per topic and agent, commit and consumer lag
                            per partition
``GET /metrics``            the same numbers and more in the Prometheus text format
=========================== ==================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._topic import Topic
from .._version import __version__
from .app import error_response, json_response
from .router import SameNode, TableNotFoundError, coerce_key
from .routes import current_request

if TYPE_CHECKING:
    from quart import Response
    from quart_trio import QuartTrio

    from .._app import App

__all__ = ["readiness", "register_builtin_views"]


def _tables(app: App) -> dict[str, Any]:
    # Not ``app.tables``: that property creates the table manager.
    manager = getattr(app, "_table_manager", None)
    return dict(manager.items()) if manager else {}


def _tables_recovered(app: App) -> bool:
    manager = getattr(app, "_table_manager", None)
    if not manager:
        return True
    return bool(manager.running) and not manager.statistics().recovering


def readiness(app: App) -> dict[str, Any]:
    """Why this worker is, or is not, ready (the ``/ready`` document)."""
    worker = app._worker
    checks = {
        "worker_running": worker is not None and worker.ready and not worker.stopping,
        "partitions_assigned": worker is not None
        and (not app._needs_group() or worker.generation > 0)
        and not worker._recovering,
        "tables_recovered": _tables_recovered(app),
        "cluster_map_loaded": app.cluster.caught_up,
    }
    return {"ready": all(checks.values()), "checks": checks}


def _table_info(table: Any) -> dict[str, Any]:
    info: dict[str, Any] = dict(table.info())
    info["served_partitions"] = table.served_partitions()
    info["size"] = len(table) if table._manager.running else 0
    return info


def register_builtin_views(quart: QuartTrio, app: App) -> None:
    async def index() -> Response:
        worker = app._worker
        topics = sorted({name for t in app._declared_topics() for name in t.topics})
        return json_response(
            {
                "app": app.id,
                "version": __version__,
                "worker": app.cluster.worker_id,
                "url": app.web.url,
                "ready": readiness(app)["ready"],
                "agents": {
                    a.name: {
                        "channel": a.channel.label,
                        "concurrency": a.concurrency,
                        "topic": isinstance(a.channel, Topic),
                    }
                    for a in app.agents.values()
                },
                "topics": topics,
                "tables": sorted(_tables(app)),
                "assigned": sorted(str(tp) for tp in (worker.assigned if worker else ())),
            }
        )

    async def router_view() -> Response:
        doc = app.cluster.map.as_dict()
        doc["this"] = {"worker": app.cluster.worker_id, "url": app.web.url}
        doc["tables"] = app.router.tables_metadata()
        doc["topics"] = app.router.external_topics_metadata()
        return json_response(doc)

    def table_or_404(name: str) -> Any:
        table = _tables(app).get(name)
        if table is None:
            return None
        return table

    async def table_view(name: str) -> Response:
        table = table_or_404(name)
        if table is None:
            return error_response(404, f"no table named {name!r}")
        return json_response(_table_info(table))

    async def table_key_view(name: str, key: str) -> Any:
        table = table_or_404(name)
        if table is None:
            return error_response(404, f"no table named {name!r}")
        request = current_request()
        try:
            return await app.router.route_req(name, key, app.web, request)
        except SameNode:
            pass
        except TableNotFoundError:
            return error_response(404, f"no table named {name!r}")
        except (ValueError, TypeError) as exc:
            return error_response(400, f"bad key {key!r} for table {name!r}: {exc}")
        typed = coerce_key(key, table.key_type)
        if typed not in table:
            return error_response(404, f"table {name!r} has no key {key!r}")
        return json_response({"table": name, "key": typed, "value": table[typed]})

    async def health() -> Response:
        worker = app._worker
        alive = worker is not None and not worker.stopping
        return json_response({"alive": alive}, status=200 if alive else 503)

    async def ready() -> Response:
        doc = readiness(app)
        return json_response(doc, status=200 if doc["ready"] else 503)

    async def stats() -> Response:
        return json_response(app.monitor.stats())

    quart.add_url_rule("/", "streamtrio.index", index, methods=["GET"])
    quart.add_url_rule("/router/", "streamtrio.router", router_view, methods=["GET"])
    quart.add_url_rule("/table/<name>/", "streamtrio.table", table_view, methods=["GET"])
    quart.add_url_rule("/table/<name>/<key>/", "streamtrio.table_key", table_key_view, methods=["GET"])
    quart.add_url_rule("/health", "streamtrio.health", health, methods=["GET"])
    quart.add_url_rule("/ready", "streamtrio.ready", ready, methods=["GET"])
    async def metrics() -> Response:
        from quart import Response, request

        from .metrics import render

        body, content_type = render(app, request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    quart.add_url_rule("/stats/", "streamtrio.stats", stats, methods=["GET"])
    quart.add_url_rule("/metrics", "streamtrio.metrics", metrics, methods=["GET"])
