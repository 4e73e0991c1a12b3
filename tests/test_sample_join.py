"""SampleJoin: the one bounded join by sample id (drift monitor and retraining buffer)."""

from __future__ import annotations

import pytest

from nirwatch.records.sample_join import SampleJoin


def test_pairs_in_either_order_once() -> None:
    join: SampleJoin[str, float] = SampleJoin(10)
    assert join.add_left("a", "spectrum a") is None
    assert join.add_right("a", 1.0) == ("spectrum a", 1.0)
    assert join.add_right("b", 2.0) is None
    assert join.add_left("b", "spectrum b") == ("spectrum b", 2.0)
    assert join.waiting_left == join.waiting_right == 0
    assert join.add_right("a", 3.0) is None  # a pair is returned once, then forgotten


def test_each_side_is_bounded_oldest_first() -> None:
    join: SampleJoin[int, float] = SampleJoin(3, max_right=2)
    for i in range(5):
        assert join.add_left(f"s{i}", i) is None
    assert join.waiting_left == 3
    assert join.add_right("s0", 0.0) is None  # dropped: 5 > 3
    assert join.add_right("s4", 4.0) == (4, 4.0)
    for i in range(10):
        join.add_right(f"x{i}", float(i))
    assert join.waiting_right == 2
    assert join.add_left("x9", 9) == (9, 9.0) and join.add_left("x0", 0) is None


def test_a_repeated_sample_id_replaces_and_counts_as_newest() -> None:
    join: SampleJoin[str, float] = SampleJoin(2)
    join.add_left("a", "first")
    join.add_left("b", "b")
    join.add_left("a", "second")  # now the newest: "b" goes first
    join.add_left("c", "c")
    assert join.add_right("b", 0.0) is None
    assert join.add_right("a", 1.0) == ("second", 1.0)


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        SampleJoin(0)
