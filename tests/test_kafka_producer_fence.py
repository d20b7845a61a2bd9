"""A fenced transactional producer's purged messages fail with the fence, not the purge.

Seen on Apache Kafka, one run in two (tests/kafka/test_exactly_once_kafka.py, the
fencing test): librdkafka reported the purge of the fenced producer's queue
("Local: Purged in queue") to the agent awaiting a send before, or after, the
fatal error reached the producer, and the worker stopped with an AgentError about
an undelivered message instead of ProducerFencedError. The delivery reports are
built on the producer's thread; these tests drive that code with librdkafka's
own error objects, without a broker.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streamtrio import ProducerError, ProducerFencedError
from streamtrio._transports.kafka_producer import KafkaProducer, _blame_fatal, _Reports, producer_error


def fenced() -> ProducerFencedError:
    error = ProducerFencedError("transactional id 'app-w1': fenced by a newer instance")
    error.__cause__ = KafkaException(KafkaError(KafkaError._FENCED))
    return error


def test_purged_messages_reported_with_the_fatal_error_are_blamed_on_it() -> None:
    fence = fenced()
    purged = producer_error(KafkaError(KafkaError._PURGE_QUEUE), "out", 0)
    other = producer_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "out", 1)
    reports = _Reports()
    callback: Any = print
    reports.callbacks = [(callback, None, purged), (callback, None, other), (callback, None, None)]
    reports.batches = [(callback, 3, -1, purged)]
    reports.unreported = [(0, purged), (0, other)]
    _blame_fatal(reports, fence)
    assert [e for _, _, e in reports.callbacks] == [fence, other, None]
    assert [e for _, _, _, e in reports.batches] == [fence]
    assert [e for _, e in reports.unreported] == [fence, other]


def test_a_purge_after_the_fence_is_the_fence() -> None:
    producer = KafkaProducer.__new__(KafkaProducer)  # only its error mapping is used
    producer._fatal = fence = fenced()
    assert producer._failure(KafkaError(KafkaError._PURGE_QUEUE), "out", 0) is fence
    assert producer._failure(KafkaError(KafkaError._PURGE_INFLIGHT), "out", 0) is fence
    unrelated = producer._failure(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "out", 0)
    assert type(unrelated) is ProducerError and "out" in str(unrelated)
    producer._fatal = None
    purged = producer._failure(KafkaError(KafkaError._PURGE_QUEUE), "out", 0)
    assert "Purged in queue" in str(purged)  # no fence: the purge is what happened
