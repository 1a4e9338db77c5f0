"""One exponential backoff for every wait-and-retry loop in schedy.

``next_job`` polling a busy population, a SQL transaction retried on lock
contention and the lease heartbeat retrying a renewal all wait the same way:
a first delay that grows by a factor up to a ceiling, optionally jittered (so
processes that collided do not collide again in step), within an optional
deadline. Writing that once keeps the three loops from drifting apart.
"""

from __future__ import annotations

import random
import time

__all__ = ["Backoff"]


class Backoff:
    """Delays ``first, first*factor, …`` capped at ``maximum``, until ``budget`` seconds.

    ``jitter`` draws each delay uniformly in ``[delay*(1-jitter), delay]``.
    :meth:`wait` sleeps the next delay (cut to what is left of the budget)
    and returns False, without sleeping, once the budget is spent::

        backoff = Backoff(0.002, 0.25, budget=300, jitter=0.5)
        while not attempt():
            if not backoff.wait():
                raise TimeoutError
    """

    __slots__ = ("_deadline", "_delay", "_factor", "_jitter", "_maximum")

    def __init__(
        self,
        first: float,
        maximum: float,
        *,
        factor: float = 2.0,
        budget: float | None = None,
        jitter: float = 0.0,
    ) -> None:
        if not (0 < first <= maximum) or factor < 1 or not (0 <= jitter <= 1):
            raise ValueError(
                f"invalid backoff: first={first}, maximum={maximum}, factor={factor}, "
                f"jitter={jitter}"
            )
        self._delay = first
        self._maximum = maximum
        self._factor = factor
        self._jitter = jitter
        self._deadline = None if budget is None else time.monotonic() + budget

    def remaining(self) -> float | None:
        """Seconds left of the budget (None: unbounded)."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def next_delay(self) -> float:
        """The next delay (jittered), advancing the sequence; no sleep."""
        delay = self._delay
        self._delay = min(delay * self._factor, self._maximum)
        if self._jitter:
            delay *= 1 - self._jitter * random.random()
        return delay

    def wait(self) -> bool:
        """Sleep the next delay; False (at once) when the budget is spent."""
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            return False
        delay = self.next_delay()
        time.sleep(delay if remaining is None else min(delay, remaining))
        return True
