"""Choosing an :class:`~rakka_inference.wire.http.HttpTransport`: :func:`create_transport`.

Each library is imported only when chosen, so the httpx extra stays optional.

Which one is the default — measured with ``bench/http_transport.py``: client pinned to one
core, a bare-asyncio server process (uvloop) on the other, every variant in the same run,
in alternating rounds; CPU is ``time.process_time`` of the client per request, median of 5
rounds; Python 3.11.7, httpx 0.28.1 (with sniffio), aiohttp 3.14.5, asyncio loop, on a
shared 2-core VM whose absolute figures are slow and noisy (the ratios held across runs):

=================================  ==========  ==========  ===============================
per request, our transport on      httpx       aiohttp     aiohttp / httpx (uvloop run)
=================================  ==========  ==========  ===============================
unary, small JSON: client CPU      710 us      168 us      0.24x (0.29x)
unary: latency p50                 730 us      180 us      0.25x (0.33x)
unary, 32 in flight: client CPU    1350 us     94 us       0.07x (0.03x)
20-chunk stream: client CPU        4660 us     2440 us     0.52x (0.38x)
=================================  ==========  ==========  ===============================

(The stream's latency is the server's 1 ms gap between chunks, the same for both.) Without
the ``sniffio`` package, which recent anyio no longer pulls in, httpcore retries a failing
import on every request and httpx's unary CPU grows by about half again (1160 us). Our
layer over the bare library costs 4-16 % CPU on a unary request with aiohttp (one
``asyncio.timeout_at``, about 5-6 us, is the largest part) and is within the noise on
streams. A total limit adds one ``asyncio.timeout_at`` per body read: 5-6.5 us in
isolation, 0-23 us per read in the (noisy) stream runs; with no total limit, nothing is
added per chunk.

So :func:`create_transport` returns the aiohttp transport unless HTTP/2 is asked for (only
httpx speaks it) or ``prefer`` says otherwise.
"""

from __future__ import annotations

from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.remote.transports.base import DEFAULT_KEEPALIVE_S, DEFAULT_MAX_CONNECTIONS
from rakka_inference.wire.http import HttpTransport

__all__ = ["create_transport"]

_TRANSPORTS = ("aiohttp", "httpx")


def create_transport(
    *,
    http2: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    prefer: str | None = None,
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
    trust_env: bool = False,
) -> HttpTransport:
    """A new pooled transport.

    ``http2=True`` needs httpx (aiohttp speaks HTTP/1.1 only) and the ``h2`` package; it
    falls back to HTTP/1.1 where the server does not offer HTTP/2 through TLS ALPN.
    ``prefer`` names the library (``"aiohttp"`` or ``"httpx"``); unset means the faster one
    (see the module docstring). Each library is imported only when chosen.
    """
    if prefer is not None and prefer not in _TRANSPORTS:
        raise ValueError(f"unknown HTTP transport {prefer!r}; choose one of {_TRANSPORTS}")
    if http2 and prefer == "aiohttp":
        raise ValueError("aiohttp speaks HTTP/1.1 only; http2 needs the httpx transport")
    if http2 or prefer == "httpx":
        try:
            from rakka_inference.remote.transports.httpx import HttpxTransport  # noqa: PLC0415
        except ImportError as exc:  # httpx is an extra: rakka-inference[http2]
            raise _missing("httpx", "http2") from exc
        return HttpxTransport(
            http2=http2,
            max_connections=max_connections,
            keepalive_s=keepalive_s,
            trust_env=trust_env,
        )
    from rakka_inference.remote.transports.aiohttp import AiohttpTransport  # noqa: PLC0415

    return AiohttpTransport(
        max_connections=max_connections, keepalive_s=keepalive_s, trust_env=trust_env
    )


def _missing(package: str, extra: str) -> ConfigError:
    return ConfigError(
        [
            ConfigIssue(
                source="runtime_config",
                path="http2",
                message=f"needs the {package} package: pip install 'rakka-inference[{extra}]'",
            )
        ]
    )
