"""Faust settings on a streamtrio App: accepted with one warning, mapped, or refused when misspelled."""

from __future__ import annotations

import warnings

import pytest

import streamtrio as faust
from streamtrio._settings import FaustCompatibilityWarning, _warned


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    _warned.clear()


def test_faust_only_settings_are_accepted_with_one_warning() -> None:
    with pytest.warns(FaustCompatibilityWarning, match="'reply_create_topic'.*no effect") as caught:
        app = faust.App("x", origin="proj", reply_create_topic=True, topic_allow_declare=True)
        faust.App("y", reply_create_topic=True)
    assert sum("reply_create_topic" in str(w.message) for w in caught) == 1
    assert app.conf.origin == "proj"  # readable back, as in Faust


def test_misspelled_settings_are_still_refused() -> None:
    with pytest.raises(faust.ConfigurationError, match="unknown setting 'reply_create_topics'"):
        faust.App("x", reply_create_topics=True)


def test_rocksdb_store_runs_on_lmdb_and_aiokafka_on_kafka() -> None:
    with pytest.warns(FaustCompatibilityWarning) as caught:
        app = faust.App("x", store="rocksdb://", broker="aiokafka://localhost:9092")
        table = app.Table("t", store="rocksdb://")
    assert app.conf.store == "lmdb://"
    assert table.store_url == "lmdb://"
    assert app.conf.broker == "kafka://localhost:9092"
    assert any("LMDB" in str(w.message) for w in caught)


def test_broker_list_and_aliases() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FaustCompatibilityWarning)
        app = faust.App("x", broker=["kafka://a:9092", "kafka://b:9092"], producer_linger=0.25)
    assert app.conf.broker == "kafka://a:9092;b:9092"
    assert app.conf.producer_linger_ms == 250.0


def test_version_makes_a_new_app_id_like_faust() -> None:
    with pytest.warns(FaustCompatibilityWarning):
        assert faust.App("orders", version=3).id == "orders-v3"
    assert faust.App("orders", version=1).id == "orders"


def test_config_from_object_with_faust_settings() -> None:
    class Config:
        broker = "memory://"
        autodiscover = True
        tabledir = "/tmp/tables"

    app = faust.App("x")
    with pytest.warns(FaustCompatibilityWarning):
        app.config_from_object(Config)
    assert app.conf.broker == "memory://"
