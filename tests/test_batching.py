"""Batch sizes: the first measured task sizes the batches at once when the task count is known
(tiny tasks do not ramp up through batches that each pay the per-batch cost); a stream of
unknown length still grows fourfold a step."""

from __future__ import annotations

from stepdown.runner.flights import Sizer


def test_the_first_measured_task_sizes_the_batches_at_once() -> None:
    sizer = Sizer(None, 0.05)
    assert sizer.size(2, 10_000) == 1  # nothing measured yet
    sizer.observe(1, 10e-6)  # one task of 10 µs: 5000 fill 50 ms
    # Straight to a quarter of each worker's share: 10,000 / (4 x 2).
    assert sizer.size(2, 9_999) == 1250
    # Slower tasks measured later: smaller batches, at once too.
    sizer.observe(100, 0.1)  # 1 ms a task, weighed in
    assert sizer.size(2, 8_000) < 1250


def test_slow_tasks_go_one_at_a_time() -> None:
    sizer = Sizer(None, 0.05)
    sizer.observe(1, 0.5)
    assert sizer.size(2, 39) == 1


def test_a_stream_of_unknown_length_grows_fourfold_a_step() -> None:
    sizer = Sizer(None, 0.05)
    sizer.observe(1, 10e-6)
    assert [sizer.size(2, None) for _ in range(5)] == [4, 16, 64, 256, 1024]
