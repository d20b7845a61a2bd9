"""Tables on the memory transport: word count, restarts, crashes, rebalances, standbys, globals."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import streamtrio
from streamtrio import TP
from streamtrio._transports.memory import MemoryBroker

from .conftest import running, wait_for

AppFactory = Callable[..., streamtrio.App]

PARTITIONS = 8
CHANGELOG = "testapp-counts-changelog"


def word_count_app(
    app_factory: AppFactory, after: Callable[[], None] | None = None, **options: Any
) -> tuple[streamtrio.App, streamtrio.Table]:
    options.setdefault("commit_interval", 0.05)
    app = app_factory(**options)
    words = app.topic("words", key_type=str, value_type=str, partitions=PARTITIONS)
    counts = app.Table("counts", default=int, key_type=str, value_type=int, partitions=PARTITIONS)

    @app.agent(words)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for word in stream:
            counts[word] += 1
            if after is not None:
                after()

    return app, counts


def corpus(n: int, vocabulary: int = 1000, start: int = 0) -> list[str]:
    return [f"word-{(i * 7919) % vocabulary}" for i in range(start, start + n)]


async def produce(app: streamtrio.App, words: list[str]) -> None:
    topic = app._topic_named("words")
    async with app.open_client():
        for word in words:
            topic.send_soon(key=word, value=word)
        await app.producer.flush()


def source_ends(broker: MemoryBroker) -> dict[TP, int]:
    ends = {TP("words", p): broker.end_offset(TP("words", p)) for p in range(PARTITIONS)}
    return {tp: end for tp, end in ends.items() if end}


def changelog_ends(broker: MemoryBroker, topic: str = CHANGELOG) -> dict[TP, int]:
    return {TP(topic, p): broker.end_offset(TP(topic, p)) for p in range(broker.topics()[topic])}


async def wait_committed(app: streamtrio.App, broker: MemoryBroker, timeout: float = 60.0) -> None:
    ends = source_ends(broker)
    await wait_for(lambda: broker.committed(app.id) == ends, timeout=timeout)


def recovered(app: streamtrio.App) -> dict[TP, int]:
    return app.tables.statistics().recovered


# -- the word count -------------------------------------------------------------------


async def test_word_count_exact_then_restart_replays_nothing_then_fresh_dir_replays_all(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    total = 100_000
    words = corpus(total)
    expected = Counter(words)
    datadir = tmp_path / "worker-1"

    app, counts = word_count_app(app_factory, store="lmdb://", datadir=str(datadir), lmdb_sync=False)
    async with running(app):
        began = time.perf_counter()
        await produce(app, words)
        await wait_committed(app, broker)
        elapsed = time.perf_counter() - began
        assert dict(counts.items()) == expected
        assert len(counts) == len(expected)
        persisted = {tp: counts.persisted_offset(tp) for tp in changelog_ends(broker)}
    logging.getLogger(__name__).info(
        "word count: %d events in %.2fs (%.0f/s)", total, elapsed, total / elapsed
    )
    ends = changelog_ends(broker)
    # everything the changelog holds is persisted (offset of the last record)
    assert persisted == {tp: end - 1 for tp, end in ends.items()}

    # Graceful restart, same data dir: nothing replayed beyond the persisted offset.
    app2, counts2 = word_count_app(app_factory, store="lmdb://", datadir=str(datadir), lmdb_sync=False)
    caplog.set_level(logging.DEBUG, logger="streamtrio._tables.recovery")  # 0 records: a debug line
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        assert recovered(app2) == dict.fromkeys(ends, 0)
        assert dict(counts2.items()) == expected
    assert "table 'counts' partition 3 recovered: 0 records replayed" in caplog.text

    # A new machine: a fresh data dir replays the whole changelog and gets the same totals.
    app3, counts3 = word_count_app(
        app_factory, store="lmdb://", datadir=str(tmp_path / "worker-new"), table_standby_replicas=0
    )
    async with running(app3):
        await app3.tables.wait_until_recovery_completed()
        began = time.perf_counter()
        assert recovered(app3) == ends
        assert dict(counts3.items()) == expected
    assert sum(ends.values()) < total  # one record per key per commit, not one per write


@pytest.mark.parametrize("eager", [False, True])
async def test_changelog_gets_one_record_per_key_per_commit(
    app_factory: AppFactory, broker: MemoryBroker, eager: bool
) -> None:
    app, counts = word_count_app(app_factory, commit_interval=3600, table_changelog_eager=eager)
    words = [f"k{i % 10}" for i in range(1000)]
    async with running(app):
        await produce(app, words)
        await wait_for(lambda: sum(counts.values()) == 1000)
    # the final commit at shutdown produced the table
    records = [m for tp in changelog_ends(broker) for m in broker.messages(tp.topic, tp.partition)]
    assert len(records) == (1000 if eager else 10)
    latest = {m.key: m.value for m in records}
    codec = streamtrio.get_codec("msgpack")
    assert {codec.loads(k): codec.loads(v) for k, v in latest.items() if k and v} == Counter(words)


async def test_changelog_partition_is_the_source_partition(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory(commit_interval=0.05)
    # keyed by user, counted by country: the table key is not the message key
    visits = app.topic("visits", key_type=str, value_type=str, partitions=4)
    by_country = app.Table("by_country", default=int, partitions=4)

    @app.agent(visits)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for country in stream:
            by_country[country] += 1

    async with running(app), app.open_client():
        for i in range(200):
            visits.send_soon(key=f"user-{i}", value=["fr", "de", "nl"][i % 3])
        await app.producer.flush()
        await wait_for(lambda: sum(by_country.values()) == 200)
    codec = streamtrio.get_codec("msgpack")
    for p in range(4):
        seen_in_source = {visits.schema.loads_value(m.value) for m in broker.messages("visits", p)}
        in_changelog = {
            codec.loads(m.key) for m in broker.messages("testapp-by_country-changelog", p) if m.key
        }
        assert in_changelog == seen_in_source


# -- crashes ------------------------------------------------------------------------------


def crash_snapshot(app: streamtrio.App, broker: MemoryBroker, copy_to: Path) -> Callable[[], None]:
    """What survives a kill -9 right now: the broker's log and commits, and LMDB's last transaction.

    Returns a function that puts the broker back in that state after the worker
    was cancelled (cancelling still leaves the group, which commits on revoke).
    """
    group = broker._groups[app.id]
    committed = dict(group.committed)
    lengths = {
        tp: end for name in app.tables.changelog_topics for tp, end in changelog_ends(broker, name).items()
    }
    copy_to.mkdir(parents=True)
    app.tables.store._env.copy(str(copy_to))  # type: ignore[attr-defined]

    def restore() -> None:
        group.committed.clear()
        group.committed.update(committed)
        for tp, end in lengths.items():
            del broker._topics[tp.topic].partitions[tp.partition].log[end:]

    return restore


@pytest.mark.parametrize("when", ["mid-processing", "after-changelog-flush", "right-after-commit"])
async def test_kill_9_then_restart_loses_no_count(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, when: str
) -> None:
    total = 30_000
    words = corpus(total, vocabulary=500)
    expected = Counter(words)
    survived = tmp_path / "after"
    restore: list[Callable[[], None]] = []
    processed = 0
    kill = trio.CancelScope()

    def after() -> None:
        nonlocal processed
        processed += 1
        if when == "mid-processing" and processed == total // 2:
            restore.append(crash_snapshot(app, broker, survived))
            kill.cancel()

    app, _ = word_count_app(
        app_factory, after, store="lmdb://", datadir=str(tmp_path / "before"), lmdb_sync=False
    )
    if when == "after-changelog-flush":
        # dies after the changelog records were delivered, before LMDB and the group commit
        complete = app.tables.complete_commit

        async def die_in_complete(offsets: Any) -> None:
            if processed >= total // 2 and not restore:
                restore.append(crash_snapshot(app, broker, survived))
                kill.cancel()
            await complete(offsets)

        app.tables.complete_commit = die_in_complete  # type: ignore[method-assign]

    with kill:
        async with running(app):
            await produce(app, words)
            if when == "right-after-commit":
                await wait_committed(app, broker)
                await wait_for(lambda: app.tables.statistics().unpersisted == 0)
                restore.append(crash_snapshot(app, broker, survived))
                kill.cancel()
            await trio.sleep_forever()
    restore[0]()

    app2, counts2 = word_count_app(app_factory, store="lmdb://", datadir=str(survived), lmdb_sync=False)
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        await wait_committed(app2, broker)
        got = dict(counts2.items())
    assert set(got) == set(expected)
    if when == "right-after-commit":
        assert got == expected
    else:
        assert all(got[word] >= n for word, n in expected.items())
    if when == "after-changelog-flush":
        # the replayed changelog already counted the events processed again: at least once
        assert sum(got.values()) > total


# -- rebalances and standbys ---------------------------------------------------------------


async def test_second_worker_takes_partitions_with_right_values(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    first_half, second_half = corpus(20_000), corpus(20_000, start=20_000)
    a, counts_a = word_count_app(app_factory, datadir=str(tmp_path / "a"), table_standby_replicas=0)
    b, counts_b = word_count_app(app_factory, datadir=str(tmp_path / "b"), table_standby_replicas=0)
    async with running(a):
        await produce(a, first_half)
        await wait_committed(a, broker)
        assert counts_a.served_partitions() == list(range(8))
        async with running(b):
            await wait_for(lambda: counts_b.served_partitions() == [4, 5, 6, 7])
            await wait_for(lambda: counts_a.served_partitions() == [0, 1, 2, 3])
            # b replayed the moved partitions from the changelog a wrote
            moved = {TP(CHANGELOG, p) for p in range(4, 8)}
            assert {tp: n for tp, n in recovered(b).items() if tp in moved} == {
                tp: broker.end_offset(tp) for tp in moved
            }
            await produce(a, second_half)
            await wait_committed(a, broker)
            got_a, got_b = dict(counts_a.items()), dict(counts_b.items())
    assert not set(got_a) & set(got_b)
    assert got_a | got_b == Counter(first_half + second_half)


@pytest.mark.parametrize("standbys", [1, 0])
async def test_failover_with_standby_replays_only_the_delta(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path, standbys: int
) -> None:
    words = corpus(20_000)
    a, counts_a = word_count_app(app_factory, datadir=str(tmp_path / "a"), table_standby_replicas=standbys)
    b, counts_b = word_count_app(app_factory, datadir=str(tmp_path / "b"), table_standby_replicas=standbys)
    moved = [TP(CHANGELOG, p) for p in range(4, 8)]
    async with running(a):
        async with running(b):
            await wait_for(lambda: counts_b.served_partitions() == [4, 5, 6, 7])
            await wait_for(lambda: counts_a.served_partitions() == [0, 1, 2, 3])
            await produce(a, words)
            await wait_committed(a, broker)
            ends = {tp: broker.end_offset(tp) for tp in moved}
            assert all(ends.values())
            if standbys:
                assert a.tables.statistics().standbys == moved
                await wait_for(lambda: all(counts_a.persisted_offset(tp) == ends[tp] - 1 for tp in moved))
            before = recovered(a)
        # b left: a takes its partitions over
        await wait_for(lambda: counts_a.served_partitions() == list(range(8)))
        replayed = {tp: recovered(a)[tp] - before.get(tp, 0) for tp in moved}
        assert replayed == (dict.fromkeys(moved, 0) if standbys else ends)
        assert dict(counts_a.items()) == Counter(words)


async def test_global_table_two_workers_each_see_every_key(
    app_factory: AppFactory, broker: MemoryBroker, tmp_path: Path
) -> None:
    def make(name: str) -> tuple[streamtrio.App, streamtrio.GlobalTable]:
        app = app_factory(datadir=str(tmp_path / name), commit_interval=0.05)
        words = app.topic("words", key_type=str, value_type=str, partitions=PARTITIONS)
        seen = app.GlobalTable("seen", key_type=str, partitions=4)

        @app.agent(words)
        async def remember(stream: streamtrio.Stream[str]) -> None:
            async for event in stream.events():
                seen[event.value] = name
                # visible here at once
                assert seen[event.value] == name

        return app, seen

    a, seen_a = make("a")
    b, seen_b = make("b")
    words = [f"w{i}" for i in range(500)]
    async with running(a), running(b):
        await wait_for(lambda: len(broker.assignments("testapp")) == 2)
        await produce(a, words)
        await wait_committed(a, broker)
        await wait_for(lambda: set(seen_a.keys()) == set(words) and set(seen_b.keys()) == set(words))
        assert set(seen_a.values()) == {"a", "b"}
        assert dict(seen_a.items()) == dict(seen_b.items())
        # A third worker replays the whole global table before it reports ready.
        c, seen_c = make("c")
        async with running(c):
            assert dict(seen_c.items()) == dict(seen_a.items())
            assert sum(c.tables.statistics().followed.values()) == sum(
                changelog_ends(broker, "testapp-seen-changelog").values()
            )


# -- the mapping, codecs and errors ----------------------------------------------------


class Account(streamtrio.Record):
    owner: str
    balance: int


async def test_mapping_semantics_and_records_round_trip(app_factory: AppFactory, tmp_path: Path) -> None:
    def make() -> tuple[streamtrio.App, streamtrio.Table]:
        app = app_factory(store="lmdb://", datadir=str(tmp_path / "data"), commit_interval=0.05)
        accounts = app.Table("accounts", key_type=str, value_type=Account, partitions=2)

        @app.agent(app.topic("unused", partitions=2))
        async def idle(stream: streamtrio.Stream[Any]) -> None:
            async for _ in stream:
                pass

        return app, accounts

    app, accounts = make()
    async with running(app):
        await app.tables.wait_until_recovery_completed()
        accounts["ann"] = Account(owner="ann", balance=10)
        accounts.update({"bob": Account(owner="bob", balance=5), "cy": Account(owner="cy", balance=1)})
        assert "ann" in accounts and "zed" not in accounts
        assert accounts["ann"] == Account(owner="ann", balance=10)
        assert accounts.get("zed") is None
        with pytest.raises(KeyError):
            accounts["zed"]
        assert accounts.pop("cy") == Account(owner="cy", balance=1)
        assert accounts.pop("cy", None) is None
        del accounts["bob"]
        with pytest.raises(KeyError):
            del accounts["bob"]
        assert accounts.setdefault("dee", Account(owner="dee", balance=0)).balance == 0
        assert len(accounts) == 2
        assert sorted(accounts.keys()) == ["ann", "dee"]
        await app.tables.flush()
        assert sum(accounts.info()["keys"].values()) == 2
        accounts["ann"] = Account(owner="ann", balance=11)  # dirty over a persisted value
        assert {k: v.balance for k, v in accounts.items()} == {"ann": 11, "dee": 0}
        assert "ann" in accounts.as_ansitable()
    app2, accounts2 = make()
    async with running(app2):
        await app2.tables.wait_until_recovery_completed()
        assert dict(accounts2.items()) == {
            "ann": Account(owner="ann", balance=11),
            "dee": Account(owner="dee", balance=0),
        }
        accounts2.clear()
        assert len(accounts2) == 0


async def test_unencodable_key_or_value_raises_at_assignment(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app = app_factory()
    table = app.Table("things", partitions=1)
    errors: list[Exception] = []

    @app.task
    async def write() -> None:
        for key, value in (("k", object()), (object(), 1), ("x" * 600, 1)):
            try:
                table[key] = value
            except streamtrio.EncodeError as exc:
                errors.append(exc)
        errors.append(Exception(f"contains: {'k' in table}"))

    async with running(app):
        await wait_for(lambda: len(errors) == 4)
        await app.tables.flush()
    assert "table 'things'" in str(errors[0]) and "'k'" in str(errors[0])
    assert "table 'things'" in str(errors[1]) and "key <object object" in str(errors[1])
    assert "1 to 511 bytes" in str(errors[2])
    assert str(errors[3]) == "contains: False"
    assert broker.end_offset(TP("testapp-things-changelog", 0)) == 0


async def test_write_from_a_partition_the_table_lacks_is_a_clear_error(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_factory()
    src = app.topic("wide", value_type=str, partitions=4)
    narrow = app.Table("narrow", default=int, partitions=2)

    @app.agent(src)
    async def count(stream: streamtrio.Stream[str]) -> None:
        async for value in stream:
            narrow[value] += 1

    async with app.open_client():
        await src.send(value="x", partition=3)
    with pytest.raises(streamtrio.AgentError) as info:
        await streamtrio.serve(app)
    assert isinstance(info.value.__cause__, streamtrio.TableError)
    text = str(info.value.__cause__)
    assert "'narrow'" in text and "testapp-narrow-changelog" in text and "wide[3]" in text
    assert "source topic 'wide' has 4" in caplog.text


async def test_stalled_recovery_names_table_topic_and_partition(
    app_factory: AppFactory, broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch, autojump_clock: Any
) -> None:
    from streamtrio._transports.memory import MemoryReader

    app, _ = word_count_app(app_factory, table_standby_replicas=0, table_recovery_timeout=5.0)
    monkeypatch.setattr(MemoryReader, "_take", lambda self: None)  # the changelog never answers
    with pytest.raises(streamtrio.StreamtrioError) as info:
        await streamtrio.serve(app)
    error = info.value
    assert isinstance(error, streamtrio.RecoveryTimeoutError), repr(error)
    assert "table 'counts' partition 0 (changelog testapp-counts-changelog[0]" in str(error)
    assert "5.0s" in str(error)


async def test_on_recover_persisted_offset_info_and_writes_outside_events(
    app_factory: AppFactory, broker: MemoryBroker
) -> None:
    app, counts = word_count_app(app_factory)
    recoveries: list[int] = []

    @counts.on_recover
    async def recovered_cb() -> None:
        recoveries.append(len(counts))

    async with running(app):
        await app.tables.wait_until_recovery_completed()
        assert recoveries == [0]
        counts["outside"] = 5  # no event: the key's own partition
        home = counts.partition_for_key("outside")
        await app.tables.flush()
        assert counts.persisted_offset(home) == 0
        [record] = broker.messages(CHANGELOG, home)
        assert record.key == streamtrio.get_codec("msgpack").dumps("outside")
        info = counts.info()
        assert info["changelog_topic"] == CHANGELOG and info["partitions"] == 8
        assert info["keys"][home] == 1 and info["persisted_offsets"][home] == 0
    with pytest.raises(streamtrio.ClosedError):
        counts["outside"]


def test_tables_cli_lists_changelog_topics(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from streamtrio._cli import build_cli

    app = streamtrio.App("cliapp", broker="memory://", web_enabled=False)
    app.Table("totals", default=int, partitions=4, help="sum per account")
    app.GlobalTable("names")
    result = CliRunner().invoke(build_cli(app), ["tables"])
    assert result.exit_code == 0, result.output
    assert "totals\tTable\t-> cliapp-totals-changelog\t4 partitions\tsum per account" in result.output
    assert "names\tGlobalTable\t-> cliapp-names-changelog\t8 partitions" in result.output


async def test_default_table_partitions_keys_like_the_producer(app_factory: Any) -> None:
    """Stored as msgpack, but placed where a raw-keyed producer puts the key (router agrees)."""
    from streamtrio._partitioner import partition_for_key

    app = app_factory(topic_partitions=8)
    counts = app.Table("placement", default=int)
    keys = [f"user-{i}" for i in range(50)]
    for key in keys:
        assert counts.key_partition(key) == partition_for_key(key.encode(), 8)
        assert app.router.table_partition("placement", key).partition == partition_for_key(key.encode(), 8)


async def test_partitions_revoked_while_recovering_are_followed_as_standbys(
    app_factory: AppFactory, broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in the chaos standby failover: a worker whose first recovery was cancelled by a
    revoke (a second worker joined) never followed the revoked partitions as a standby,
    and replayed their whole changelog when it took them over later."""
    from streamtrio._tables import manager as manager_module

    real_replay = manager_module.replay
    calls: list[int] = []

    async def first_recovery_held(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            await trio.sleep_forever()  # until the revoke cancels it
        return await real_replay(*args, **kwargs)

    monkeypatch.setattr(manager_module, "replay", first_recovery_held)
    first, _ = word_count_app(app_factory, table_standby_replicas=1)
    second, _ = word_count_app(app_factory, table_standby_replicas=1)
    async with running(first) as a:
        await wait_for(lambda: len(calls) == 1)
        async with running(second) as b:
            await wait_for(lambda: bool(b.source_partitions()) and bool(a.source_partitions()))
            await first.tables.wait_until_recovery_completed()
            theirs = {tp.partition for tp in b.source_partitions()}
            standbys = set(first.tables.statistics().standbys)
            assert {TP(CHANGELOG, n) for n in theirs} <= standbys, (theirs, standbys)
            await produce(first, corpus(400))
            await wait_for(
                lambda: all(first.tables.statistics().followed.get(TP(CHANGELOG, n), 0) > 0 for n in theirs)
            )
