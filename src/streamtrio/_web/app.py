"""The web server of a worker: a Quart-Trio app served by Hypercorn.

:class:`WebServer` is a worker component (see :class:`~streamtrio._worker.Component`):
its ``serve`` binds the port *before* the worker joins the group and reports
ready, runs Hypercorn in its own nursery, and owns ``app.http_client``. It is
cancelled after the consumer has left the group, so ``/router/`` and routed
views keep answering during the final rebalance.

Settings: ``web_enabled`` (no server at all when false, unless ``metrics_port``
asks for one serving ``/metrics`` alone; ``app.http_client`` still works),
``web_bind`` and ``web_port`` (``0`` picks a free port),
``web_host`` and ``web_canonical_url`` (the URL other workers use; by default
``http://<web_host>:<bound port>``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import ClosedError, WorkerError

if TYPE_CHECKING:
    import httpx
    from quart import Response
    from quart_trio import QuartTrio

    from .._app import App
    from .._worker import Worker
    from .metrics import MetricsServer

__all__ = ["WebServer", "error_response", "to_response"]

log = logging.getLogger(__name__)

#: Seconds Hypercorn gives open connections when the worker stops.
GRACEFUL_TIMEOUT = 1.0


def _json_default(obj: Any) -> Any:
    to_repr = getattr(obj, "to_representation", None)
    if callable(to_repr):
        return to_repr()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    return str(obj)


def dumps(obj: Any) -> str:
    """JSON text for a view's result (Records, sets and bytes included)."""
    return json.dumps(obj, default=_json_default)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from quart import Response

    return Response(dumps(obj), status=status, headers=headers, content_type="application/json")


def error_response(status: int, detail: str, *, retry_after: int | None = None) -> Response:
    """A JSON error body ``{"error": ..., "status": ...}`` (with ``Retry-After`` if given)."""
    from werkzeug.http import HTTP_STATUS_CODES

    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return json_response(
        {"error": detail, "status": status, "reason": HTTP_STATUS_CODES.get(status, "")},
        status=status,
        headers=headers,
    )


def to_response(result: Any) -> Any:
    """What a view returned, as Quart takes it: dicts and lists become JSON."""
    if isinstance(result, dict | list):
        return json_response(result)
    if isinstance(result, tuple) and result and isinstance(result[0], dict | list):
        body, *rest = result
        status = rest[0] if rest and isinstance(rest[0], int) else 200
        headers = rest[-1] if rest and isinstance(rest[-1], dict) else None
        return json_response(body, status=status, headers=headers)
    return result


class _NoStartupBanner(logging.Filter):
    """Hypercorn's "Running on ... (CTRL + C to quit)": the worker says where it serves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Running on")


_HYPERCORN_LOG = logging.getLogger("streamtrio.web.hypercorn")
_HYPERCORN_LOG.addFilter(_NoStartupBanner())


def hypercorn_log() -> logging.Logger:
    """The logger Hypercorn's error log goes to (its start-up line dropped)."""
    return _HYPERCORN_LOG


