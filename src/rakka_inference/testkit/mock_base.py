"""What every mock provider shares: a :class:`ScriptedHttpServer` and its lifecycle.

A mock subclasses :class:`MockProviderServer`, builds ``self.server`` with its own
responder in ``__init__``, and inherits ``start``/``stop``, the async context manager,
``url`` and ``requests``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rakka_inference.testkit.http_script import RecordedRequest
from rakka_inference.testkit.http_server import ScriptedHttpServer

__all__ = ["MockProviderServer"]


class MockProviderServer:
    """A mock provider on loopback; usable with ``async with`` or ``start``/``stop``."""

    server: ScriptedHttpServer

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://host:port``: the base URL a provider's SDK or a deployment points at."""
        return self.server.url

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in order."""
        return self.server.requests
