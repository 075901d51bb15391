"""``rakka serve``: the gateway and its topology under an HTTP server.

With ``--config FILE`` it serves the file's deployments on ``[cluster].bind`` (``--host``
and ``--port`` override it). With no config it serves the embedded sandbox
(:mod:`rakka_inference.apps.sandbox`): mock providers in this process, and a real deployment for
each provider whose key is in the environment.

The server is uvicorn with uvloop and httptools. SIGTERM or SIGINT stops accepting
connections, lets in-flight requests finish within the grace period (``--grace``), stops
the engines (queued requests are served first) and exits 0. When the grace period runs
out with requests still in flight, they are cut
(:meth:`~rakka_inference.runtime.gateway.ApiGateway.cut`): a stream that has begun ends
with its route's error event, a request not yet answered gets its route's 503 JSON error,
and the process exits :data:`EXIT_GRACE_RAN_OUT`. uvicorn's own graceful timeout is set a
little later, as a backstop for a request that does not end when cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from rakka_inference.core.config import load_config
from rakka_inference.core.deployment import Config
from rakka_inference.core.errors import ConfigError
from rakka_inference.runtime.topology import Topology

if TYPE_CHECKING:
    import socket

    from rakka_inference.apps.sandbox import Sandbox
    from rakka_inference.cluster.member import NodeMember

__all__ = ["EXIT_GRACE_RAN_OUT", "ServeApp", "run_server", "serve"]

log = logging.getLogger("rakka_inference.apps.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EXIT_GRACE_RAN_OUT = 3
"""The exit status when stopping cut requests still in flight at the end of the grace."""
_BACKSTOP_S = 5
"""How long after the grace uvicorn cancels the request tasks that are still running."""


class ServeApp:
    """An ASGI app whose lifespan builds the topology inside the server's event loop."""

    def __init__(
        self,
        config: Config | None,
        *,
        bind: str,
        config_file: str | None = None,
        member: NodeMember | None = None,
        generation: int = 0,
    ) -> None:
        self._config = config
        self._bind = bind
        self._config_file = config_file
        self._member = member
        """Set in a worker of a node: the node's shared services and answers."""
        self._generation = generation
        self._sandbox: Sandbox | None = None
        self.topology: Topology | None = None
        self.startup_error: Exception | None = None
        """Why :meth:`startup` failed under the lifespan, if it did."""
        self.grace_ran_out = False
        """Whether stopping had to :meth:`cut` requests still in flight."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self.topology is not None, "requests arrive only after startup"
        member = self._member
        if member is not None and member.answers.intercepts(scope):
            await member.answers.handle(scope, receive, send)
            return
        await self.topology.gateway(scope, receive, send)

    async def startup(self) -> None:
        config = self._config
        if config is None:
            # Only the no-config path needs the mock providers: imported here, so that
            # ``rakka serve --config`` never loads them.
            from rakka_inference.apps.sandbox import Sandbox, sandbox_config  # noqa: PLC0415

            self._sandbox = Sandbox()
            await self._sandbox.start()
            config = sandbox_config(self._sandbox, bind=self._bind)
        source = self._config_file
        member = self._member
        if member is not None:
            await member.start()
        self.topology = Topology(
            config,
            services=None if member is None else member.services(),
            reload_source=None if source is None else lambda: load_config(source),
        )
        await self.topology.start()
        if member is not None:
            # The parent holds the node's config and announces it: a worker only says so.
            member.attach(self.topology)
            await member.announce_ready(self._generation)
            return
        if source is not None and threading.current_thread() is threading.main_thread():
            # SIGHUP applies the file again; a bad file is logged and the running config
            # stays (DeploymentManager.apply checks it whole before changing anything).
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))
        names = ", ".join(d.name for d in config.deployments)
        print(f"rakka: serving {names} on http://{self._bind}", flush=True)

    async def _reload(self) -> None:
        assert self.topology is not None
        try:
            report = await self.topology.reload()
        except Exception as error:
            log.error("reload rejected, the running config stays: %s", error)
            return
        log.info(
            "reloaded: added %s, changed %s, removed %s",
            list(report.added),
            list(report.changed),
            list(report.removed),
        )

    def cut(self) -> None:
        """The grace period ran out with requests in flight: end them, each in its route's
        format (:meth:`~rakka_inference.runtime.gateway.ApiGateway.cut`)."""
        self.grace_ran_out = True
        cut = 0 if self.topology is None else self.topology.gateway.cut()
        log.warning("the grace period ran out: cutting %d request(s) in flight", cut)

    async def shutdown(self) -> None:
        try:
            if self.topology is not None:
                await self.topology.stop()
            if self._sandbox is not None:
                await self._sandbox.stop()
        finally:
            if self._member is not None:
                await self._member.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    log.exception("startup failed")
                    self.startup_error = error
                    await self.shutdown()
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _graceful_server_class(app: ServeApp, grace_s: float) -> type[Any]:
    import uvicorn  # noqa: PLC0415

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, except that a graceful stop exits 0 and the grace is ours.

        uvicorn re-raises a captured SIGTERM/SIGINT once it has shut down, so the process
        ends "killed by signal". A stop we asked for and completed is a success: the
        handlers here only ask the server to exit (a second signal forces it).

        When ``grace_s`` has passed since the stop began and requests are still running,
        ``app`` cuts them, so that each client is told why (uvicorn would cancel them with
        no answer, or a plain-text 500).
        """

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            timer = asyncio.get_running_loop().call_later(grace_s, self._grace_over)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def _grace_over(self) -> None:
            if self.server_state.tasks:
                app.cut()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer


