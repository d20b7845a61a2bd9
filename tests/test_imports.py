"""What ``import streamtrio`` and a worker without web load (``python -X importtime`` measures it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import streamtrio

ROOT = Path(__file__).resolve().parent.parent


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_every_public_name_resolves() -> None:
    for name in streamtrio.__all__:
        assert getattr(streamtrio, name) is not None, name
    assert set(streamtrio.__all__) <= set(dir(streamtrio))
    assert streamtrio.AppT is streamtrio.App
    namespace: dict[str, object] = {}
    exec("from streamtrio import *", namespace)
    assert namespace["Record"] is streamtrio.Record


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        streamtrio.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_import_streamtrio_loads_no_dependency() -> None:
    loaded = modules_after("import streamtrio")
    for heavy in ("trio", "confluent_kafka", "httpx", "quart", "hypercorn", "lmdb", "typer", "pytest"):
        assert heavy not in loaded, heavy


def test_a_worker_without_web_loads_no_web_stack_and_no_pytest() -> None:
    code = textwrap.dedent(
        """
        import trio
        import streamtrio

        app = streamtrio.App("noweb", broker="memory://", store="memory://", web_enabled=False)
        topic = app.topic("t", value_type=int, partitions=1)
        seen = []

        @app.agent(topic)
        async def read(stream):
            async for n in stream:
                seen.append(n)

        async def main():
            async with trio.open_nursery() as nursery:
                worker = await nursery.start(streamtrio.serve, app)
                await topic.send(value=1)
                while not seen:
                    await trio.sleep(0.01)
                worker.stop()

        trio.run(main)
        """
    )
    loaded = modules_after(code)
    assert "streamtrio._worker" in loaded
    for heavy in ("httpx", "quart", "quart_trio", "hypercorn", "prometheus_client", "pytest", "trio.testing"):
        assert heavy not in loaded, heavy


def test_building_an_app_loads_only_what_an_app_needs() -> None:
    loaded = modules_after('import streamtrio\napp = streamtrio.App("x")')
    assert "streamtrio._app" in loaded
    # msgpack: only for the msgpack codec; msgspec: only to decode JSON;
    # difflib: only to name a misspelled STREAMTRIO_* variable
    for lazy in (
        "msgpack",
        "msgspec",
        "difflib",
        "confluent_kafka",
        "lmdb",
        "rich",
        "typer",
        "httpx",
        "quart",
    ):
        assert lazy not in loaded, lazy
