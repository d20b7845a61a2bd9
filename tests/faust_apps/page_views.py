"""A Faust-style page-view app written against Faust's documented API, run with the import changed.

Set tables (``app.SetTable``), processors, ``stream.current_event``,
``stream.active_partitions``, ``async with event``, a topic stream read by a
task (``app.stream(topic, processors=[...])`` and ``topic.stream()``),
``app.topic(schema=faust.Schema(...))``, a Record key without a
``key_serializer``, ``kvmap`` and ``await (await topic.send())``.
"""

from typing import Any

import streamtrio as faust

app = faust.App("faust-page-views", broker="kafka://localhost:9092", topic_partitions=2)


class PageView(faust.Record):
    page: str
    user: str


class UserKey(faust.Record):
    user: str


views_topic = app.topic("faust-page-views-in", schema=faust.Schema(key_type=str, value_type=PageView))
likes_topic = app.topic("faust-page-likes", key_type=UserKey, value_type=str)
audit_topic = app.topic("faust-page-audit", value_type=PageView)

visitors = app.SetTable("visitors", value_type=str)  # page -> users who saw it
liked = app.SetTable("liked")  # user -> pages

where: list[tuple[str, str, int, int]] = []
partitions_seen: list[Any] = []
audited: list[tuple[str, str]] = []
tapped: list[str] = []


def lowercase_page(view: PageView) -> PageView:
    view.page = view.page.lower()
    return view


async def strip_user(view: PageView) -> PageView:
    view.user = view.user.strip()
    return view


@app.agent(views_topic)
async def count_visitors(views: faust.StreamT[PageView]) -> None:
    views.add_processor(lowercase_page)
    views.add_processor(strip_user)
    async for event in views.noack().events():
        async with event:
            visitors[event.value.page].add(event.value.user)
            current = views.current_event
            assert current is event
            where.append(
                (event.key, current.message.topic, current.message.partition, current.message.offset)
            )
            partitions_seen.append(("views", views.active_partitions))


@app.agent(likes_topic, isolated_partitions=True)
async def likes(stream: faust.StreamT[str]) -> None:
    async for key, page in stream.items():
        liked[key.user] |= {page}
        partitions_seen.append(("likes", stream.active_partitions))


audit_stream = app.stream(audit_topic, processors=[lowercase_page])


@app.task
async def audit() -> None:
    async for view in audit_stream:
        audited.append((view.page, audit_stream.current_event.message.topic))


@app.task
async def tap() -> None:
    async for view in views_topic.stream():
        tapped.append(view.page)


@app.agent()
async def page_count(stream: faust.StreamT[str]) -> Any:
    async for page in stream:
        yield len(visitors[page])


async def like(user: str, page: str) -> faust.RecordMetadata:
    return await (await likes_topic.send(key=UserKey(user), value=page))


if __name__ == "__main__":
    app.main()
