"""Test helpers for streamtrio apps (public).

- ``async with agent.test_context() as ctx``: one agent running for real;
  ``await ctx.put(value)`` returns once the agent has processed it;
  ``ctx.results``, ``ctx.sent``, ``await ctx.drain()``.
- ``async with open_test_app(app) as test_app``: the whole app running on a
  fresh ``memory://`` broker; ``send``, ``drain``, ``messages``, ``table``,
  ``committed``, ``advance``, ``http``.
- :func:`advance_time`: move trio's ``MockClock`` on.
- The pytest plugin (:mod:`streamtrio.testing.pytest_plugin`) provides the
  fixtures ``streamtrio_app_factory``, ``test_app``, ``kafka_broker`` and
  ``streamtrio_leak_check`` and the ``kafka`` marker.

Both contexts run the app's real worker, so decoding, acks, commits,
sinks and tables are the production code paths. See ``docs/testing.md``.
"""

from ._app import TestApp, open_test_app
from ._broker import (
    TEST_BROKER_ENV,
    TEST_BROKER_KIND_ENV,
    TestBroker,
    TestBrokerError,
    open_test_broker,
    start_test_broker,
)
from ._context import AgentTestContext, open_agent_test_context
from ._factory import AppFactory
from ._kafka import KafkaTestBroker
from ._leaks import LeakCheck
from ._time import advance_time
from ._tracking import SentMessage

__all__ = [
    "TEST_BROKER_ENV",
    "TEST_BROKER_KIND_ENV",
    "AgentTestContext",
    "AppFactory",
    "KafkaTestBroker",
    "LeakCheck",
    "SentMessage",
    "TestApp",
    "TestBroker",
    "TestBrokerError",
    "advance_time",
    "open_agent_test_context",
    "open_test_app",
    "open_test_broker",
    "start_test_broker",
]
