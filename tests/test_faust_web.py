"""Faust-style web views: `async def view(web, request)`, View with self.json, request.query."""

from __future__ import annotations

from streamtrio.testing import open_test_app

from .faust_apps import web_app


async def test_faust_views() -> None:
    async with open_test_app(web_app.app, web=True) as test_app:
        response = await test_app.http.post("/counter/", json={"name": "ann"})
        assert response.status_code == 201
        assert response.json() == {"ok": True}
        response = await test_app.http.get("/count/ann/", params={"scale": "3"})
        assert response.json() == {"name": "ann", "count": 3}
        response = await test_app.http.get("/counter/", params={"who": "ann"})
        assert response.json() == {"count": 1, "who": "ann"}
