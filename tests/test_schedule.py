import pytest

from phases.training.schedule import evaluation_steps


def test_default_schedule_is_zero_then_powers_of_two_up_to_max_steps():
    assert evaluation_steps(2048) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]


def test_a_max_steps_that_is_not_a_power_of_two_is_still_evaluated_last():
    assert evaluation_steps(100) == [0, 1, 2, 4, 8, 16, 32, 64, 100]


def test_smallest_schedule():
    assert evaluation_steps(1) == [0, 1]


def test_zero_steps_is_rejected():
    with pytest.raises(ValueError, match="max_steps"):
        evaluation_steps(0)
