"""On Apache Kafka, librdkafka's MSG_SIZE_TOO_LARGE names the settings that raise the limit."""

from __future__ import annotations

import pytest
import trio

import streamtrio

from ._util import create_topic, unique

pytestmark = pytest.mark.kafka


async def test_a_message_too_large_names_the_size_settings(kafka_bootstrap: str) -> None:
    name = unique("too-large")
    await trio.to_thread.run_sync(create_topic, kafka_bootstrap, name, 1)
    app = streamtrio.App(
        unique("hints"), broker=f"kafka://{kafka_bootstrap}", store="memory://", web_enabled=False
    )
    out = app.topic(name, value_serializer="raw", partitions=1)
    with trio.fail_after(60):
        async with app.open_client():
            with pytest.raises(streamtrio.ProducerError) as info:
                await out.send(value=b"x" * (2 * 1024 * 1024))
    text = str(info.value)
    assert "MSG_SIZE_TOO_LARGE" in text
    assert "producer_config={'message.max.bytes': N}" in text
