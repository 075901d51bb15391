"""The connection guard's own CPU per request: uvicorn's httptools protocol bare and under
:func:`~rakka_inference.runtime.connection_guard.guarded_protocol`, in one process.

    python bench/connection_guard.py [--requests N] [--rounds N]

Each side serves the same kept-alive connection through an in-memory transport (no
sockets, no system calls: what is left is the protocol's Python) to an ASGI app that
answers at once; a request is the chat request ``bench/gateway.py`` sends, head and body in
one read (the fast path), or its head and body in two reads (a body timer armed and
cancelled). Rounds alternate bare / guarded; the figure is the process CPU time per
request, its median over the rounds, and the guarded side's extra µs per request: the
layer's cost, without the rest of the gateway or the machine's noise in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from rakka_inference.core.deployment import ClusterConfig
from rakka_inference.runtime.connection_guard import guarded_protocol
from rakka_inference.runtime.connection_limits import ConnectionGuard

BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello in five words."}]},
    separators=(",", ":"),
).encode()
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
)
ANSWER = b'{"ok":true}'


class Transport(asyncio.Transport):
    """Just enough of a socket transport: writes are counted and dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


Scope = MutableMapping[str, Any]


class App:
    def __init__(self) -> None:
        self.done: asyncio.Event = asyncio.Event()

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Any]
    ) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
            }
        )
        await send({"type": "http.response.body", "body": ANSWER})
        self.done.set()


async def serve(protocol_class: type[asyncio.Protocol], requests: int, split: bool) -> float:
    """CPU seconds per request over ``requests`` on one kept-alive connection."""
    app = App()
    config = uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning")
    config.load()
    protocol: Any = protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}
    )
    transport = Transport()
    protocol.connection_made(transport)
    whole = HEAD + BODY
    started = time.process_time()
    for _ in range(requests):
        app.done.clear()
        if split:
            protocol.data_received(HEAD)
            protocol.data_received(BODY)
        else:
            protocol.data_received(whole)
        await app.done.wait()
        await asyncio.sleep(0)  # the cycle's task ends
    spent = time.process_time() - started
    protocol.connection_lost(None)
    return spent / requests


async def bench(requests: int, rounds: int) -> None:
    guarded = guarded_protocol(ConnectionGuard(ClusterConfig()))
    sides: dict[str, type[asyncio.Protocol]] = {"bare": HttpToolsProtocol, "guarded": guarded}
    for split in (False, True):
        times: dict[str, list[float]] = {"bare": [], "guarded": []}
        await serve(HttpToolsProtocol, requests // 4, split)  # warm up
        await serve(guarded, requests // 4, split)
        for round_ in range(rounds):
            order = ("bare", "guarded") if round_ % 2 == 0 else ("guarded", "bare")
            for side in order:
                times[side].append(await serve(sides[side], requests, split))
        bare = statistics.median(times["bare"]) * 1e6
        guard = statistics.median(times["guarded"]) * 1e6
        kind = "head, body in two reads" if split else "head and body in one read"
        print(
            f"{kind:26}  bare {bare:6.2f} µs/req   guarded {guard:6.2f} µs/req   "
            f"+{guard - bare:5.2f} µs ({guard / bare:.3f}x)   rounds: "
            + " ".join(
                f"{g / b:.3f}" for b, g in zip(times["bare"], times["guarded"], strict=True)
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per side")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bench(args.requests, args.rounds))


if __name__ == "__main__":
    main()
