"""The docs stay true: every setting is documented, the README example runs."""

from __future__ import annotations

import re
from pathlib import Path

import streamtrio
from streamtrio._settings import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", text, flags=re.MULTILINE))
    assert documented == set(SETTINGS)


def test_readme_example_defines_a_working_app() -> None:
    text = (ROOT / "README.md").read_text()
    [example] = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "app.agent" in b]
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, streamtrio.App)
    assert list(app.agents) == ["process"]
    assert app.agents["process"].sinks == [namespace["large"]]


def test_public_api_is_exported() -> None:
    for name in streamtrio.__all__:
        assert hasattr(streamtrio, name), name
