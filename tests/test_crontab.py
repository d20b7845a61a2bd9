"""``@app.crontab`` expressions: which minutes they match.

Found failing: "Sunday is 0 or 7" was applied to every field, so hour 7,
the 7th of a month and July never matched (0 did instead). `*/10 * * * *`
at 06:50 next ran at 08:00, and tests/test_faust_apps.py failed every day
between 06:50 and 08:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamtrio._exceptions import ConfigurationError
from streamtrio._timers import Crontab


def at(month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_every_ten_minutes_runs_through_every_hour() -> None:
    cron = Crontab("*/10 * * * *")
    when = at(12, 1, 6, 50)
    runs = []
    for _ in range(8):
        when = cron.next_after(when)
        runs.append((when.hour, when.minute))
    assert runs == [(7, 0), (7, 10), (7, 20), (7, 30), (7, 40), (7, 50), (8, 0), (8, 10)]


def test_seven_is_an_hour_a_day_and_a_month_and_sunday_only_among_weekdays() -> None:
    assert Crontab("0 7 * * *").next_after(at(12, 1, 6, 0)) == at(12, 1, 7, 0)
    assert Crontab("0 0 7 * *").next_after(at(12, 1, 6, 0)) == at(12, 7, 0, 0)
    assert Crontab("0 0 1 7 *").next_after(at(1, 1, 0, 0)) == at(7, 1, 0, 0)
    assert Crontab("7 * * * *").next_after(at(12, 1, 6, 0)) == at(12, 1, 6, 7)
    # 2026-12-06 is a Sunday: 0 and 7 both name it
    assert Crontab("0 0 * * 7").next_after(at(12, 1, 0, 0)) == at(12, 6, 0, 0)
    assert Crontab("0 0 * * 0").next_after(at(12, 1, 0, 0)) == at(12, 6, 0, 0)
    assert Crontab("0 0 * * 5-7").next_after(at(12, 1, 0, 0)) == at(12, 4, 0, 0)  # Friday


def test_midnight_and_the_first_are_not_the_seventh() -> None:
    # before the fix, 7 turned into 0 in every field: hour 0 matched "7"
    assert Crontab("0 7 * * *").next_after(at(12, 1, 23, 0)) == at(12, 2, 7, 0)
    assert Crontab("0 0 7 * *").next_after(at(12, 7, 0, 0)) == at(1, 7, 0, 0).replace(year=2027)


def test_names_lists_ranges_and_steps() -> None:
    cron = Crontab("15,45 9-17/4 * jan-mar mon-fri")
    assert sorted(cron.minutes) == [15, 45]
    assert sorted(cron.hours) == [9, 13, 17]
    assert sorted(cron.months) == [1, 2, 3]
    assert sorted(cron.weekdays) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("expression", ["* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *"])
def test_invalid_expressions_are_refused_by_name(expression: str) -> None:
    with pytest.raises(ConfigurationError, match="crontab"):
        Crontab(expression)
