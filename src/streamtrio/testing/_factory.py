"""Isolated apps for one test: a fresh memory broker, in-memory stores, temporary data dirs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .._app import App
from .._transports.memory import MemoryBroker
from ._harness import new_test_broker_url

__all__ = ["AppFactory"]


class AppFactory:
    """Makes apps that share one fresh ``memory://`` broker (the pytest fixture
    ``streamtrio_app_factory`` is one of these).

    Each app gets ``store="memory://"``, ``web_enabled=False`` and the data
    directory ``path/<id>`` unless the options say otherwise. Apps with the
    same ``id`` are members of one consumer group and share that directory,
    as a restarted worker would (two LMDB workers running at once need their
    own ``datadir``).

    Args:
        path: where the apps' data directories go (default: a new temporary directory).

    Attributes:
        broker: the memory broker every app of this factory uses.
        broker_url: its URL.
        apps: the apps made so far.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="streamtrio-test-"))
        self.broker_url = new_test_broker_url()
        self.broker = MemoryBroker.get(self.broker_url[len("memory://") :])
        self.apps: list[App] = []

    def __call__(self, id: str = "testapp", **options: Any) -> App:
        """A new app on this factory's broker; ``options`` are App settings."""
        options.setdefault("broker", self.broker_url)
        options.setdefault("store", "memory://")
        options.setdefault("web_enabled", False)
        options.setdefault("datadir", str(self.path / id))
        app = App(id, **options)
        self.apps.append(app)
        return app

    def problems(self) -> list[str]:
        """Apps still running a worker, and consumers still in a group of the broker."""
        found = [f"app {app.id!r} is still running a worker" for app in self.apps if app._worker is not None]
        for group_id, group in self.broker._groups.items():
            if group.members:
                found.append(f"group {group_id!r} still has members {sorted(group.members)}")
        return found

    def close(self) -> None:
        """Forget the broker (its topics, messages and groups)."""
        MemoryBroker._registry.pop(self.broker.name, None)

    def __repr__(self) -> str:
        return f"<AppFactory {self.broker_url} apps={[a.id for a in self.apps]}>"
