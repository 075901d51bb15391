"""ContinuousBatcher: one decode thread per runner; requests join and leave between steps.

The protocol between the event loop and the decode thread
=========================================================

The event loop never touches the model. :meth:`ContinuousBatcher.submit` (on the loop)
puts a :class:`Ticket` in the inbox and starts the decode thread if none is running;
:meth:`~ContinuousBatcher.cancel` (on the loop) takes a ticket out of the inbox, or marks
a running one to leave. Both hold the batcher's lock only to move tickets between lists.

The decode thread repeats one iteration while there is work, and exits when there is
none (so an idle runner, or one dropped after a context rebuild, holds no thread):

1. under the lock: the cancelled members leave, and as many queued tickets as there are
   free slots (``max_batch_size``) are taken;
2. each newcomer's prompt is prepared (chat template, tokens, limits: a ``BadRequest``
   fails that ticket only) and prefilled alone, which gives its first token;
3. one decode step runs for every member at once (:class:`Decoder`), one token each;
4. every token goes through its member's :class:`~rakka_inference.local.decode_text.
   CompletionText`; finished members leave the batch;
5. the chunks of the iteration reach the loop in one ``call_soon_threadsafe`` per loop,
   each onto its ticket's queue, which the request's ``execute`` generator awaits.

A ticket's queue is unbounded but short: it holds at most one chunk per generated token,
and the consumer is the request's own stream.

Failures of the device work are classified once (:meth:`Decoder.engine_error`):
``OutOfMemory`` in a newcomer's prefill fails that newcomer; in a decode step it fails
the members of that step, and the batch's cache is dropped (the context stays).
``ContextPoisoned`` fails every member and every queued ticket, and every later
``submit`` at once: the runner's owner is about to replace it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from rakka_inference.core.errors import (
    ContextPoisoned,
    EngineError,
    InferenceError,
    OutOfMemory,
    RequestError,
)
from rakka_inference.core.messages import ChatRequest
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.local.decode_text import CompletionText, Decode

__all__ = ["BatchStats", "ContinuousBatcher", "Decoder", "Prompt", "Ticket"]

log = logging.getLogger("rakka_inference.local.batcher")

Event = TokenChunk | InferenceError


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """A request made ready for the model: its token ids and how to sample its answer."""

    ids: tuple[int, ...]
    max_tokens: int
    """The cap on generated tokens (the request's, within the model's context)."""
    temperature: float = 1.0
    """``0`` is greedy decoding."""
    top_p: float = 1.0
    seed: int | None = None
    stops: tuple[str, ...] = ()


class Decoder(Protocol):
    """The running batch on the device (:class:`~rakka_inference.local.decode_batch.
    DecodeBatch`). Called from the decode thread only."""

    def prefill(self, key: object, prompt: Prompt) -> int:
        """Run ``prompt`` alone, add it to the batch as ``key``; its first token."""
        ...

    def step(self) -> Sequence[int]:
        """One decode step of every row; the next token of each, in :attr:`keys` order."""
        ...

    def leave(self, keys: Collection[object]) -> None:
        """Drop these rows and their cache."""
        ...

    def reset(self) -> None:
        """Drop every row (after an out-of-memory step)."""
        ...

    @property
    def keys(self) -> Sequence[object]:
        """The rows, in batch order."""
        ...

    def engine_error(self, error: BaseException) -> EngineError:
        """What a failure of the device work means, as the engine's typed error."""
        ...


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What the decode loop has done so far: for tests, the bench and the admin view."""

    steps: int
    """Decode steps run (prefills not counted)."""
    prefills: int
    max_batch_size: int
    """The most members one decode step ran for."""
    tokens: int
    """Tokens generated, by prefills and steps."""


class Ticket:
    """One request's place in the batcher, and the queue its chunks arrive on."""

    __slots__ = ("_loop", "_queue", "finished", "request")

    def __init__(self, request: ChatRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.finished = False
        """Set by the decode thread once its last event is posted."""
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    async def next_event(self) -> Event:
        """The next chunk, or the error the request failed with."""
        return await self._queue.get()


class _Member:
    """A ticket running in the batch (decode-thread state)."""

    __slots__ = ("completion", "prompt_tokens", "ticket")

    def __init__(self, ticket: Ticket, completion: CompletionText, prompt_tokens: int) -> None:
        self.ticket = ticket
        self.completion = completion
        self.prompt_tokens = prompt_tokens


class ContinuousBatcher:
    """Continuous batching over a :class:`Decoder`; see the module docstring."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        prepare: Callable[[ChatRequest], Prompt],
        decode: Decode,
        eos_ids: Collection[int],
        max_batch_size: int,
        name: str = "decode",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._decoder = decoder
        self._prepare = prepare
        self._decode = decode
        self._eos = frozenset(eos_ids)
        self.max_batch_size = max_batch_size
        self._name = name
        self._lock = threading.Lock()
        self._inbox: list[Ticket] = []
        self._cancelled: set[Ticket] = set()
        self._members: dict[object, _Member] = {}
        self._thread: threading.Thread | None = None
        self._fault: BaseException | None = None
        self.poisoned: ContextPoisoned | None = None
        """Set once the context is unusable: every later request fails at once."""
        self._steps = self._prefills = self._max_batch = self._tokens = 0

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._steps, self._prefills, self._max_batch, self._tokens)

    @property
    def active(self) -> int:
        """Requests holding a slot or waiting for one (cancelled ones count until they leave)."""
        with self._lock:
            return len(self._inbox) + len(self._members)

    @property
    def running(self) -> bool:
        """Whether the decode thread is running."""
        with self._lock:
            return self._thread is not None

    # ------------------------------------------------------------------ loop side

    def submit(self, request: ChatRequest) -> Ticket:
        """Queue ``request`` for the next step. Called on the event loop."""
        ticket = Ticket(request, asyncio.get_running_loop())
        with self._lock:
            if self.poisoned is not None:
                raise ContextPoisoned(f"the context is being rebuilt: {self.poisoned.message}")
            self._inbox.append(ticket)
            if self._thread is None:
                thread = self._thread = threading.Thread(
                    target=self._run, name=self._name, daemon=True
                )
                thread.start()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The request is gone: its slot is free at the next step. Idempotent."""
        with self._lock:
            if ticket in self._inbox:
                self._inbox.remove(ticket)
            elif not ticket.finished:
                self._cancelled.add(ticket)

    def inject_fault(self, error: BaseException) -> None:
        """Make the next decode step raise ``error`` instead of running (fault-injection
        tests); it is classified as a failure of the device would be."""
        self._fault = error

    # ------------------------------------------------------------------ decode thread

    def _run(self) -> None:
        newcomers: list[Ticket] = []
        try:
            while (taken := self._take()) is not None:
                newcomers = taken
                self._iterate(newcomers)
        except EngineError as error:  # not OutOfMemory: that fails only its own requests
            self._poison(error, newcomers)
        except BaseException as error:  # a bug of ours: nobody may be left waiting
            log.exception("%s: the decode loop failed", self._name)
            self._poison(self._decoder.engine_error(error), newcomers)

    def _take(self) -> list[Ticket] | None:
        """Step 1: let the cancelled go, take newcomers; ``None`` when there is no work.

        Deciding to stop happens under the lock, so a ``submit`` either lands before it
        (and is taken) or finds no thread and starts one.
        """
        with self._lock:
            gone = [ticket for ticket in self._cancelled if ticket in self._members]
            self._cancelled.clear()
            for ticket in gone:
                del self._members[ticket]
                ticket.finished = True
            free = self.max_batch_size - len(self._members)
            newcomers, self._inbox[:free] = self._inbox[:free], []
            if not gone and not self._members and not newcomers:
                self._thread = None
                return None
        if gone:
            self._decoder.leave(gone)
        return newcomers

    def _iterate(self, newcomers: list[Ticket]) -> None:
        """Steps 2 to 5 of the module docstring."""
        events: list[tuple[Ticket, Event]] = []
        try:
            for ticket in newcomers:
                self._admit(ticket, events)
            if self._decoder.keys:
                self._step(events)
        finally:
            self._post(events)

    def _admit(self, ticket: Ticket, events: list[tuple[Ticket, Event]]) -> None:
        try:
            prompt = self._prepare(ticket.request)
        except RequestError as refused:
            self._fail(ticket, refused, events)
            return
        completion = CompletionText(
            self._decode,
            max_tokens=prompt.max_tokens,
            eos_ids=self._eos,
            stops=prompt.stops,
            context=prompt.ids,
        )
        member = _Member(ticket, completion, len(prompt.ids))
        try:
            token = self._decoder.prefill(ticket, prompt)
        except Exception as failure:
            error = self._decoder.engine_error(failure)
            if not isinstance(error, OutOfMemory):
                raise error from failure
            self._fail(ticket, error, events)
            return
        self._prefills += 1
        with self._lock:
            self._members[ticket] = member
        if self._accept(member, token, events):
            self._decoder.leave((ticket,))

    def _step(self, events: list[tuple[Ticket, Event]]) -> None:
        decoder = self._decoder
        keys = list(decoder.keys)
        try:
            fault, self._fault = self._fault, None
            if fault is not None:
                raise fault
            tokens = decoder.step()
        except Exception as failure:
            error = decoder.engine_error(failure)
            if not isinstance(error, OutOfMemory):
                raise error from failure
            decoder.reset()
            for key in keys:
                member = self._members.get(key)
                if member is not None:
                    self._fail(member.ticket, error, events)
            return
        self._steps += 1
        self._max_batch = max(self._max_batch, len(keys))
        done = [
            key
            for key, token in zip(keys, tokens, strict=True)
            if self._accept(self._members[key], token, events)
        ]
        if done:
            decoder.leave(done)

    def _accept(self, member: _Member, token: int, events: list[tuple[Ticket, Event]]) -> bool:
        """Fold one token into its member's answer; whether the answer is over."""
        self._tokens += 1
        completion = member.completion
        text, finish = completion.push(token)
        if finish is None:
            if text:
                events.append((member.ticket, TokenChunk(text=text)))
            return False
        if completion.stopped_by is not None:
            log.debug("%s: stop sequence %r matched", self._name, completion.stopped_by)
        usage = Usage(input_tokens=member.prompt_tokens, output_tokens=completion.tokens)
        events.append((member.ticket, TokenChunk(text=text, usage=usage, finish_reason=finish)))
        self._release(member.ticket)
        return True

    def _fail(
        self, ticket: Ticket, error: InferenceError, events: list[tuple[Ticket, Event]]
    ) -> None:
        events.append((ticket, error))
        self._release(ticket)

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            self._members.pop(ticket, None)
            ticket.finished = True

    def _poison(self, error: EngineError, newcomers: Collection[Ticket] = ()) -> None:
        """The context is unusable: every request here fails with ``error``."""
        with self._lock:
            self.poisoned = (
                error
                if isinstance(error, ContextPoisoned)
                else ContextPoisoned(f"{type(error).__name__}: {error.message}")
            )
            members = [member.ticket for member in self._members.values()]
            waiting = [ticket for ticket in newcomers if not ticket.finished]
            tickets = list(dict.fromkeys([*members, *waiting, *self._inbox]))
            self._members.clear()
            self._inbox.clear()
            self._cancelled.clear()
            for ticket in tickets:
                ticket.finished = True
            self._thread = None
        self._post([(ticket, error) for ticket in tickets])

    def _post(self, events: list[tuple[Ticket, Event]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Ticket, Event]]] = {}
        for ticket, event in events:
            by_loop.setdefault(ticket._loop, []).append((ticket, event))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.debug("%s: %d events for a closed loop dropped", self._name, len(batch))


def _deliver(events: list[tuple[Ticket, Event]]) -> None:
    for ticket, event in events:
        ticket._queue.put_nowait(event)