class WebServer:
    """Worker component serving the app's pages (``app.web``).

    Attributes:
        url: the canonical URL of this worker once bound (``None`` before, or
            when the server is disabled).
        bound: the URLs Hypercorn bound.
    """

    name = "web"

    def __init__(self, app: App) -> None:
        self.app = app
        self.url: str | None = None
        self.bound: list[str] = []
        self.quart: QuartTrio | None = None
        #: (path, view, name) in registration order; see App.page
        self.pages: list[tuple[str, Any, str | None]] = []
        self._http_client: httpx.AsyncClient | None = None
        self._serving = False
        #: serves /metrics on ``metrics_port`` when the web server is disabled
        self.metrics_server: MetricsServer | None = None
        self._worker: Worker | None = None
        self.on_build: list[Callable[[QuartTrio], None]] = []

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The worker's HTTP client, made at first use (httpx and its SSL context cost
        about 0.2 s to set up; a worker that never calls another pays nothing)."""
        client = self._http_client
        if client is None:
            if not self._serving:
                raise ClosedError(
                    f"app {self.app.id!r}: http_client is open only while a worker runs the app"
                )
            import httpx

            client = self._http_client = httpx.AsyncClient(timeout=self.app.conf.broker_request_timeout)
        return client

    # -- building the Quart app --------------------------------------------------------

    def build(self) -> QuartTrio:
        """A fresh Quart-Trio app with the built-in views and the app's pages."""
        from quart_trio import QuartTrio
        from werkzeug.exceptions import HTTPException

        from .routes import register_page
        from .views import register_builtin_views

        quart = QuartTrio(f"streamtrio.{self.app.id}")
        quart.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

        async def http_error(exc: HTTPException) -> Response:
            return error_response(exc.code or 500, exc.description or exc.name)

        async def crash(exc: Exception) -> Response:
            log.exception("view raised", exc_info=exc)
            return error_response(500, f"{type(exc).__name__}: {exc}")

        quart.register_error_handler(HTTPException, http_error)
        quart.register_error_handler(Exception, crash)
        register_builtin_views(quart, self.app)
        for path, view, name in self.pages:
            register_page(quart, self.app, path, view, name=name)
        for hook in self.on_build:
            hook(quart)
        return quart

    # -- the Component protocol ----------------------------------------------------------

    def attach(self, worker: Worker) -> None:
        self._worker = worker

    async def serve(self, worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
        """Bind and serve until cancelled (``/metrics`` alone on ``metrics_port`` when the
        web server is disabled); ``http_client`` works meanwhile.

        Raises:
            WorkerError: the port cannot be bound (names host:port).
        """
        conf = self.app.conf
        self._serving = True
        try:
            if conf.web_enabled:
                from hypercorn.trio.run import worker_serve
                from hypercorn.utils import wrap_app

                config, sockets = self._listen()
                self.quart = quart = self.build()
                wrapped = wrap_app(quart, config.wsgi_max_body_size, None)
                async with trio.open_nursery() as nursery:
                    self.bound = await nursery.start(partial(worker_serve, wrapped, config, sockets=sockets))
                    self.url = self._canonical_url(self.bound)
                    log.info("web server on %s (reached as %s)", ", ".join(self.bound), self.url)
                    task_status.started()
            elif conf.metrics_port is not None:
                from .metrics import MetricsServer

                self.metrics_server = MetricsServer(self.app)
                await self.metrics_server.serve(worker, task_status=task_status)
            else:
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._serving = False
            self.url = None
            self.quart = None
            client, self._http_client = self._http_client, None
            if client is not None:
                with trio.move_on_after(GRACEFUL_TIMEOUT, shield=True):
                    await client.aclose()

    def _listen(self) -> tuple[Any, Any]:
        """The Hypercorn config and its listening sockets.

        Bound before any task starts, so that a port in use is a plain
        start-up error rather than one buried in Hypercorn's nurseries.

        Raises:
            WorkerError: the address cannot be bound (names host:port).
        """
        import hypercorn.config

        conf = self.app.conf
        config = hypercorn.config.Config()
        where = f"{conf.web_bind}:{conf.web_port}"
        config.bind = [where]
        config.accesslog = None
        config.errorlog = hypercorn_log()
        config.graceful_timeout = GRACEFUL_TIMEOUT
        try:
            sockets = config.create_sockets()
            for sock in sockets.insecure_sockets + sockets.secure_sockets:
                sock.listen(config.backlog)
        except OSError as exc:
            raise WorkerError(
                f"web server: cannot listen on {where}: {exc.strerror or exc} "
                "(set web_port to a free port, 0 for any, or web_enabled=False)"
            ) from exc
        return config, sockets

    def _canonical_url(self, binds: list[str]) -> str:
        conf = self.app.conf
        if conf.web_canonical_url:
            return str(conf.web_canonical_url).rstrip("/")
        port = binds[0].rsplit(":", 1)[1] if binds else str(conf.web_port)
        return f"http://{conf.web_host}:{port}"
