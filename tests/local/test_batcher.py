"""ContinuousBatcher on a scripted decoder: how failures of the device work, bugs and
cancellations reach each request, with no model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Collection, Sequence

import pytest

from rakka_inference.core.errors import (
    BadRequest,
    ContextPoisoned,
    EngineError,
    InferenceError,
    OutOfMemory,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.stream import FinishReason, TokenChunk
from rakka_inference.local.batcher import ContinuousBatcher, Prompt, Ticket


class ScriptedDecoder:
    """Every row says "a" forever; failures are raised where asked."""

    def __init__(self) -> None:
        self.rows: list[object] = []
        self.prefill_error: BaseException | None = None
        self.step_error: BaseException | None = None
        self.resets = 0
        self.gate = threading.Event()
        self.gate.set()

    @property
    def keys(self) -> Sequence[object]:
        return self.rows

    def prefill(self, key: object, prompt: Prompt) -> int:
        self.gate.wait()
        if self.prefill_error is not None:
            raise self.prefill_error
        self.rows.append(key)
        return ord("a")

    def step(self) -> Sequence[int]:
        if self.step_error is not None:
            raise self.step_error
        time.sleep(0.001)  # a long answer takes a while, as on a real device
        return [ord("a")] * len(self.rows)

    def leave(self, keys: Collection[object]) -> None:
        self.rows = [row for row in self.rows if row not in keys]

    def reset(self) -> None:
        self.resets += 1
        self.rows = []

    def engine_error(self, error: BaseException) -> EngineError:
        if isinstance(error, EngineError):
            return error
        if isinstance(error, MemoryError):
            return OutOfMemory("no memory")
        return ContextPoisoned(f"broken: {error}")


def prepare(request: ChatRequest) -> Prompt:
    if request.messages[0].content == "refuse":
        raise BadRequest("refused", param="messages")
    return Prompt(ids=(1, 2), max_tokens=int(str(request.messages[0].content)))


def batcher(decoder: ScriptedDecoder, max_batch_size: int = 4) -> ContinuousBatcher:
    return ContinuousBatcher(
        decoder,
        prepare=prepare,
        decode=lambda ids: bytes(ids).decode(errors="replace"),
        eos_ids=(),
        max_batch_size=max_batch_size,
    )


def request(content: str) -> ChatRequest:
    return ChatRequest(model="m", messages=(ChatMessage.user(content),))


async def outcome(ticket: Ticket) -> tuple[str, InferenceError | FinishReason | None]:
    text = ""
    while True:
        event = await ticket.next_event()
        if isinstance(event, InferenceError):
            return text, event
        assert isinstance(event, TokenChunk)
        text += event.text
        if event.finish_reason is not None:
            return text, event.finish_reason


async def idle(batching: ContinuousBatcher) -> None:
    for _ in range(500):
        if not batching.running:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the decode thread never went idle")


async def test_answers_and_a_refused_prompt_fail_alone() -> None:
    batching = batcher(ScriptedDecoder())
    ok, refused = batching.submit(request("3")), batching.submit(request("refuse"))
    assert await outcome(ok) == ("aaa", FinishReason.LENGTH)
    assert isinstance((await outcome(refused))[1], BadRequest)
    await idle(batching)


async def test_out_of_memory_in_a_prefill_fails_only_that_newcomer() -> None:
    decoder = ScriptedDecoder()
    batching = batcher(decoder)
    decoder.prefill_error = MemoryError()
    failed = batching.submit(request("5"))
    assert isinstance((await outcome(failed))[1], OutOfMemory)
    decoder.prefill_error = None
    assert await outcome(batching.submit(request("2"))) == ("aa", FinishReason.LENGTH)
    await idle(batching)


async def test_out_of_memory_in_a_step_fails_its_rows_and_drops_the_cache() -> None:
    decoder = ScriptedDecoder()
    batching = batcher(decoder)
    decoder.step_error = MemoryError()
    tickets = [batching.submit(request("5")) for _ in range(2)]
    for ticket in tickets:
        assert isinstance((await outcome(ticket))[1], OutOfMemory)
    assert decoder.resets >= 1
    assert batching.poisoned is None
    await idle(batching)


async def test_a_poisoned_prefill_fails_every_request_and_refuses_later_ones() -> None:
    decoder = ScriptedDecoder()
    batching = batcher(decoder, max_batch_size=2)
    decoder.prefill_error = RuntimeError("CUDA error: misaligned address")
    decoder.gate.clear()  # the first prefill waits until all three are queued
    tickets = [batching.submit(request("5")) for _ in range(3)]
    decoder.gate.set()
    for ticket in tickets:
        error = (await outcome(ticket))[1]
        assert isinstance(error, ContextPoisoned)
        assert "misaligned address" in error.message
    with pytest.raises(ContextPoisoned, match="being rebuilt"):
        batching.submit(request("1"))
    await idle(batching)


async def test_a_bug_in_the_loop_fails_everyone_instead_of_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    decoder = ScriptedDecoder()
    batching = batcher(decoder)
    decoder.step_error = KeyboardInterrupt()  # not an Exception: escapes the step's handling
    ticket = batching.submit(request("5"))
    assert isinstance((await outcome(ticket))[1], ContextPoisoned)
    assert "the decode loop failed" in caplog.text
    await idle(batching)


async def test_an_unrecoverable_fault_reaches_the_requests_as_it_is() -> None:
    from rakka_inference.core.errors import Unrecoverable

    decoder = ScriptedDecoder()
    batching = batcher(decoder)
    ticket = batching.submit(request("1000"))
    await ticket.next_event()
    batching.inject_fault(Unrecoverable("the device is gone"))
    error = (await outcome(ticket))[1]
    assert isinstance(error, Unrecoverable)
    assert isinstance(batching.poisoned, ContextPoisoned)
    await idle(batching)


async def test_a_queued_request_cancelled_never_runs() -> None:
    decoder = ScriptedDecoder()
    batching = batcher(decoder, max_batch_size=1)
    running = batching.submit(request("1000"))
    queued = batching.submit(request("1000"))
    batching.cancel(queued)
    assert batching.active <= 2
    await running.next_event()
    batching.cancel(running)
    batching.cancel(running)  # idempotent
    await idle(batching)
    assert batching.active == 0
    assert batching.stats.prefills == 1


async def test_events_for_a_closed_loop_are_dropped() -> None:
    decoder = ScriptedDecoder()
    batching = batcher(decoder)
    other = asyncio.new_event_loop()
    ticket = Ticket(request("1"), other)
    other.close()
    batching._post([(ticket, TokenChunk(text="lost"))])  # no error: nobody is waiting


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        batcher(ScriptedDecoder(), max_batch_size=0)
