"""The benchmark's verdicts: issue 18's targets, computed from the outcomes of one run."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.runner import Job, Outcome, targets  # noqa: E402


def _ran(system: str, workload: str, rate: float, *, rss: float = 100.0, cpu: float = 3.0) -> Outcome:
    job = Job(system, workload, topic="t", events=1, expected=1)
    return Outcome(job, ok=True, rate=rate, rss_mb=rss, cpu_us=cpu)


def test_every_target_is_judged_met_or_missed() -> None:
    report = targets(
        [
            _ran("raw", "raw", 100_000),
            _ran("streamtrio", "stateless", 84_000, cpu=5.5),
            _ran("streamtrio", "stateful", 50_000),
            _ran("quix", "stateful", 20_000),
            _ran("streamtrio", "distinct", 40_000, rss=300),
            _ran("quix", "distinct", 20_000, rss=500),
            _ran("streamtrio", "windowed", 30_000),
            _ran("quix", "windowed", 10_000),
            _ran("streamtrio", "replay", 80_000),
            _ran("streamtrio", "eos", 45_000),
        ]
    )
    lines = report.splitlines()
    assert "- stateless >= 85% of the raw loop: 84% -> MISSED" in lines
    assert "- stateless CPU per event <= 5 µs: 5.5 µs -> MISSED" in lines
    assert "- stateful >= 2.5x quixstreams: 2.50x -> met" in lines
    assert "- every key new (distinct) >= 2x quixstreams: 2.00x -> met" in lines
    assert "- windowed >= 3x quixstreams: 3.00x -> met" in lines
    assert "- replay >= 80% of the raw loop: 80% -> met" in lines
    assert "- exactly_once costs <= 10% (>= 90% of at_least_once, stateful): 90% -> met" in lines
    assert "- peak RSS, every key new <= half of quixstreams': 300 MB vs 500 MB -> MISSED" in lines
    assert "- stateless >= 10x faust-streaming: not measured" in lines


def test_nothing_ran_nothing_is_met() -> None:
    report = targets([Outcome(Job("streamtrio", "stateless", "t", 1, 1), ok=False, reason="no result")])
    assert all(line.endswith("not measured") for line in report.splitlines())
