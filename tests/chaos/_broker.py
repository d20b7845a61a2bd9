"""The chaos suite's broker: Apache Kafka by default, Tansu with ``STREAMTRIO_CHAOS_BROKER=tansu``.

Apache Kafka gets a second listener behind a TCP proxy the network scenarios cut
(the producer and the verifier use the first, which stays up). Tansu advertises
one listener only, so the scenarios that need the proxy (network cuts, the
zombie) are skipped there; the others run unchanged.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streamtrio.testing._apache_kafka import kafka_unavailable_reason, run_apache_kafka
from streamtrio.testing._broker import _run_tansu, choose_broker_kind, tansu_unavailable_reason

#: Which broker the suite starts: ``kafka`` (default) or ``tansu``.
CHAOS_BROKER_ENV = "STREAMTRIO_CHAOS_BROKER"


@dataclass(frozen=True)
class ChaosBroker:
    """A running broker of the suite.

    Attributes:
        kind: ``"kafka"`` or ``"tansu"``.
        bootstrap: the address the producer and the verifier use.
        pid: the broker's process id (the frozen-broker scenario stops it).
        proxied: Apache Kafka's second listener: ``(advertised, listening)``, the
            proxy's address workers are told to use and the broker's own.
    """

    kind: str
    bootstrap: str
    pid: int
    proxied: tuple[str, str] | None = None


def chaos_broker_kind() -> str:
    kind = os.environ.get(CHAOS_BROKER_ENV, "").strip().lower() or "kafka"
    if kind not in ("kafka", "tansu"):
        raise ValueError(f"{CHAOS_BROKER_ENV}={kind!r}: use 'kafka' or 'tansu'")
    return kind


def unavailable_reason(kind: str) -> str | None:
    """Why the suite's broker cannot start here, or ``None``."""
    if kind == "tansu":
        return tansu_unavailable_reason()
    started, _notice = choose_broker_kind()
    return (
        None if started == "kafka" else f"the chaos suite needs Apache Kafka ({kafka_unavailable_reason()})"
    )


def _free_port() -> int:
    """A free port below the kernel's ephemeral range.

    A worker keeps its web port across restarts; while it is down, a port the
    kernel hands out (``bind(0)``) could be taken as the local port of any new
    connection (a client reconnecting after a cut) and the restart then failed
    with "Address already in use". Ports below ``ip_local_port_range`` are
    never handed out that way.
    """
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@contextlib.contextmanager
def run_chaos_broker(kind: str) -> Iterator[ChaosBroker]:
    if kind == "tansu":
        with _run_tansu(timeout=60) as (address, pid):
            yield ChaosBroker("tansu", address, pid)
        return
    with run_apache_kafka(proxied_port=_free_port()) as kafka:
        yield ChaosBroker("kafka", kafka.bootstrap, kafka.pid, kafka.proxied)
