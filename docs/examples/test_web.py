"""Testing a web view: run the app with its web server and ask it over HTTP."""

from __future__ import annotations

from typing import Any

import trio.testing

import streamtrio
from streamtrio.testing import open_test_app

app = streamtrio.App("bank", broker="kafka://localhost:9092")
deposits = app.topic("deposits", key_type=str, value_type=int, partitions=4)
balances = app.Table("balances", key_type=str, default=int, key_serializer="raw", partitions=4)


@app.agent(deposits)
async def deposit(stream: streamtrio.Stream[int]) -> None:
    async for event in stream.events():
        balances[event.key] += event.value


@app.page("/balances/<account>/")
@app.table_route(balances, match_info="account")
async def get_balance(request: Any, account: str) -> Any:
    return {"account": account, "balance": balances[account]}


async def test_the_balance_view(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_app(app, web=True) as test_app:
        await test_app.send(deposits, 50, key="alice")
        await test_app.send(deposits, 25, key="alice")
        await test_app.drain()
        response = await test_app.http.get("/balances/alice/")
        assert response.status_code == 200
        assert response.json() == {"account": "alice", "balance": 75}
