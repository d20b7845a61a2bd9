"""A Faust-style app written against Faust's documented API, run with the import changed.

Faust-only settings, rocksdb:// and aiokafka://, Record options, a topic-less
agent with value_type, App signals, crontab, a faust.Service, tables with
Record values and no declared value type.
"""

from datetime import datetime
from typing import List  # noqa: UP035 - written the way Faust apps are

import streamtrio as faust

app = faust.App(
    "faust-orders",
    broker="aiokafka://localhost:9092",
    store="rocksdb://",
    version=1,
    origin="tests.faust_apps.orders",
    autodiscover=False,
    reply_create_topic=True,
    topic_partitions=2,
)


class Item(faust.Record, serializer="json", isodates=True):
    sku: str
    qty: int


class Order(faust.Record, serializer="json", isodates=True, include_metadata=True):
    id: str
    account: str
    items: List[Item]  # noqa: UP006
    created: datetime = None  # type: ignore[assignment]


orders_topic = app.topic("faust-orders-in", key_type=str, value_type=Order)
totals = app.Table("totals", default=int)
last_order = app.Table("last-order", store="rocksdb://")  # no value_type: Records by namespace

audited: list[Order] = []
rebalances: list[bool] = []
assigned: list[set[faust.TP]] = []
ticks: list[datetime] = []
service_events: list[str] = []


@app.agent(orders_topic)
async def process(orders: faust.StreamT[Order]) -> None:
    async for order in orders:
        totals[order.account] += sum(item.qty for item in order.items)
        last_order[order.account] = order
        await audit.send(value=order)


@app.agent(value_type=Order)
async def audit(stream: faust.StreamT[Order]) -> None:
    async for order in stream:
        audited.append(order)


@app.on_partitions_assigned.connect
async def on_assigned(sender: faust.App, assigned_tps: set[faust.TP], **kwargs: object) -> None:
    assigned.append(assigned_tps)


@app.on_rebalance_complete.connect
async def on_rebalance_complete(sender: faust.App, **kwargs: object) -> None:
    rebalances.append(sender.rebalancing)


@app.crontab("*/10 * * * *")
async def every_ten_minutes() -> None:
    ticks.append(datetime.now())


@app.service
class Heartbeat(faust.Service):
    async def on_start(self) -> None:
        service_events.append("start")

    async def on_stop(self) -> None:
        service_events.append("stop")

    @faust.Service.timer(60.0)
    async def _beat(self) -> None:
        service_events.append("beat")

    @faust.Service.task
    async def _loop(self) -> None:
        while not self.should_stop:
            await self.sleep(300)
            service_events.append("loop")


if __name__ == "__main__":
    app.main()
