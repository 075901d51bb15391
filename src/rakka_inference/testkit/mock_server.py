"""Run one mock provider as a standalone server.

    python -m rakka_inference.testkit.mock_server --provider anthropic --port 9001

The mock speaks the provider's real wire format on 127.0.0.1 until interrupted (Ctrl-C or
SIGTERM). Point the provider's official SDK, or a rakka deployment's ``endpoint``, at the
printed URL. ``--key`` (repeatable) restricts the accepted API keys, so a wrong key gets
the provider's real 401; faults can be asked for per request with the ``x-mock-fault``
header (see :mod:`rakka_inference.testkit.faults`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from rakka_inference.testkit.faults import FaultPlan, ReplyScript

__all__ = ["MOCKS", "main", "serve"]


class MockProvider(Protocol):
    @property
    def url(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


RECORDS = 256
"""The recent requests a standalone mock keeps: it serves until stopped, so it must not
keep every request."""


def _openai(faults: FaultPlan, reply: ReplyScript, port: int) -> MockProvider:
    from rakka_inference.testkit.mock_openai import OpenAIMock  # noqa: PLC0415

    return OpenAIMock(faults=faults, reply=reply, port=port, records=RECORDS)


def _anthropic(faults: FaultPlan, reply: ReplyScript, port: int) -> MockProvider:
    from rakka_inference.testkit.mock_anthropic import AnthropicMock  # noqa: PLC0415

    return AnthropicMock(faults=faults, reply=reply, port=port, records=RECORDS)


def _gemini(faults: FaultPlan, reply: ReplyScript, port: int) -> MockProvider:
    from rakka_inference.testkit.mock_gemini import GeminiMock  # noqa: PLC0415

    return GeminiMock(faults=faults, reply=reply, port=port, records=RECORDS)


MOCKS: dict[str, Callable[[FaultPlan, ReplyScript, int], MockProvider]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "gemini": _gemini,
}
"""Wire format name to mock server (``openai`` also serves the Azure paths)."""


async def serve(
    provider: str,
    *,
    port: int,
    keys: Sequence[str] = (),
    reply: ReplyScript | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``provider``'s mock until ``stop`` is set (or SIGINT/SIGTERM when it is None)."""
    faults = FaultPlan(valid_keys=set(keys) or None)
    mock = MOCKS[provider](faults, reply or ReplyScript(), port)
    await mock.start()
    done = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if stop is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
    try:
        if ready is not None:
            ready(mock.url)
        await done.wait()
    finally:
        if stop is None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        await mock.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rakka_inference.testkit.mock_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--provider", required=True, choices=sorted(MOCKS))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--key", action="append", default=[], help="accepted API key")
    parser.add_argument("--text", default=None, help="the answer (default: an echo)")
    parser.add_argument("--chunks", type=int, default=4, help="stream pieces per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between pieces")
    args = parser.parse_args(argv)
    reply = ReplyScript(text=args.text, chunks=args.chunks, chunk_delay_s=args.chunk_delay)

    def ready(url: str) -> None:
        print(f"{args.provider} mock listening on {url}", flush=True)

    asyncio.run(serve(args.provider, port=args.port, keys=args.key, reply=reply, ready=ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
