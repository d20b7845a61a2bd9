"""``streamtrio dev broker``: a local Apache Kafka in the foreground, for development.

The same single-node broker the test suite starts (see
:mod:`streamtrio.testing._apache_kafka`): fetched once with Maven, run with
Java, no Docker. Its data lives in a temporary directory and is gone when
it stops.
"""

# No `from __future__ import annotations`: typer reads these annotations at run time.

import signal
import sys
import time
from types import FrameType
from typing import Annotated

import typer

from ._cli_help import PlainCommand

__all__ = ["dev_cli"]

dev_cli = typer.Typer(name="dev", help="Tools for developing streamtrio apps.", no_args_is_help=True)


@dev_cli.command("broker", cls=PlainCommand)
def broker_command(
    port: Annotated[
        int, typer.Option(metavar="PORT", help="Broker port on 127.0.0.1 (0: a free one).")
    ] = 9092,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to wait for the broker to start.")
    ] = 60.0,
) -> None:
    """Run Apache Kafka on 127.0.0.1 until Ctrl-C; prints its bootstrap address."""
    from .testing._apache_kafka import (
        KafkaBrokerError,
        kafka_libs_dir,
        kafka_unavailable_reason,
        kafka_version,
        run_apache_kafka,
    )

    why_not = kafka_unavailable_reason()
    if why_not is not None:
        typer.echo(f"error: cannot run Apache Kafka: {why_not}", err=True)
        raise typer.Exit(1)
    libs = kafka_libs_dir()
    if not libs.is_dir():
        typer.echo(f"fetching Apache Kafka {kafka_version()} with Maven into {libs} ...", err=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with run_apache_kafka(port=port, timeout=timeout) as kafka:
            typer.echo(f"Apache Kafka {kafka.version} is ready; log: {kafka.log_path}", err=True)
            typer.echo(f"bootstrap: {kafka.bootstrap}")
            typer.echo(f"broker URL: kafka://{kafka.bootstrap}   (Ctrl-C stops it)", err=True)
            sys.stdout.flush()
            while kafka.process.poll() is None:
                time.sleep(0.2)
            typer.echo(f"error: the broker exited with code {kafka.process.returncode}", err=True)
            raise typer.Exit(1)
    except KafkaBrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
