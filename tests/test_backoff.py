"""The one backoff every retry loop uses (SQL contention, HTTP, next_job polling)."""

from __future__ import annotations

import random

import pytest

from schedy import _backoff
from schedy._backoff import Backoff


class _Clock:
    """time.monotonic and time.sleep in one fake: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(_backoff, "time", fake)  # this module's clock only
    return fake


def test_delays_grow_by_the_factor_up_to_the_ceiling() -> None:
    backoff = Backoff(0.1, 0.5, factor=2)
    assert [round(backoff.next_delay(), 6) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_jitter_draws_within_its_band() -> None:
    random.seed(0)
    backoff = Backoff(1.0, 1.0, jitter=0.5)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.5 <= delay <= 1.0 for delay in delays)
    assert max(delays) - min(delays) > 0.3  # really drawn, not a constant


def test_the_budget_cuts_the_last_sleep_and_then_refuses(clock: _Clock) -> None:
    backoff = Backoff(1.0, 4.0, budget=5.0)
    waits = []
    while backoff.wait():
        waits.append(True)
    assert clock.slept == [1.0, 2.0, 2.0]  # the third cut to what was left
    assert len(waits) == 3
    assert backoff.remaining() == 0
    assert backoff.wait() is False and clock.slept == [1.0, 2.0, 2.0]  # no sleep once spent


def test_without_a_budget_it_never_refuses(clock: _Clock) -> None:
    backoff = Backoff(0.01, 0.02)
    assert all(backoff.wait() for _ in range(100))
    assert backoff.remaining() is None


@pytest.mark.parametrize(
    ("first", "maximum", "factor", "jitter"),
    [(0, 1, 2, 0), (2, 1, 2, 0), (0.1, 1, 0.5, 0), (0.1, 1, 2, 1.5), (-1, 1, 2, 0)],
)
def test_an_invalid_backoff_is_refused(
    first: float, maximum: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(first, maximum, factor=factor, jitter=jitter)
