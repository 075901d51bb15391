"""Choosing an :class:`~rakka_inference.wire.http.HttpTransport`: :func:`create_transport`.

Each library is imported only when chosen, so the httpx extra stays optional.

Which one is the default: our transport on aiohttp costs the client less CPU and latency
per request than on httpx, unary and streamed, one at a time and many in flight (measured
in ``bench/http_transport.py``; the figures are in ``bench/README.md``).

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
