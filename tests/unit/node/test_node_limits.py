from __future__ import annotations

from interceptor.node.limits import RateLimiter
from tests.unit.node.node_fakes import FakeClock


def test_bucket_allows_burst_then_refuses_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, 5, clock=clock)
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.retry_after("a") == 1
    clock.advance(0.1)  # one token at 10/s
    assert limiter.allow("a") is True
    assert limiter.allow("a") is False
    clock.advance(100)  # refills to the burst, not beyond
    assert sum(limiter.allow("a") for _ in range(20)) == 5


def test_one_vm_flood_does_not_touch_another() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    for _ in range(100):
        limiter.allow("flood")
    assert limiter.allow("quiet") is True
    assert limiter.allow("flood") is False


def test_disabled_and_forget() -> None:
    limiter = RateLimiter(0, 1)
    assert all(limiter.allow("a") for _ in range(1000))
    limiter = RateLimiter(1.0, 1, clock=FakeClock())
    limiter.allow("a")
    assert len(limiter) == 1
    limiter.forget("a")
    assert len(limiter) == 0 and limiter.allow("a")


def test_retry_after_slow_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.25, 1, clock=clock)
    assert limiter.allow("a") and not limiter.allow("a")
    assert limiter.retry_after("a") == 4
