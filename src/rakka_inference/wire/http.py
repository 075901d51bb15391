"""The HTTP transport seam: what the remote engine needs from an HTTP client.

Everything provider-facing goes through :class:`HttpTransport`. An implementation owns a
pooled keep-alive client and translates its library's exceptions into our typed errors
*once*, here, so nothing above it ever sees a vendor exception:

- connection refused / DNS / TLS failure       → :class:`NetworkError`
- no connection within ``connect_timeout_ms``  → :class:`Timeout` (``TimeoutPhase.CONNECT``)
- no response head within the first-byte limit → :class:`Timeout` (``FIRST_BYTE``)
- a gap longer than ``read_timeout_ms`` between body bytes
                                               → :class:`Timeout` (``BETWEEN_BYTES``)
- the optional ``total_timeout_ms`` passed     → :class:`Timeout` (``TOTAL``)
- connection reset or closed mid-body          → :class:`NetworkError`

Each phase has its own limit (DESIGN §4, ``timeouts``). A long, healthy stream is never cut
by a total limit it was not given.

``send`` returns once the status line and headers have arrived; the body is then read with
``read()`` (unary) or ``iter_bytes()`` (streams). Closing the response early — because the
client went away — closes the connection, so the provider sees the request end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rakka_inference.core.policies import Timeouts

__all__ = ["HttpRequest", "HttpResponse", "HttpTransport"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request to a provider. Header values may carry credentials: never log them."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        # The URL never carries a key (adapters send keys in headers); headers are elided.
        return f"HttpRequest({self.method} {self.url}, {len(self.body)} bytes)"


class HttpResponse(Protocol):
    """A response whose head has arrived. Headers are keyed in lower case."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes:
        """The whole body, under the between-bytes and total limits."""
        ...

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive, under the between-bytes and total limits."""
        ...

    async def aclose(self) -> None:
        """Release the connection; if the body was not fully read, close it."""
        ...


class HttpTransport(Protocol):
    """A pooled HTTP client with phase-split timeouts and typed errors."""

    async def send(self, request: HttpRequest, timeouts: Timeouts, *, stream: bool) -> HttpResponse:
        """Send ``request`` and wait for the response head (first byte)."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...
