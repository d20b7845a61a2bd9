"""Apache Kafka as a local, single-node broker: fetched with Maven, run with Java.

No Docker and no download of a Kafka distribution: Maven resolves the
broker's runtime jars (``kafka/pom.xml`` beside this module) into a cache the
project controls, once; each start formats a fresh KRaft log directory in a
temporary directory and runs ``java -cp 'libs/*' kafka.Kafka server.properties``
with one node acting as broker and controller, both listening on free
loopback ports.

Environment:

- ``STREAMTRIO_KAFKA_VERSION``: the Kafka version (default :data:`KAFKA_VERSION`).
- ``STREAMTRIO_KAFKA_CACHE``: the cache directory (default
  ``$XDG_CACHE_HOME/streamtrio`` or ``~/.cache/streamtrio``); the jars of
  version ``V`` are in ``kafka-V/libs``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = [
    "KAFKA_CACHE_ENV",
    "KAFKA_VERSION",
    "KAFKA_VERSION_ENV",
    "ApacheKafka",
    "KafkaBrokerError",
    "fetch_kafka",
    "kafka_libs_dir",
    "kafka_unavailable_reason",
    "run_apache_kafka",
]

#: The Kafka version fetched unless ``STREAMTRIO_KAFKA_VERSION`` names another.
KAFKA_VERSION = "4.1.1"
KAFKA_VERSION_ENV = "STREAMTRIO_KAFKA_VERSION"
KAFKA_CACHE_ENV = "STREAMTRIO_KAFKA_CACHE"

_FETCH_TIMEOUT = 900.0
_START_TIMEOUT = 60.0
_STOP_GRACE = 10.0
_LOG_TAIL_BYTES = 4000

# Start fast and small: the broker of a test session lives for minutes.
_JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-Djava.awt.headless=true",
)

# Settings for a throwaway single-node broker; the listeners are added per start.
_SERVER_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    # one node: every internal topic has one replica, and few partitions
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "min.insync.replicas": "1",
    "default.replication.factor": "1",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    # groups join at once and may use the short session timeouts tests use
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "500",
    "group.consumer.min.session.timeout.ms": "500",
    "group.consumer.min.heartbeat.interval.ms": "100",
    # small files, no background churn
    "log.segment.bytes": str(16 * 1024 * 1024),
    "log.index.size.max.bytes": str(1024 * 1024),
    "log.retention.check.interval.ms": str(3_600_000),
    "auto.leader.rebalance.enable": "false",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
}

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaBrokerError(RuntimeError):
    """Apache Kafka could not be fetched or started (the message has the tail of its log)."""


@dataclass(frozen=True, slots=True)
class ApacheKafka:
    """A running single-node Apache Kafka.

    Attributes:
        bootstrap: the bootstrap address, ``"127.0.0.1:port"``.
        pid: the broker's process id.
        log_path: the broker's log file.
        version: the Kafka version.
        process: the broker's process (``process.poll()`` tells whether it still runs).
        proxied: with ``proxied_port``: ``(advertised, listening)``, the proxy's
            address clients of the second listener are told to use, and the
            broker's own address for that listener (where a proxy forwards to).
    """

    bootstrap: str
    pid: int
    log_path: Path
    version: str
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)
    proxied: tuple[str, str] | None = None


def kafka_version() -> str:
    """The Kafka version to use: ``STREAMTRIO_KAFKA_VERSION``, or :data:`KAFKA_VERSION`."""
    return os.environ.get(KAFKA_VERSION_ENV, "").strip() or KAFKA_VERSION


def _cache_root() -> Path:
    configured = os.environ.get(KAFKA_CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "streamtrio"


def kafka_libs_dir(version: str | None = None) -> Path:
    """Where the jars of ``version`` are (or will be) cached: ``<cache>/kafka-<version>/libs``."""
    return _cache_root() / f"kafka-{version or kafka_version()}" / "libs"


def _is_filled(libs: Path) -> bool:
    return libs.is_dir() and any(libs.glob("kafka_2.13-*.jar"))


def kafka_unavailable_reason(version: str | None = None) -> str | None:
    """Why Apache Kafka cannot run here, or ``None`` (cheap: looks for programs and the cache)."""
    if shutil.which("java") is None:
        return "no 'java' on PATH (Apache Kafka needs Java 17 or later)"
    if not _is_filled(kafka_libs_dir(version)) and shutil.which("mvn") is None:
        return f"no 'mvn' on PATH to fetch Kafka's jars, and none cached in {kafka_libs_dir(version)}"
    return None


def fetch_kafka(version: str | None = None, *, timeout: float = _FETCH_TIMEOUT) -> Path:
    """Fetch Apache Kafka's runtime jars with Maven into the cache, unless already there.

    Safe to call from several processes: each fetches into its own directory
    and the first to finish renames it into place.

    Returns:
        The directory holding the jars.

    Raises:
        KafkaBrokerError: Maven is missing or failed (the message has its output).
    """
    version = version or kafka_version()
    libs = kafka_libs_dir(version)
    if _is_filled(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaBrokerError(f"cannot fetch Apache Kafka {version}: no 'mvn' on PATH (install Maven)")
    home = libs.parent
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=home) as tmp:
        work = Path(tmp)
        pom = work / "pom.xml"
        pom.write_bytes(resources.files("streamtrio.testing").joinpath("kafka/pom.xml").read_bytes())
        command = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={work / 'libs'}",
            f"-Dkafka.version={version}",
        ]
        try:
            done = subprocess.run(
                command, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaBrokerError(f"Maven did not fetch Apache Kafka {version} within {timeout:g}s") from exc
        if done.returncode != 0 or not _is_filled(work / "libs"):
            output = (done.stdout + done.stderr).decode("utf-8", errors="replace")[-_LOG_TAIL_BYTES:]
            raise KafkaBrokerError(
                f"Maven failed to fetch Apache Kafka {version} (exit {done.returncode}): "
                f"{' '.join(command)}\n{output}"
            )
        try:
            (work / "libs").rename(libs)
        except OSError:
            if not _is_filled(libs):  # not another process that won the race
                raise
    return libs


@contextlib.contextmanager
def run_apache_kafka(
    *,
    port: int = 0,
    timeout: float = _START_TIMEOUT,
    version: str | None = None,
    work_dir: Path | None = None,
    proxied_port: int | None = None,
    jvm_options: Sequence[str] = _JVM_OPTIONS,
) -> Iterator[ApacheKafka]:
    """Run a fresh single-node Apache Kafka for the duration of the block.

    Args:
        port: the broker's port on 127.0.0.1 (0: a free one).
        proxied_port: also open a second listener that advertises
            ``127.0.0.1:proxied_port``: a client bootstrapped there talks to the
            broker only through whatever listens on that port (a test's TCP
            proxy, which can cut that client off alone).
        timeout: seconds to wait for the broker to answer a metadata request.
        version: the Kafka version (default :func:`kafka_version`); fetched if need be.
        work_dir: where the settings, data and log go (default: a temporary
            directory removed afterwards).
        jvm_options: the JVM's options (default: a small heap and the quick
            C1 compiler, which start fast; the benchmarks give it a bigger heap
            and the full JIT, so that the broker is not what they measure).

    Raises:
        KafkaBrokerError: Java is missing, the jars cannot be fetched, or the
            broker did not start in time (the message has the end of its log).
    """
    version = version or kafka_version()
    java = shutil.which("java")
    if java is None:
        raise KafkaBrokerError("Apache Kafka needs Java 17 or later: no 'java' on PATH")
    libs = fetch_kafka(version)
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamtrio-kafka-")))
        work_dir.mkdir(parents=True, exist_ok=True)
        broker_port = port or _free_loopback_port()
        controller_port = _free_loopback_port(avoid=broker_port)
        address = f"127.0.0.1:{broker_port}"
        log_path = work_dir / "server.log"
        proxied: tuple[str, str] | None = None
        if proxied_port is not None:
            inner = _free_loopback_port(avoid=controller_port)
            proxied = (f"127.0.0.1:{proxied_port}", f"127.0.0.1:{inner}")
        config = _write_config(work_dir, broker_port, controller_port, log_path, proxied)
        classpath = str(libs / "*")
        log4j = f"-Dlog4j2.configurationFile={work_dir / 'log4j2.properties'}"
        _format_storage(java, classpath, log4j, config, log_path)
        jvm = tuple(jvm_options)
        with open(work_dir / "stdout.log", "wb") as out:
            proc = subprocess.Popen(
                [java, *jvm, log4j, "-cp", classpath, "kafka.Kafka", str(config)],
                cwd=work_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is the caller's to relay
            )
        try:
            error = _wait_until_ready(address, proc=proc, timeout=timeout)
            if error is not None:
                raise KafkaBrokerError(
                    f"Apache Kafka {version} did not start on {address} within {timeout:g}s: {error}\n"
                    f"--- end of {log_path} ---\n{log_tail(log_path)}\n"
                    f"--- end of {work_dir / 'stdout.log'} ---\n{log_tail(work_dir / 'stdout.log')}"
                )
            yield ApacheKafka(
                bootstrap=address,
                pid=proc.pid,
                log_path=log_path,
                version=version,
                process=proc,
                proxied=proxied,
            )
        finally:
            stop_process(proc)


def _write_config(
    work_dir: Path,
    broker_port: int,
    controller_port: int,
    log_path: Path,
    proxied: tuple[str, str] | None = None,
) -> Path:
    settings = {
        **_SERVER_SETTINGS,
        "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "log.dirs": str(work_dir / "data"),
    }
    if proxied is not None:
        advertised, listening = proxied
        settings["listeners"] += f",PROXIED://{listening}"
        settings["advertised.listeners"] += f",PROXIED://{advertised}"
        settings["listener.security.protocol.map"] += ",PROXIED:PLAINTEXT"
    config = work_dir / "server.properties"
    config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    (work_dir / "log4j2.properties").write_text(_LOG4J2.format(log_path=log_path))
    return config


def _format_storage(java: str, classpath: str, log4j: str, config: Path, log_path: Path) -> None:
    """Format the KRaft log directory (static quorum of one voter) with a new cluster id."""
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    command = [java, *_JVM_OPTIONS, log4j, "-cp", classpath, "kafka.tools.StorageTool"]
    # "=": a random id may start with "-", which the tool would take for an option.
    command += ["format", f"--cluster-id={cluster_id}", "-c", str(config)]
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, timeout=_START_TIMEOUT, check=False
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode("utf-8", errors="replace")[-_LOG_TAIL_BYTES:]
        raise KafkaBrokerError(
            f"formatting Kafka's log directory failed (exit {done.returncode}):\n{output}\n"
            f"--- end of {log_path} ---\n{log_tail(log_path)}"
        )


def _free_loopback_port(avoid: int = 0) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != avoid:
            return port


def _wait_until_ready(address: str, *, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Poll with metadata requests until the broker lists itself; ``None`` once it does, else why not."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    last_error = "no answer"
    admin = AdminClient(
        {
            "bootstrap.servers": address,
            "log_level": 0,
            # retry the connection quickly while the broker starts
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 200,
        }
    )
    while True:
        if proc.poll() is not None:
            return f"the broker process exited with code {proc.returncode}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return last_error
        try:
            metadata = admin.list_topics(timeout=min(1.0, remaining))
        except KafkaException as exc:
            last_error = str(exc)
        else:
            if metadata.brokers:  # a fenced broker is not listed yet
                return None
            last_error = "the broker answers but lists no broker yet"
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


def stop_process(
    proc: subprocess.Popen[bytes], grace: float = _STOP_GRACE, signum: int = signal.SIGTERM
) -> None:
    """``signum``, then SIGKILL if the process is still there after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: Path) -> str:
    """The end of a broker's log file, for an error message."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return data[-_LOG_TAIL_BYTES:].decode("utf-8", errors="replace") or "(empty log)"
