"""What every mock provider shares: its options, its :class:`ScriptedHttpServer` and its
lifecycle.

A mock subclasses :class:`MockProviderServer`, passes the common :class:`MockOptions` on
to ``super().__init__`` and answers each request in :meth:`~MockProviderServer.respond`;
it inherits :attr:`~MockProviderServer.faults` and :attr:`~MockProviderServer.reply`,
``start``/``stop``, the async context manager, ``url`` and ``requests``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, TypedDict

from rakka_inference.testkit.faults import FAULT_HEADER, Fault, FaultPlan, ReplyScript
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.http_server import ScriptedHttpServer
from rakka_inference.testkit.lifecycle import AsyncService
from rakka_inference.testkit.model_like import model_like

__all__ = ["MockOptions", "MockProviderServer"]


class MockOptions(TypedDict, total=False):
    """The options every mock provider takes (all keyword-only, all optional)."""

    faults: FaultPlan | None
    """What goes wrong, and which keys are valid; None: nothing, and any key."""
    reply: ReplyScript | None
    """What the model says; None: the default :class:`ReplyScript` (an echo)."""
    host: str
    """The loopback address to listen on (``127.0.0.1``)."""
    port: int
    """The port to listen on; 0 (the default): any free one."""
    model_like: bool
    """Reply like a model: call the tools offered, answer in the JSON shape asked for."""
    records: int | None
    """Keep at least this many recent requests (None: every one, as tests want): a mock
    that runs for long, as the sandbox's, stays flat in memory."""


class MockProviderServer(AsyncService):
    """A mock provider on loopback; usable with ``async with`` or ``start``/``stop``.

    :attr:`faults` and :attr:`reply` may be changed while it runs. Routes scripted on
    :attr:`server` directly take precedence over :meth:`respond`.
    """

    def __init__(
        self,
        *,
        faults: FaultPlan | None = None,
        reply: ReplyScript | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        model_like: bool = False,
        records: int | None = None,
    ) -> None:
        self.faults = faults if faults is not None else FaultPlan()
        self.reply = reply if reply is not None else ReplyScript()
        self.model_like = model_like
        """Reply like a model (:mod:`~rakka_inference.testkit.model_like`): call the tools
        offered, answer in the JSON shape asked for. The sandbox's mocks do."""
        self.server = ScriptedHttpServer(
            host=host, port=port, default=self.respond, records=records
        )

    def script_for(self, body: Mapping[str, Any]) -> ReplyScript:
        """The reply script for one chat request: :attr:`reply`, or with
        :attr:`model_like` on, what the request's tools and format ask of it."""
        return model_like(self.reply, body) if self.model_like else self.reply

    @abc.abstractmethod
    def respond(self, request: RecordedRequest) -> ScriptedResponse:
        """The answer to one request, faults included (the server's responder)."""

    def take_fault(self, key: str | None, request: RecordedRequest) -> Fault | None:
        """The fault for ``request``, made with ``key``: its :data:`FAULT_HEADER`'s, else
        the plan's (see :meth:`FaultPlan.take`).

        Raises ValueError when the header names no fault the plan knows.
        """
        return self.faults.take(key, request.headers.get(FAULT_HEADER))

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def url(self) -> str:
        """``http://host:port``: the base URL a provider's SDK or a deployment points at."""
        return self.server.url

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in order (the most recent ones, with ``records``)."""
        return self.server.requests
