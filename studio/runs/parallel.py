"""How many CPUs to use, and a parallel map with a bounded look-ahead.

``Executor.map`` submits the whole input at once, which for 40K photos means holding every
decoded image in memory. This keeps at most ``ahead`` tasks in flight and yields in order, or
as tasks finish (``ordered=False``): for paid requests, where one slow answer must not hold back
storing the answers behind it.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from typing import Generic, TypeVar


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


T = TypeVar("T")
R = TypeVar("R")


class BoundedMap(Generic[T, R]):
    """Iterate ``fn(item)`` results, in input order or (``ordered=False``) as they finish;
    :meth:`settle` ends early without losing started work."""

    def __init__(self, pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int, ordered: bool = True):
        self.pool, self.fn, self.items, self.ahead, self.ordered = pool, fn, iter(items), ahead, ordered
        self.pending: deque = deque()

    def __iter__(self) -> Iterator[R]:
        for item in self.items:
            self.pending.append(self.pool.submit(self.fn, item))
            if len(self.pending) >= self.ahead:
                yield self._next()
        while self.pending:
            yield self._next()

    def _next(self) -> R:
        if self.ordered:
            return self.pending.popleft().result()
        done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
        first = next(f for f in self.pending if f in done)  # of those finished, the oldest
        self.pending.remove(first)
        return first.result()

    def settle(self) -> list[R]:
        """Stop: cancel the tasks not started yet and return the results of those already running.

        For work that costs money (a model request), so that an answer already paid for is kept.
        """
        for f in self.pending:
            f.cancel()
        done = [f.result() for f in self.pending if not f.cancelled()]
        self.pending.clear()
        return done


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    return iter(BoundedMap(pool, fn, items, ahead))
