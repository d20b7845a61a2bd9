"""High watermarks of a confluent consumer, from librdkafka's statistics.

librdkafka emits a JSON statistics document every ``statistics.interval.ms``
from inside ``consume()``, so on the consumer's own thread (no second thread
touches the Consumer). Each partition entry carries ``hi_offset``: the high
watermark the last fetch response reported (``-1001`` while unknown). That is
the ``cached=True`` watermark, the trustworthy one (ARCHITECTURE.md); a fresh
``get_watermark_offsets`` request is never made.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from .._types import TP

__all__ = ["STATISTICS_INTERVAL_MS", "Watermarks"]

log = logging.getLogger(__name__)

#: How often librdkafka reports, unless the user's consumer_config says otherwise.
STATISTICS_INTERVAL_MS = 1000


class Watermarks:
    """The high watermark per partition, as the consumer's statistics last reported it."""

    def __init__(self) -> None:
        self._high: dict[TP, int] = {}
        self._chained: Callable[[str], Any] | None = None

    def install(self, config: dict[str, Any]) -> None:
        """Ask ``config``'s client for statistics; a user's own ``stats_cb`` still gets them."""
        config.setdefault("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        user = config.get("stats_cb")
        self._chained = user if callable(user) else None
        config["stats_cb"] = self.on_statistics

    def on_statistics(self, document: str) -> None:
        """librdkafka's ``stats_cb`` (on the consumer thread)."""
        try:
            stats = json.loads(document)
            high: dict[TP, int] = {}
            for name, topic in stats.get("topics", {}).items():
                for number, part in topic.get("partitions", {}).items():
                    partition = int(number)
                    offset = int(part.get("hi_offset", -1001))
                    if partition >= 0 and offset >= 0:
                        high[TP(name, partition)] = offset
            self._high = high  # one assignment: readers on the trio thread see old or new
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
        if self._chained is not None:
            self._chained(document)

    def get(self) -> dict[TP, int]:
        return self._high
