"""SetTable on the memory transport: set operations, the changelog, recovery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import streamtrio
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]


class Tag(streamtrio.Record, frozen=True):
    name: str


def tags_app(app_factory: AppFactory, **options: Any) -> tuple[streamtrio.App, Any, Any, list[int]]:
    options.setdefault("commit_interval", 0.05)
    app = app_factory(**options)
    ops = app.topic("ops", key_type=str, value_type=None, partitions=2)
    tags = app.SetTable("tags", value_type=str, partitions=2)
    records = app.SetTable("records", value_type=Tag, partitions=2)
    seen = [0]

    @app.agent(ops)
    async def apply(stream: streamtrio.Stream[Any]) -> None:
        async for key, op in stream.items():
            verb, *args = op
            if verb == "add":
                tags[key].add(args[0])
            elif verb == "discard":
                tags[key].discard(args[0])
            elif verb == "ior":
                tags[key] |= set(args)
            elif verb == "isub":
                tags[key] -= set(args)
            elif verb == "record":
                records[key].add(Tag(args[0]))
            seen[0] += 1

    return app, tags, records, seen


async def test_set_operations_reach_the_changelog_and_survive_recovery(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    ops = [
        ("a", ["add", "x"]),
        ("a", ["add", "y"]),
        ("b", ["ior", "p", "q", "r"]),
        ("a", ["discard", "x"]),
        ("b", ["isub", "q"]),
        ("a", ["add", "y"]),  # already there: no write
        ("c", ["record", "t1"]),
        ("c", ["record", "t2"]),
    ]
    app, tags, records, seen = tags_app(app_factory, store="memory://")
    async with running(app):
        async with app.open_client():
            for key, op in ops:
                await app.send("ops", key=key, value=op)
        await wait_for(lambda: seen[0] == len(ops))
        assert tags["a"] == {"y"}
        assert tags["b"] == {"p", "r"}
        assert tags["missing"] == set()
        assert "missing" not in tags  # reading a missing key stores nothing
        assert records["c"] == {Tag("t1"), Tag("t2")}
        assert dict(tags.items()) == {"a": {"y"}, "b": {"p", "r"}}
    changelog = [(m.key, m.value) for p in range(2) for m in broker.messages("testapp-tags-changelog", p)]
    codec = streamtrio.get_codec("msgpack")
    latest = {codec.loads(k): sorted(codec.loads(v)) for k, v in changelog}
    assert latest == {"a": ["y"], "b": ["p", "r"]}

    # A new worker with an empty store rebuilds the sets from the changelog.
    app2, tags2, records2, _ = tags_app(app_factory, store="memory://")
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        assert dict(tags2.items()) == {"a": {"y"}, "b": {"p", "r"}}
        got = records2["c"]
        assert got == {Tag("t1"), Tag("t2")} and all(isinstance(t, Tag) for t in got)


async def test_set_table_assignment_and_errors(app_factory: AppFactory) -> None:
    app = app_factory("sets-assign", commit_interval=0.05)
    members = app.SetTable("members", partitions=1)
    assert isinstance(members, streamtrio.SetTable)
    async with running(app) as worker:
        # served here once assigned (before, a write goes to the owner: docs/tables.md)
        await wait_for(lambda: bool(worker.source_partitions()) and not worker._assigning)
        members["k"] = ["a", "b", "a"]
        assert members["k"] == {"a", "b"}
        members["k"].update({"c"}, ["d"])
        members["k"].intersection_update({"a", "c", "d"})
        assert sorted(members["k"]) == ["a", "c", "d"]
        members["t"] = {(1, 2)}
        assert members["t"] == {(1, 2)}
        with pytest.raises(TypeError, match="SetTable"):
            members["k"] = "abc"


async def test_set_global_table_is_read_by_every_worker(app_factory: AppFactory) -> None:
    def make() -> tuple[streamtrio.App, Any, list[int]]:
        app = app_factory("sets-global", commit_interval=0.05)
        grants = app.topic("grants", key_type=str, value_type=str, partitions=2)
        roles = app.SetGlobalTable("roles", value_type=str, partitions=2)
        done = [0]

        @app.agent(grants)
        async def grant(stream: streamtrio.Stream[str]) -> None:
            async for user, role in stream.items():
                roles[user] |= {role}
                done[0] += 1

        return app, roles, done

    app, roles, done = make()
    async with running(app):
        async with app.open_client():
            for user, role in [("ann", "admin"), ("ann", "dev"), ("bob", "dev")]:
                await app.send("grants", key=user, value=role)
        await wait_for(lambda: done[0] == 3)
        assert roles["ann"] == {"admin", "dev"}
    other, roles2, _ = make()
    async with running(other):
        await other.tables.wait_until_recovery_completed()
        assert isinstance(roles2, streamtrio.SetGlobalTable)
        assert dict(roles2.items()) == {"ann": {"admin", "dev"}, "bob": {"dev"}}


async def test_set_table_manager_applies_operations_sent_from_anywhere(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    """Faust's ``start_manager=True``: ``table.manager.add(key, member)`` and the other
    operations go through the manager topic to the agent that owns the key."""
    app = app_factory("sets-managed", commit_interval=0.05)
    followers = app.SetTable("followers", value_type=str, partitions=2, start_manager=True)
    sender = app_factory("sets-sender")  # another app: no manager agent, it only sends
    remote = sender.SetTable(
        "followers", value_type=str, partitions=2, manager_topic_name="sets-managed-followers-setmanager"
    )
    async with running(app):
        async with sender.open_client():
            await remote.manager.add("ann", "bob")
            await remote.manager.add("ann", "cid")
            await remote.manager.add("dan", "eve")
            await remote.manager.discard("ann", "bob")
            await remote.manager.symmetric_difference_update("dan", ["eve", "fay"])
            await remote.manager.add("gil", "hal")
            await remote.manager.clear("gil")
        await followers.manager.intersection_update("ann", ["cid", "zed"])
        await wait_for(lambda: followers["dan"] == {"fay"} and not followers["gil"])
        assert followers["ann"] == {"cid"}
        assert sorted(followers.manager.topic.topics) == ["sets-managed-followers-setmanager"]
    assert broker.committed("sets-managed")
