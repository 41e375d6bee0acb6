"""llmfn.backoff: the doubling, the cap and the equal jitter of every retry loop's waits."""
import itertools
import random

import pytest

from llmfn.backoff import Backoff


def test_waits_double_up_to_the_cap_each_within_equal_jitter():
    schedule = Backoff(first_s=1.0, max_s=30.0)
    for seed in range(20):
        waits = list(itertools.islice(schedule.delays(random.Random(seed)), 8))
        for wait, delay in zip(waits, (1, 2, 4, 8, 16, 30, 30, 30)):
            assert delay / 2 <= wait <= delay


def test_jitter_spreads_the_waits_of_pods_that_failed_together():
    firsts = {next(Backoff(4.0, 4.0).delays(random.Random(seed))) for seed in range(50)}
    assert len(firsts) == 50 and min(firsts) < 2.5 and max(firsts) > 3.5


def test_each_call_starts_the_schedule_again():
    schedule = Backoff(first_s=0.5, max_s=4.0)
    one, two = schedule.delays(random.Random(1)), schedule.delays(random.Random(1))
    assert list(itertools.islice(one, 5)) == list(itertools.islice(two, 5))
    assert next(schedule.delays(random.Random(2))) <= 0.5


def test_a_zero_schedule_never_waits():
    assert list(itertools.islice(Backoff(0.0, 30.0).delays(), 5)) == [0.0] * 5


@pytest.mark.parametrize("first_s, max_s, factor", [(-1, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_a_schedule_that_cannot_back_off_is_refused(first_s, max_s, factor):
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(first_s, max_s, factor)