def serve(
    config_file: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    grace_s: float = 30.0,
    workers: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; the exit status: 0, or :data:`EXIT_GRACE_RAN_OUT` when
    requests still in flight at the end of the grace period had to be cut.

    ``workers`` (else ``[cluster].workers``) above 1 runs a node: this process supervises
    that many workers on one port (:mod:`rakka_inference.cluster.supervisor`).

    Raises :class:`ConfigError` when the configuration is rejected, read from the file or
    on starting its deployments (a secret that is not set, say).
    """
    config = load_config(config_file) if config_file is not None else None
    bind = config.cluster.bind if config is not None else "127.0.0.1:8080"
    bind_host, _, bind_port = bind.rpartition(":")
    host = host or bind_host.strip("[]")
    port = int(bind_port) if port is None else port
    if config is not None and config_file is not None and config.cluster.backend == "ray":
        return _serve_on_ray(config_file, config, grace_s)
    if workers is None:
        workers = config.cluster.workers if config is not None else 1
    if workers > 1:
        from rakka_inference.apps.node import serve_node  # noqa: PLC0415

        return serve_node(config_file, host=host, port=port, grace_s=grace_s, workers=workers)
    app = ServeApp(config, bind=f"{host}:{port}", config_file=config_file)
    return run_server(app, host=host, port=port, grace_s=grace_s)


def _serve_on_ray(config_file: str, config: Config, grace_s: float) -> int:
    try:
        from rakka_inference.cluster.ray_driver import serve_ray  # noqa: PLC0415
    except ImportError:
        print(
            "rakka: backend = 'ray' needs Ray: pip install 'rakka-inference[ray]'",
            file=sys.stderr,
        )
        return 1
    return serve_ray(config_file, config, grace_s=grace_s)


def run_server(
    app: ServeApp,
    *,
    host: str,
    port: int,
    grace_s: float,
    sockets: list[socket.socket] | None = None,
) -> int:
    """Serve ``app`` with uvicorn (on ``sockets`` when given, else on ``host:port``) until
    stopped; the exit status as :func:`serve` gives it."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    server = _graceful_server_class(app, grace_s)(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            timeout_graceful_shutdown=math.ceil(grace_s) + _BACKSTOP_S,
            access_log=False,
            log_level="info",
        )
    )
    # uvicorn exits 3 when the lifespan's startup or the bind fails; the exit status is
    # ours to give (the CLI's documented codes), so the reason is taken from here.
    with contextlib.suppress(SystemExit):
        server.run(sockets=sockets)
    if isinstance(app.startup_error, ConfigError):
        raise app.startup_error
    if not server.started:
        print("rakka: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return EXIT_GRACE_RAN_OUT if app.grace_ran_out else 0
