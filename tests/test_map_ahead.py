"""map_ahead: order, look-ahead bound, errors where due, early close."""

from __future__ import annotations

import threading
import time

import pytest

from prosam.core.prefetch import map_ahead
from prosam.errors import InputError


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_yields_every_item_in_order(ahead: int) -> None:
    # Later items finish first; the order must still be the input's.
    def load(i: int) -> int:
        time.sleep(0.002 * (5 - i % 5))
        return i * i

    assert list(map_ahead(load, range(12), ahead)) == [i * i for i in range(12)]


def test_never_runs_more_than_ahead_beyond_the_current_item() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def load(i: int) -> int:
        with lock:
            started.append(i)
        return i

    seen = []
    for item in map_ahead(load, range(20), 2):
        time.sleep(0.005)  # let the threads run as far as they may
        with lock:
            assert max(started) <= item + 2
        seen.append(item)
    assert seen == list(range(20))


def test_inline_loads_each_item_when_it_is_due() -> None:
    calls: list[int] = []
    it = map_ahead(lambda i: calls.append(i) or i, range(5), 0)
    assert next(it) == 0 and calls == [0]
    assert next(it) == 1 and calls == [0, 1]


def test_an_error_is_raised_where_its_item_is_due() -> None:
    def load(i: int) -> int:
        if i == 3:
            raise ValueError("item 3 is broken")
        return i

    it = map_ahead(load, range(6), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 3"):
        next(it)


def test_closing_early_cancels_what_has_not_started() -> None:
    started: list[int] = []

    def load(i: int) -> int:
        started.append(i)
        time.sleep(0.01)
        return i

    it = map_ahead(load, range(100), 2)
    next(it)
    it.close()
    time.sleep(0.05)
    assert len(started) <= 4


def test_refuses_a_negative_look_ahead() -> None:
    with pytest.raises(InputError, match="ahead"):
        list(map_ahead(lambda i: i, range(3), -1))
