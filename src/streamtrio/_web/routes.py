"""Pages and routed views: ``@app.page``, ``@app.table_route``, ``@app.topic_route``.

A page is an ``async def view(request, **params)`` or a class with ``async``
``get``/``post``/``put``/``patch``/``delete`` methods taking
``(self, request, **params)``. Path parameters are written Quart-style
(``/totals/<account>/``, ``/n/<int:n>/``) or Faust/aiohttp-style
(``/totals/{account}/``). A view returns a dict or list (sent as JSON), a
``(body, status[, headers])`` tuple, or any Quart response; raising a
``werkzeug.exceptions.HTTPException`` (``NotFound("...")``,
``quart.abort(404)``) answers with a JSON error body.

``table_route``/``topic_route`` go *under* ``page`` and make the view answer
only on the worker that holds the key; elsewhere the request is redirected
(307, same path and query) or, with ``proxy=True``, forwarded.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from .app import error_response, json_response, to_response
from .router import SameNode, TableNotFoundError

if TYPE_CHECKING:
    from quart import Request
    from quart_trio import QuartTrio

    from .._app import App
    from .._topic import Topic

__all__ = [
    "HTTP_METHODS",
    "FaustRequest",
    "View",
    "Web",
    "current_request",
    "register_page",
    "table_route",
    "topic_route",
]

HTTP_METHODS = ("get", "post", "put", "patch", "delete")

ViewFun = Callable[..., Awaitable[Any]]

_AIOHTTP_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class FaustRequest:
    """The request as Faust (aiohttp) views read it, over Quart's request.

    ``request.query`` (the query arguments), ``request.match_info`` (path
    parameters), ``await request.json()``, ``await request.text()``; every
    other attribute is Quart's.
    """

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def query(self) -> Any:
        return self._request.args

    @property
    def match_info(self) -> dict[str, Any]:
        return dict(self._request.view_args or {})

    async def json(self) -> Any:
        return await self._request.get_json(force=True)

    async def text(self) -> str:
        data = await self._request.get_data(as_text=True)
        return data if isinstance(data, str) else data.decode("utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


class Web:
    """Faust's ``web`` argument of function views: response builders."""

    def json(self, value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Any:
        return json_response(value, status=status, headers=headers)

    def text(
        self, value: str, *, content_type: str | None = None, status: int = 200, headers: Any = None
    ) -> Any:
        from quart import Response

        return Response(value, status=status, headers=headers, content_type=content_type or "text/plain")

    def html(self, value: str, *, status: int = 200, headers: Any = None) -> Any:
        return self.text(value, content_type="text/html", status=status, headers=headers)

    def bytes(
        self, value: bytes, *, content_type: str | None = None, status: int = 200, headers: Any = None
    ) -> Any:
        from quart import Response

        return Response(
            value, status=status, headers=headers, content_type=content_type or "application/octet-stream"
        )

    def error(self, status: int, reason: str, **kwargs: Any) -> Any:
        return error_response(status, reason)

    def notfound(self, reason: str = "Not Found", **kwargs: Any) -> Any:
        return error_response(404, reason)


class View(Web):
    """Optional base class of class-based pages: gives ``self.app`` and Faust's helpers.

    One instance per running worker. Define any of ``get``, ``post``, ``put``,
    ``patch``, ``delete`` as ``async def get(self, request, **params)``.
    ``self.json(value)``, ``self.text()``, ``self.html()``, ``self.bytes()``,
    ``self.error(status, reason)`` and ``self.notfound()`` build responses as
    in Faust; the request also has Faust's ``request.query`` and
    ``request.match_info``.
    """

    def __init__(self, app: App, web: Any = None) -> None:
        self.app = app
        self.web = web if web is not None else Web()


def _faust_function_view(view: Any) -> bool:
    """``async def view(web, request)``: Faust's function-view signature."""
    try:
        params = list(inspect.signature(view).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[0].name in ("web", "self") and positional[1].name == "request"


def quart_rule(path: str) -> str:
    """``/a/{b}/`` -> ``/a/<b>/`` (Quart rules pass through)."""
    return _AIOHTTP_PARAM.sub(r"<\1>", path)


def current_request() -> Request:
    """The request being served (the object, not Quart's context-local proxy)."""
    from quart import request

    return cast("Request", cast(Any, request)._get_current_object())


def register_page(quart: QuartTrio, app: App, path: str, view: Any, *, name: str | None = None) -> None:
    """Add ``view`` at ``path`` to a Quart app (see the module docstring)."""
    rule = quart_rule(path)
    if inspect.isclass(view):
        instance = view(app) if issubclass(view, View) else view()
        methods = [m.upper() for m in HTTP_METHODS if callable(getattr(instance, m, None))]
        if not methods:
            raise TypeError(f"page {path!r}: class {view.__name__} defines none of {', '.join(HTTP_METHODS)}")

        faust_style = isinstance(instance, View)

        async def endpoint(**params: Any) -> Any:
            request = current_request()
            handler = getattr(instance, request.method.lower(), None)
            if handler is None:  # HEAD without get is refused by the rule's methods already
                return error_response(405, f"{request.method} not allowed on {path}")
            arg: Any = FaustRequest(request) if faust_style else request
            return to_response(await handler(arg, **params))

        label = view.__name__
    else:
        if not inspect.iscoroutinefunction(view):
            raise TypeError(f"page {path!r}: {view!r} must be an async def view(request, **params)")
        methods = ["GET"]
        if _faust_function_view(view):
            web = Web()

            async def endpoint(**params: Any) -> Any:
                return to_response(await view(web, FaustRequest(current_request()), **params))

        else:

            async def endpoint(**params: Any) -> Any:
                return to_response(await view(current_request(), **params))

        label = getattr(view, "__name__", "view")
    quart.add_url_rule(rule, endpoint=name or f"page:{path}:{label}", view_func=endpoint, methods=methods)


def _key_getter(
    where: str,
    shard_param: str | None,
    query_param: str | None,
    match_info: str | None,
    exact_key: Any,
) -> Callable[[Request, dict[str, Any]], Any]:
    from werkzeug.exceptions import BadRequest

    given = [x for x in (shard_param, query_param, match_info) if x is not None]
    if exact_key is not None:
        given.append("exact_key")
    if len(given) != 1:
        raise TypeError(f"{where}: give exactly one of shard_param, query_param, match_info or exact_key")
    if exact_key is not None:
        return lambda request, params: exact_key
    if match_info is not None:
        name = match_info

        def from_path(request: Request, params: dict[str, Any]) -> Any:
            if name not in params:
                raise BadRequest(f"the path has no parameter {name!r} to route by")
            return params[name]

        return from_path
    # Faust: shard_param is the old name of query_param.
    qname = query_param if query_param is not None else shard_param
    assert qname is not None

    def from_query(request: Request, params: dict[str, Any]) -> Any:
        value = request.args.get(qname)
        if value is None:
            raise BadRequest(f"missing query parameter {qname!r}")
        return value

    return from_query


def _routed(
    where: str,
    route: Callable[[Any, Request], Awaitable[Any]],
    get_key: Callable[[Request, dict[str, Any]], Any],
) -> Callable[[ViewFun], ViewFun]:
    from werkzeug.exceptions import BadRequest, NotFound

    def decorator(fun: ViewFun) -> ViewFun:
        @functools.wraps(fun)
        async def wrapper(*args: Any, **params: Any) -> Any:
            # (request, ...) for a function page, (self, request, ...) for a method.
            request = args[-1]
            key = get_key(request, params)
            try:
                return await route(key, request)
            except SameNode:
                return await fun(*args, **params)
            except TableNotFoundError as exc:
                raise NotFound(str(exc)) from exc
            except (ValueError, TypeError) as exc:
                raise BadRequest(f"bad key {key!r} for {where}: {exc}") from exc

        return wrapper

    return decorator


def table_route(
    app: App,
    table: Any,
    shard_param: str | None = None,
    *,
    query_param: str | None = None,
    match_info: str | None = None,
    exact_key: Any = None,
    proxy: bool = False,
) -> Callable[[ViewFun], ViewFun]:
    """See :meth:`streamtrio.App.table_route`."""
    table_name = table if isinstance(table, str) else table.name
    where = f"table_route({table_name!r})"
    get_key = _key_getter(where, shard_param, query_param, match_info, exact_key)

    async def route(key: Any, request: Request) -> Any:
        return await app.router.route_req(table_name, key, app.web, request, proxy=proxy)

    return _routed(where, route, get_key)


def topic_route(
    app: App,
    topic: Topic[Any] | str,
    shard_param: str | None = None,
    *,
    query_param: str | None = None,
    match_info: str | None = None,
    exact_key: Any = None,
    proxy: bool = False,
) -> Callable[[ViewFun], ViewFun]:
    """See :meth:`streamtrio.App.topic_route`."""
    label = topic if isinstance(topic, str) else topic.label
    where = f"topic_route({label!r})"
    get_key = _key_getter(where, shard_param, query_param, match_info, exact_key)

    async def route(key: Any, request: Request) -> Any:
        return await app.router.route_topic_req(topic, key, app.web, request, proxy=proxy)

    return _routed(where, route, get_key)
