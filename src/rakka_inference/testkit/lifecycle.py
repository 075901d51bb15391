"""The start/stop lifecycle every test double in this package shares.

A double defines :meth:`AsyncService.start` and :meth:`AsyncService.stop`; ``async with``
then starts it before the block and stops it after, the block's error or not::

    async with ScriptedHttpServer() as server:
        ...

Outside pytest (``mock-server``, a notebook) call ``start``/``stop`` directly.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

__all__ = ["AsyncService"]


class AsyncService(abc.ABC):
    """Something that runs between ``start`` and ``stop``; an async context manager."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin serving."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop serving and release what ``start`` took; a second call does nothing."""

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
