"""Automation: `nox` runs lint, typecheck and tests; `nox -s bench` benchmarks, `nox -s chaos` chaos."""

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


@nox.session
def chaos(session: nox.Session) -> None:
    """The chaos suite's long versions (not part of CI, which runs the short ones): about 20 minutes.

    Starts its own Apache Kafka (Tansu with ``STREAMTRIO_CHAOS_BROKER=tansu``: the
    scenarios needing the proxied listener skip there); ``nox -s chaos -- -k network``
    picks scenarios.
    """
    session.install("-e", ".[dev]")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/chaos",
        "-p",
        "no:cacheprovider",
        "--timeout=1200",
        *session.posargs,
        env={"STREAMTRIO_CHAOS_LONG": "1"},
    )
