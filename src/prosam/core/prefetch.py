"""Work ahead in threads: compute the next items of a sequence while the caller uses this one.

The labelling job reads and decodes the next target images, and runs SAM's image encoder on
the next target, while it matches and decodes the current one. Threads do that here, not
worker processes: Pillow, numpy, PyTorch, ONNX Runtime and OpenVINO release the GIL while
they work; a thread starts in microseconds where a worker process (from a fork server,
which OpenVINO's runtime needs) costs seconds; and nothing is pickled between processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from prosam.errors import InputError

T = TypeVar("T")
R = TypeVar("R")


def map_ahead(fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """Yield ``fn(item)`` for each item in order, with up to ``ahead`` of the following calls
    running in threads meanwhile (``ahead`` 0: each call inline, when its result is due).

    ``items`` is advanced in the calling thread. An exception from ``fn`` is raised here,
    when its item is due. Closing the iterator early cancels the calls not started and waits
    for the running ones.
    """
    if ahead < 0:
        raise InputError(f"ahead must be >= 0, got {ahead}")
    if ahead == 0:
        for item in items:
            yield fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="prosam-ahead")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
