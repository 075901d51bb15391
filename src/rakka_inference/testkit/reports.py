"""ReportLog: the reports of every request an engine was given, for tests.

An engine's :class:`~rakka_inference.engine.report.RequestReport` travels on the request's
own stream (:attr:`~rakka_inference.engine.stream.RequestStream.report`). A test that
submits many requests and wants their reports afterwards watches the engine with a
``ReportLog``: every stream the engine hands out is kept, and :attr:`ReportLog.reports`
lists the reports of those that ended, in submission order.
"""

from __future__ import annotations

from typing import Any, TypeVar

from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.stream import TokenChunk
from rakka_inference.engine.core import EngineCore
from rakka_inference.engine.report import RequestReport
from rakka_inference.engine.stream import RequestStream

__all__ = ["ReportLog"]

T = TypeVar("T")


class ReportLog:
    """Keeps the streams an engine hands out; lists the reports of those that ended."""

    def __init__(self) -> None:
        self.streams: list[RequestStream[Any]] = []

    def watch(self, engine: EngineCore) -> None:
        """Keep every stream ``engine.submit`` and ``engine.submit_embedding`` return."""
        submit, submit_embedding = engine.submit, engine.submit_embedding

        def watched(
            request: ChatRequest,
            *,
            deadline: float | None = None,
            max_wait_s: float | None = None,
        ) -> RequestStream[TokenChunk]:
            return self._keep(submit(request, deadline=deadline, max_wait_s=max_wait_s))

        def watched_embedding(
            request: EmbeddingRequest,
            *,
            deadline: float | None = None,
            max_wait_s: float | None = None,
        ) -> RequestStream[EmbeddingResult]:
            return self._keep(submit_embedding(request, deadline=deadline, max_wait_s=max_wait_s))

        engine.submit = watched  # type: ignore[method-assign]
        engine.submit_embedding = watched_embedding  # type: ignore[method-assign]

    def _keep(self, stream: RequestStream[T]) -> RequestStream[T]:
        self.streams.append(stream)
        return stream

    @property
    def reports(self) -> list[RequestReport]:
        return [stream.report for stream in self.streams if stream.report is not None]
