"""The benchmark, small: 10,000 events through streamtrio and the raw loop, results checked.

Keeps ``benchmarks/`` from rotting without making the suite slow or noisy:
it asserts what each run computed (every event processed, the sum over all
keys equal to the produced total), never how fast it was. Peers are not
installed here; ``python -m benchmarks`` runs them.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtrio.testing._broker import start_test_broker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.runner import Job, run_job  # noqa: E402
from benchmarks.workload import create_topics, expected_total, produce_changelog, produce_events  # noqa: E402

EVENTS = 10_000

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[str, str]]:
    """A broker with the workload produced once: (bootstrap, prefix)."""
    with start_test_broker() as bootstrap:
        prefix = f"smoke-{uuid.uuid4().hex[:6]}"
        create_topics(
            bootstrap, [f"{prefix}-events", f"{prefix}-replay-src", f"{prefix}-replay-totals-changelog"]
        )
        produce_events(bootstrap, f"{prefix}-events", EVENTS)
        yield bootstrap, prefix


def _run(bench: tuple[str, str], job: Job, tmp_path: Path) -> dict[str, object]:
    bootstrap, prefix = bench
    outcome = run_job(
        job, bootstrap=bootstrap, python=Path(sys.executable), workdir=tmp_path, prefix=prefix, timeout=60
    )
    assert outcome.ok, outcome.reason
    assert outcome.rate is not None and outcome.rate > 0
    assert outcome.rss_mb is not None and outcome.rss_mb > 10  # the child's own peak RSS, in MB
    return outcome.result


@pytest.mark.parametrize("workload", ["stateless", "stateful", "windowed", "join", "session", "eos"])
def test_streamtrio_workloads_compute_the_produced_total(
    bench: tuple[str, str], workload: str, tmp_path: Path
) -> None:
    expected = EVENTS if workload in ("windowed", "session") else expected_total(EVENTS)
    result = _run(bench, Job("streamtrio", workload, f"{bench[1]}-events", EVENTS, expected), tmp_path)
    assert result["events"] == EVENTS
    assert result["sum"] == expected
    if workload == "windowed":
        # Every key has at least one window (more when --events exceeds the 10,000 keys).
        assert isinstance(result["windows"], int) and result["windows"] >= 10_000


def test_raw_loop_computes_the_produced_total(bench: tuple[str, str], tmp_path: Path) -> None:
    result = _run(bench, Job("raw", "raw", f"{bench[1]}-events", EVENTS, expected_total(EVENTS)), tmp_path)
    assert result["sum"] == expected_total(EVENTS)


def test_replay_recovers_the_table_from_the_changelog(bench: tuple[str, str], tmp_path: Path) -> None:
    bootstrap, prefix = bench
    total = produce_changelog(bootstrap, f"{prefix}-replay-totals-changelog", EVENTS)
    result = _run(bench, Job("streamtrio", "replay", f"{prefix}-replay-src", EVENTS, total), tmp_path)
    assert result["replayed"] == EVENTS
    assert result["keys"] == 10_000
    assert result["sum"] == total


def test_a_wrong_result_is_reported_as_failed(bench: tuple[str, str], tmp_path: Path) -> None:
    bootstrap, prefix = bench
    job = Job("raw", "raw", f"{prefix}-events", EVENTS, expected_total(EVENTS) + 1)
    outcome = run_job(
        job, bootstrap=bootstrap, python=Path(sys.executable), workdir=tmp_path, prefix=prefix, timeout=60
    )
    assert not outcome.ok
    assert outcome.rate is None
    assert "wrong result" in outcome.reason


def test_scaling_runs_two_worker_processes_and_checks_their_sum(
    bench: tuple[str, str], tmp_path: Path
) -> None:
    from benchmarks.scaling import run_one

    bootstrap, _prefix = bench
    result = run_one(bootstrap, 5_000, "stateful", 2, tmp_path, None)
    assert result["ok"], result
    assert sum(p["events"] for p in result["processes"]) == 5_000
    assert all(p["events"] > 0 and p["cpu_us_per_event"] > 0 for p in result["processes"])
