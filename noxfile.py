"""Automation: `nox` runs lint, typecheck and tests; `nox -s bench` the benchmarks."""

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "src/")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks (not part of CI): ``nox -s bench -- --events 300000``.

    Peers are installed by the runner into their own venvs under ``.bench-venvs/``.
    """
    session.install("-e", ".[dev]")
    session.run("python", "-m", "benchmarks", *session.posargs)
