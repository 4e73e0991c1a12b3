"""The bounded join by sample id: pair two streams whichever side arrives first.

A spectrum (or its prediction) and the lab value of the same sample arrive on different topics,
in either order, minutes to days apart, and many samples never get a lab value. Both the drift
monitor (prediction x lab value) and the retraining service (spectrum x lab value) pair them
here, remembering a bounded number of unpaired items per side.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

L = TypeVar("L")
R = TypeVar("R")


class SampleJoin(Generic[L, R]):
    """Pairs left and right items with the same sample id, in bounded memory.

    Each side remembers its unpaired items by sample id, at most ``max_left`` / ``max_right``;
    beyond that the oldest is dropped, so an item whose partner comes after
    that many others of its side is never paired. An item for a sample id already waiting on
    its side replaces the waiting one and counts as the newest. A pair is returned once and
    forgotten. Not thread-safe: callers that share one hold their own lock.

    Parameters
    ----------
    max_left : int
        Unpaired left items remembered.
    max_right : int, optional
        Unpaired right items remembered; ``max_left`` when not given.
    """

    def __init__(self, max_left: int, max_right: int | None = None) -> None:
        if max_left < 1 or (max_right is not None and max_right < 1):
            raise ValueError(f"bounds must be >= 1, got {max_left} and {max_right}")
        self.max_left = max_left
        self.max_right = max_left if max_right is None else max_right
        self._left: OrderedDict[str, L] = OrderedDict()
        self._right: OrderedDict[str, R] = OrderedDict()

    def add_left(self, sample_id: str, item: L) -> tuple[L, R] | None:
        """``(item, right)`` when the sample's right item is waiting, else remember ``item``."""
        if sample_id in self._right:
            return item, self._right.pop(sample_id)
        _remember(self._left, sample_id, item, self.max_left)
        return None

    def add_right(self, sample_id: str, item: R) -> tuple[L, R] | None:
        """``(left, item)`` when the sample's left item is waiting, else remember ``item``."""
        if sample_id in self._left:
            return self._left.pop(sample_id), item
        _remember(self._right, sample_id, item, self.max_right)
        return None

    @property
    def waiting_left(self) -> int:
        """Unpaired left items remembered now."""
        return len(self._left)

    @property
    def waiting_right(self) -> int:
        """Unpaired right items remembered now."""
        return len(self._right)


def _remember(side: OrderedDict[str, L], sample_id: str, item: L, bound: int) -> None:
    side[sample_id] = item
    side.move_to_end(sample_id)
    if len(side) > bound:
        side.popitem(last=False)
