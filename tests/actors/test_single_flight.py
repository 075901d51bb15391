"""SingleFlight: one call in flight, its outcome shared, cancellation-safe."""

from __future__ import annotations

import asyncio

import pytest

from rakka_inference.actors.single_flight import SingleFlight
from rakka_inference.core.errors import SecretError


async def test_single_flight_survives_a_cancelled_waiter() -> None:
    gate = asyncio.Event()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 7

    flight: SingleFlight[int] = SingleFlight("test")
    first = asyncio.create_task(flight.run(work))
    second = asyncio.create_task(flight.run(work))
    await asyncio.sleep(0)
    assert flight.running
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    gate.set()
    assert await second == 7
    assert calls == 1
    assert not flight.running


async def test_single_flight_failure_with_no_waiter_left_is_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        raise SecretError("nope")

    flight: SingleFlight[int] = SingleFlight("test")
    waiter = asyncio.create_task(flight.run(work))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not flight.running
    assert "never retrieved" not in caplog.text
    await flight.aclose()  # nothing in flight: a no-op
