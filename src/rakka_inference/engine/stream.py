"""The stream an engine hands back for one request, and the report it ends with."""

from __future__ import annotations

from typing import TypeVar

from rakka_inference.actors.stream import BoundedStream
from rakka_inference.engine.report import RequestReport

__all__ = ["RequestStream"]

T = TypeVar("T")


class RequestStream(BoundedStream[T]):
    """A request's chunks (or its one embeddings result), then its :class:`RequestReport`.

    The engine sets :attr:`report` before it ends the stream, success or failure: the one
    channel a request's figures (attempts, usage, cost, latency) travel on.
    """

    __slots__ = ("report",)

    def __init__(self, capacity: int = 64) -> None:
        super().__init__(capacity)
        self.report: RequestReport | None = None
