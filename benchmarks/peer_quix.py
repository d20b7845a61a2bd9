"""Quix Streams running one workload (runs in the quixstreams virtual environment).

stateless: ``sdf.update`` counting and summing; stateful: a running sum per
key in Quix's default RocksDB state with changelog topics on; windowed:
``tumbling_window(10 s, grace 100 s).count().current()`` on the message timestamps
(the grace covers the whole span of event time, so no event is dropped as late).
The consumer gets ``fetch.queue.backoff.ms=10`` as streamtrio's does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _protocol import SPAN_SECONDS, WINDOW_SECONDS, Meter, parser, report
from quixstreams import Application


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.datadir,
        use_changelog_topics=True,
        loglevel="WARNING",
        consumer_extra_config={
            "fetch.queue.backoff.ms": 10,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        },
    )
    topic = app.topic(args.topic, key_deserializer="str", value_deserializer="json")
    sdf = app.dataframe(topic)
    meter = Meter(args.events)
    latest: dict[Any, int] = {}
    state_sum: dict[str, int] = {"amounts": 0}

    def finish() -> None:
        app.stop()

    if args.workload == "stateless":

        def count(value: dict[str, Any]) -> None:
            state_sum["amounts"] += value["amount"]
            if meter.tick():
                latest["all"] = state_sum["amounts"]
                finish()

        sdf = sdf.update(count)
    elif args.workload == "stateful":

        def running_sum(value: dict[str, Any], state: Any) -> None:
            total = state.get("total", 0) + value["amount"]
            state.set("total", total)
            latest[value["user"]] = total
            if meter.tick():
                finish()

        sdf = sdf.update(running_sum, stateful=True)
    elif args.workload == "windowed":
        # Quix closes a window once any partition's events pass its end and drops
        # the later events of slower partitions as late (on Apache Kafka, where
        # partitions arrive interleaved, most of them); the grace keeps them all.
        sdf = (
            sdf.tumbling_window(duration_ms=WINDOW_SECONDS * 1000, grace_ms=SPAN_SECONDS * 1000)
            .count()
            .current()
        )

        def note(window: dict[str, Any], key: Any, _ts: int, _headers: Any) -> None:
            latest[(key, window["start"])] = window["value"]
            if meter.tick():
                finish()

        sdf = sdf.update(note, metadata=True)
    else:
        raise SystemExit(f"unknown workload {args.workload!r}")
    app.run()
    report(meter, sum(latest.values()), keys=len(latest))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
