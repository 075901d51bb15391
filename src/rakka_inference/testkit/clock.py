"""A clock that moves only when a test moves it.

Components that measure time take a ``clock: Callable[[], float]`` (monotonic seconds);
tests pass a :class:`FakeClock` and call :meth:`FakeClock.advance`, so limiter, breaker,
backoff and supervision tests take milliseconds and never sleep.
"""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Monotonic seconds, advanced by hand."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now})"
