"""Polling that backs off: quick while things change, slower while nothing does, to a ceiling."""

import pytest

from hpcjobs.launching.polling import Backoff


def test_backs_off_while_nothing_changes_and_resets_on_a_change():
    backoff = Backoff(start=5, ceiling=60, factor=1.5)
    waits = [backoff.after({"0": "running"}) for _ in range(9)]
    assert waits[:4] == [5, 7.5, 11.25, 16.875]
    assert waits[-1] == 60 and max(waits) == 60  # the ceiling holds
    assert backoff.after({"0": "completed"}) == 5  # something changed: responsive again
    assert backoff.after({"0": "completed"}) == 7.5


def test_a_ceiling_below_the_start_is_the_start_and_bad_settings_are_refused():
    backoff = Backoff(start=10, ceiling=3)
    assert [backoff.after("same") for _ in range(3)] == [10, 10, 10]
    with pytest.raises(ValueError):
        Backoff(start=0)
    with pytest.raises(ValueError):
        Backoff(start=1, factor=0.5)
