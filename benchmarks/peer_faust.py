"""faust-streaming running one workload (runs in the faust-streaming virtual environment).

stateless: an agent counting and summing; stateful: ``table[user] += amount``
in a changelog-backed table on the store named by ``--variant``
(``memory://``, Faust's default, or ``rocksdb://`` with rocksdict); windowed:
a 10-second tumbling table relative to the stream (the message timestamps).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import faust
from _protocol import WINDOW_SECONDS, Meter, parser, report, window_start


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        store=args.variant or "memory://",
        datadir=args.datadir,
        web_enabled=False,
        topic_partitions=8,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=0.5,
    )
    topic = app.topic(args.topic, value_serializer="json", partitions=8)
    meter = Meter(args.events)
    latest: dict[Any, int] = {}

    def finish() -> None:
        report(meter, sum(latest.values()), keys=len(latest))
        os._exit(0)

    if args.workload == "stateless":

        @app.agent(topic)
        async def count(stream: Any) -> None:
            total = 0
            async for value in stream:
                total += value["amount"]
                if meter.tick():
                    latest["all"] = total
                    finish()

    elif args.workload == "stateful":
        totals = app.Table("totals", default=int, partitions=8)

        @app.agent(topic)
        async def running_sum(stream: Any) -> None:
            async for value in stream:
                user = value["user"]
                totals[user] += value["amount"]
                latest[user] = totals[user]
                if meter.tick():
                    finish()

    elif args.workload == "windowed":
        windows = (
            app.Table("windows", default=int, partitions=8)
            .tumbling(WINDOW_SECONDS, expires=timedelta(days=1))
            .relative_to_stream()
        )

        @app.agent(topic)
        async def window_count(stream: Any) -> None:
            async for event in stream.events():
                user = event.value["user"]
                windows[user] += 1
                start = window_start(event.message.timestamp)
                latest[(user, start)] = windows[user].current()
                if meter.tick():
                    finish()

    else:
        raise SystemExit(f"unknown workload {args.workload!r}")
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
